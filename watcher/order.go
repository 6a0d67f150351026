package watcher

import (
	"cmp"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// order is one order for one certificate, steps 2 to 7 of README's "How it
// works", one method each; run drives them. An order runs in its own goroutine
// (see flights) and touches no certState: what it found out is its result.
type order struct {
	c       *Controller
	w       wanted
	why     decision
	current *corev1.Secret // the Secret as last seen, nil if none
	resume  string         // the journalled order URL to continue, "" for none
	log     *slog.Logger
	start   time.Time

	placed    core.Order        // step 2
	presented bool              // step 3 has begun: the solver may have changed things
	newKey    chan keyResult    // step 5's key (see prepareKey)
	privKey   crypto.Signer     // step 5
	chain     []byte            // step 5
	leaf      *x509.Certificate // step 6
}

type keyResult struct {
	key crypto.Signer
	err error
}

// run places (or resumes) the order and sees it through; whatever happens, what
// it presented is withdrawn before it returns (or, if the process dies first,
// by the next sync, from the solver's journal).
func (o *order) run(ctx context.Context) result {
	o.announce()
	// What the solver needs first: what lies between placing the order and
	// journalling it is lost if the process dies there, so keep that short.
	err := o.w.solver.Prepare(ctx, o.w.req)
	if err == nil {
		err = o.placeAndPresent(ctx)
	}
	if err == nil {
		err = o.selfCheck(ctx)
	}
	if err == nil {
		err = o.finalize(ctx)
	}
	if err == nil && !o.w.src.Wants(o.w.req.Key()) {
		return o.abandon(ctx)
	}
	if err == nil {
		err = o.store(ctx)
	}
	r := o.restore(ctx, err)
	if o.placed.Resumed {
		r.refund = o.start // no new order was placed
	}
	return r
}

// announce tells that the order starts, and why.
func (o *order) announce() {
	o.log.Info("ordering certificate", "reason", o.why.message(), "resume", o.resume)
	o.c.event(o.w, corev1.EventTypeNormal, "Issuing", fmt.Sprintf("ordering a certificate for %s from %s (%s)",
		strings.Join(o.w.req.Hosts, ", "), o.w.issuer.Identity(), o.why.message()))
}

// placeAndPresent runs steps 2 and 3 holding one of the maxUnjournalled
// slots: an order placed and not yet journalled is lost if the process dies.
func (o *order) placeAndPresent(ctx context.Context) error {
	select {
	case o.c.unjournalled <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-o.c.unjournalled }()
	if err := o.place(ctx); err != nil {
		return err
	}
	o.prepareKey(ctx)
	return o.present(ctx)
}

// place is step 2: a new order, an ARI replacement when renewing, or the
// journalled one continued.
func (o *order) place(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err // stopping: no new order
	}
	opts := o.w.req.Options
	req := core.OrderRequest{Hosts: o.w.req.Hosts, Profile: opts.Profile, Resume: o.resume, KeyType: opts.KeyType, Challenge: opts.Challenge}
	if o.why.why == reasonRenewal {
		req.Replaces = o.why.leaf
	}
	placed, err := o.w.issuer.Order(ctx, req)
	if err != nil {
		return fmt.Errorf("new order: %w", err)
	}
	o.placed = placed
	o.log = o.log.With("order", placed.URL)
	if req.Replaces != nil && !placed.Replacing {
		o.c.event(o.w, corev1.EventTypeNormal, "NotReplacement", "the CA did not take the order as a replacement of the current certificate: ordered without it")
	}
	o.log.Info("order placed", "resumed", placed.Resumed, "challenges", len(placed.Challenges))
	return nil
}

// present is step 3: the solver presents the challenges, journalled.
func (o *order) present(ctx context.Context) error {
	if len(o.placed.Challenges) == 0 {
		return nil // every authorization is valid already
	}
	o.presented = true
	err := o.w.solver.Present(ctx, o.w.req, o.placed)
	if err == nil {
		o.c.cfg.AtStep(StepPresented)
	}
	return err
}

// selfCheck is step 4: every challenge answers the way the CA will ask, then
// the CA is told to validate.
func (o *order) selfCheck(ctx context.Context) error {
	if len(o.placed.Challenges) == 0 {
		return nil
	}
	if err := o.w.solver.Check(ctx, o.w.req, o.placed); err != nil {
		return err
	}
	o.c.cfg.AtStep(StepSelfChecked)
	return o.w.issuer.Validate(ctx, o.placed)
}

// prepareKey readies step 5's key once the order is placed: the key the
// Issuer makes again for this order in any process (so that an order
// finalized before a crash can be finished), or else a fresh one, made while
// the order waits on the solver and the CA, since that can take seconds (RSA
// 4096).
func (o *order) prepareKey(ctx context.Context) {
	o.newKey = make(chan keyResult, 1)
	keyType := o.w.req.Options.KeyType
	if key, ok, err := o.w.issuer.OrderKey(ctx, o.placed, keyType); ok || err != nil {
		o.newKey <- keyResult{key, err}
		return
	}
	go func() {
		key, err := o.c.cfg.Secrets.NewKey(keyType)
		o.newKey <- keyResult{key, err}
	}()
}

// finalize is step 5: the order's key, and the certificate for it.
func (o *order) finalize(ctx context.Context) error {
	k := <-o.newKey
	if k.err != nil {
		return k.err
	}
	chain, err := o.w.issuer.Finalize(ctx, o.placed, k.key)
	if err != nil {
		return err
	}
	o.privKey, o.chain = k.key, chain
	return nil
}

// store is step 6: the Secret holds the certificate; then the outputs run.
func (o *order) store(ctx context.Context) error {
	cert := core.Certificate{ChainPEM: o.chain, Key: o.privKey, Issuer: o.w.req.Options.Issuer,
		Directory: o.w.issuer.Identity(), SignedBy: cmp.Or(o.placed.SignedBy, o.w.issuer.Identity())}
	leaf, err := o.c.cfg.Secrets.Write(ctx, o.current, o.w.req, cert)
	if err != nil {
		return err
	}
	o.c.cfg.AtStep(StepStored)
	o.leaf = leaf
	for _, out := range o.c.cfg.Outputs {
		if err := out.Stored(ctx, o.w.req, o.leaf); err != nil {
			o.log.Error("after-store output failed", "err", err)
			o.c.event(o.w, corev1.EventTypeWarning, "OutputFailed", "after the certificate was stored: "+err.Error())
		}
	}
	return nil
}

// restore is step 7: the solver withdraws the challenges (for HTTP-01 through
// an Ingress, in the same Update that makes spec.tls name the Secret when the
// order succeeded), then the source writes back what its objects should hold.
// It reports the order's outcome.
func (o *order) restore(ctx context.Context, err error) result {
	o.c.cfg.AtStep(StepBeforeWithdraw)
	cleanupCtx, cancel := cleanupContext(ctx)
	defer cancel()
	outcome := core.Failed
	if err == nil {
		outcome = core.Issued
	}
	cleanup := errors.Join(o.w.solver.Withdraw(cleanupCtx, o.w.req, o.placed, o.presented, outcome),
		o.w.src.Sync(cleanupCtx, o.w.req, err == nil))
	switch {
	case err != nil && ctx.Err() != nil:
		o.log.Info("order interrupted by shutdown", "err", err)
		return result{err: errors.Join(err, cleanup)}
	case err != nil:
		return o.failed(errors.Join(err, cleanup))
	}
	o.succeeded()
	r := result{err: cleanup, issued: issuedOf(o.leaf)}
	if o.why.why == reasonRenewal {
		r.refund = o.start
	}
	if cleanup != nil {
		r.failed = o.w.req.Fingerprint()
	}
	return r
}

// failed reports a failed order.
func (o *order) failed(err error) result {
	o.c.cfg.Metrics.Issuance(o.kind(), "failure", o.c.now().Sub(o.start))
	o.c.event(o.w, corev1.EventTypeWarning, "Failed", "certificate order failed: "+err.Error())
	return result{err: err, failed: o.w.req.Fingerprint()}
}

// succeeded tells of a stored certificate.
func (o *order) succeeded() {
	took := o.c.now().Sub(o.start)
	o.c.cfg.Metrics.Issuance(o.kind(), "success", took)
	notAfter := "?"
	if o.leaf != nil {
		notAfter = o.leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	verb, reasonName := "issued", "Issued"
	if o.kind() == "renew" {
		verb, reasonName = "renewed", "Renewed"
	}
	o.log.Info("certificate "+verb, "took", took.String(), "not_after", notAfter)
	o.c.event(o.w, corev1.EventTypeNormal, reasonName, fmt.Sprintf("certificate for %s %s in %s, stored in Secret %s, valid until %s",
		strings.Join(o.w.req.Hosts, ", "), verb, took.Round(time.Millisecond), o.w.req.Secret, notAfter))
}

// abandon cleans up after an order whose certificate nobody wants any more.
func (o *order) abandon(ctx context.Context) result {
	cleanupCtx, cancel := cleanupContext(ctx)
	defer cancel()
	o.log.Info("order abandoned: nothing asks for the certificate any more")
	if err := o.w.solver.Withdraw(cleanupCtx, o.w.req, o.placed, o.presented, core.Abandoned); err != nil {
		o.log.Error("abandoned order: clean-up failed", "err", err)
	}
	return result{}
}

func (o *order) kind() string {
	if o.why.leaf != nil {
		return "renew"
	}
	return "issue"
}

// cleanupContext is for undoing what an order changed: it outlives ctx's
// cancellation (a shutdown must not leave challenges behind) but not by more
// than 10 s.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

// issuedOf identifies leaf; nil for nil.
func issuedOf(leaf *x509.Certificate) *issuedCert {
	if leaf == nil {
		return nil
	}
	return &issuedCert{serial: leaf.SerialNumber.String(), notBefore: leaf.NotBefore}
}
