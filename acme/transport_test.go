package acme

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	acmelib "github.com/eggsampler/acme/v3"

	"github.com/ingress-acme/ingress-acme/core"
)

// caFake is the base RoundTripper: it answers every request with code and
// header, or fails with err, and counts the requests.
type caFake struct {
	code   int
	header http.Header
	err    error

	mu    sync.Mutex // guards calls
	calls int
}

func (f *caFake) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	h := f.header
	if h == nil {
		h = http.Header{}
	}
	return &http.Response{StatusCode: f.code, Header: h, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

// observed records a transport's observe calls.
type observed struct {
	mu    sync.Mutex // guards calls
	calls []observation
}

type observation struct {
	endpoint string
	code     int
	took     time.Duration
}

func (o *observed) observe(endpoint string, code int, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, observation{endpoint, code, took})
}

func (o *observed) all() []observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]observation(nil), o.calls...)
}

func postVia(t *testing.T, rt http.RoundTripper, url string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return rt.RoundTrip(req)
}

func TestTransportEndpointPebble(t *testing.T) {
	const base = "https://pebble:14000"
	tr := &transport{base: &caFake{code: 200}, directory: base + "/dir"}
	tr.setDirectory(acmelib.Directory{
		NewNonce:    base + "/nonce-plz",
		NewAccount:  base + "/sign-me-up",
		NewOrder:    base + "/order-plz",
		RevokeCert:  base + "/revoke-cert",
		KeyChange:   base + "/rollover-account-key",
		RenewalInfo: base + "/draft-ietf-acme-ari-03/renewalInfo",
	})
	tests := []struct{ url, want string }{
		{base + "/dir", "directory"},
		{base + "/nonce-plz", "new-nonce"},
		{base + "/sign-me-up", "new-account"},
		{base + "/order-plz", "new-order"},
		{base + "/draft-ietf-acme-ari-03/renewalInfo/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE", "renewal-info"},
		{base + "/my-order/iWQ8X9oGCiF5m0sJ1N4Tq1gRbK3l", "order"},
		{base + "/authZ/Zk2ZV2cRYCFd7d3lWJ0-8bT2vHk", "authz"},
		{base + "/chalZ/0vQ1yGqTt9V0n6QeAbMRu3NmFQ", "challenge"},
		{base + "/finalize-order/iWQ8X9oGCiF5m0sJ1N4Tq1gRbK3l", "finalize"},
		{base + "/certZ/3a9c7e1b2d4f6a80", "certificate"},
		{base + "/my-account/1", "account"},
		{base + "/rollover-account-key", "account"},
		{base + "/revoke-cert", "certificate"},
		{base + "/something-else", "other"},
	}
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.url, base), func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.endpoint(req); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTransportEndpointLetsEncrypt(t *testing.T) {
	const base = "https://acme-v02.api.letsencrypt.org"
	tr := &transport{base: &caFake{code: 200}, directory: LetsEncrypt}
	tr.setDirectory(acmelib.Directory{
		NewNonce:    base + "/acme/new-nonce",
		NewAccount:  base + "/acme/new-acct",
		NewOrder:    base + "/acme/new-order",
		RevokeCert:  base + "/acme/revoke-cert",
		KeyChange:   base + "/acme/key-change",
		RenewalInfo: base + "/acme/renewal-info",
	})
	tests := []struct{ url, want string }{
		{LetsEncrypt, "directory"},
		{base + "/acme/new-nonce", "new-nonce"},
		{base + "/acme/new-acct", "new-account"},
		{base + "/acme/new-order", "new-order"},
		{base + "/acme/renewal-info/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE", "renewal-info"},
		{base + "/acme/order/1234567/890123456", "order"},
		{base + "/acme/authz/1234567/890123456", "authz"},
		{base + "/acme/authz-v3/890123456", "authz"},
		{base + "/acme/chall/1234567/890123456/Ly8Ngw", "challenge"},
		{base + "/acme/chall-v3/890123456/Ly8Ngw", "challenge"},
		{base + "/acme/finalize/1234567/890123456", "finalize"},
		{base + "/acme/cert/03a1b2c3d4e5f60718293a4b5c6d7e8f9a0b", "certificate"},
		{base + "/acme/acct/1234567", "account"},
		{base + "/ACME/ORDER/1/2", "order"},
		{"https://other.example/acme/new-nonce", "other"},
	}
	for _, tt := range tests {
		t.Run(strings.TrimPrefix(tt.url, base), func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.endpoint(req); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTransportEndpointBeforeDirectory(t *testing.T) {
	// Before the directory is read, only the directory URL itself is known.
	tr := &transport{base: &caFake{code: 200}, directory: "https://ca.example/dir"}
	tests := []struct{ url, want string }{
		{"https://ca.example/dir", "directory"},
		{"https://ca.example/dir?x", "other"},
		{"https://ca.example/new-nonce", "other"},
		{"https://ca.example/order/1", "order"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.endpoint(req); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTransportObserve(t *testing.T) {
	var o observed
	ca := &caFake{code: 201}
	tr := &transport{base: ca, observe: o.observe, directory: "https://ca.example/dir"}
	tr.setDirectory(acmelib.Directory{NewOrder: "https://ca.example/new-order"})

	resp, err := postVia(t, tr, "https://ca.example/new-order")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 201 {
		t.Errorf("got %d, want the base's 201 passed through", resp.StatusCode)
	}
	boom := errors.New("connection refused")
	tr.base = &caFake{err: boom}
	if _, err := postVia(t, tr, "https://ca.example/dir"); !errors.Is(err, boom) {
		t.Errorf("got %v, want the base's error passed through", err)
	}

	calls := o.all()
	want := []observation{{"new-order", 201, 0}, {"directory", 0, 0}}
	if len(calls) != len(want) {
		t.Fatalf("got %d observations, want %d", len(calls), len(want))
	}
	for i := range want {
		if calls[i].endpoint != want[i].endpoint || calls[i].code != want[i].code {
			t.Errorf("observation %d: got %s %d, want %s %d", i, calls[i].endpoint, calls[i].code, want[i].endpoint, want[i].code)
		}
		if calls[i].took < 0 {
			t.Errorf("observation %d: got took %v, want >= 0", i, calls[i].took)
		}
	}

	// No observe: no panic.
	tr.observe = nil
	tr.base = ca
	if _, err := postVia(t, tr, "https://ca.example/dir"); err != nil {
		t.Fatal(err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	date := time.Date(1994, 11, 6, 8, 49, 37, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Time
		wantOK bool
	}{
		{in: "120", want: now.Add(120 * time.Second), wantOK: true},
		{in: "0", want: now, wantOK: true},
		{in: "  30 ", want: now.Add(30 * time.Second), wantOK: true},
		{in: "86400", want: now.Add(24 * time.Hour), wantOK: true},
		{in: "Sun, 06 Nov 1994 08:49:37 GMT", want: date, wantOK: true},  // RFC 1123
		{in: "Sunday, 06-Nov-94 08:49:37 GMT", want: date, wantOK: true}, // RFC 850
		{in: "Sun Nov  6 08:49:37 1994", want: date, wantOK: true},       // ANSI C
		{in: "", wantOK: false},
		{in: "   ", wantOK: false},
		{in: "-1", wantOK: false},
		{in: "+5", wantOK: false},
		{in: "1.5", wantOK: false},
		{in: "soon", wantOK: false},
		{in: "12 s", wantOK: false},
		{in: "99999999999999999999999", wantOK: false}, // no overflow into the past
		{in: "2025-06-01T12:00:00Z", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := parseRetryAfter(tt.in, now)
			if ok != tt.wantOK {
				t.Fatalf("got ok %v (%v), want %v", ok, got, tt.wantOK)
			}
			if !got.Equal(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTransportRetryAfter(t *testing.T) {
	date := time.Date(2037, 10, 21, 7, 28, 0, 0, time.UTC)
	tests := []struct {
		name       string
		code       int
		retryAfter string
		wantSecs   int       // when > 0: about start + this
		wantAt     time.Time // when not zero: exactly this
	}{
		{name: "429 seconds", code: http.StatusTooManyRequests, retryAfter: "120", wantSecs: 120},
		{name: "503 seconds", code: http.StatusServiceUnavailable, retryAfter: "7", wantSecs: 7},
		{name: "429 HTTP-date", code: http.StatusTooManyRequests, retryAfter: "Wed, 21 Oct 2037 07:28:00 GMT", wantAt: date},
		{name: "503 HTTP-date", code: http.StatusServiceUnavailable, retryAfter: date.Format(http.TimeFormat), wantAt: date},
		{name: "429 without header", code: http.StatusTooManyRequests},
		{name: "429 with a bad header", code: http.StatusTooManyRequests, retryAfter: "later"},
		{name: "200 ignores it", code: http.StatusOK, retryAfter: "120"},
		{name: "500 ignores it", code: http.StatusInternalServerError, retryAfter: "120"},
		{name: "400 ignores it", code: http.StatusBadRequest, retryAfter: "120"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.retryAfter != "" {
				h.Set("Retry-After", tt.retryAfter)
			}
			tr := &transport{base: &caFake{code: tt.code, header: h}, directory: "https://ca.example/dir"}
			start := time.Now()
			resp, err := postVia(t, tr, "https://ca.example/my-order/1")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.code {
				t.Errorf("got %d, want %d", resp.StatusCode, tt.code)
			}
			end := time.Now()
			got := tr.retryAfterSince(start)
			switch {
			case tt.wantSecs > 0:
				d := time.Duration(tt.wantSecs) * time.Second
				if got.Before(start.Add(d)) || got.After(end.Add(d)) {
					t.Errorf("got %v, want between %v and %v", got, start.Add(d), end.Add(d))
				}
			case !tt.wantAt.IsZero():
				if !got.Equal(tt.wantAt) {
					t.Errorf("got %v, want %v", got, tt.wantAt)
				}
			default:
				if !got.IsZero() {
					t.Errorf("got %v, want zero", got)
				}
			}
		})
	}
}

func TestTransportRetryAfterSince(t *testing.T) {
	h := http.Header{"Retry-After": {"60"}}
	ca := &caFake{code: http.StatusTooManyRequests, header: h}
	tr := &transport{base: ca, directory: "https://ca.example/dir"}

	if got := tr.retryAfterSince(time.Time{}); !got.IsZero() {
		t.Errorf("before any request: got %v, want zero", got)
	}
	first := time.Now()
	if _, err := postVia(t, tr, "https://ca.example/new-order"); err != nil {
		t.Fatal(err)
	}
	if got := tr.retryAfterSince(first); got.IsZero() {
		t.Errorf("got zero, want the Retry-After seen since %v", first)
	}

	// A later operation does not see an earlier operation's Retry-After.
	time.Sleep(2 * time.Millisecond)
	second := time.Now()
	if got := tr.retryAfterSince(second); !got.IsZero() {
		t.Errorf("got %v, want zero for an operation that started after it was seen", got)
	}
	// Until then every request is refused without reaching the CA.
	calls := ca.calls
	_, err := postVia(t, tr, "https://ca.example/new-order")
	var ra *core.RetryAfterError
	if !errors.As(err, &ra) || ra.At.Before(first.Add(59*time.Second)) || ca.calls != calls {
		t.Errorf("got %v after %d more requests, want a *core.RetryAfterError a minute away and none sent", err, ca.calls-calls)
	}
	tr.mu.Lock()
	tr.blockedUntil, tr.retryAfterSeen = time.Time{}, first // as if the minute had passed
	tr.mu.Unlock()
	// Nor does a 429 without one replace it with nothing.
	ca.header = http.Header{}
	if _, err := postVia(t, tr, "https://ca.example/new-order"); err != nil {
		t.Fatal(err)
	}
	if got := tr.retryAfterSince(second); !got.IsZero() {
		t.Errorf("got %v, want zero: the new 429 carried no Retry-After", got)
	}
	if got := tr.retryAfterSince(first); got.IsZero() {
		t.Errorf("got zero, want the first operation to still see its Retry-After")
	}
}

func TestTransportConcurrent(t *testing.T) {
	tr := &transport{
		base:      &caFake{code: http.StatusServiceUnavailable, header: http.Header{"Retry-After": {"1"}}},
		observe:   func(string, int, time.Duration) {},
		directory: "https://ca.example/dir",
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 50 {
				req, _ := http.NewRequest(http.MethodGet, "https://ca.example/authz/1", nil)
				_, _ = tr.RoundTrip(req)
				_ = tr.retryAfterSince(start)
			}
		})
		wg.Go(func() {
			for range 50 {
				tr.setDirectory(acmelib.Directory{NewNonce: "https://ca.example/nonce"})
			}
		})
	}
	wg.Wait()
	if got := tr.retryAfterSince(start); got.IsZero() {
		t.Errorf("got zero, want a Retry-After")
	}
}

func TestBucket(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name        string
		rate, burst float64
		at          []time.Duration // when each reservation is made, from start
		want        []time.Duration // when each may go, from start
	}{
		{name: "burst then rate", rate: 10, burst: 2, at: []time.Duration{0, 0, 0, 0}, want: []time.Duration{0, 0, 100 * time.Millisecond, 200 * time.Millisecond}},
		{name: "refilled", rate: 10, burst: 2, at: []time.Duration{0, 0, time.Second, time.Second}, want: []time.Duration{0, 0, time.Second, time.Second}},
		{name: "no burst spaces evenly", rate: 4, burst: 1, at: []time.Duration{0, 0, 0}, want: []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond}},
		{name: "new orders per 3h", rate: 240.0 / (3 * 3600), burst: 240, at: make([]time.Duration, 241), want: append(make([]time.Duration, 240), 45*time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBucket(tt.rate, tt.burst)
			for i, at := range tt.at {
				got := b.reserve(start.Add(at)).Sub(start)
				if d := got - tt.want[i]; d < -time.Millisecond || d > time.Millisecond {
					t.Errorf("reservation %d: got %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
	b := newBucket(1, 1)
	b.reserve(start)
	b.unreserve()
	if got := b.reserve(start); !got.Equal(start) {
		t.Errorf("got %v after giving the token back, want %v", got, start)
	}
}

func TestTransportLimits(t *testing.T) {
	const dir = "https://ca.example/dir"
	newTr := func(l Limits) (*transport, *caFake) {
		ca := &caFake{code: 200}
		tr := &transport{base: ca, directory: dir}
		tr.setLimits(l)
		tr.setDirectory(acmelib.Directory{NewOrder: "https://ca.example/new-order", RenewalInfo: "https://ca.example/ari"})
		return tr, ca
	}
	generous := Limits{RequestsPerSecond: 1000, RequestBurst: 1000, NewOrdersPer3h: 1000, NewAccountsPer3h: 1000, RenewalInfoPerSecond: 1000, MaxWait: time.Minute}

	t.Run("renewal info is spaced, never a burst", func(t *testing.T) {
		l := generous
		l.RenewalInfoPerSecond = 50
		tr, _ := newTr(l)
		start := time.Now()
		for range 6 {
			if _, err := postVia(t, tr, "https://ca.example/ari/x.y"); err != nil {
				t.Fatal(err)
			}
		}
		if took := time.Since(start); took < 90*time.Millisecond {
			t.Errorf("got 6 requests in %v, want at least 100ms at 50/s", took)
		}
	})
	t.Run("other requests are not held by renewal info", func(t *testing.T) {
		l := generous
		l.RenewalInfoPerSecond = 0.001
		tr, _ := newTr(l)
		if _, err := postVia(t, tr, "https://ca.example/ari/x.y"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := postVia(t, tr, "https://ca.example/order/1"); err != nil || time.Since(start) > 50*time.Millisecond {
			t.Errorf("got %v after %v, want the order fetch at once", err, time.Since(start))
		}
	})
	t.Run("a wait past MaxWait fails at once", func(t *testing.T) {
		l := generous
		l.NewOrdersPer3h = 1
		tr, ca := newTr(l)
		if _, err := postVia(t, tr, "https://ca.example/new-order"); err != nil {
			t.Fatal(err)
		}
		_, err := postVia(t, tr, "https://ca.example/new-order")
		var ra *core.RetryAfterError
		if !errors.As(err, &ra) || time.Until(ra.At) < 2*time.Hour || ca.calls != 1 {
			t.Errorf("got %v with %d requests sent, want a *core.RetryAfterError about 3h away and 1 sent", err, ca.calls)
		}
	})
	t.Run("a caller whose context ends stops waiting", func(t *testing.T) {
		l := generous
		l.RequestsPerSecond, l.RequestBurst = 2, 1
		tr, _ := newTr(l)
		if _, err := postVia(t, tr, "https://ca.example/order/1"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://ca.example/order/1", nil)
		start := time.Now()
		_, err := tr.RoundTrip(req)
		var ra *core.RetryAfterError
		if !errors.As(err, &ra) || time.Since(start) > 40*time.Millisecond {
			t.Errorf("got %v after %v, want a *core.RetryAfterError at once (the deadline comes first)", err, time.Since(start))
		}
		// The token was given back: the next caller waits only half a second.
		start = time.Now()
		if _, err := postVia(t, tr, "https://ca.example/order/1"); err != nil || time.Since(start) > 700*time.Millisecond {
			t.Errorf("got %v after %v, want the request within 0.5s", err, time.Since(start))
		}
	})
	t.Run("a short Retry-After is waited out", func(t *testing.T) {
		tr, ca := newTr(generous)
		tr.block(time.Now().Add(100 * time.Millisecond))
		start := time.Now()
		if _, err := postVia(t, tr, "https://ca.example/order/1"); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < 90*time.Millisecond || ca.calls != 1 {
			t.Errorf("got the request after %v, want after the 100ms Retry-After", took)
		}
	})
}

func TestSendTimeout(t *testing.T) {
	slow := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		<-req.Context().Done()
		return nil, req.Context().Err()
	})
	start := time.Now()
	req, _ := http.NewRequest(http.MethodGet, "https://ca.example/dir", nil)
	if _, err := send(slow, req, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("got %v after %v, want a timeout after 50ms", err, time.Since(start))
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
