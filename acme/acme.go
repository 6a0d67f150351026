// Package acme gets certificates from an RFC 8555 CA with HTTP-01 challenges,
// over github.com/eggsampler/acme/v3. It knows nothing of Kubernetes: the account
// key is kept by an AccountKeys it is given, and challenges are presented by a
// function it is given.
//
// The library it wraps takes no context and sleeps while it polls, so this
// package does its own polling (short, growing, bounded intervals, checking ctx
// between requests) and uses the library only for single requests.
package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	acmelib "github.com/eggsampler/acme/v3"
)

// LetsEncrypt and LetsEncryptStaging are the directories of Let's Encrypt.
const (
	LetsEncrypt        = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// AccountKeys keeps the account key of each directory. LoadOrCreate returns the
// PEM key stored for directoryURL, storing the result of generate first when
// there is none; created tells whether it did.
type AccountKeys interface {
	LoadOrCreate(ctx context.Context, directoryURL string, generate func() ([]byte, error)) (keyPEM []byte, created bool, err error)
}

// EAB is an External Account Binding, for CAs that require one.
type EAB struct {
	KeyID string
	HMAC  string // base64url, as the CA hands it out
}

// Config configures a Client.
type Config struct {
	DirectoryURL string
	Email        string       // contact for the account; optional
	EAB          *EAB         // nil: none
	HTTPClient   *http.Client // its transport carries the roots to trust; nil: a default with timeouts
	Keys         AccountKeys
	Logger       *slog.Logger
	// Observe, if set, is called after every HTTP request to the CA with the kind
	// of endpoint ("directory", "new-nonce", "new-account", "new-order", "order",
	// "authz", "challenge", "finalize", "certificate", "renewal-info", "other"),
	// the status code (0 when no response came) and how long it took.
	Observe func(endpoint string, code int, took time.Duration)
	// PollTimeout bounds each wait for the CA: validation, then issuance. 0: 2 minutes.
	PollTimeout time.Duration
	// Fault, if set, is called at FaultValidating and FaultFinalized; tests make
	// it crash the process there.
	Fault func(point string)
}

// Points in an order where Config.Fault is called.
const (
	FaultValidating = "validating" // the CA has been told to validate
	FaultFinalized  = "finalized"  // the order is valid, the certificate not yet downloaded
)

// Client gets certificates from one ACME directory with one account, set up on
// first use (and again after a failure). It is safe for concurrent use; orders
// run concurrently.
type Client struct {
	cfg       Config
	log       *slog.Logger
	transport *transport

	// mu guards lib and account, and serializes their setup.
	mu      sync.Mutex
	lib     *acmelib.Client
	account acmelib.Account
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PollTimeout <= 0 {
		cfg.PollTimeout = 2 * time.Minute
	}
	if cfg.Fault == nil {
		cfg.Fault = func(string) {}
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	if cfg.HTTPClient != nil {
		c := *cfg.HTTPClient
		hc = &c
	}
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	t := &transport{base: base, observe: cfg.Observe, directory: cfg.DirectoryURL}
	hc.Transport = t
	cfg.HTTPClient = hc
	return &Client{cfg: cfg, log: cfg.Logger, transport: t}, nil
}

// DirectoryURL is the directory this client orders from.
func (c *Client) DirectoryURL() string { return c.cfg.DirectoryURL }

// session returns the library client and the account, setting them up if this is
// the first use or the last setup failed.
func (c *Client) session(ctx context.Context) (acmelib.Client, acmelib.Account, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lib != nil {
		return *c.lib, c.account, nil
	}
	lib, err := acmelib.NewClient(c.cfg.DirectoryURL, acmelib.WithHTTPClient(c.cfg.HTTPClient), acmelib.WithRetryCount(8))
	if err != nil {
		return acmelib.Client{}, acmelib.Account{}, fmt.Errorf("acme: read directory %s: %w", c.cfg.DirectoryURL, err)
	}
	c.transport.setDirectory(lib.Directory())
	keyPEM, created, err := c.cfg.Keys.LoadOrCreate(ctx, c.cfg.DirectoryURL, newAccountKey)
	if err != nil {
		return acmelib.Client{}, acmelib.Account{}, fmt.Errorf("acme: account key: %w", err)
	}
	key, err := decodeAccountKey(keyPEM)
	if err != nil {
		return acmelib.Client{}, acmelib.Account{}, err
	}
	// Look the account up first: this fills in the thumbprint that key
	// authorizations need, and registers nothing when it exists.
	account, err := lib.NewAccountOptions(key, acmelib.NewAcctOptOnlyReturnExisting())
	registered := false
	if isProblem(err, "accountDoesNotExist") {
		opts := []acmelib.NewAccountOptionFunc{acmelib.NewAcctOptAgreeTOS()}
		if c.cfg.Email != "" {
			opts = append(opts, acmelib.NewAcctOptWithContacts("mailto:"+c.cfg.Email))
		}
		if c.cfg.EAB != nil {
			opts = append(opts, acmelib.NewAcctOptExternalAccountBinding(acmelib.ExternalAccountBinding{
				KeyIdentifier: c.cfg.EAB.KeyID,
				MacKey:        c.cfg.EAB.HMAC,
				Algorithm:     "HS256",
				HashFunc:      crypto.SHA256,
			}))
		}
		account, err = lib.NewAccountOptions(key, opts...)
		registered = true
	}
	if err != nil {
		return acmelib.Client{}, acmelib.Account{}, fmt.Errorf("acme: account: %w", err)
	}
	c.log.Info("acme account ready", "directory", c.cfg.DirectoryURL, "account", account.URL,
		"key_created", created, "registered", registered)
	c.lib, c.account = &lib, account
	return lib, account, nil
}

func newAccountKey() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func decodeAccountKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("acme: account key: no PEM block")
	}
	if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	return nil, errors.New("acme: account key: not an EC, RSA or PKCS #8 private key")
}

// Challenge is an HTTP-01 challenge to present: GET
// http://Host/.well-known/acme-challenge/Token must answer KeyAuth.
type Challenge struct {
	Host    string
	Token   string
	KeyAuth string
}

// Issue orders a certificate for hosts with key, a replacement of replaces when
// that is not nil and the CA offers renewal information, with the named profile
// (RFC draft-ietf-acme-profiles) unless profile is "". For the authorizations
// the CA wants validated it calls present once with every challenge; present must
// return only when they answer (or with an error, which ends the order). It then
// asks the CA to validate, finalizes, and returns the PEM chain, leaf first.
// Errors carry the CA's problem detail; when the CA asked to back off (429/503
// with Retry-After) the error has a method RetryAfter() time.Time.
func (c *Client) Issue(ctx context.Context, hosts []string, key crypto.Signer, replaces *x509.Certificate, profile string, present func(context.Context, []Challenge) error) ([]byte, error) {
	start := time.Now()
	chain, err := c.issue(ctx, hosts, key, replaces, profile, present)
	if isProblem(err, "accountDoesNotExist") {
		// The CA forgot the account (a test CA restarted, or it was deactivated
		// elsewhere): set it up afresh on the next call.
		c.mu.Lock()
		c.lib = nil
		c.mu.Unlock()
	}
	if err != nil {
		if at := c.transport.retryAfterSince(start); !at.IsZero() {
			return nil, &retryAfterError{err: err, at: at}
		}
		return nil, err
	}
	return chain, nil
}

func (c *Client) issue(ctx context.Context, hosts []string, key crypto.Signer, replaces *x509.Certificate, profile string, present func(context.Context, []Challenge) error) ([]byte, error) {
	lib, account, err := c.session(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]acmelib.Identifier, len(hosts))
	for i, h := range hosts {
		ids[i] = acmelib.Identifier{Type: "dns", Value: h}
	}
	if err := ctx.Err(); err != nil {
		return nil, err // the library takes no context: never start an order when stopping
	}
	ext := acmelib.OrderExtension{Profile: profile}
	if profile != "" {
		if _, ok := lib.Directory().Meta.Profiles[profile]; !ok {
			return nil, fmt.Errorf("the CA offers no profile %q (it offers: %s)", profile, profileNames(lib.Directory()))
		}
	}
	var order acmelib.Order
	if replaces != nil && lib.Directory().RenewalInfo != "" {
		order, err = lib.ReplacementOrderExtension(account, replaces, ids, ext)
		if err != nil && isProblem(err, "alreadyReplaced", "conflict", "malformed") {
			// The CA will not take this as a replacement (say, it was replaced by an
			// order that failed): an ordinary order is as good.
			order, err = lib.NewOrderExtension(account, ids, ext)
		}
	} else {
		order, err = lib.NewOrderExtension(account, ids, ext)
	}
	if err != nil {
		return nil, fmt.Errorf("new order: %w", err)
	}
	c.log.Info("order created", "order", order.URL, "hosts", hosts, "replaces", replaces != nil)

	var challenges []Challenge
	var accept []acmelib.Challenge
	var authzs []string
	for _, u := range order.Authorizations {
		authz, err := lib.FetchAuthorization(account, u)
		if err != nil {
			return nil, fmt.Errorf("fetch authorization: %w", err)
		}
		switch authz.Status {
		case "valid":
			continue
		case "pending":
		default:
			return nil, fmt.Errorf("authorization for %s is %s", authz.Identifier.Value, authz.Status)
		}
		ch, ok := authz.ChallengeMap[acmelib.ChallengeTypeHTTP01]
		if !ok {
			return nil, fmt.Errorf("the CA offers no http-01 challenge for %s", authz.Identifier.Value)
		}
		challenges = append(challenges, Challenge{Host: authz.Identifier.Value, Token: ch.Token, KeyAuth: ch.KeyAuthorization})
		accept = append(accept, ch)
		authzs = append(authzs, u)
	}
	if len(challenges) > 0 {
		if err := present(ctx, challenges); err != nil {
			return nil, err
		}
		// The library would poll each challenge every PollInterval for up to
		// PollTimeout; with a timeout of 1ns it sends the one request that tells the
		// CA to validate and returns at once, and we poll the authorizations.
		once := lib
		once.PollTimeout = time.Nanosecond
		for _, ch := range accept {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// The 1ns timeout is the only error expected when the CA accepted the request.
			if _, err := once.UpdateChallenge(account, ch); err != nil && err.Error() != "acme: challenge update timeout" {
				return nil, fmt.Errorf("validate %s: %w", ch.URL, err)
			}
		}
		c.cfg.Fault(FaultValidating)
		for _, u := range authzs {
			if err := c.waitAuthorization(ctx, lib, account, u); err != nil {
				return nil, err
			}
		}
	}
	return c.finalize(ctx, lib, account, order, hosts, key)
}

func (c *Client) waitAuthorization(ctx context.Context, lib acmelib.Client, account acmelib.Account, url string) error {
	return c.poll(ctx, func() (bool, error) {
		authz, err := lib.FetchAuthorization(account, url)
		if err != nil {
			return false, fmt.Errorf("fetch authorization: %w", err)
		}
		switch authz.Status {
		case "valid":
			return true, nil
		case "pending", "processing":
			return false, nil
		}
		for _, ch := range authz.Challenges {
			if ch.Type == acmelib.ChallengeTypeHTTP01 && ch.Error.Type != "" {
				return true, fmt.Errorf("validation of %s failed: %w", authz.Identifier.Value, ch.Error)
			}
		}
		return true, fmt.Errorf("authorization for %s is %s", authz.Identifier.Value, authz.Status)
	})
}

func (c *Client) finalize(ctx context.Context, lib acmelib.Client, account acmelib.Account, order acmelib.Order, hosts []string, key crypto.Signer) ([]byte, error) {
	err := c.poll(ctx, func() (bool, error) {
		o, err := lib.FetchOrder(account, order.URL)
		if err != nil {
			return false, fmt.Errorf("fetch order: %w", err)
		}
		order = o
		switch o.Status {
		case "ready", "valid", "processing":
			return true, nil
		case "pending":
			return false, nil
		}
		return true, fmt.Errorf("order is %s: %w", o.Status, o.Error)
	})
	if err != nil {
		return nil, err
	}
	if order.Status == "ready" {
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			Subject:  pkix.Name{CommonName: hosts[0]},
			DNSNames: hosts,
		}, key)
		if err != nil {
			return nil, fmt.Errorf("create csr: %w", err)
		}
		req, err := x509.ParseCertificateRequest(csr)
		if err != nil {
			return nil, fmt.Errorf("parse csr: %w", err)
		}
		once := lib
		once.IgnorePolling, once.IgnoreRetryAfter = true, true
		if order, err = once.FinalizeOrder(account, order, req); err != nil {
			return nil, fmt.Errorf("finalize: %w", err)
		}
	}
	err = c.poll(ctx, func() (bool, error) {
		if order.Status == "valid" {
			return true, nil
		}
		if order.Status != "processing" {
			return true, fmt.Errorf("order is %s: %w", order.Status, order.Error)
		}
		o, err := lib.FetchOrder(account, order.URL)
		if err != nil {
			return false, fmt.Errorf("fetch order: %w", err)
		}
		order = o
		return o.Status == "valid", nil
	})
	if err != nil {
		return nil, err
	}
	c.cfg.Fault(FaultFinalized)
	certs, err := lib.FetchCertificates(account, order.Certificate)
	if err != nil {
		return nil, fmt.Errorf("download certificate: %w", err)
	}
	var chain []byte
	for _, cert := range certs {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	c.log.Info("order valid", "order", order.URL, "hosts", hosts)
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
// Information). ok is false, with no error, when the CA offers none.
func (c *Client) RenewalWindow(ctx context.Context, cert *x509.Certificate) (start, end time.Time, ok bool, err error) {
	lib, _, err := c.session(ctx)
	if err != nil {
		return time.Time{}, time.Time{}, false, err
	}
	info, err := lib.GetRenewalInfo(cert)
	if errors.Is(err, acmelib.ErrRenewalInfoNotSupported) {
		return time.Time{}, time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, time.Time{}, false, fmt.Errorf("renewal info: %w", err)
	}
	w := info.SuggestedWindow
	if w.Start.IsZero() || !w.End.After(w.Start) {
		return time.Time{}, time.Time{}, false, fmt.Errorf("renewal info: invalid window %s to %s", w.Start, w.End)
	}
	return w.Start, w.End, true, nil
}

func profileNames(d acmelib.Directory) string {
	var names []string
	for n := range d.Meta.Profiles {
		names = append(names, n)
	}
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// isProblem reports whether err is an ACME problem, of one of types when any are
// given (matched on the part after the last ':', e.g. "rateLimited").
func isProblem(err error, types ...string) bool {
	var p acmelib.Problem
	if !errors.As(err, &p) {
		return false
	}
	if len(types) == 0 {
		return true
	}
	short := p.Type[strings.LastIndex(p.Type, ":")+1:]
	for _, t := range types {
		if short == t {
			return true
		}
	}
	return false
}

// retryAfterError is an error after which the CA asked us to wait.
type retryAfterError struct {
	err error
	at  time.Time
}

func (e *retryAfterError) Error() string         { return e.err.Error() }
func (e *retryAfterError) Unwrap() error         { return e.err }
func (e *retryAfterError) RetryAfter() time.Time { return e.at }
