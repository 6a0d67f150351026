// Package acme gets certificates from an RFC 8555 CA with HTTP-01 challenges,
// over github.com/eggsampler/acme/v3 (every call to it is in lib.go). It knows
// nothing of Kubernetes: the account key is kept by an AccountKeys it is given.
//
// A Client takes an order one step at a time (Order, Validate, Finalize), so
// its caller presents the challenges between steps and can resume an order
// after a restart. The library takes no context and sleeps while it polls, so
// this package binds every request to the caller's context, does its own
// polling (short, growing, bounded intervals) and uses the library only for
// single requests. Every request to the directory keeps to the Client's Limits.
package acme

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/ingress-acme/ingress-acme/core"
)

// LetsEncrypt and LetsEncryptStaging are the directories of Let's Encrypt.
const (
	LetsEncrypt        = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// AccountKeys keeps the account key of each directory. LoadOrCreate returns the
// key stored for directoryURL, storing the result of generate first when there
// is none; created tells whether it did. It must be safe for concurrent use.
type AccountKeys interface {
	LoadOrCreate(ctx context.Context, directoryURL string, generate func() (crypto.Signer, error)) (key crypto.Signer, created bool, err error)
}

// EAB is an External Account Binding, for CAs that require one.
type EAB struct {
	KeyID string
	HMAC  string // base64url, as the CA hands it out
}

// Config configures a Client. Zero durations and limits take their defaults.
type Config struct {
	DirectoryURL string
	Email        string       // contact for the account; optional
	EAB          *EAB         // nil: none
	HTTPClient   *http.Client // its transport carries the roots to trust, its Timeout is RequestTimeout's default; nil: http.DefaultTransport
	Keys         AccountKeys
	Logger       *slog.Logger
	// Observe, if set, is called after every HTTP request to the CA with the kind
	// of endpoint ("directory", "new-nonce", "new-account", "new-order", "order",
	// "authz", "challenge", "finalize", "certificate", "renewal-info", "account",
	// "other"), the status code (0 when no response came) and how long it took.
	// It must be safe for concurrent use.
	Observe func(endpoint string, code int, took time.Duration)
	// Limits is the client's budget with the CA; zero fields: DefaultLimits.
	Limits Limits
	// RequestTimeout bounds each request, once its turn has come. 0: 30 s.
	RequestTimeout time.Duration
	// SetupTimeout bounds each request of the account's setup (the directory,
	// the account lookup and registration), and three times it the whole
	// setup, so that a CA that does not answer fails the setup fast. 0: 10 s.
	SetupTimeout time.Duration
	// SetupBackoff is how long a failed setup is remembered: callers in that
	// time get its error at once. 0: 15 s.
	SetupBackoff time.Duration
	// PollTimeout bounds each wait for the CA: validation, then issuance. 0: 2 minutes.
	PollTimeout time.Duration
	// AtStep, if set, is called when an order passes StepValidating or
	// StepFinalized; tests make it crash the process there.
	AtStep func(step string)
}

// The steps of an order inside the Client where Config.AtStep is called.
const (
	StepValidating = "validating" // the CA has been told to validate
	StepFinalized  = "finalized"  // the order is valid, the certificate not yet downloaded
)

// Steps lists StepValidating and StepFinalized, in the order an order passes them.
func Steps() []string { return []string{StepValidating, StepFinalized} }

// Client gets certificates from one ACME directory with one account, set up on
// first use (and again after a failure, SetupBackoff later). It is safe for
// concurrent use; orders run concurrently. Any error after which the CA asked
// to wait (or for which the client's own budget is spent) is, or wraps, a
// *core.RetryAfterError.
type Client struct {
	cfg       Config
	log       *slog.Logger
	transport *transport

	// mu guards ready, settingUp, failed and failedUntil.
	mu          sync.Mutex
	ready       *lib          // nil until set up
	settingUp   chan struct{} // closed when the running setup ends; nil when none runs
	failed      error         // the last setup's error
	failedUntil time.Time     // until when failed is returned without a new setup
}

// New returns a Client for cfg. It makes no request: the directory is read and the
// account looked up or registered on first use.
func New(cfg Config) (*Client, error) {
	if cfg.DirectoryURL == "" {
		return nil, errors.New("acme: no directory URL")
	}
	if cfg.Keys == nil {
		return nil, errors.New("acme: no account key store")
	}
	cfg = withDefaults(cfg)
	base := http.DefaultTransport
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		base = cfg.HTTPClient.Transport
	}
	t := &transport{base: base, observe: cfg.Observe, directory: cfg.DirectoryURL, timeout: cfg.RequestTimeout}
	t.setLimits(cfg.Limits)
	return &Client{cfg: cfg, log: cfg.Logger, transport: t}, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
		if cfg.HTTPClient != nil && cfg.HTTPClient.Timeout > 0 {
			cfg.RequestTimeout = cfg.HTTPClient.Timeout
		}
	}
	cfg.SetupTimeout = cmp(cfg.SetupTimeout, 10*time.Second)
	cfg.SetupBackoff = cmp(cfg.SetupBackoff, 15*time.Second)
	cfg.PollTimeout = cmp(cfg.PollTimeout, 2*time.Minute)
	if cfg.AtStep == nil {
		cfg.AtStep = func(string) {}
	}
	d, l := DefaultLimits(), &cfg.Limits
	l.RequestsPerSecond = cmp(l.RequestsPerSecond, d.RequestsPerSecond)
	l.RequestBurst = cmp(l.RequestBurst, d.RequestBurst)
	l.NewOrdersPer3h = cmp(l.NewOrdersPer3h, d.NewOrdersPer3h)
	l.NewAccountsPer3h = cmp(l.NewAccountsPer3h, d.NewAccountsPer3h)
	l.RenewalInfoPerSecond = cmp(l.RenewalInfoPerSecond, d.RenewalInfoPerSecond)
	l.MaxWait = cmp(l.MaxWait, d.MaxWait)
	return cfg
}

// cmp is v when it is positive, else def.
func cmp[T int | float64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// cmpErr is err when it is not nil, else def.
func cmpErr(err, def error) error {
	if err != nil {
		return err
	}
	return def
}

// Identity is the directory this client orders from: what certificates it
// issues record of their issuer.
func (c *Client) Identity() string { return c.cfg.DirectoryURL }

// Order places an order for req.Hosts, or continues req.Resume while the CA can
// still finish it: pending or ready, or finalized (processing or valid) for
// the key OrderKey makes again for req.KeyType. Otherwise (it is invalid,
// expired, unknown, or finalized with another key) it logs why and places a
// new one. A new order is a replacement of req.Replaces when that is not nil
// and the CA offers renewal information; one the CA refuses with a problem is
// placed again at once without it. The Order's Challenges are those still
// pending.
func (c *Client) Order(ctx context.Context, req core.OrderRequest) (core.Order, error) {
	start := time.Now()
	s, err := c.session(ctx)
	if err != nil {
		return core.Order{}, err
	}
	if req.Resume != "" {
		if o, ok := c.resume(ctx, s, req); ok {
			return o, nil
		}
	}
	o, err := c.place(ctx, s, req)
	return o, c.done(start, err)
}

// resume returns the order at req.Resume when the CA can still finish it.
func (c *Client) resume(ctx context.Context, s lib, req core.OrderRequest) (core.Order, bool) {
	o, err := s.fetchOrder(req.Resume)
	why := ""
	switch {
	case err != nil:
		why = err.Error()
	case !core.SameHosts(o.Hosts, req.Hosts):
		why = "it is for other hosts"
	case o.Status == "processing" || o.Status == "valid":
		why = c.finalizedWhy(ctx, s, o, req.KeyType)
	case o.Status != "pending" && o.Status != "ready":
		why = "it is " + o.Status
	}
	var chs []core.Challenge
	if why == "" && o.Status == "pending" {
		if chs, err = c.challenges(ctx, s, o, req.Challenge); err != nil {
			why = err.Error()
		}
	}
	if why != "" {
		c.log.Info("placing a new order instead of resuming", "order", req.Resume, "hosts", req.Hosts, "why", why)
		return core.Order{}, false
	}
	c.log.Info("order resumed", "order", o.URL, "hosts", req.Hosts, "status", o.Status)
	return core.Order{URL: req.Resume, Hosts: req.Hosts, Challenges: chs, Resumed: true, Replacing: o.Replaces != ""}, true
}

// finalizedWhy tells why o, finalized before (processing or valid), cannot be
// finished: "" when its certificate is for the key OrderKey makes again for
// keyType. It waits while o is processing, and downloads its certificate.
func (c *Client) finalizedWhy(ctx context.Context, s lib, o order, keyType core.KeyType) string {
	curve := curveOf(keyType)
	if curve == nil {
		return "it is " + o.Status + ", finalized with a " + string(keyType) + " key that no process holds"
	}
	if o.Status == "processing" {
		var err error
		if o, err = c.waitOrder(ctx, s, o.URL, "processing"); err != nil {
			return err.Error()
		}
		if o.Status != "valid" {
			return "it is " + o.Status
		}
	}
	key, err := deriveKey(s.accountKey(), curve, orderKeyLabel(keyType, o.URL))
	if err != nil {
		return err.Error()
	}
	certs, err := s.certificates(o.Certificate)
	switch {
	case err != nil:
		return "download certificate: " + err.Error()
	case len(certs) == 0 || !sameKey(certs[0], key):
		return "it was finalized with another key"
	}
	return ""
}

// place places a new order.
func (c *Client) place(ctx context.Context, s lib, req core.OrderRequest) (core.Order, error) {
	if err := ctx.Err(); err != nil {
		return core.Order{}, err // never start an order when stopping
	}
	replacing := req.Replaces != nil && s.offersARI()
	var replaces *x509.Certificate
	if replacing {
		replaces = req.Replaces
	}
	o, err := s.newOrder(req.Hosts, replaces, req.Profile)
	if replacing && isProblem(err, "alreadyReplaced", "conflict", "malformed", "serverInternal") {
		// The CA will not take this as a replacement (say, it was replaced by an
		// order that failed): an ordinary order is as good.
		c.log.Info("placing the order again without replaces", "hosts", req.Hosts, "err", err)
		replacing = false
		o, err = s.newOrder(req.Hosts, nil, req.Profile)
	}
	if err != nil {
		return core.Order{}, fmt.Errorf("new order: %w", err)
	}
	c.log.Info("order created", "order", o.URL, "hosts", req.Hosts, "replaces", replacing)
	chs, err := c.challenges(ctx, s, o, req.Challenge)
	if err != nil {
		return core.Order{}, err
	}
	return core.Order{URL: o.URL, Hosts: req.Hosts, Challenges: chs, Replacing: replacing}, nil
}

// challenges returns the challenges of type typ (http-01 when "") of o's
// pending authorizations.
func (c *Client) challenges(ctx context.Context, s lib, o order, typ string) ([]core.Challenge, error) {
	typ = challengeType(typ)
	var chs []core.Challenge
	for _, u := range o.Authorizations {
		a, err := s.fetchAuthz(u, typ)
		switch {
		case err != nil:
			return nil, fmt.Errorf("fetch authorization: %w", err)
		case a.Status == "valid":
			continue
		case a.Status != "pending":
			return nil, fmt.Errorf("authorization for %s is %s", a.Host, a.Status)
		case a.Challenge.Token == "":
			return nil, fmt.Errorf("the CA offers no %s challenge for %s", typ, a.Host)
		}
		chs = append(chs, core.Challenge{Type: typ, Host: a.Host, Token: a.Challenge.Token, KeyAuth: a.Challenge.KeyAuth})
	}
	return chs, ctx.Err()
}

// Validate tells the CA that o's challenges answer (one request per pending
// challenge, none for one already being validated) and waits, polling, until
// it has validated every authorization of o, for at most PollTimeout. The
// error of a failed validation carries the CA's problem.
func (c *Client) Validate(ctx context.Context, o core.Order) error {
	start := time.Now()
	s, err := c.session(ctx)
	if err != nil {
		return err
	}
	typ := ""
	if len(o.Challenges) > 0 {
		typ = o.Challenges[0].Type
	}
	return c.done(start, c.validate(ctx, s, o.URL, challengeType(typ)))
}

// challengeType is typ, or http-01 for "".
func challengeType(typ string) string {
	if typ == "" {
		return core.ChallengeHTTP01
	}
	return typ
}

func (c *Client) validate(ctx context.Context, s lib, url, typ string) error {
	o, err := s.fetchOrder(url)
	if err != nil {
		return fmt.Errorf("fetch order: %w", err)
	}
	for _, u := range o.Authorizations {
		a, err := s.fetchAuthz(u, typ)
		if err != nil {
			return fmt.Errorf("fetch authorization: %w", err)
		}
		if a.Status == "pending" && a.Challenge.Status == "pending" {
			if err := respond(c.transport.bound(ctx, c.cfg.RequestTimeout), s, a.Challenge.URL); err != nil {
				return fmt.Errorf("validate %s: %w", a.Host, err)
			}
		}
	}
	c.cfg.AtStep(StepValidating)
	for _, u := range o.Authorizations {
		if err := c.poll(ctx, func() (bool, error) { return authzDone(s, u, typ) }); err != nil {
			return err
		}
	}
	return nil
}

// authzDone tells whether the authorization at url is no longer being validated.
func authzDone(s lib, url, typ string) (bool, error) {
	a, err := s.fetchAuthz(url, typ)
	switch {
	case err != nil:
		return false, fmt.Errorf("fetch authorization: %w", err)
	case a.Status == "valid":
		return true, nil
	case a.Status == "pending" || a.Status == "processing":
		return false, nil
	case a.Err != nil:
		return true, fmt.Errorf("validation of %s failed: %w", a.Host, a.Err)
	}
	return true, fmt.Errorf("authorization for %s is %s", a.Host, a.Status)
}

// Finalize waits until o is ready, sends it a request for o.Hosts signed with
// key, waits until the certificate is issued (each wait at most PollTimeout),
// downloads it and returns its PEM chain, leaf first. A resumed order that was
// finalized before is only waited for and downloaded. A certificate that is
// not for key is an error.
func (c *Client) Finalize(ctx context.Context, o core.Order, key crypto.Signer) ([]byte, error) {
	start := time.Now()
	s, err := c.session(ctx)
	if err != nil {
		return nil, err
	}
	chain, err := c.finalize(ctx, s, o, key)
	return chain, c.done(start, err)
}

func (c *Client) finalize(ctx context.Context, s lib, o core.Order, key crypto.Signer) ([]byte, error) {
	ord, err := c.waitOrder(ctx, s, o.URL, "pending")
	if err != nil {
		return nil, err
	}
	switch {
	case ord.Status == "ready":
		csr, err := newCSR(o.Hosts, key)
		if err != nil {
			return nil, err
		}
		if ord, err = s.finalize(ord, csr); err != nil {
			return nil, fmt.Errorf("finalize: %w", err)
		}
	case !o.Resumed:
		return nil, fmt.Errorf("order %s is %s: it was finalized before", o.URL, ord.Status)
	}
	if ord.Status != "valid" {
		if ord, err = c.waitOrder(ctx, s, o.URL, "processing"); err != nil {
			return nil, err
		}
	}
	if ord.Status != "valid" {
		return nil, fmt.Errorf("order is %s: %w", ord.Status, cmpErr(ord.Err, errors.New("no problem given")))
	}
	c.cfg.AtStep(StepFinalized)
	return c.download(s, ord, key)
}

// waitOrder polls the order at url while its status is while.
func (c *Client) waitOrder(ctx context.Context, s lib, url, while string) (order, error) {
	var o order
	err := c.poll(ctx, func() (bool, error) {
		var err error
		if o, err = s.fetchOrder(url); err != nil {
			return false, fmt.Errorf("fetch order: %w", err)
		}
		if o.Status == "invalid" {
			return true, fmt.Errorf("order is invalid: %w", cmpErr(o.Err, errors.New("no problem given")))
		}
		return o.Status != while, nil
	})
	return o, err
}

func newCSR(hosts []string, key crypto.Signer) (*x509.CertificateRequest, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: hosts[0]},
		DNSNames: hosts,
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create csr: %w", err)
	}
	return x509.ParseCertificateRequest(der)
}

// download returns o's certificate chain, which must be for key.
func (c *Client) download(s lib, o order, key crypto.Signer) ([]byte, error) {
	certs, err := s.certificates(o.Certificate)
	switch {
	case err != nil:
		return nil, fmt.Errorf("download certificate: %w", err)
	case len(certs) == 0:
		return nil, errors.New("download certificate: the CA sent none")
	case !sameKey(certs[0], key):
		return nil, fmt.Errorf("order %s was finalized with another key", o.URL)
	}
	var chain []byte
	for _, cert := range certs {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	c.log.Info("order valid", "order", o.URL, "hosts", o.Hosts)
	return chain, nil
}

// poll calls check until it is done, first at once and then on a growing interval
// (50 ms to 1 s: the CA usually answers within a fraction of a second, and a few
// requests a second per order is polite), for at most PollTimeout. Transient
// errors from check are retried; its last error is returned on timeout.
func (c *Client) poll(ctx context.Context, check func() (done bool, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.PollTimeout)
	defer cancel()
	delay := 50 * time.Millisecond
	var last error
	for {
		done, err := check()
		if done {
			return err
		}
		if err != nil {
			last = err
			if isProblem(err) && !isProblem(err, "rateLimited", "serverInternal") {
				return err // the CA said no: asking again will not change its mind
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %w)", ctx.Err(), last)
			}
			return fmt.Errorf("waiting for the CA: %w", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*3/2, time.Second)
	}
}

// RenewalWindow returns the CA's suggested renewal window for cert (ACME Renewal
// Information) and when to ask again; a window that is not Offered, and no
// error, when the CA offers none. An empty or inverted window is an error.
func (c *Client) RenewalWindow(ctx context.Context, cert *x509.Certificate) (core.RenewalWindow, error) {
	start := time.Now()
	s, err := c.session(ctx)
	if err != nil {
		return core.RenewalWindow{}, err
	}
	w, ok, err := s.renewalInfo(cert)
	switch {
	case err != nil:
		return core.RenewalWindow{}, c.done(start, fmt.Errorf("renewal info: %w", err))
	case !ok:
		return core.RenewalWindow{}, nil
	case w.Start.IsZero() || !w.End.After(w.Start):
		return core.RenewalWindow{}, fmt.Errorf("renewal info: invalid window %s to %s", w.Start, w.End)
	}
	return w, nil
}

// done ends a call that started at start: a CA that no longer knows the account
// has it set up again on next use, and err says when the CA asked to wait.
func (c *Client) done(start time.Time, err error) error {
	if isProblem(err, "accountDoesNotExist") {
		// A test CA restarted, or the account was deactivated elsewhere.
		c.forget()
	}
	return c.wrap(start, err)
}
