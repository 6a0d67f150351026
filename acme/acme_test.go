package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	acmelib "github.com/eggsampler/acme/v3"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/secrets"
)

func TestOrderValidateFinalize(t *testing.T) {
	ca := newFakeCA(t, true)
	var faults []string
	var mu sync.Mutex // guards faults
	c, keys := newTestClient(t, ca, func(cfg *Config) {
		cfg.AtStep = func(p string) { mu.Lock(); faults = append(faults, p); mu.Unlock() }
	})
	ctx := context.Background()
	hosts := []string{"a.example", "b.example"}
	o, err := c.Order(ctx, core.OrderRequest{Hosts: hosts})
	if err != nil {
		t.Fatal(err)
	}
	thumb, _ := acmelib.JWKThumbprint(keys.key.Public())
	if len(o.Challenges) != 2 || o.Resumed || o.Replacing {
		t.Fatalf("got %+v, want two challenges, not resumed nor replacing", o)
	}
	for _, ch := range o.Challenges {
		if ch.KeyAuth != ch.Token+"."+thumb || ch.Path() != core.ChallengePathPrefix+ch.Token {
			t.Errorf("got %+v, want the key authorization token.thumbprint", ch)
		}
	}
	if err := c.Validate(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := ca.count("POST /chal/"); got != 2 {
		t.Errorf("got %d challenge POSTs, want 2 (one per challenge)", got)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := c.Finalize(ctx, o, key)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := secrets.DecodeChain(chain)
	if err != nil || len(certs) != 2 {
		t.Fatalf("got %d certificates, %v, want leaf and CA", len(certs), err)
	}
	if !slices.Equal(certs[0].DNSNames, hosts) || !certs[0].PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Errorf("got %v, want a leaf for %v with our key", certs[0].DNSNames, hosts)
	}
	if want := []string{StepValidating, StepFinalized}; !slices.Equal(faults, want) {
		t.Errorf("got faults %v, want %v", faults, want)
	}
	if got := ca.count("POST /acct"); got != 2 {
		t.Errorf("got %d account requests, want 2 (lookup, register) for all three calls", got)
	}
	// Finalizing again: the order is valid, with a key we may not hold.
	if _, err := c.Finalize(ctx, o, key); err == nil {
		t.Errorf("got no error finalizing a valid order, want one")
	}
}

func TestValidateFails(t *testing.T) {
	ca := newFakeCA(t, false)
	ca.failValidation = true
	c, _ := newTestClient(t, ca)
	o, err := c.Order(context.Background(), core.OrderRequest{Hosts: []string{"a.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(context.Background(), o); !isProblem(err, "unauthorized") {
		t.Errorf("got %v, want the CA's unauthorized problem", err)
	}
}

func TestOrderResume(t *testing.T) {
	finalizeWith := func(t *testing.T, c *Client, o core.Order, key crypto.Signer) string {
		if err := c.Validate(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Finalize(context.Background(), o, key); err != nil {
			t.Fatal(err)
		}
		return ""
	}
	tests := []struct {
		name        string
		prepare     func(t *testing.T, c *Client, o core.Order) string // returns the URL to resume
		hosts       []string
		keyType     core.KeyType
		wantResumed bool
		wantChs     int
	}{
		{name: "pending", prepare: func(*testing.T, *Client, core.Order) string { return "" }, wantResumed: true, wantChs: 1},
		{name: "ready", prepare: func(t *testing.T, c *Client, o core.Order) string {
			if err := c.Validate(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			return ""
		}, wantResumed: true},
		{name: "valid", prepare: func(t *testing.T, c *Client, o core.Order) string {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err := c.Validate(context.Background(), o); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Finalize(context.Background(), o, key); err != nil {
				t.Fatal(err)
			}
			return ""
		}, wantChs: 1},
		{name: "valid, with the key made again", keyType: core.ECDSAP384, prepare: func(t *testing.T, c *Client, o core.Order) string {
			key, _, err := c.OrderKey(context.Background(), o, core.ECDSAP384)
			if err != nil {
				t.Fatal(err)
			}
			return finalizeWith(t, c, o, key)
		}, wantResumed: true},
		{name: "valid, with another key", keyType: core.ECDSAP256, prepare: func(t *testing.T, c *Client, o core.Order) string {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return finalizeWith(t, c, o, key)
		}, wantChs: 1},
		{name: "valid, rsa", keyType: core.RSA2048, prepare: func(t *testing.T, c *Client, o core.Order) string {
			key, _ := rsa.GenerateKey(rand.Reader, 2048)
			return finalizeWith(t, c, o, key)
		}, wantChs: 1},
		{name: "invalid", prepare: func(t *testing.T, c *Client, o core.Order) string {
			_ = c.Validate(context.Background(), o) // fails: the CA is set to fail it
			return ""
		}, wantChs: 1},
		{name: "unknown", prepare: func(*testing.T, *Client, core.Order) string { return "/order/404" }, wantChs: 1},
		{name: "other hosts", prepare: func(*testing.T, *Client, core.Order) string { return "" }, hosts: []string{"b.example"}, wantChs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newFakeCA(t, false)
			ca.failValidation = tt.name == "invalid"
			c, _ := newTestClient(t, ca)
			ctx := context.Background()
			first, err := c.Order(ctx, core.OrderRequest{Hosts: []string{"a.example"}})
			if err != nil {
				t.Fatal(err)
			}
			resume := first.URL
			if p := tt.prepare(t, c, first); p != "" {
				resume = ca.url(p)
			}
			hosts := tt.hosts
			if hosts == nil {
				hosts = []string{"a.example"}
			}
			got, err := c.Order(ctx, core.OrderRequest{Hosts: hosts, Resume: resume, KeyType: tt.keyType})
			if err != nil {
				t.Fatal(err)
			}
			if got.Resumed && tt.keyType != "" {
				key, _, _ := c.OrderKey(ctx, got, tt.keyType)
				if _, err := c.Finalize(ctx, got, key); err != nil {
					t.Errorf("finishing the resumed order: %v", err)
				}
			}
			if got.Resumed != tt.wantResumed || len(got.Challenges) != tt.wantChs {
				t.Errorf("got resumed %v with %d challenges, want %v with %d", got.Resumed, len(got.Challenges), tt.wantResumed, tt.wantChs)
			}
			if (got.URL == resume) != tt.wantResumed {
				t.Errorf("got URL %s, resumed from %s: want the same URL only when resumed", got.URL, resume)
			}
			if tt.wantResumed && tt.wantChs > 0 && got.Challenges[0] != first.Challenges[0] {
				t.Errorf("got %+v, want the first order's challenge %+v", got.Challenges[0], first.Challenges[0])
			}
			if got, want := ca.count("POST /order-plz"), map[bool]int{true: 1, false: 2}[tt.wantResumed]; got != want {
				t.Errorf("got %d new orders, want %d", got, want)
			}
		})
	}
}

func TestOrderReplacement(t *testing.T) {
	tests := []struct {
		name          string
		ari           bool
		refuse        *fakeProb
		replaces      bool
		wantErr       bool
		wantReplacing bool
		wantOrders    int // new-order requests
	}{
		{name: "accepted", ari: true, replaces: true, wantReplacing: true, wantOrders: 1},
		{name: "no certificate to replace", ari: true, wantOrders: 1},
		{name: "CA without ARI", ari: false, replaces: true, wantOrders: 1},
		{name: "alreadyReplaced", ari: true, replaces: true, refuse: &fakeProb{status: 409, typ: "alreadyReplaced"}, wantOrders: 2},
		{name: "conflict", ari: true, replaces: true, refuse: &fakeProb{status: 409, typ: "conflict"}, wantOrders: 2},
		{name: "malformed", ari: true, replaces: true, refuse: &fakeProb{status: 400, typ: "malformed"}, wantOrders: 2},
		{name: "serverInternal (Pebble's could not find an order)", ari: true, replaces: true, refuse: &fakeProb{status: 500, typ: "serverInternal"}, wantOrders: 2},
		{name: "rateLimited is not retried", ari: true, replaces: true, refuse: &fakeProb{status: 429, typ: "rateLimited"}, wantErr: true, wantOrders: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newFakeCA(t, tt.ari)
			c, _ := newTestClient(t, ca)
			ctx := context.Background()
			var old *x509.Certificate
			if tt.replaces {
				s, err := c.session(ctx)
				if err != nil {
					t.Fatal(err)
				}
				old = issue(t, ca, s, []string{"a.example"})
			}
			before := ca.count("POST /order-plz")
			if tt.refuse != nil {
				ca.refuseReplaces(*tt.refuse)
			}
			o, err := c.Order(ctx, core.OrderRequest{Hosts: []string{"a.example"}, Replaces: old})
			if (err != nil) != tt.wantErr {
				t.Fatalf("got %v, want error %v", err, tt.wantErr)
			}
			if o.Replacing != tt.wantReplacing {
				t.Errorf("got Replacing %v, want %v", o.Replacing, tt.wantReplacing)
			}
			if got := ca.count("POST /order-plz") - before; got != tt.wantOrders {
				t.Errorf("got %d new-order requests, want %d", got, tt.wantOrders)
			}
			ca.mu.Lock()
			last := ca.newOrders[len(ca.newOrders)-1]
			ca.mu.Unlock()
			if _, sent := last["replaces"]; sent != (tt.wantReplacing || (tt.wantErr && tt.replaces)) {
				t.Errorf("got last new-order %v, want replaces only when replacing", last)
			}
		})
	}
}

func TestRenewalWindow(t *testing.T) {
	tests := []struct {
		name        string
		ari         bool
		retryAfter  string
		window      [2]time.Duration // from now; zero: the fake's default
		wantOffered bool
		wantErr     bool
	}{
		{name: "offered with Retry-After", ari: true, retryAfter: "21600", wantOffered: true},
		{name: "offered", ari: true, wantOffered: true},
		{name: "not offered", ari: false},
		{name: "inverted", ari: true, window: [2]time.Duration{2 * time.Hour, time.Hour}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newFakeCA(t, true)
			c, _ := newTestClient(t, ca)
			s, err := c.session(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			cert := issue(t, ca, s, []string{"a.example"})
			ca.mu.Lock()
			ca.ari, ca.retryAfter = tt.ari, tt.retryAfter
			if tt.window[0] != 0 {
				ca.window = [2]time.Time{time.Now().Add(tt.window[0]), time.Now().Add(tt.window[1])}
			}
			ca.mu.Unlock()
			c2, _ := newTestClient(t, ca) // reads the directory as it is now
			w, err := c2.RenewalWindow(context.Background(), cert)
			if (err != nil) != tt.wantErr || w.Offered() != tt.wantOffered {
				t.Fatalf("got %+v, %v, want offered %v, error %v", w, err, tt.wantOffered, tt.wantErr)
			}
			if tt.wantOffered && (!w.Start.Equal(ca.window[0]) || !w.End.Equal(ca.window[1])) {
				t.Errorf("got %v to %v, want %v to %v", w.Start, w.End, ca.window[0], ca.window[1])
			}
			if d := time.Until(w.RetryAfter); tt.retryAfter != "" && (d < 5*time.Hour || d > 6*time.Hour) {
				t.Errorf("got RetryAfter in %v, want in 6 hours", d)
			}
		})
	}
}

func TestRetryAfterErrors(t *testing.T) {
	ca := newFakeCA(t, false)
	c, _ := newTestClient(t, ca)
	ctx := context.Background()
	if _, err := c.Order(ctx, core.OrderRequest{Hosts: []string{"a.example"}}); err != nil {
		t.Fatal(err)
	}
	ca.setProblem("/order-plz", fakeProb{status: 429, typ: "rateLimited", retryAfter: "3600"})
	_, err := c.Order(ctx, core.OrderRequest{Hosts: []string{"b.example"}})
	var ra *core.RetryAfterError
	if !errors.As(err, &ra) || time.Until(ra.At) < 59*time.Minute || !isProblem(err, "rateLimited") {
		t.Fatalf("got %v, want a rateLimited problem in a *core.RetryAfterError an hour away", err)
	}
	// Every request to the directory now waits: longer than MaxWait fails at once.
	ca.clearProblems()
	before := ca.count("")
	start := time.Now()
	_, err = c.Order(ctx, core.OrderRequest{Hosts: []string{"c.example"}})
	if !errors.As(err, &ra) || time.Since(start) > time.Second || ca.count("") != before {
		t.Errorf("got %v after %v and %d requests, want a *core.RetryAfterError at once, none sent", err, time.Since(start), ca.count("")-before)
	}
}

func TestSetupFailsFastAndIsRemembered(t *testing.T) {
	var hits atomic.Int32
	release := make(chan struct{})
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select { // a CA that does not answer
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(silent.Close)
	t.Cleanup(func() { close(release) })
	c, err := New(Config{DirectoryURL: silent.URL + "/dir", Keys: &memKeys{}, SetupTimeout: 200 * time.Millisecond, SetupBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = c.Order(context.Background(), core.OrderRequest{Hosts: []string{"a.example"}}) })
	}
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("got %v for 8 concurrent callers, want about one setup timeout", took)
	}
	for i, err := range errs {
		if err == nil {
			t.Errorf("caller %d: got no error, want the setup's", i)
		}
	}
	if got := hits.Load(); got != 1 {
		t.Errorf("got %d directory requests, want 1 (one shared setup)", got)
	}
	start = time.Now()
	if _, err := c.RenewalWindow(context.Background(), &x509.Certificate{}); err == nil || time.Since(start) > 50*time.Millisecond {
		t.Errorf("got %v after %v, want the remembered failure at once", err, time.Since(start))
	}
	if got := hits.Load(); got != 1 {
		t.Errorf("got %d directory requests, want still 1 within the backoff", got)
	}
}

func TestNewRequiresDirectoryAndKeys(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no directory", cfg: Config{Keys: &memKeys{}}},
		{name: "no keys", cfg: Config{DirectoryURL: "https://ca.example/dir"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Errorf("got no error, want one")
			}
		})
	}
	c, err := New(Config{DirectoryURL: "https://ca.example/dir", Keys: &memKeys{}})
	if err != nil || c.Identity() != "https://ca.example/dir" {
		t.Errorf("got %v, %v, want the directory URL", c, err)
	}
	if c.cfg.Limits != DefaultLimits() || c.cfg.SetupTimeout != 10*time.Second || c.cfg.RequestTimeout != 30*time.Second {
		t.Errorf("got %+v, want the defaults", c.cfg)
	}
}

// OrderKey makes the same key for the same order in any process that holds the
// account, and another for any other order or key type.
func TestOrderKey(t *testing.T) {
	ca := newFakeCA(t, false)
	c, keys := newTestClient(t, ca)
	again, _ := newTestClient(t, ca, func(cfg *Config) { cfg.Keys = keys })
	ctx := context.Background()
	o1, o2 := core.Order{URL: ca.url("/order/1")}, core.Order{URL: ca.url("/order/2")}
	k := func(c *Client, o core.Order, kt core.KeyType) *ecdsa.PrivateKey {
		t.Helper()
		key, ok, err := c.OrderKey(ctx, o, kt)
		if err != nil || !ok {
			t.Fatalf("OrderKey(%s, %s): ok %v, %v", o.URL, kt, ok, err)
		}
		return key.(*ecdsa.PrivateKey)
	}
	a := k(c, o1, core.ECDSAP256)
	if !a.Equal(k(again, o1, core.ECDSAP256)) {
		t.Error("another process made another key for the same order")
	}
	if a.Equal(k(c, o2, core.ECDSAP256)) {
		t.Error("two orders got the same key")
	}
	if p384 := k(c, o1, core.ECDSAP384); p384.Curve != elliptic.P384() || p384.Equal(a) {
		t.Errorf("P-384: got a key on %s", p384.Curve.Params().Name)
	}
	if a.Curve != elliptic.P256() {
		t.Errorf("P-256: got a key on %s", a.Curve.Params().Name)
	}
	digest := sha256.Sum256([]byte("x"))
	sig, err := ecdsa.SignASN1(rand.Reader, a, digest[:])
	if err != nil || !ecdsa.VerifyASN1(&a.PublicKey, digest[:], sig) {
		t.Errorf("the key does not sign: %v", err)
	}
	if key, ok, err := c.OrderKey(ctx, o1, core.RSA2048); ok || key != nil || err != nil {
		t.Errorf("RSA: got %v %v %v, want no key and not ok", key, ok, err)
	}
	other, _ := newTestClient(t, ca)
	if a.Equal(k(other, o1, core.ECDSAP256)) {
		t.Error("another account made the same key")
	}
}
