package testbed

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// CARequest is one request a CAProxy passed on.
type CARequest struct {
	At       time.Time // when it arrived
	Endpoint string    // see CAProxy
	Method   string
	Code     int // the CA's status; 502 when the CA did not answer
}

// CAProxy is an HTTPS reverse proxy in front of a Pebble that records every
// request by ACME endpoint, to count what a client asks of the CA. Pebble
// builds every URL it hands out from the request's Host, which the proxy keeps,
// so a client given Directory talks to the CA only through the proxy. It serves
// Pebble's own certificate: PebbleCAFile verifies it. Its methods are safe for
// concurrent use.
//
// Endpoints are named as the controller's ingress_acme_acme_requests_total
// does: directory, new-nonce, new-account, account, new-order, order, authz,
// challenge, finalize, certificate, renewal-info, other.
type CAProxy struct {
	// Directory is the proxied directory URL, https://127.0.0.1:PORT/dir.
	Directory string

	srv *http.Server

	// mu guards reqs.
	mu   sync.Mutex
	reqs []CARequest
}

// NewCAProxy starts a CAProxy on a free loopback port in front of the Pebble
// whose directory URL is directory (the testbed's PebbleDirectory, or an
// ExtraCA's Directory). Close it when done.
func (tb *Testbed) NewCAProxy(directory string) (*CAProxy, error) {
	target, err := url.Parse(directory)
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(tb.Tools.PebbleCert, tb.Tools.PebbleKey)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &CAProxy{Directory: "https://" + ln.Addr().String() + target.Path}
	upstream := &url.URL{Scheme: target.Scheme, Host: target.Host}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = r.In.Host // Pebble makes its URLs from it
		},
		Transport: &http.Transport{
			Proxy:               nil,
			TLSClientConfig:     tb.pebbleTLS.Clone(),
			MaxIdleConnsPerHost: 64,
		},
		ModifyResponse: func(resp *http.Response) error {
			p.record(resp.Request, resp.StatusCode)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, _ error) {
			p.record(r, http.StatusBadGateway)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), arrivalKey{}, time.Now())))
		}),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	go func() { _ = p.srv.ServeTLS(ln, "", "") }()
	return p, nil
}

// record notes a request r (as sent upstream) answered with code.
func (p *CAProxy) record(r *http.Request, code int) {
	at := time.Now()
	if v, ok := r.Context().Value(arrivalKey{}).(time.Time); ok {
		at = v
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reqs = append(p.reqs, CARequest{At: at, Endpoint: pebbleEndpoint(r.URL.Path), Method: r.Method, Code: code})
}

// arrivalKey is the request context key of the time a request arrived.
type arrivalKey struct{}

// pebbleEndpoint names the ACME endpoint of a Pebble URL path.
func pebbleEndpoint(path string) string {
	switch {
	case path == "/dir":
		return "directory"
	case path == "/nonce-plz":
		return "new-nonce"
	case path == "/sign-me-up":
		return "new-account"
	case path == "/order-plz":
		return "new-order"
	case strings.HasPrefix(path, "/my-account/"):
		return "account"
	case strings.HasPrefix(path, "/my-order/"):
		return "order"
	case strings.HasPrefix(path, "/finalize-order/"):
		return "finalize"
	case strings.HasPrefix(path, "/authZ/"):
		return "authz"
	case strings.HasPrefix(path, "/chalZ/"):
		return "challenge"
	case strings.HasPrefix(path, "/certZ/"):
		return "certificate"
	case strings.HasPrefix(path, "/draft-ietf-acme-ari-03/renewalInfo"):
		return "renewal-info"
	}
	return "other"
}

// Requests returns the requests to endpoint so far ("" for all), in the order
// they were answered.
func (p *CAProxy) Requests(endpoint string) []CARequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []CARequest
	for _, r := range p.reqs {
		if endpoint == "" || r.Endpoint == endpoint {
			out = append(out, r)
		}
	}
	return out
}

// Count is how many requests to endpoint were answered ("" for all).
func (p *CAProxy) Count(endpoint string) int { return len(p.Requests(endpoint)) }

// CountSince is how many requests to endpoint arrived at or after t.
func (p *CAProxy) CountSince(endpoint string, t time.Time) int {
	n := 0
	for _, r := range p.Requests(endpoint) {
		if !r.At.Before(t) {
			n++
		}
	}
	return n
}

// Orders is how many orders the CA created: new-order requests it answered
// 201 Created. (A new-order request Pebble refuses for a bad nonce, which the
// client then repeats, is not an order.)
func (p *CAProxy) Orders() int { return p.OrdersSince(time.Time{}) }

// OrdersSince is Orders counting only requests that arrived at or after t.
func (p *CAProxy) OrdersSince(t time.Time) int {
	n := 0
	for _, r := range p.Requests("new-order") {
		if r.Code == http.StatusCreated && !r.At.Before(t) {
			n++
		}
	}
	return n
}

// MaxInWindow is the largest number of requests to endpoint that arrived
// within any window of length d at or after since, and when that window began.
func (p *CAProxy) MaxInWindow(endpoint string, since time.Time, d time.Duration) (int, time.Time) {
	var at []time.Time
	for _, r := range p.Requests(endpoint) {
		if !r.At.Before(since) {
			at = append(at, r.At)
		}
	}
	slices.SortFunc(at, time.Time.Compare)
	best, start := 0, time.Time{}
	j := 0
	for i := range at {
		for at[i].Sub(at[j]) >= d {
			j++
		}
		if n := i - j + 1; n > best {
			best, start = n, at[j]
		}
	}
	return best, start
}

// Summary counts the requests by endpoint and status, for a failure message.
func (p *CAProxy) Summary() string {
	counts := map[string]int{}
	var keys []string
	for _, r := range p.Requests("") {
		k := fmt.Sprintf("%s %s %d", r.Method, r.Endpoint, r.Code)
		if counts[k] == 0 {
			keys = append(keys, k)
		}
		counts[k]++
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %d\n", k, counts[k])
	}
	return b.String()
}

// Close stops the proxy.
func (p *CAProxy) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		_ = p.srv.Close()
	}
}
