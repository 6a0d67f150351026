package solver

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ingress-acme/ingress-acme/core"
)

// fuzzTokens are the live tokens of FuzzChallengeServer: token -> host, keyAuth.
var fuzzTokens = map[string][2]string{
	token43: {"a.example.com", token43 + ".thumbprint-a"},
	"t2":    {"b.example.com", "t2.thumbprint-b"},
}

// sameHost is the specification of which Host headers reach a token presented
// for host: the same name in any case, with or without a port and a final dot.
func sameHost(header, host string) bool {
	if h, _, err := net.SplitHostPort(header); err == nil {
		header = h
	}
	return strings.EqualFold(strings.TrimSuffix(header, "."), host)
}

// FuzzChallengeServer sends arbitrary requests to a Server with two live tokens:
// it must never panic, and answer 200 only to GET or HEAD of exactly a live
// token's path on that token's host, with exactly its key authorization.
func FuzzChallengeServer(f *testing.F) {
	f.Add("GET", core.ChallengePathPrefix+token43, "a.example.com", "")
	f.Add("HEAD", core.ChallengePathPrefix+token43, "A.EXAMPLE.COM:80", "")
	f.Add("GET", core.ChallengePathPrefix+token43, "b.example.com", "")
	f.Add("GET", core.ChallengePathPrefix+"t2", "b.example.com.", "")
	f.Add("GET", core.ChallengePathPrefix+"t2", "b.example.com", "x=1")
	f.Add("POST", core.ChallengePathPrefix+token43, "a.example.com", "")
	f.Add("get", core.ChallengePathPrefix+token43, "a.example.com", "")
	f.Add("GET", core.ChallengePathPrefix+token43+"/", "a.example.com", "")
	f.Add("GET", core.ChallengePathPrefix, "a.example.com", "")
	f.Add("GET", "", "", "")
	f.Add("GET", "/.well-known/acme-challenge/../acme-challenge/t2", "b.example.com", "")
	f.Add("GET", core.ChallengePathPrefix+"t2\x00", "b.example.com", "")
	f.Add("GET", core.ChallengePathPrefix+"t2", "[b.example.com]:8080", "")
	f.Add("OPTIONS", "*", "a.example.com", "")

	f.Fuzz(func(t *testing.T, method, path, host, rawQuery string) {
		s := NewServer(nil)
		for tok, p := range fuzzTokens {
			s.Present(p[0], tok, p[1])
		}
		r := &http.Request{
			Method: method,
			URL:    &url.URL{Path: path, RawQuery: rawQuery},
			Host:   host,
			Header: http.Header{},
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)

		getOrHead := method == http.MethodGet || method == http.MethodHead
		switch w.Code {
		case http.StatusOK:
			if !getOrHead {
				t.Fatalf("got 200 for method %q, want only GET or HEAD", method)
			}
			tok, ok := strings.CutPrefix(path, core.ChallengePathPrefix)
			p, live := fuzzTokens[tok]
			if !ok || !live {
				t.Fatalf("got 200 for path %q, want only a live token's path", path)
			}
			if rawQuery != "" {
				t.Fatalf("got 200 with query %q, want 404", rawQuery)
			}
			if !sameHost(host, p[0]) {
				t.Fatalf("got 200 for token %q on host %q, want only on %q", tok, host, p[0])
			}
			if got := w.Body.String(); got != p[1] {
				t.Fatalf("got body %q, want %q", got, p[1])
			}
		case http.StatusMethodNotAllowed:
			if getOrHead {
				t.Fatalf("got 405 for %s, want it allowed", method)
			}
		case http.StatusNotFound:
			if !getOrHead {
				t.Fatalf("got 404 for method %q, want 405", method)
			}
			if strings.Contains(w.Body.String(), "thumbprint") {
				t.Fatalf("got body %q in a 404, want no key authorization", w.Body.String())
			}
		default:
			t.Fatalf("got status %d, want 200, 404 or 405", w.Code)
		}

		// The converse: the exact request is always answered.
		if tok, ok := strings.CutPrefix(path, core.ChallengePathPrefix); ok && rawQuery == "" && getOrHead {
			if p, live := fuzzTokens[tok]; live && host == p[0] && w.Code != http.StatusOK {
				t.Fatalf("got %d for %s %s on %s, want 200", w.Code, method, path, host)
			}
		}
	})
}
