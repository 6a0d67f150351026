package watcher

import (
	"context"
	"crypto/x509"
	"errors"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// reason is why a certificate is ordered; reasonNone: it is not.
type reason int

const (
	reasonNone       reason = iota
	reasonMissing           // no certificate yet
	reasonUnusable          // the Secret holds no usable certificate
	reasonHosts             // the certificate does not cover the hosts asked for
	reasonKeyType           // another key type is asked for
	reasonDirectory         // the issuer asked for has another identity (say, another ACME directory)
	reasonProfile           // another CA profile is asked for
	reasonRenewal           // the certificate is due for renewal
	reasonIssuer            // another issuer is asked for
	reasonSecretKeys        // other Secret keys are asked for: no order, the Secret is rewritten
)

func (r reason) String() string {
	return [...]string{"up to date", "no certificate yet", "the Secret holds no usable certificate",
		"hosts changed", "key type changed", "ACME directory changed", "profile changed", "renewal due",
		"issuer changed", "Secret keys changed"}[r]
}

// decision is step 1 of README's "How it works": whether, and why, to order.
type decision struct {
	why     reason
	detail  string            // what made the certificate unusable
	leaf    *x509.Certificate // the current certificate, nil if none is usable
	renewAt time.Time         // when a usable, up-to-date leaf is due
}

// message is the decision as a user reads it in an Event.
func (d decision) message() string {
	if d.detail != "" {
		return d.why.String() + ": " + d.detail
	}
	return d.why.String()
}

// decide judges the certificate in sec (nil: none) against w.
func (c *Controller) decide(ctx context.Context, st *certState, w wanted, sec *corev1.Secret) decision {
	if sec == nil {
		return decision{why: reasonMissing}
	}
	stored, err := c.cfg.Secrets.Read(sec)
	if err != nil {
		return decision{why: reasonUnusable, detail: err.Error()}
	}
	if why := c.differs(w, stored); why != reasonNone {
		return decision{why: why, leaf: stored.Leaf}
	}
	at := c.renewAt(ctx, st, w.issuer, stored.Leaf)
	switch {
	case !c.now().Before(at):
		return decision{why: reasonRenewal, leaf: stored.Leaf, renewAt: at}
	case stored.SecretKeys != w.req.Options.SecretKeys:
		return decision{why: reasonSecretKeys, leaf: stored.Leaf, renewAt: at}
	}
	return decision{leaf: stored.Leaf, renewAt: at}
}

// differs says what of w the stored certificate lacks that needs a new one.
// The issuer is judged by the one asked of, never by which CA signed (a
// fallback may have). A Secret that records no issuer name or no profile
// (stored before they were recorded) is taken as it is: no re-issue of every
// certificate on an upgrade.
func (c *Controller) differs(w wanted, stored core.Stored) reason {
	o := w.req.Options
	switch {
	case !core.SameHosts(stored.Leaf.DNSNames, w.req.Hosts):
		return reasonHosts
	case stored.KeyType != o.KeyType:
		return reasonKeyType
	case stored.Issuer != o.Issuer && (stored.Issuer != "" || o.Issuer != c.cfg.DefaultIssuer):
		return reasonIssuer
	case stored.Directory != w.issuer.Identity():
		return reasonDirectory
	case stored.ProfileRecorded && stored.Profile != o.Profile:
		return reasonProfile
	}
	return reasonNone
}

// replacedMomentsAgo reports whether leaf is not the certificate this process
// stored last and not newer: the cache has not caught up with our own write
// yet. NotBefore has whole seconds, so two certificates issued within one
// second tie, and the serial tells them apart.
func (st *certState) replacedMomentsAgo(leaf *x509.Certificate) bool {
	return leaf != nil && st.issued != nil && leaf.SerialNumber.String() != st.issued.serial &&
		!leaf.NotBefore.After(st.issued.notBefore)
}

// renewAt is when leaf should be renewed: a random time in the CA's suggested
// window when it offers one, else RenewBefore (or a third of the lifetime) ahead
// of expiry, less a random jitter of up to 2% of the lifetime so that
// certificates issued together do not renew together; never in the first half of
// the lifetime unless the CA's window for this very certificate says so, and
// always leaving a tenth of the lifetime for retries.
//
// The CA is asked at a random time within firstLook of first seeing a
// certificate that is not due by the fallback (so a restart with many
// certificates makes no burst of requests; one this process just issued waits
// longer), then whenever it says to (its Retry-After), at most every ariRecheck.
func (c *Controller) renewAt(ctx context.Context, st *certState, issuer Issuer, leaf *x509.Certificate) time.Time {
	now := c.now()
	serial := leaf.SerialNumber.String()
	if st.serial == serial && now.Before(st.recheck) {
		return st.renewAt
	}
	fallback := c.fallbackRenewAt(leaf)
	if st.serial != serial && now.Before(fallback) {
		lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
		wait := time.Duration(rand.Int64N(int64(min(firstLook, lifetime/20)) + 1))
		if st.issued != nil && st.issued.serial == serial {
			wait = min(ariRecheck, lifetime/2) // ours, just issued: nothing to ask the CA yet
		}
		st.serial, st.renewAt, st.recheck = serial, fallback, earlier(now.Add(wait), fallback)
		return fallback
	}
	at, recheck := fallback, now.Add(ariRecheck)
	w, err := issuer.RenewalWindow(ctx, leaf)
	var ra *core.RetryAfterError
	switch {
	case errors.As(err, &ra):
		recheck = ra.At // the CA (or our own budget for it) asks us to wait
	case err != nil:
		c.log.Warn("renewal information unavailable, using the fallback", "serial", serial, "err", err)
	case w.Offered():
		// Within the window, not in the first half of the lifetime unless the
		// whole window lies there (the CA wants it replaced early).
		start := w.Start
		if half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2); w.End.After(half) {
			start = later(start, half)
		}
		at = start.Add(time.Duration(rand.Int64N(int64(w.End.Sub(start)) + 1)))
		if w.RetryAfter.After(now) {
			recheck = w.RetryAfter
		}
	}
	if latest := leaf.NotAfter.Add(-renewalMargin(leaf)); at.After(latest) {
		at = latest
	}
	st.serial, st.renewAt, st.recheck = serial, at, earlier(recheck, at)
	return at
}

// renewalMargin is the least time before expiry a renewal is planned for,
// whatever the CA's window says: a tenth of the lifetime, and for certificates
// that live minutes, a third of it up to a minute, as a renewal takes seconds
// (a new RSA key, the CA, the ingress controller picking the Secret up) however
// short the certificate (a 20 s one was served expired with a tenth, 2 s; found
// by the soak, seed 21).
func renewalMargin(leaf *x509.Certificate) time.Duration {
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	return max(lifetime/10, min(lifetime/3, time.Minute))
}

// firstLook bounds how long after first seeing a certificate the CA is asked
// about its renewal.
const firstLook = time.Hour

// fallbackRenewAt is when leaf is due without the CA's renewal information.
func (c *Controller) fallbackRenewAt(leaf *x509.Certificate) time.Time {
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	before := c.cfg.RenewBefore
	if before <= 0 || before >= lifetime {
		before = lifetime / 3
	}
	at := leaf.NotAfter.Add(-before).Add(-time.Duration(rand.Int64N(int64(lifetime/50) + 1)))
	return later(at, leaf.NotBefore.Add(lifetime/2))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
