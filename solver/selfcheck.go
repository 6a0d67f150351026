package solver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/ingress-acme/ingress-acme/core"
)

// Defaults of how soon a self-check gives up when its answer shows it cannot
// succeed.
const (
	// defaultGiveUpAfter is how long the challenge path may keep answering
	// exactly like the host's own path (GET http://host/) before Check stops
	// waiting: the Ingress is not served at all, or the app's path catches
	// ours; neither is a path still being programmed.
	defaultGiveUpAfter = 20 * time.Second
	// defaultCompareEvery is how often, while failing, Check fetches the
	// host's own path to compare.
	defaultCompareEvery = time.Second
)

// SelfCheck fetches a challenge the way the CA will, through the ingress, before
// the CA is asked to validate it. It is safe for concurrent use.
type SelfCheck struct {
	client  *http.Client
	address string
	timeout time.Duration
	observe func(ok bool)

	giveUpAfter  time.Duration // see defaultGiveUpAfter
	compareEvery time.Duration // see defaultCompareEvery
}

// maxIdleChecks bounds the self-checks' idle connections, over every host.
const maxIdleChecks = 32

// NewSelfCheck returns a SelfCheck that gives up after timeout, or sooner when
// the challenge path keeps answering exactly like the host's own path (the
// Ingress is not served at all, or the app's path catches ours). With address ("host:port") set, every
// connection goes to that address whatever the host, for clusters where the
// Ingress's public name does not reach the ingress controller from inside (no
// hairpin NAT): port 80 to address itself, any other port (an HTTPS redirect
// to 443, say) to that port on address's host. The Host header is the
// challenge's host either way. Redirects are followed like the CA does, HTTPS
// ones without verifying the certificate, since the CA does not verify it
// either. observe, if not nil, is called after every attempt at the challenge.
func NewSelfCheck(address string, timeout time.Duration, observe func(ok bool)) *SelfCheck {
	if observe == nil {
		observe = func(bool) {}
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, target(address, addr))
		},
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the CA does not verify redirected HTTPS either
		// Every host is its own connection pool, and a host's check is over
		// once it answers: keep idle connections for the checks in progress,
		// not one per host checked in the last half minute (1,000 new hosts
		// would hold 1,000 connections, their buffers and goroutines).
		MaxIdleConns:          maxIdleChecks,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       10 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
	}
	return &SelfCheck{
		client: &http.Client{
			Transport: transport,
			Timeout:   10 * time.Second,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if tr, ok := req.Context().Value(traceKey{}).(*trace); ok && req.Response != nil {
					tr.redirect(req.Response.StatusCode, req.Response.Header.Get("Location"))
				}
				if len(via) >= 10 {
					return errors.New("stopped after 10 redirects")
				}
				return nil
			},
		},
		address:      address,
		timeout:      timeout,
		observe:      observe,
		giveUpAfter:  defaultGiveUpAfter,
		compareEvery: defaultCompareEvery,
	}
}

// target is where a connection for addr ("host:port") goes: with address set,
// port 80 to address and other ports to that port on address's host.
func target(address, addr string) string {
	if address == "" {
		return addr
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if port == "80" {
		return address
	}
	if host, _, err := net.SplitHostPort(address); err == nil {
		return net.JoinHostPort(host, port)
	}
	return addr
}

// Check GETs http://host/.well-known/acme-challenge/token until it answers
// keyAuth exactly, retrying on a short growing backoff (10 ms to 500 ms) since a
// new Ingress path takes the ingress controller a moment to load. It returns nil
// on the first exact answer. Otherwise it returns, once the timeout passes or
// ctx ends, or as soon as the challenge path has answered exactly like GET
// http://host/ for 20 s (the Ingress is not served at all, or the app's own
// path catches the challenge path), a one-line error
// saying what answered (status, redirect Location, a short sanitized body
// excerpt), what the host's own path answers, the likely cause, and the address
// the check used.
func (c *SelfCheck) Check(ctx context.Context, host, token, keyAuth string) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	url := "http://" + host + core.ChallengePathPrefix + token
	start := time.Now()
	delay := 10 * time.Millisecond
	var (
		last, app   answer
		compared    time.Time // when app was last fetched
		sameSince   time.Time // since when last and app have been the same HTTP answer; zero: not
		hasCompared bool
	)
	for attempt := 1; ; attempt++ {
		last = c.fetch(ctx, url, keyAuth)
		c.observe(last.ok)
		if last.ok {
			return nil
		}
		if ctx.Err() == nil && time.Since(compared) >= c.compareEvery && time.Since(start) >= c.compareEvery {
			app = c.fetch(ctx, "http://"+host+"/", "")
			compared, hasCompared = time.Now(), ctx.Err() == nil
			if last.same(app) && last.err == nil {
				if sameSince.IsZero() {
					sameSince = compared
				}
			} else {
				sameSince = time.Time{}
			}
			if !sameSince.IsZero() && time.Since(sameSince) >= c.giveUpAfter {
				return c.failure(url, host, fmt.Sprintf("gave up after %s (%d attempts), as the challenge path answers like the host's own path", round(time.Since(start)), attempt), last, app, hasCompared)
			}
		}
		select {
		case <-ctx.Done():
			why := fmt.Sprintf("still failing after %s (%d attempts)", round(time.Since(start)), attempt)
			if cause := context.Cause(ctx); !errors.Is(cause, context.DeadlineExceeded) {
				why = fmt.Sprintf("stopped after %s (%d attempts): %v", round(time.Since(start)), attempt, cause)
			}
			return c.failure(url, host, why, last, app, hasCompared)
		case <-time.After(delay):
		}
		delay = min(delay*3/2, 500*time.Millisecond)
	}
}

// failure is Check's error: what answered, what the host's own path answers,
// the likely cause and the address used, on one line.
func (c *SelfCheck) failure(url, host, why string, last, app answer, compared bool) error {
	via := last.addr
	if via == "" {
		via = target(c.address, net.JoinHostPort(hostOnly(host), "80"))
	}
	msg := fmt.Sprintf("self-check %s via %s: %s: %s", url, via, why, last)
	switch {
	case !compared:
	case last.err != nil && app.err != nil:
		msg += fmt.Sprintf("; GET http://%s/ gets no answer either: nothing answers at %s: is the ingress controller running there?", host, via)
	case last.same(app) && last.status/100 == 2:
		msg += fmt.Sprintf("; GET http://%s/ answers the same: the app's own path catches the challenge path: our path is not routed (its path type unsupported or outranked here?)", host)
	case last.same(app):
		msg += fmt.Sprintf("; GET http://%s/ answers the same: the Ingress is not served at all: is its class handled by a running controller?", host)
	default:
		msg += fmt.Sprintf("; GET http://%s/ answers %s: only the challenge path fails: path not routed / not yet programmed", host, app)
	}
	return &checkError{msg: msg, last: last.err}
}

// checkError is Check's error; it wraps the last transport error, if any.
type checkError struct {
	msg  string
	last error
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.last }

// answer is what one GET got.
type answer struct {
	ok        bool   // the key authorization, with status 200
	status    int    // of the final response; 0 with err
	redirects string // the redirects followed: "status 308 to https://...", joined by ", then "
	body      string // sanitized excerpt of the final response's body
	wrongBody bool   // status 200 but not the key authorization
	addr      string // remote address of the last connection, when one was made
	err       error  // no response
}

func (a answer) String() string {
	var b strings.Builder
	if a.redirects != "" {
		b.WriteString(a.redirects)
		b.WriteString(", then ")
	}
	switch {
	case a.err != nil:
		b.WriteString("no answer: ")
		b.WriteString(oneLine(a.err.Error(), 160))
	case a.wrongBody:
		fmt.Fprintf(&b, "status %d with a body that is not the key authorization: %q", a.status, a.body)
	default:
		fmt.Fprintf(&b, "status %d %q", a.status, a.body)
	}
	return b.String()
}

// same reports whether a and b are the same answer (status, redirects, body,
// or the same kind of failure), ignoring which path was asked for.
func (a answer) same(b answer) bool {
	if (a.err == nil) != (b.err == nil) {
		return false
	}
	if a.err != nil {
		return true
	}
	return a.status == b.status && a.body == b.body && stripPaths(a.redirects) == stripPaths(b.redirects)
}

// stripPaths drops the paths from redirect Locations so that a redirect of
// the challenge path and one of / compare equal when they go to the same place.
func stripPaths(redirects string) string {
	var parts []string
	for _, r := range strings.Split(redirects, ", then ") {
		if i := strings.Index(r, "://"); i >= 0 {
			if j := strings.IndexByte(r[i+3:], '/'); j >= 0 {
				r = r[:i+3+j]
			}
		}
		parts = append(parts, r)
	}
	return strings.Join(parts, ", then ")
}

// traceKey is the context key of a request's trace.
type traceKey struct{}

// trace records what one GET went through.
type trace struct {
	mu        sync.Mutex // guards the fields below
	addr      string
	redirects []string
}

func (t *trace) redirect(status int, location string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.redirects = append(t.redirects, fmt.Sprintf("status %d to %s", status, oneLine(location, 200)))
}

// fetch GETs url once; with keyAuth set, ok means it answered exactly that.
func (c *SelfCheck) fetch(ctx context.Context, url, keyAuth string) answer {
	tr := &trace{}
	ctx = context.WithValue(ctx, traceKey{}, tr)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		tr.mu.Lock()
		tr.addr = info.Conn.RemoteAddr().String()
		tr.mu.Unlock()
	}})
	a := answer{}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		a.err = err
		return a
	}
	resp, err := c.client.Do(req)
	if err == nil {
		defer resp.Body.Close()
		var body []byte
		body, err = io.ReadAll(io.LimitReader(resp.Body, 4096))
		a.status, a.body = resp.StatusCode, excerpt(body)
		if err == nil && keyAuth != "" && resp.StatusCode == http.StatusOK {
			a.ok = strings.TrimSpace(string(body)) == keyAuth
			a.wrongBody = !a.ok
		}
	}
	if err != nil {
		a.status, a.body, a.err = 0, "", unwrapURLError(err)
	}
	tr.mu.Lock()
	a.addr, a.redirects = tr.addr, strings.Join(tr.redirects, ", then ")
	tr.mu.Unlock()
	return a
}

// unwrapURLError drops the "Get \"url\": " prefix the client adds.
func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) && strings.HasPrefix(err.Error(), "Get ") {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// excerpt is the start of body made safe to quote in one line: no control
// characters, runs of white space (HTML included) as one space, at most 80
// characters.
func excerpt(body []byte) string {
	return oneLine(string(body), 80)
}

// oneLine keeps the printable characters of s, collapses white space, and cuts
// it to max runes with "...".
func oneLine(s string, max int) string {
	var b strings.Builder
	space, n := false, 0
	for _, r := range strings.ToValidUTF8(s, "?") {
		if unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if !unicode.IsPrint(r) {
			r = '?'
		}
		if space {
			b.WriteByte(' ')
			n++
			space = false
		}
		if n >= max {
			b.WriteString("...")
			break
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// hostOnly strips a port from host.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

// round is d to a tenth of a second under a minute, to the second above.
func round(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
