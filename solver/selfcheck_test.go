package solver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingress-acme/ingress-acme/core"
)

// ingressFake stands in for the ingress controller: it records the requests it
// gets and answers each with the next of its replies, repeating the last.
type ingressFake struct {
	mu      sync.Mutex // guards replies, hosts, paths
	replies []reply
	hosts   []string
	paths   []string
}

type reply struct {
	code int
	body string
}

func (f *ingressFake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.hosts = append(f.hosts, r.Host)
	f.paths = append(f.paths, r.URL.Path)
	rep := f.replies[0]
	if len(f.replies) > 1 {
		f.replies = f.replies[1:]
	}
	f.mu.Unlock()
	w.WriteHeader(rep.code)
	_, _ = w.Write([]byte(rep.body))
}

func (f *ingressFake) requests() (hosts, paths []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.hosts...), append([]string(nil), f.paths...)
}

// attempts records SelfCheck's observe calls.
type attempts struct {
	mu  sync.Mutex // guards oks
	oks []bool
}

func (a *attempts) observe(ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.oks = append(a.oks, ok)
}

func (a *attempts) get() []bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]bool(nil), a.oks...)
}

func TestSelfCheckRetriesUntilAnswer(t *testing.T) {
	const keyAuth = "tok.thumb"
	tests := []struct {
		name    string
		replies []reply
		want    int // attempts
	}{
		{name: "first try", replies: []reply{{200, keyAuth}}, want: 1},
		{name: "404 three times", replies: []reply{{404, "404 page not found"}, {404, ""}, {404, ""}, {200, keyAuth}}, want: 4},
		{name: "wrong answer then right", replies: []reply{{200, "default backend"}, {503, ""}, {200, keyAuth}}, want: 3},
		{name: "trailing newline is fine", replies: []reply{{200, keyAuth + "\n"}}, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &ingressFake{replies: tt.replies}
			ts := httptest.NewServer(fake)
			defer ts.Close()
			var a attempts
			// The connection goes to the test server, the Host header is the
			// challenge's host.
			c := NewSelfCheck(ts.Listener.Addr().String(), 5*time.Second, a.observe)
			if err := c.Check(context.Background(), "app.example.com", "tok", keyAuth); err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			hosts, paths := fake.requests()
			if len(hosts) != tt.want {
				t.Errorf("got %d requests, want %d", len(hosts), tt.want)
			}
			for i := range hosts {
				if hosts[i] != "app.example.com" {
					t.Errorf("request %d: got Host %q, want %q", i, hosts[i], "app.example.com")
				}
				if paths[i] != core.ChallengePathPrefix+"tok" {
					t.Errorf("request %d: got path %q, want %q", i, paths[i], core.ChallengePathPrefix+"tok")
				}
			}
			oks := a.get()
			if len(oks) != tt.want {
				t.Fatalf("got %d observed attempts, want %d", len(oks), tt.want)
			}
			for i, ok := range oks {
				if want := i == len(oks)-1; ok != want {
					t.Errorf("attempt %d: got ok %v, want %v", i, ok, want)
				}
			}
		})
	}
}

func TestSelfCheckFailures(t *testing.T) {
	const keyAuth = "tok.thumb"
	tests := []struct {
		name    string
		replies []reply
		wantErr string
	}{
		{name: "always 404", replies: []reply{{404, ""}}, wantErr: "status 404"},
		{name: "wrong key authorization", replies: []reply{{200, "tok.other"}}, wantErr: "not the key authorization"},
		{name: "key authorization with extra text", replies: []reply{{200, keyAuth + " extra"}}, wantErr: "not the key authorization"},
		{name: "right body, wrong status", replies: []reply{{500, keyAuth}}, wantErr: "status 500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &ingressFake{replies: tt.replies}
			ts := httptest.NewServer(fake)
			defer ts.Close()
			var a attempts
			const timeout = 300 * time.Millisecond
			c := NewSelfCheck(ts.Listener.Addr().String(), timeout, a.observe)
			start := time.Now()
			err := c.Check(context.Background(), "app.example.com", "tok", keyAuth)
			took := time.Since(start)
			if err == nil {
				t.Fatal("got nil, want an error")
			}
			// The last failure is reported, unless the deadline cut the last
			// attempt short (rare: attempts take a millisecond, waits far longer).
			if !strings.Contains(err.Error(), tt.wantErr) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("got %q, want it to contain %q", err, tt.wantErr)
			}
			if took < timeout || took > timeout+2*time.Second {
				t.Errorf("got an answer after %v, want one shortly after the %v timeout", took, timeout)
			}
			hosts, _ := fake.requests()
			if len(hosts) < 2 {
				t.Errorf("got %d attempts, want retries", len(hosts))
			}
			for _, ok := range a.get() {
				if ok {
					t.Errorf("got an attempt observed as ok, want none")
				}
			}
		})
	}
}

func TestSelfCheckContextCancelled(t *testing.T) {
	fake := &ingressFake{replies: []reply{{404, ""}}}
	ts := httptest.NewServer(fake)
	defer ts.Close()
	c := NewSelfCheck(ts.Listener.Addr().String(), time.Minute, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Check(ctx, "app.example.com", "tok", "tok.thumb")
	if err == nil {
		t.Fatal("got nil, want an error")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("got an answer after %v, want it soon after ctx ended", took)
	}
}

func TestSelfCheckNoAddressOverride(t *testing.T) {
	fake := &ingressFake{replies: []reply{{200, "tok.thumb"}}}
	ts := httptest.NewServer(fake)
	defer ts.Close()
	// Without an address the host itself is dialled (here, host:port of the
	// test server).
	host := ts.Listener.Addr().String()
	c := NewSelfCheck("", 5*time.Second, nil)
	if err := c.Check(context.Background(), host, "tok", "tok.thumb"); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	hosts, _ := fake.requests()
	if len(hosts) != 1 || hosts[0] != host {
		t.Errorf("got hosts %v, want [%s]", hosts, host)
	}
}

func TestSelfCheckFollowsRedirect(t *testing.T) {
	var mu sync.Mutex // guards seen
	var seen []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Host+r.URL.Path)
		mu.Unlock()
		if r.URL.Path == core.ChallengePathPrefix+"tok" {
			http.Redirect(w, r, "/moved/tok", http.StatusFound)
			return
		}
		_, _ = w.Write([]byte("tok.thumb"))
	}))
	defer ts.Close()
	c := NewSelfCheck(ts.Listener.Addr().String(), 5*time.Second, nil)
	if err := c.Check(context.Background(), "app.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"app.example.com" + core.ChallengePathPrefix + "tok", "app.example.com/moved/tok"}
	if strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Errorf("got requests %v, want %v", seen, want)
	}
}

func TestSelfCheckRedirectLoop(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path, http.StatusFound)
	}))
	defer ts.Close()
	c := NewSelfCheck(ts.Listener.Addr().String(), 300*time.Millisecond, nil)
	err := c.Check(context.Background(), "app.example.com", "tok", "tok.thumb")
	if err == nil || !strings.Contains(err.Error(), "redirects") && !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want a too-many-redirects error", err)
	}
}

// pathFake answers per path: the challenge path with challenge, anything else
// with app.
func pathFake(challenge, app reply) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rep := app
		if strings.HasPrefix(r.URL.Path, core.ChallengePathPrefix) {
			rep = challenge
		}
		w.WriteHeader(rep.code)
		_, _ = w.Write([]byte(rep.body))
	})
}

// quick makes c compare with the host's own path every 20 ms and give up after
// giveUp of identical answers.
func quick(c *SelfCheck, giveUp time.Duration) *SelfCheck {
	c.compareEvery, c.giveUpAfter = 20*time.Millisecond, giveUp
	return c
}

func TestSelfCheckDiagnosis(t *testing.T) {
	const keyAuth = "tok.thumb"
	tests := []struct {
		name           string
		challenge, app reply
		timeout        time.Duration
		wantEarly      bool // gives up before the timeout
		want           []string
	}{
		{
			name:      "Ingress not served at all",
			challenge: reply{404, "404 page not found\n"}, app: reply{404, "404 page not found\n"},
			timeout: 10 * time.Second, wantEarly: true,
			want: []string{`status 404 "404 page not found"`, "gave up after", "answers the same: the Ingress is not served at all: is its class handled by a running controller?"},
		},
		{
			name:      "only the challenge path fails",
			challenge: reply{404, "default backend - 404"}, app: reply{200, "<html>\n<body>shop</body>\n</html>"},
			timeout: 1500 * time.Millisecond,
			want:    []string{`status 404 "default backend - 404"`, "still failing after", `GET http://app.example.com/ answers status 200 "<html> <body>shop</body> </html>": only the challenge path fails: path not routed / not yet programmed`},
		},
		{
			name:      "wrong answer on the challenge path",
			challenge: reply{200, "tok.other"}, app: reply{200, "shop"},
			timeout: time.Second,
			want:    []string{`status 200 with a body that is not the key authorization: "tok.other"`, "only the challenge path fails"},
		},
		{
			name:      "the app's path catches the challenge path",
			challenge: reply{200, "shop"}, app: reply{200, "shop"},
			timeout: 10 * time.Second, wantEarly: true,
			want: []string{`status 200 with a body that is not the key authorization: "shop"`, "answers the same: the app's own path catches the challenge path: our path is not routed"},
		},
		{
			name:      "same 502 everywhere",
			challenge: reply{502, "Bad Gateway"}, app: reply{502, "Bad Gateway"},
			timeout: 10 * time.Second, wantEarly: true,
			want: []string{`status 502 "Bad Gateway"`, "the Ingress is not served at all"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewServer(pathFake(tt.challenge, tt.app))
			defer ts.Close()
			c := quick(NewSelfCheck(ts.Listener.Addr().String(), tt.timeout, nil), 200*time.Millisecond)
			start := time.Now()
			err := c.Check(context.Background(), "app.example.com", "tok", keyAuth)
			took := time.Since(start)
			if err == nil {
				t.Fatal("got nil, want an error")
			}
			msg := err.Error()
			for _, w := range append(tt.want, "self-check http://app.example.com"+core.ChallengePathPrefix+"tok via "+ts.Listener.Addr().String()+": ") {
				if !strings.Contains(msg, w) {
					t.Errorf("got %q, want it to contain %q", msg, w)
				}
			}
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("got %q, want one line", msg)
			}
			if early := took < tt.timeout; early != tt.wantEarly {
				t.Errorf("gave up after %v with timeout %v: got early %v, want %v", took, tt.timeout, early, tt.wantEarly)
			}
		})
	}
}

func TestSelfCheckKeepsWaitingWhileAnswersDiffer(t *testing.T) {
	// The app's path answers, the challenge path not yet: that can still
	// change (the path is being programmed), so no early give-up.
	ts := httptest.NewServer(pathFake(reply{404, "not found"}, reply{200, "shop"}))
	defer ts.Close()
	const timeout = 600 * time.Millisecond
	c := quick(NewSelfCheck(ts.Listener.Addr().String(), timeout, nil), 50*time.Millisecond)
	start := time.Now()
	if err := c.Check(context.Background(), "app.example.com", "tok", "tok.thumb"); err == nil {
		t.Fatal("got nil, want an error")
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("gave up after %v, want the full %v", took, timeout)
	}
}

func TestSelfCheckNothingListening(t *testing.T) {
	ts := httptest.NewServer(http.NotFoundHandler())
	addr := ts.Listener.Addr().String()
	ts.Close()
	c := quick(NewSelfCheck(addr, time.Second, nil), 50*time.Millisecond)
	err := c.Check(context.Background(), "app.example.com", "tok", "tok.thumb")
	if err == nil {
		t.Fatal("got nil, want an error")
	}
	for _, w := range []string{"via " + addr, "no answer: ", "connection refused", "nothing answers at " + addr} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("got %q, want it to contain %q", err, w)
		}
	}
}

// redirectToTLS is an ingress whose HTTP side redirects every request to HTTPS
// on the port of its TLS side, which answers with tlsReply.
func redirectToTLS(t *testing.T, tlsReply reply) (httpAddr string) {
	t.Helper()
	secure := httptest.NewTLSServer(pathFake(tlsReply, reply{200, "shop"}))
	t.Cleanup(secure.Close)
	_, port, _ := strings.Cut(secure.Listener.Addr().String(), "127.0.0.1:")
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://"+r.Host+":"+port+r.URL.Path, http.StatusPermanentRedirect)
	}))
	t.Cleanup(plain.Close)
	return plain.Listener.Addr().String()
}

func TestSelfCheckFollowsHTTPSRedirectToTheAddress(t *testing.T) {
	// With an address set, the HTTPS side is reached on the same address's
	// host, at the redirect's port, like the CA reaches the host.
	addr := redirectToTLS(t, reply{200, "tok.thumb"})
	c := NewSelfCheck(addr, 5*time.Second, nil)
	if err := c.Check(context.Background(), "app.example.com", "tok", "tok.thumb"); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
}

func TestSelfCheckNamesTheRedirect(t *testing.T) {
	addr := redirectToTLS(t, reply{404, "no route"})
	c := quick(NewSelfCheck(addr, 2*time.Second, nil), 50*time.Millisecond)
	err := c.Check(context.Background(), "app.example.com", "tok", "tok.thumb")
	if err == nil {
		t.Fatal("got nil, want an error")
	}
	for _, w := range []string{"status 308 to https://app.example.com:", core.ChallengePathPrefix + "tok, then status 404 \"no route\"", `answers status 308 to https://app.example.com:`, "only the challenge path fails"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("got %q, want it to contain %q", err, w)
		}
	}
}

func TestTarget(t *testing.T) {
	tests := []struct{ address, addr, want string }{
		{"", "app.example.com:80", "app.example.com:80"},
		{"10.0.0.1:8080", "app.example.com:80", "10.0.0.1:8080"},
		{"10.0.0.1:8080", "app.example.com:443", "10.0.0.1:443"},
		{"ingress.svc:80", "www.example.com:8443", "ingress.svc:8443"},
		{"[::1]:80", "app.example.com:443", "[::1]:443"},
	}
	for _, tt := range tests {
		if got := target(tt.address, tt.addr); got != tt.want {
			t.Errorf("target(%q, %q): got %q, want %q", tt.address, tt.addr, got, tt.want)
		}
	}
}

func TestExcerpt(t *testing.T) {
	tests := []struct{ in, want string }{
		{"404 page not found\n", "404 page not found"},
		{"<html>\r\n  <h1>502</h1>\t</html>", "<html> <h1>502</h1> </html>"},
		{"a\x00b\x1bc", "a?b?c"},
		{"\xff\xfeok", "?ok"},
		{strings.Repeat("x", 100), strings.Repeat("x", 80) + "..."},
		{"", ""},
	}
	for _, tt := range tests {
		if got := excerpt([]byte(tt.in)); got != tt.want {
			t.Errorf("excerpt(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

// Checks of many hosts, one after the other, keep no connection per host: the
// open connections stay within the idle bound (plus the one in use).
func TestSelfCheckKeepsFewConnections(t *testing.T) {
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ka"))
	}))
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	ts.Config.ConnState = func(c net.Conn, s http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch s {
		case http.StateNew:
			open[c] = true
		case http.StateClosed, http.StateHijacked:
			delete(open, c)
		}
	}
	ts.Start()
	defer ts.Close()
	c := NewSelfCheck(ts.Listener.Addr().String(), 5*time.Second, nil)
	const hosts = 3 * maxIdleChecks
	for i := range hosts {
		if err := c.Check(context.Background(), fmt.Sprintf("h%d.example", i), "tok", "ka"); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(open)
		mu.Unlock()
		if n <= maxIdleChecks+1 {
			t.Logf("%d hosts checked, %d connections open", hosts, n)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d hosts checked, %d connections still open, want at most %d", hosts, n, maxIdleChecks+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
