package solver

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
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
				if paths[i] != ChallengePathPrefix+"tok" {
					t.Errorf("request %d: got path %q, want %q", i, paths[i], ChallengePathPrefix+"tok")
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
		if r.URL.Path == ChallengePathPrefix+"tok" {
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
	want := []string{"app.example.com" + ChallengePathPrefix + "tok", "app.example.com/moved/tok"}
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
