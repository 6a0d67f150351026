package solver

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ingress-acme/ingress-acme/core"
)

// token43 is a token of the length RFC 8555 tokens have.
const token43 = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"

func TestValidToken(t *testing.T) {
	tests := []struct {
		token string
		want  bool
	}{
		{token43, true},
		{"a", true},
		{"A-z_0-9", true},
		{strings.Repeat("x", 256), true},
		{strings.Repeat("x", 257), false},
		{"", false},
		{"abc=", false},
		{"a/b", false},
		{"a.b", false},
		{"..", false},
		{"a b", false},
		{"a%2Fb", false},
		{"tök", false},
	}
	for _, tt := range tests {
		t.Run(tt.token, func(t *testing.T) {
			if got := ValidToken(tt.token); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// outcomes records what a Server observes; safe for concurrent use.
type outcomes struct {
	mu  sync.Mutex // guards got
	got []string
}

func (o *outcomes) observe(outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, outcome)
}

func (o *outcomes) last() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.got) == 0 {
		return ""
	}
	return o.got[len(o.got)-1]
}

func TestServerServeHTTP(t *testing.T) {
	const keyAuth = token43 + ".thumbprint"
	var obs outcomes
	s := NewServer(obs.observe)
	s.Present("A.Example.com", token43, keyAuth)
	s.Present("b.example.com", "other", "other.thumbprint")

	tests := []struct {
		name        string
		method      string
		target      string
		host        string
		wantCode    int
		wantBody    string // checked when wantCode is 200
		wantOutcome string
	}{
		{name: "GET", method: "GET", target: core.ChallengePathPrefix + token43, host: "a.example.com", wantCode: 200, wantBody: keyAuth, wantOutcome: OutcomeServed},
		{name: "HEAD", method: "HEAD", target: core.ChallengePathPrefix + token43, host: "a.example.com", wantCode: 200, wantOutcome: OutcomeServed},
		{name: "host in upper case", method: "GET", target: core.ChallengePathPrefix + token43, host: "A.EXAMPLE.COM", wantCode: 200, wantBody: keyAuth, wantOutcome: OutcomeServed},
		{name: "host with port", method: "GET", target: core.ChallengePathPrefix + token43, host: "a.example.com:80", wantCode: 200, wantBody: keyAuth, wantOutcome: OutcomeServed},
		{name: "host with trailing dot", method: "GET", target: core.ChallengePathPrefix + token43, host: "a.example.com.", wantCode: 200, wantBody: keyAuth, wantOutcome: OutcomeServed},
		{name: "second token on its host", method: "GET", target: core.ChallengePathPrefix + "other", host: "b.example.com", wantCode: 200, wantBody: "other.thumbprint", wantOutcome: OutcomeServed},
		{name: "token on another token's host", method: "GET", target: core.ChallengePathPrefix + token43, host: "b.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "unknown host", method: "GET", target: core.ChallengePathPrefix + token43, host: "evil.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "subdomain of the host", method: "GET", target: core.ChallengePathPrefix + token43, host: "x.a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "unknown token", method: "GET", target: core.ChallengePathPrefix + "nope", host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "token prefix", method: "GET", target: core.ChallengePathPrefix + token43[:10], host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "token with suffix", method: "GET", target: core.ChallengePathPrefix + token43 + "x", host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "trailing slash", method: "GET", target: core.ChallengePathPrefix + token43 + "/", host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "sub-path", method: "GET", target: core.ChallengePathPrefix + token43 + "/x", host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "query string", method: "GET", target: core.ChallengePathPrefix + token43 + "?x=1", host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "prefix only", method: "GET", target: core.ChallengePathPrefix, host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "root", method: "GET", target: "/", host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "token at the root", method: "GET", target: "/" + token43, host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "other well-known", method: "GET", target: "/.well-known/other/" + token43, host: "a.example.com", wantCode: 404, wantOutcome: OutcomeNotFound},
		{name: "POST", method: "POST", target: core.ChallengePathPrefix + token43, host: "a.example.com", wantCode: 405, wantOutcome: OutcomeBadReq},
		{name: "PUT", method: "PUT", target: core.ChallengePathPrefix + token43, host: "a.example.com", wantCode: 405, wantOutcome: OutcomeBadReq},
		{name: "DELETE elsewhere", method: "DELETE", target: "/", host: "a.example.com", wantCode: 405, wantOutcome: OutcomeBadReq},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, tt.target, nil)
			r.Host = tt.host
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			if w.Code != tt.wantCode {
				t.Fatalf("got %d, want %d", w.Code, tt.wantCode)
			}
			if got := obs.last(); got != tt.wantOutcome {
				t.Errorf("got outcome %q, want %q", got, tt.wantOutcome)
			}
			switch tt.wantCode {
			case http.StatusOK:
				if tt.method == http.MethodGet && w.Body.String() != tt.wantBody {
					t.Errorf("got body %q, want %q", w.Body.String(), tt.wantBody)
				}
				if got := w.Header().Get("Content-Type"); got != "text/plain" {
					t.Errorf("got Content-Type %q, want text/plain", got)
				}
				if got := w.Header().Get("Cache-Control"); got != "no-store" {
					t.Errorf("got Cache-Control %q, want no-store", got)
				}
			case http.StatusMethodNotAllowed:
				if got := w.Header().Get("Allow"); got != "GET, HEAD" {
					t.Errorf("got Allow %q, want %q", got, "GET, HEAD")
				}
			default:
				if strings.Contains(w.Body.String(), "thumbprint") {
					t.Errorf("got body %q, want no key authorization in a %d", w.Body.String(), w.Code)
				}
			}
		})
	}
}

func TestServerPresentRemove(t *testing.T) {
	s := NewServer(nil) // a nil observe must work
	get := func(host, token string) int {
		r := httptest.NewRequest("GET", core.ChallengePathPrefix+token, nil)
		r.Host = host
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w.Code
	}

	s.Present("a.example.com", "bad/token", "x")
	s.Present("a.example.com", "", "x")
	s.Present("a.example.com", strings.Repeat("t", 257), "x")
	if got := live(s); got != 0 {
		t.Errorf("got %d live tokens after invalid ones, want 0", got)
	}

	s.Present("a.example.com", "t1", "k1")
	s.Present("b.example.com", "t2", "k2")
	if got := live(s); got != 2 {
		t.Errorf("got %d live tokens, want 2", got)
	}
	if got := get("a.example.com", "t1"); got != 200 {
		t.Errorf("got %d, want 200", got)
	}

	// Presenting a token again moves it to the new host.
	s.Present("c.example.com", "t1", "k1")
	if got := get("a.example.com", "t1"); got != 404 {
		t.Errorf("old host: got %d, want 404", got)
	}
	if got := get("c.example.com", "t1"); got != 200 {
		t.Errorf("new host: got %d, want 200", got)
	}

	s.Remove("t1")
	s.Remove("never-presented")
	if got := live(s); got != 1 {
		t.Errorf("got %d live tokens, want 1", got)
	}
	if got := get("c.example.com", "t1"); got != 404 {
		t.Errorf("removed token: got %d, want 404", got)
	}
	if got := get("b.example.com", "t2"); got != 200 {
		t.Errorf("remaining token: got %d, want 200", got)
	}
}

// TestServerOverHTTP checks the answers through a real HTTP server, where a HEAD
// response has no body and the Host header comes from the request line.
func TestServerOverHTTP(t *testing.T) {
	s := NewServer(nil)
	s.Present("a.example.com", token43, "key.auth")
	ts := httptest.NewServer(s)
	defer ts.Close()

	tests := []struct {
		method, host, path string
		wantCode           int
		wantBody           string
	}{
		{"GET", "a.example.com", core.ChallengePathPrefix + token43, 200, "key.auth"},
		{"HEAD", "a.example.com", core.ChallengePathPrefix + token43, 200, ""},
		{"GET", "b.example.com", core.ChallengePathPrefix + token43, 404, ""},
		{"POST", "a.example.com", core.ChallengePathPrefix + token43, 405, ""},
		{"GET", "a.example.com", "/.well-known/acme-challenge/../acme-challenge/" + token43, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.host+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, ts.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tt.host
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantCode {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if tt.wantCode == 200 && string(body) != tt.wantBody {
				t.Errorf("got body %q, want %q", body, tt.wantBody)
			}
		})
	}
}

func TestServerConcurrent(t *testing.T) {
	s := NewServer(nil)
	var wg sync.WaitGroup
	for i := range 8 {
		tok := strings.Repeat(string(rune('a'+i)), 8)
		wg.Go(func() {
			for range 100 {
				s.Present("h.example.com", tok, "k")
				r := httptest.NewRequest("GET", core.ChallengePathPrefix+tok, nil)
				r.Host = "h.example.com"
				s.ServeHTTP(httptest.NewRecorder(), r)
				s.Remove(tok)
			}
		})
	}
	wg.Wait()
	if got := live(s); got != 0 {
		t.Errorf("got %d live tokens, want 0", got)
	}
}

func TestNewHTTPServer(t *testing.T) {
	h := NewServer(nil)
	srv := NewHTTPServer(":8089", h)
	if srv.Addr != ":8089" || srv.Handler != h {
		t.Errorf("got addr %q handler %v, want :8089 and the handler", srv.Addr, srv.Handler)
	}
	for name, d := range map[string]time.Duration{
		"ReadHeaderTimeout": srv.ReadHeaderTimeout,
		"ReadTimeout":       srv.ReadTimeout,
		"WriteTimeout":      srv.WriteTimeout,
		"IdleTimeout":       srv.IdleTimeout,
	} {
		if d <= 0 {
			t.Errorf("%s: got %v, want a positive timeout", name, d)
		}
	}
	if srv.MaxHeaderBytes <= 0 || srv.MaxHeaderBytes > 1<<20 {
		t.Errorf("got MaxHeaderBytes %d, want a bound below the 1 MiB default", srv.MaxHeaderBytes)
	}
}

// live returns how many tokens s answers.
func live(s *Server) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.tokens)
}
