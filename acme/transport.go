package acme

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	acmelib "github.com/eggsampler/acme/v3"

	"github.com/ingress-acme/ingress-acme/core"
)

// Limits is the budget a Client keeps to with its directory: every request to
// it passes through token buckets, so the CA's own limits are not reached.
type Limits struct {
	// RequestsPerSecond and RequestBurst bound every request.
	RequestsPerSecond float64
	RequestBurst      int
	// NewOrdersPer3h bounds new orders: a burst of that many, refilled evenly
	// over three hours (Let's Encrypt's New Orders per Account is 300).
	NewOrdersPer3h int
	// NewAccountsPer3h bounds new-account requests (lookups and
	// registrations) the same way.
	NewAccountsPer3h int
	// RenewalInfoPerSecond spaces renewal information requests evenly, with no
	// burst, so that checking many certificates at once is spread out.
	RenewalInfoPerSecond float64
	// MaxWait is the longest a request waits for its turn or for the end of a
	// CA's Retry-After; a longer wait fails at once with a *core.RetryAfterError.
	MaxWait time.Duration
}

// DefaultLimits is below Let's Encrypt's published limits (per IP: 250 requests
// a second to /acme/*, 20 to new-nonce and 40 to the directory, 1000 to
// renewal-info; 300 new orders per account per 3 hours; 10 new registrations
// per IP per 3 hours).
func DefaultLimits() Limits {
	return Limits{
		RequestsPerSecond:    20,
		RequestBurst:         40,
		NewOrdersPer3h:       240,
		NewAccountsPer3h:     8,
		RenewalInfoPerSecond: 10,
		MaxWait:              time.Minute,
	}
}

// bucket is a token bucket: rate tokens a second, at most burst.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newBucket(rate, burst float64) *bucket {
	return &bucket{rate: rate, burst: max(burst, 1), tokens: max(burst, 1)}
}

// reserve takes a token at now and returns when it may be used.
func (b *bucket) reserve(now time.Time) time.Time {
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	b.tokens--
	if b.tokens >= 0 {
		return now
	}
	return now.Add(time.Duration(-b.tokens / b.rate * float64(time.Second)))
}

// unreserve gives back a token reserved and not used.
func (b *bucket) unreserve() { b.tokens = min(b.burst, b.tokens+1) }

// transport wraps the CA's HTTP transport: it keeps requests within the limits,
// holds every request while the CA's last Retry-After (with a 429 or 503) runs,
// bounds each request with a timeout, reports every request to observe by
// endpoint kind, and remembers the last Retry-After, which the library drops. It
// is safe for concurrent use; a transport built without limits limits nothing.
type transport struct {
	base      http.RoundTripper
	observe   func(endpoint string, code int, took time.Duration)
	directory string
	timeout   time.Duration // per request, once it may go; 0: none
	maxWait   time.Duration

	// mu guards everything below.
	mu             sync.Mutex
	dir            acmelib.Directory
	retryAfter     time.Time
	retryAfterSeen time.Time
	blockedUntil   time.Time
	all, orders    *bucket // nil: no limit
	accounts, ari  *bucket // nil: no limit
}

func (t *transport) setLimits(l Limits) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.maxWait = l.MaxWait
	t.all = newBucket(l.RequestsPerSecond, float64(l.RequestBurst))
	t.orders = newBucket(float64(l.NewOrdersPer3h)/(3*3600), float64(l.NewOrdersPer3h))
	t.accounts = newBucket(float64(l.NewAccountsPer3h)/(3*3600), float64(l.NewAccountsPer3h))
	t.ari = newBucket(l.RenewalInfoPerSecond, 1)
}

func (t *transport) setDirectory(d acmelib.Directory) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dir = d
}

// bound returns an HTTP client whose requests carry ctx and time out after
// timeout once they may go.
func (t *transport) bound(ctx context.Context, timeout time.Duration) *http.Client {
	return &http.Client{Transport: boundTransport{t: t, ctx: ctx, timeout: timeout}}
}

type boundTransport struct {
	t       *transport
	ctx     context.Context
	timeout time.Duration
}

func (b boundTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return b.t.roundTrip(req.WithContext(b.ctx), b.timeout)
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.roundTrip(req, t.timeout)
}

func (t *transport) roundTrip(req *http.Request, timeout time.Duration) (*http.Response, error) {
	kind := t.endpoint(req)
	if err := t.admit(req.Context(), kind); err != nil {
		return nil, fmt.Errorf("acme: %s %s: %w", req.Method, req.URL, err)
	}
	start := time.Now()
	resp, err := send(t.base, req, timeout)
	code := 0
	if resp != nil {
		code = resp.StatusCode
		if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
			if at, ok := parseRetryAfter(resp.Header.Get("Retry-After"), start); ok {
				t.block(at)
			}
		}
	}
	if t.observe != nil {
		t.observe(kind, code, time.Since(start))
	}
	return resp, err
}

// send is base.RoundTrip bounded by timeout, until the body is closed.
func send(base http.RoundTripper, req *http.Request, timeout time.Duration) (*http.Response, error) {
	if timeout <= 0 {
		return base.RoundTrip(req)
	}
	ctx, cancel := context.WithTimeout(req.Context(), timeout)
	resp, err := base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	defer c.cancel()
	return c.ReadCloser.Close()
}

// block holds every request until at, and remembers at for retryAfterSince.
func (t *transport) block(at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.retryAfter, t.retryAfterSeen = at, time.Now()
	if at.After(t.blockedUntil) {
		t.blockedUntil = at
	}
}

// admit waits until a request of kind may go: after the CA's Retry-After, and
// with a token of every bucket it passes. A wait that would outlast ctx or
// maxWait fails at once, and one that ctx ends fails then, with a
// *core.RetryAfterError saying when the request could have gone.
func (t *transport) admit(ctx context.Context, kind string) error {
	for {
		now := time.Now()
		at, blocked, taken := t.reserve(kind, now)
		if !at.After(now) {
			return nil
		}
		wait := at.Sub(now)
		deadline, ok := ctx.Deadline()
		if wait > t.maxWait || (ok && deadline.Before(at)) {
			why := fmt.Errorf("the client's budget for %s is spent for %s", t.directory, wait.Round(time.Millisecond))
			if blocked {
				why = fmt.Errorf("%s asked to wait %s (Retry-After)", t.directory, wait.Round(time.Millisecond))
			}
			return t.refuse(taken, at, why)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return t.refuse(taken, at, ctx.Err())
		case <-timer.C:
		}
		if !blocked {
			return nil
		}
	}
}

// reserve returns when a request of kind may go at the earliest and whether it
// is held by a Retry-After (then it takes no tokens), and the buckets it took
// a token from.
func (t *transport) reserve(kind string, now time.Time) (at time.Time, blocked bool, taken []*bucket) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.blockedUntil.After(now) {
		return t.blockedUntil, true, nil
	}
	at = now
	for _, b := range []*bucket{t.all, t.bucket(kind)} {
		if b == nil {
			continue
		}
		if r := b.reserve(now); r.After(at) {
			at = r
		}
		taken = append(taken, b)
	}
	return at, false, taken
}

func (t *transport) bucket(kind string) *bucket {
	switch kind {
	case "new-order":
		return t.orders
	case "new-account":
		return t.accounts
	case "renewal-info":
		return t.ari
	}
	return nil
}

func (t *transport) refuse(taken []*bucket, at time.Time, err error) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, b := range taken {
		b.unreserve()
	}
	t.retryAfter, t.retryAfterSeen = at, time.Now()
	return &core.RetryAfterError{Err: err, At: at}
}

// retryAfterSince returns the Retry-After time the CA sent, or that a refused
// request was told, since start; zero if none.
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
