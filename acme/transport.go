package acme

import (
	"net/http"
	"strings"
	"sync"
	"time"

	acmelib "github.com/eggsampler/acme/v3"
)

// transport wraps the CA's HTTP transport: it reports every request to observe by
// endpoint kind, and remembers the last Retry-After the CA sent with a 429 or 503,
// which the library drops.
type transport struct {
	base      http.RoundTripper
	observe   func(endpoint string, code int, took time.Duration)
	directory string

	// mu guards dir, retryAfter and retryAfterSeen.
	mu             sync.Mutex
	dir            acmelib.Directory
	retryAfter     time.Time
	retryAfterSeen time.Time
}

func (t *transport) setDirectory(d acmelib.Directory) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dir = d
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.base.RoundTrip(req)
	code := 0
	if resp != nil {
		code = resp.StatusCode
		if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
			if at, ok := parseRetryAfter(resp.Header.Get("Retry-After"), start); ok {
				t.mu.Lock()
				t.retryAfter, t.retryAfterSeen = at, time.Now()
				t.mu.Unlock()
			}
		}
	}
	if t.observe != nil {
		t.observe(t.endpoint(req), code, time.Since(start))
	}
	return resp, err
}

// retryAfterSince returns the Retry-After time the CA sent since start, zero if none.
func (t *transport) retryAfterSince(start time.Time) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.retryAfterSeen.Before(start) {
		return time.Time{}
	}
	return t.retryAfter
}

func parseRetryAfter(v string, now time.Time) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}, false
	}
	if at, err := http.ParseTime(v); err == nil {
		return at, true
	}
	var secs int
	for _, c := range v {
		if c < '0' || c > '9' || secs > 1e7 {
			return time.Time{}, false
		}
		secs = secs*10 + int(c-'0')
	}
	return now.Add(time.Duration(secs) * time.Second), true
}

// endpoint names the kind of ACME resource req is for: the directory's own URLs
// exactly, the others (order, authorization, challenge URLs the CA made up) by
// the words CAs put in their paths.
func (t *transport) endpoint(req *http.Request) string {
	u := req.URL.String()
	t.mu.Lock()
	d := t.dir
	t.mu.Unlock()
	switch {
	case u == t.directory:
		return "directory"
	case u == d.NewNonce:
		return "new-nonce"
	case u == d.NewAccount:
		return "new-account"
	case u == d.NewOrder:
		return "new-order"
	case d.RenewalInfo != "" && strings.HasPrefix(u, d.RenewalInfo):
		return "renewal-info"
	}
	// The last segment is the CA's random identifier: only the ones before it
	// name the resource ("/my-order/<id>", "/acme/order/<acct>/<id>").
	p := strings.ToLower(req.URL.Path)
	if i := strings.LastIndex(strings.TrimSuffix(p, "/"), "/"); i > 0 {
		p = p[:i]
	}
	switch {
	case strings.Contains(p, "finalize"):
		return "finalize"
	case strings.Contains(p, "authz"):
		return "authz"
	case strings.Contains(p, "chal"):
		return "challenge"
	case strings.Contains(p, "cert"):
		return "certificate"
	case strings.Contains(p, "order"):
		return "order"
	case strings.Contains(p, "acct") || strings.Contains(p, "account"):
		return "account"
	}
	return "other"
}
