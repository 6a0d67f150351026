package watcher

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	key     string
	d       desired
	why     decision
	current *corev1.Secret // the Secret as last seen, nil if none
	resume  string         // the journalled order URL to continue, "" for none
	log     *slog.Logger
	start   time.Time

	placed    core.Order     // step 2
	presented bool           // step 3 has begun: the Ingresses may hold our paths
	newKey    chan keyResult // step 5's key (see prepareKey)
	privKey   crypto.Signer  // step 5
	chain     []byte         // step 5
}

type keyResult struct {
	key crypto.Signer
	err error
}

// run places (or resumes) the order and sees it through; whatever happens, what
// it presented is withdrawn before it returns (or, if the process dies first,
// by the next sync, from the journal).
func (o *order) run(ctx context.Context) result {
	o.announce()
	// The solver Service first: what lies between placing the order and
	// journalling it is lost if the process dies there, so keep that short.
	err := o.c.cfg.Solver.Ensure(ctx, o.d.namespace)
	if err == nil {
		err = o.placeAndPresent(ctx)
	}
	if err == nil {
		err = o.selfCheck(ctx)
	}
	if err == nil {
		err = o.finalize(ctx)
	}
	if err == nil && !o.stillWanted() {
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
	o.c.event(o.d, corev1.EventTypeNormal, "Issuing", fmt.Sprintf("ordering a certificate for %s from %s (%s)",
		strings.Join(o.d.hosts, ", "), o.c.cfg.Issuer.DirectoryURL(), o.why.message()))
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
	req := core.OrderRequest{Hosts: o.d.hosts, Profile: o.d.options.profile, Resume: o.resume, KeyType: o.d.options.keyType}
	if o.why.why == reasonRenewal {
		req.Replaces = o.why.leaf
	}
	placed, err := o.c.cfg.Issuer.Order(ctx, req)
	if err != nil {
		return fmt.Errorf("new order: %w", err)
	}
	o.placed = placed
	o.log = o.log.With("order", placed.URL)
	if req.Replaces != nil && !placed.Replacing {
		o.c.event(o.d, corev1.EventTypeNormal, "NotReplacement", "the CA did not take the order as a replacement of the current certificate: ordered without it")
	}
	o.log.Info("order placed", "resumed", placed.Resumed, "challenges", len(placed.Challenges))
	return nil
}

// present is step 3: the challenges answer through the Ingress.
func (o *order) present(ctx context.Context) error {
	if len(o.placed.Challenges) == 0 {
		return nil // every authorization is valid already
	}
	for _, ch := range o.placed.Challenges {
		if o.d.hostIngress[strings.ToLower(ch.Host)] == nil {
			return fmt.Errorf("the CA asked to validate %s, which is not in the order", ch.Host)
		}
	}
	o.presented = true
	err := o.c.presenter.present(ctx, o.d, o.placed)
	if err == nil {
		o.c.cfg.Fault(core.FaultPathsInserted)
	}
	return err
}

// selfCheck is step 4: every challenge answers through the ingress, then the CA
// is told to validate.
func (o *order) selfCheck(ctx context.Context) error {
	if len(o.placed.Challenges) == 0 {
		return nil
	}
	if err := o.c.presenter.check(ctx, o.d, o.placed); err != nil {
		o.c.cfg.Solver.Forget(o.d.namespace)
		return err
	}
	o.c.cfg.Fault(core.FaultSelfChecked)
	return o.c.cfg.Issuer.Validate(ctx, o.placed)
}

// prepareKey readies step 5's key once the order is placed: the key the
// Issuer makes again for this order in any process (so that an order
// finalized before a crash can be finished), or else a fresh one, made while
// the order waits on the ingress and the CA, since that can take seconds (RSA
// 4096).
func (o *order) prepareKey(ctx context.Context) {
	o.newKey = make(chan keyResult, 1)
	if key, ok, err := o.c.cfg.Issuer.OrderKey(ctx, o.placed, o.d.options.keyType); ok || err != nil {
		o.newKey <- keyResult{key, err}
		return
	}
	go func() {
		key, err := o.c.cfg.Secrets.NewKey(o.d.options.keyType)
		o.newKey <- keyResult{key, err}
	}()
}

// finalize is step 5: the order's key, and the certificate for it.
func (o *order) finalize(ctx context.Context) error {
	k := <-o.newKey
	if k.err != nil {
		return k.err
	}
	key := k.key
	chain, err := o.c.cfg.Issuer.Finalize(ctx, o.placed, key)
	if err != nil {
		return err
	}
	o.privKey, o.chain = key, chain
	return nil
}

// stillWanted reports whether an Ingress still asks for the certificate (the
// annotation may have been removed, or the Ingresses deleted, meanwhile).
func (o *order) stillWanted() bool {
	return slices.ContainsFunc(o.c.indexed(indexCert, o.key), optedIn)
}

// store is step 6: the Secret holds the certificate.
func (o *order) store(ctx context.Context) error {
	err := o.c.cfg.Secrets.Write(ctx, o.current, o.d.namespace, o.d.secret, o.chain, o.privKey, o.c.cfg.Issuer.DirectoryURL(), o.d.options.profile)
	if err == nil {
		o.c.cfg.Fault(core.FaultSecretWritten)
	}
	return err
}

// restore is step 7: the paths come out, in the same Update that makes spec.tls
// name the Secret when the order succeeded. It reports the order's outcome.
func (o *order) restore(ctx context.Context, err error) result {
	o.c.cfg.Fault(core.FaultBeforeRestore)
	cleanupCtx, cancel := cleanupContext(ctx)
	defer cancel()
	cleanup := o.c.presenter.withdraw(cleanupCtx, o.d, o.placed, o.presented, err == nil)
	switch {
	case err != nil && ctx.Err() != nil:
		o.log.Info("order interrupted by shutdown", "err", err)
		return result{err: errors.Join(err, cleanup)}
	case err != nil:
		return o.failed(errors.Join(err, cleanup))
	}
	o.succeeded()
	r := result{err: cleanup, issued: issuedOf(o.chain)}
	if o.why.why == reasonRenewal {
		r.refund = o.start
	}
	if cleanup != nil {
		r.failed = fingerprint(o.d)
	}
	return r
}

// failed reports a failed order.
func (o *order) failed(err error) result {
	o.c.cfg.Metrics.Issuance(o.kind(), "failure", o.c.now().Sub(o.start))
	o.c.event(o.d, corev1.EventTypeWarning, "Failed", "certificate order failed: "+err.Error())
	return result{err: err, failed: fingerprint(o.d)}
}

// succeeded tells of a stored certificate.
func (o *order) succeeded() {
	took := o.c.now().Sub(o.start)
	o.c.cfg.Metrics.Issuance(o.kind(), "success", took)
	notAfter := "?"
	if l := parseLeaf(o.chain); l != nil {
		notAfter = l.NotAfter.UTC().Format(time.RFC3339)
	}
	verb, reasonName := "issued", "Issued"
	if o.kind() == "renew" {
		verb, reasonName = "renewed", "Renewed"
	}
	o.log.Info("certificate "+verb, "took", took.String(), "not_after", notAfter)
	o.c.event(o.d, corev1.EventTypeNormal, reasonName, fmt.Sprintf("certificate for %s %s in %s, stored in Secret %s, valid until %s",
		strings.Join(o.d.hosts, ", "), verb, took.Round(time.Millisecond), o.d.secret, notAfter))
}

// abandon cleans up after an order whose certificate nobody wants any more.
func (o *order) abandon(ctx context.Context) result {
	cleanupCtx, cancel := cleanupContext(ctx)
	defer cancel()
	o.log.Info("order abandoned: no Ingress asks for the certificate any more")
	o.c.presenter.abandon(cleanupCtx, o.d, o.placed, o.presented)
	return result{}
}

func (o *order) kind() string {
	if o.why.leaf != nil {
		return "renew"
	}
	return "issue"
}

// cleanupContext is for undoing our Ingress edits: it outlives ctx's cancellation
// (a shutdown must not leave challenge paths behind) but not by more than 10 s.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

// issuedOf identifies the leaf of chainPEM; nil if it does not parse.
func issuedOf(chainPEM []byte) *issuedCert {
	leaf := parseLeaf(chainPEM)
	if leaf == nil {
		return nil
	}
	return &issuedCert{serial: leaf.SerialNumber.String(), notBefore: leaf.NotBefore}
}

func parseLeaf(chainPEM []byte) *x509.Certificate {
	block, _ := pem.Decode(chainPEM)
	if block == nil {
		return nil
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return leaf
}
