package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/ingress-acme/ingress-acme/core"
)

// session returns the library client and account, bound to ctx, setting them
// up on first use or after a failure. Concurrent callers share one setup; a
// failed setup is remembered for SetupBackoff (or until the CA's Retry-After),
// and callers in that time get its error at once.
func (c *Client) session(ctx context.Context) (lib, error) {
	for {
		c.mu.Lock()
		switch {
		case c.ready != nil:
			l := *c.ready
			c.mu.Unlock()
			return l.with(c.transport.bound(ctx, c.cfg.RequestTimeout)), nil
		case time.Now().Before(c.failedUntil):
			err := c.failed
			c.mu.Unlock()
			return lib{}, err
		case c.settingUp != nil:
			wait := c.settingUp
			c.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return lib{}, fmt.Errorf("acme: waiting for the account: %w", ctx.Err())
			}
			continue
		}
		done := make(chan struct{})
		c.settingUp = done
		c.mu.Unlock()
		l, err := c.setUp(ctx)
		c.settled(l, err, ctx.Err() != nil)
		close(done)
	}
}

// settled records the outcome of a setup; one that ended because its caller
// stopped is not remembered as a failure.
func (c *Client) settled(l lib, err error, cancelled bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settingUp = nil
	switch {
	case err == nil:
		c.ready = &l
	case !cancelled:
		c.failed, c.failedUntil = err, time.Now().Add(c.cfg.SetupBackoff)
		var ra *core.RetryAfterError
		if errors.As(err, &ra) && ra.At.After(c.failedUntil) {
			c.failedUntil = ra.At
		}
	}
}

// forget drops the account, to set it up again on next use (when the CA no
// longer knows it).
func (c *Client) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ready = nil
}

// setUp reads the directory and looks up the account, registering it when the
// CA does not know it; each request times out after SetupTimeout, and the whole
// setup after three times that.
func (c *Client) setUp(ctx context.Context) (lib, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 3*c.cfg.SetupTimeout)
	defer cancel()
	hc := c.transport.bound(ctx, c.cfg.SetupTimeout)
	l, err := dial(c.cfg.DirectoryURL, hc)
	if err != nil {
		return lib{}, c.wrap(start, fmt.Errorf("acme: read directory %s: %w", c.cfg.DirectoryURL, err))
	}
	c.transport.setDirectory(l.c.Directory())
	key, created, err := c.cfg.Keys.LoadOrCreate(ctx, c.cfg.DirectoryURL, newAccountKey)
	if err != nil {
		return lib{}, fmt.Errorf("acme: account key: %w", err)
	}
	// Look the account up first: this fills in the thumbprint that key
	// authorizations need, and registers nothing when it exists.
	l, err = l.lookUp(key)
	registered := isProblem(err, "accountDoesNotExist")
	if registered {
		l, err = l.register(key, c.cfg.Email, c.cfg.EAB)
	}
	if err != nil {
		return lib{}, c.wrap(start, fmt.Errorf("acme: account: %w", err))
	}
	c.log.Info("acme account ready", "directory", c.cfg.DirectoryURL, "account", l.accountURL(),
		"key_created", created, "registered", registered)
	return l, nil
}

// newAccountKey generates an account key: ECDSA P-256, which every CA takes.
func newAccountKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// wrap returns err, as a *core.RetryAfterError when the CA asked to wait since
// start (the library keeps no headers, nor errors' types).
func (c *Client) wrap(start time.Time, err error) error {
	var ra *core.RetryAfterError
	if err == nil || errors.As(err, &ra) {
		return err
	}
	if at := c.transport.retryAfterSince(start); !at.IsZero() {
		return &core.RetryAfterError{Err: err, At: at}
	}
	return err
}
