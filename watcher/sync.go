package watcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
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
	ns, name, err := cache.SplitMetaNamespaceKey(key)
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
	r, ordering := c.reconcile(ctx, key, ns, name)
	if !ordering {
		c.flights.release(key) // its place in line, and a slot reserved for it, go to the next
		// No order for key is live now, so journalled paths for it are left
		// over from a failed attempt or a process that died: remove them.
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
func (c *Controller) reconcile(ctx context.Context, key, ns, name string) (r result, ordering bool) {
	ings := c.indexed(indexCert, key)
	if len(ings) == 0 {
		c.cfg.Metrics.DeleteCertificate(ns, name)
		c.forget(key)
		return result{}, false
	}
	d, problems := desiredFor(ns, name, ings)
	c.reportHostsWithoutTLS(ings)
	if d.options.profile == "" {
		d.options.profile = c.cfg.DefaultProfile
	}
	if len(problems) > 0 {
		c.report(key, problems)
		return result{healthy: true}, false
	}
	if err := c.releaseTakenOver(ctx, d); err != nil {
		return result{err: err}, false
	}
	sec, err := c.secretFor(ctx, ns, name)
	if err != nil {
		return result{err: err}, false
	}
	if sec != nil && !c.selector.Matches(labels.Set(sec.Labels)) {
		c.notOwned(key, d)
		return result{healthy: true}, false
	}
	st := c.stateFor(key)
	dec := c.decide(ctx, st, d, sec)
	if st.replacedMomentsAgo(dec.leaf) {
		return result{after: time.Second}, true // our new certificate is on its way to the cache; its event comes first
	}
	c.observe(d, dec)
	if dec.why == reasonNone {
		if err := c.finish(ctx, d, nil, true); err != nil {
			return result{err: err}, false
		}
		now := c.now()
		return result{healthy: true, after: max(time.Second, min(dec.renewAt.Sub(now), st.recheck.Sub(now)))}, false
	}
	return c.dispatch(ctx, key, st, d, dec, sec)
}

// dispatch starts an order for d unless a backoff or the hourly budget holds it
// back, or every slot is taken (then it waits its turn).
func (c *Controller) dispatch(ctx context.Context, key string, st *certState, d desired, dec decision, sec *corev1.Secret) (result, bool) {
	now := c.now()
	if wait := st.backingOff(fingerprint(d), now); wait > 0 {
		return result{after: wait}, false // a change of desired state ends it
	}
	if wait := st.orderBudget(now, c.cfg.MaxOrdersPerHour); wait > 0 {
		c.orderLimit(key, d, len(st.orders), wait)
		return result{after: wait}, false
	}
	o := &order{c: c, key: key, d: d, why: dec, current: sec, resume: c.journalledOrder(key),
		log: c.log.With("secret", key, "hosts", d.hosts), start: now}
	if !c.flights.start(key, urgency(dec), func() result { return o.run(ctx) }) {
		return result{}, true // a slot's end wakes it, most urgent first
	}
	st.spend(now)
	c.warnHostsDiffer(st, d)
	return result{}, true
}

// urgency orders waiting certificates: the current one's expiry; zero for new.
func urgency(dec decision) time.Time {
	if dec.leaf == nil {
		return time.Time{}
	}
	return dec.leaf.NotAfter
}

// warnHostsDiffer warns, once per desired state, that the Ingresses naming one
// Secret ask for different hosts.
func (c *Controller) warnHostsDiffer(st *certState, d desired) {
	if fp := fingerprint(d); d.mismatch && st.warnedOn != fp {
		st.warnedOn = fp
		c.event(d, corev1.EventTypeWarning, "HostsDiffer", fmt.Sprintf(
			"Ingresses naming Secret %s ask for different hosts: one certificate for all of them is ordered (%s)", d.secret, strings.Join(d.hosts, ", ")))
	}
}

// observe sets the certificate's metrics from the decision.
func (c *Controller) observe(d desired, dec decision) {
	switch {
	case dec.why == reasonNone || dec.why == reasonRenewal:
		c.cfg.Metrics.SetCertificate(d.namespace, d.secret, dec.leaf.NotAfter, dec.renewAt, true)
	case dec.leaf != nil:
		c.cfg.Metrics.SetCertificate(d.namespace, d.secret, dec.leaf.NotAfter, c.now(), false)
	}
}

// report tells of problems that stop the certificate.
func (c *Controller) report(key string, problems []problem) {
	for _, p := range problems {
		c.log.Warn("certificate not ordered", "ingress", p.ingress.Namespace+"/"+p.ingress.Name, "secret", key, "reason", p.reason, "problem", p.message)
		c.recorder.Event(p.ingress, corev1.EventTypeWarning, p.reason, p.message)
		c.cfg.Metrics.Problem(p.reason)
	}
}

// releaseTakenOver lets go of the spec.tls entries we added that their users
// have edited since (see releaseTLS), whatever else happens to the certificate.
func (c *Controller) releaseTakenOver(ctx context.Context, d desired) error {
	for _, ing := range d.ingresses {
		if !releaseTLS(ing.DeepCopy()) {
			continue
		}
		if err := c.finish(ctx, d, nil, false); err != nil {
			return err
		}
		return nil // finish went through every Ingress of d
	}
	return nil
}

// reportHostsWithoutTLS tells, once per change, of rule hosts that an opted-in
// Ingress's own spec.tls leaves out: they are served without TLS.
func (c *Controller) reportHostsWithoutTLS(ings []*networkingv1.Ingress) {
	for _, ing := range ings {
		hosts := hostsWithoutTLS(ing)
		id := ing.Namespace + "/" + ing.Name
		c.mu.Lock()
		seen, had := c.uncovered[id]
		if len(hosts) == 0 {
			delete(c.uncovered, id)
		} else {
			c.uncovered[id] = strings.Join(hosts, ",")
		}
		c.mu.Unlock()
		if had && seen == strings.Join(hosts, ",") || !had && len(hosts) == 0 {
			continue
		}
		c.cfg.Metrics.SetHostsWithoutTLS(ing.Namespace, ing.Name, hosts)
		if len(hosts) > 0 {
			c.recorder.Event(ing, corev1.EventTypeNormal, "HostWithoutTLS", fmt.Sprintf(
				"no spec.tls entry covers %s: served without TLS (add it to an entry's hosts to get a certificate for it)", quoted(strings.Join(hosts, ", "), 300)))
		}
	}
}

// notOwned tells that the Secret d names is someone else's.
func (c *Controller) notOwned(key string, d desired) {
	msg := fmt.Sprintf("Secret %s exists and is not managed by ingress-acme: it is left untouched and no certificate is ordered (delete it, or name another Secret in spec.tls)", d.secret)
	c.log.Warn("secret not owned", "secret", key)
	c.event(d, corev1.EventTypeWarning, "SecretNotOwned", msg)
	c.cfg.Metrics.Problem("SecretNotOwned")
	c.cfg.Metrics.DeleteCertificate(d.namespace, d.secret)
}

// orderLimit tells that the hourly order budget holds an order back.
func (c *Controller) orderLimit(key string, d desired, orders int, wait time.Duration) {
	msg := fmt.Sprintf("%d orders for Secret %s in the last hour, the most allowed: next order in %s", orders, d.secret, wait.Round(time.Second))
	c.log.Warn("order limit reached", "secret", key, "orders", orders, "wait", wait.Round(time.Second).String())
	c.event(d, corev1.EventTypeWarning, "OrderLimit", msg)
	c.cfg.Metrics.Problem("OrderLimit")
}

// journalledOrder is the order URL journalled for key on any Ingress, "" if none.
func (c *Controller) journalledOrder(key string) string {
	_, secret, _ := strings.Cut(key, "/")
	for _, ing := range c.indexed(indexJournal, key) {
		entries, _ := readJournal(ing)
		for _, e := range entries {
			if e.Secret == secret && e.Order != "" {
				return e.Order
			}
		}
	}
	return ""
}

// removeLeftovers removes the challenge paths journalled for key.
func (c *Controller) removeLeftovers(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	for _, ing := range c.indexed(indexJournal, key) {
		removed, err := c.editIngress(ctx, ns, ing.Name, false, func(i *networkingv1.Ingress) (bool, error) {
			return removePaths(i, name, c.cfg.Solver.Name()), nil
		})
		if err != nil && !errors.Is(err, errIngressGone) {
			return fmt.Errorf("remove leftover challenge paths from ingress %s: %w", ing.Name, err)
		}
		if removed {
			c.log.Info("removed leftover challenge paths", "ingress", ns+"/"+ing.Name, "secret", key)
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

// event records an Event on every Ingress that asks for d.
func (c *Controller) event(d desired, eventType, reason, message string) {
	if len(message) > 1000 {
		message = message[:1000] + "..."
	}
	for _, ing := range d.ingresses {
		c.recorder.Event(ing, eventType, reason, message)
	}
}
