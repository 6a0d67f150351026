package watcher

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"

	"github.com/ingress-acme/ingress-acme/core"
)

// ariRecheck is how often, at most, the CA's renewal information is read again
// for a certificate that is not yet due (sooner when the CA says so).
const ariRecheck = 6 * time.Hour

// sync brings the certificate key (namespace/secretName) to its desired state:
// step 1 (decide) here, steps 2 to 7 as an order in flight (see order), step 8
// (schedule) by the worker from the result (see settle). It is idempotent:
// whatever state a previous run or process left, running it again converges.
func (c *Controller) sync(ctx context.Context, key string) result {
	if err := ctx.Err(); err != nil {
		return result{err: err} // stopping: the queue still hands out what it holds
	}
	ns, _, err := cache.SplitMetaNamespaceKey(key)
	if err != nil || ns == "" {
		c.log.Error("invalid work queue key", "key", key)
		return result{}
	}
	if c.flights.busy(key) {
		return result{} // the order's end queues the key again
	}
	if r, ok := c.collect(key); ok && r.err != nil {
		c.flights.release(key)
		return r
	}
	r, ordering := c.reconcile(ctx, key)
	if !ordering {
		c.flights.release(key) // its place in line, and a slot reserved for it, go to the next
		// No order for key is live now, so what solvers journalled for it is
		// left over from a failed attempt or a process that died: remove it.
		if err := c.removeLeftovers(ctx, key); err != nil {
			return result{err: err}
		}
	}
	return r
}

// collect takes the result of key's finished order into its state.
func (c *Controller) collect(key string) (result, bool) {
	r, ok := c.flights.collect(key)
	if !ok {
		return r, false
	}
	st := c.stateFor(key)
	if r.issued != nil {
		st.issued = r.issued
	}
	if !r.refund.IsZero() {
		st.refund(r.refund)
	}
	return r, true
}

// reconcile decides and, when an order is due, starts (or lines up) one;
// ordering tells that an order is in flight or waiting for a slot, so the
// journal must stay.
func (c *Controller) reconcile(ctx context.Context, key string) (r result, ordering bool) {
	w, ok := c.want(key)
	if !ok {
		ns, name, _ := cache.SplitMetaNamespaceKey(key)
		c.cfg.Metrics.DeleteCertificate(ns, name)
		c.forget(key)
		return result{}, false
	}
	if err := w.src.Sync(ctx, w.req, false); err != nil {
		return result{err: err}, false
	}
	if len(w.req.Problems) > 0 {
		c.report(w, w.req.Problems)
		return result{healthy: true}, false
	}
	sec, err := c.secretFor(ctx, w.req.Namespace, w.req.Secret)
	if err != nil {
		return result{err: err}, false
	}
	if sec != nil && !core.Owned(sec.Labels) {
		c.notOwned(w)
		return result{healthy: true}, false
	}
	st := c.stateFor(key)
	dec := c.decide(ctx, st, w, sec)
	if st.replacedMomentsAgo(dec.leaf) {
		return result{after: time.Second}, true // our new certificate is on its way to the cache; its event comes first
	}
	c.observe(w.req, dec)
	switch dec.why {
	case reasonNone:
		return c.upToDate(ctx, st, w, dec), false
	case reasonSecretKeys:
		return c.rewrite(ctx, w, sec), false
	}
	return c.dispatch(ctx, st, w, dec, sec)
}

// upToDate makes the askers name the certificate, which needs no order, and
// says when to look again.
func (c *Controller) upToDate(ctx context.Context, st *certState, w wanted, dec decision) result {
	if err := w.src.Sync(ctx, w.req, true); err != nil {
		return result{err: err}
	}
	now := c.now()
	return result{healthy: true, after: max(time.Second, min(dec.renewAt.Sub(now), st.recheck.Sub(now)))}
}

// rewrite gives the Secret the keys asked for, with the certificate it holds.
func (c *Controller) rewrite(ctx context.Context, w wanted, sec *corev1.Secret) result {
	if err := c.cfg.Secrets.Rewrite(ctx, sec, w.req); err != nil {
		return result{err: err, failed: w.req.Fingerprint()}
	}
	return result{after: time.Second} // judged again once the cache has it
}

// dispatch starts an order for w unless a backoff or the hourly budget holds it
// back, or every slot is taken (then it waits its turn).
func (c *Controller) dispatch(ctx context.Context, st *certState, w wanted, dec decision, sec *corev1.Secret) (result, bool) {
	now := c.now()
	key := w.req.Key()
	if wait := st.backingOff(w.req.Fingerprint(), now); wait > 0 {
		return result{after: wait}, false // a change of desired state ends it
	}
	if wait := st.orderBudget(now, c.cfg.MaxOrdersPerHour); wait > 0 {
		c.orderLimit(w, len(st.orders), wait)
		return result{after: wait}, false
	}
	o := &order{c: c, w: w, why: dec, current: sec, resume: c.journalledOrder(key),
		log: c.log.With("secret", key, "hosts", w.req.Hosts), start: now}
	if !c.flights.start(key, urgency(dec), func() result { return o.run(ctx) }) {
		return result{}, true // a slot's end wakes it, most urgent first
	}
	st.spend(now)
	c.warnOnce(st, w)
	return result{}, true
}

// urgency orders waiting certificates: the current one's expiry; zero for new.
func urgency(dec decision) time.Time {
	if dec.leaf == nil {
		return time.Time{}
	}
	return dec.leaf.NotAfter
}

// warnOnce says the request's warnings (say, askers that want different
// hosts), once per desired state.
func (c *Controller) warnOnce(st *certState, w wanted) {
	if fp := w.req.Fingerprint(); len(w.req.Warnings) > 0 && st.warnedOn != fp {
		st.warnedOn = fp
		for _, p := range w.req.Warnings {
			c.event(w, corev1.EventTypeWarning, p.Reason, p.Message)
		}
	}
}

// observe sets the certificate's metrics from the decision.
func (c *Controller) observe(req core.Request, dec decision) {
	switch {
	case dec.why == reasonNone || dec.why == reasonRenewal || dec.why == reasonSecretKeys:
		c.cfg.Metrics.SetCertificate(req.Namespace, req.Secret, dec.leaf.NotAfter, dec.renewAt, true)
	case dec.leaf != nil:
		c.cfg.Metrics.SetCertificate(req.Namespace, req.Secret, dec.leaf.NotAfter, c.now(), false)
	}
}

// report tells of problems that stop the certificate.
func (c *Controller) report(w wanted, problems []core.Problem) {
	for _, p := range problems {
		c.log.Warn("certificate not ordered", strings.ToLower(p.Object.Kind), p.Object.String(), "secret", w.req.Key(), "reason", p.Reason, "problem", p.Message)
		w.src.Event(p.Object, corev1.EventTypeWarning, p.Reason, p.Message)
		c.cfg.Metrics.Problem(p.Reason)
	}
}

// notOwned tells that the Secret w names is someone else's.
func (c *Controller) notOwned(w wanted) {
	msg := fmt.Sprintf("Secret %s exists and is not managed by ingress-acme: it is left untouched and no certificate is ordered (delete it, or name another Secret in spec.tls)", w.req.Secret)
	c.log.Warn("secret not owned", "secret", w.req.Key())
	c.event(w, corev1.EventTypeWarning, "SecretNotOwned", msg)
	c.cfg.Metrics.Problem("SecretNotOwned")
	c.cfg.Metrics.DeleteCertificate(w.req.Namespace, w.req.Secret)
}

// orderLimit tells that the hourly order budget holds an order back.
func (c *Controller) orderLimit(w wanted, orders int, wait time.Duration) {
	msg := fmt.Sprintf("%d orders for Secret %s in the last hour, the most allowed: next order in %s", orders, w.req.Secret, wait.Round(time.Second))
	c.log.Warn("order limit reached", "secret", w.req.Key(), "orders", orders, "wait", wait.Round(time.Second).String())
	c.event(w, corev1.EventTypeWarning, "OrderLimit", msg)
	c.cfg.Metrics.Problem("OrderLimit")
}

// journalledOrder is the order URL a solver journalled for key, "" if none.
func (c *Controller) journalledOrder(key string) string {
	for _, s := range c.cfg.Solvers {
		if url := s.Journalled(key); url != "" {
			return url
		}
	}
	return ""
}

// removeLeftovers has every solver remove what it journalled for key.
func (c *Controller) removeLeftovers(ctx context.Context, key string) error {
	for _, s := range c.cfg.Solvers {
		if err := s.Leftovers(ctx, key); err != nil {
			return err
		}
	}
	return nil
}

// secretFor returns the Secret namespace/name: ours from the cache, else whatever
// the API server has (a Secret not of ours, or ours not yet in the cache).
func (c *Controller) secretFor(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	sec, err := c.secretLister.Secrets(namespace).Get(name)
	if err == nil {
		return sec, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	return c.cfg.Secrets.Get(ctx, namespace, name)
}

// event records an Event on every object that asks for w's certificate.
func (c *Controller) event(w wanted, eventType, reason, message string) {
	if len(message) > 1000 {
		message = message[:1000] + "..."
	}
	for _, a := range w.req.Askers {
		w.src.Event(a.Ref, eventType, reason, message)
	}
}
