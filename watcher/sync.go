package watcher

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

// errIngressGone is returned by editIngress when the Ingress no longer exists.
var errIngressGone = errors.New("ingress no longer exists")

// errPathsRemoved ends an order whose challenge paths someone else took out.
var errPathsRemoved = errors.New("the challenge paths were removed from the Ingress by someone else")

// ariRecheck is how often the CA's renewal information is read again for a
// certificate that is not yet due.
const ariRecheck = 6 * time.Hour

// sync brings the certificate key (namespace/secretName) to its desired state and
// says when to look at it again (0: only on change). It is idempotent: whatever
// state a previous run or process left, running it again converges.
func (c *Controller) sync(ctx context.Context, key string) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err // stopping: the queue still hands out what it holds
	}
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil || ns == "" {
		c.log.Error("invalid work queue key", "key", key)
		return 0, nil
	}
	// No order for key is live in this process now (the queue hands a key to one
	// worker at a time and orders run inside sync), so journalled paths for it are
	// left over from a failed attempt or a process that died: remove them.
	for _, ing := range c.indexed(indexJournal, key) {
		removed, err := c.editIngress(ctx, ns, ing.Name, false, func(i *networkingv1.Ingress) (bool, error) {
			return removePaths(i, name, c.cfg.Solver.Name()), nil
		})
		if err != nil && !errors.Is(err, errIngressGone) {
			return 0, fmt.Errorf("remove leftover challenge paths from ingress %s: %w", ing.Name, err)
		}
		if removed {
			c.log.Info("removed leftover challenge paths", "ingress", ns+"/"+ing.Name, "secret", key)
		}
	}

	ings := c.indexed(indexCert, key)
	if len(ings) == 0 {
		c.cfg.Metrics.DeleteCertificate(ns, name)
		c.forget(key)
		c.limiter.Forget(key)
		return 0, nil
	}
	d, problems := desiredFor(ns, name, ings)
	if d.options.profile == "" {
		d.options.profile = c.cfg.DefaultProfile
	}
	if len(problems) > 0 {
		for _, p := range problems {
			c.log.Warn("certificate not ordered", "ingress", ns+"/"+p.ingress.Name, "secret", key, "reason", p.reason, "problem", p.message)
			c.recorder.Event(p.ingress, corev1.EventTypeWarning, p.reason, p.message)
			c.cfg.Metrics.Problem(p.reason)
		}
		c.limiter.Forget(key)
		return 0, nil
	}

	sec, err := c.secretFor(ctx, ns, name)
	if err != nil {
		return 0, err
	}
	if sec != nil && !c.selector.Matches(labels.Set(sec.Labels)) {
		msg := fmt.Sprintf("Secret %s exists and is not managed by ingress-acme: it is left untouched and no certificate is ordered (delete it, or name another Secret in spec.tls)", name)
		c.log.Warn("secret not owned", "secret", key)
		c.event(d, corev1.EventTypeWarning, "SecretNotOwned", msg)
		c.cfg.Metrics.Problem("SecretNotOwned")
		c.cfg.Metrics.DeleteCertificate(ns, name)
		c.limiter.Forget(key)
		return 0, nil
	}

	st := c.stateFor(key)
	var leaf *x509.Certificate
	reason := ""
	if sec == nil {
		reason = "no certificate yet"
	} else {
		l, keyType, dir, err := c.cfg.Secrets.Read(sec)
		switch {
		case err != nil:
			reason = "the Secret holds no usable certificate: " + err.Error()
		case !covers(l, d.hosts):
			reason, leaf = "hosts changed", l
		case keyType != d.options.keyType:
			reason, leaf = "key type changed", l
		case dir != c.cfg.Issuer.DirectoryURL():
			reason, leaf = "ACME directory changed", l
		default:
			leaf = l
		}
	}
	if reason == "" {
		renewAt := c.renewAt(ctx, st, leaf)
		if c.now().Before(renewAt) {
			if err := c.finish(ctx, d, nil, true); err != nil {
				return 0, err
			}
			c.cfg.Metrics.SetCertificate(ns, name, leaf.NotAfter, renewAt, true)
			c.limiter.Forget(key)
			return max(time.Second, min(renewAt.Sub(c.now()), st.recheck.Sub(c.now()))), nil
		}
		reason = "renewal due"
		c.cfg.Metrics.SetCertificate(ns, name, leaf.NotAfter, renewAt, true)
	} else if leaf != nil {
		c.cfg.Metrics.SetCertificate(ns, name, leaf.NotAfter, c.now(), false)
	}

	now := c.now()
	fp := fingerprint(d)
	if st.failedFor == fp && now.Before(st.retryAt) {
		return st.retryAt.Sub(now), nil // backing off after a failure; a change of desired state ends it
	}
	st.orders = slices.DeleteFunc(st.orders, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	if len(st.orders) >= c.cfg.MaxOrdersPerHour {
		wait := st.orders[0].Add(time.Hour).Sub(now)
		msg := fmt.Sprintf("%d orders for Secret %s in the last hour, the most allowed: next order in %s", len(st.orders), name, wait.Round(time.Second))
		c.log.Warn("order limit reached", "secret", key, "orders", len(st.orders), "wait", wait.Round(time.Second).String())
		c.event(d, corev1.EventTypeWarning, "OrderLimit", msg)
		c.cfg.Metrics.Problem("OrderLimit")
		return wait, nil
	}
	return c.order(ctx, key, d, sec, leaf, reason, st)
}

// order places one order for d, presents its challenges, stores the certificate
// and cleans up. Whatever happens, the paths it inserted are removed before it
// returns (or, if this process dies first, by the next sync from the journal).
func (c *Controller) order(ctx context.Context, key string, d desired, current *corev1.Secret, leaf *x509.Certificate, reason string, st *certState) (time.Duration, error) {
	start := c.now()
	kind := "issue"
	if leaf != nil {
		kind = "renew"
	}
	st.orders = append(st.orders, start)
	fp := fingerprint(d)
	if d.mismatch && st.warnedOn != fp {
		st.warnedOn = fp
		c.event(d, corev1.EventTypeWarning, "HostsDiffer", fmt.Sprintf(
			"Ingresses naming Secret %s ask for different hosts: one certificate for all of them is ordered (%s)", d.secret, strings.Join(d.hosts, ", ")))
	}
	log := c.log.With("secret", key, "hosts", d.hosts)
	log.Info("ordering certificate", "reason", reason)
	c.event(d, corev1.EventTypeNormal, "Issuing", fmt.Sprintf("ordering a certificate for %s from %s (%s)", strings.Join(d.hosts, ", "), c.cfg.Issuer.DirectoryURL(), reason))

	// mu guards tokens and inserted, written by present and read by the clean-up.
	var mu sync.Mutex
	var tokens []string
	inserted := map[string]bool{} // Ingress names that may hold our paths
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, t := range tokens {
			c.cfg.Challenges.Remove(t)
		}
	}()
	present := func(ctx context.Context, challenges []Challenge) error {
		byIngress := map[string][]Entry{}
		mu.Lock()
		for _, ch := range challenges {
			ing := d.hostIngress[strings.ToLower(ch.Host)]
			if ing == nil {
				mu.Unlock()
				return fmt.Errorf("the CA asked to validate %s, which is not in the order", ch.Host)
			}
			c.cfg.Challenges.Present(ch.Host, ch.Token, ch.KeyAuth)
			tokens = append(tokens, ch.Token)
			byIngress[ing.Name] = append(byIngress[ing.Name], Entry{Secret: d.secret, Host: strings.ToLower(ch.Host), Token: ch.Token})
			inserted[ing.Name] = true
		}
		mu.Unlock()
		for _, name := range sortedKeys(byIngress) {
			_, err := c.editIngress(ctx, d.namespace, name, false, func(ing *networkingv1.Ingress) (bool, error) {
				return insertPaths(ing, byIngress[name], c.cfg.Solver.Name(), d.options.pathType)
			})
			if err != nil {
				return fmt.Errorf("insert challenge paths into ingress %s: %w", name, err)
			}
		}
		c.cfg.Fault(FaultPathsInserted)
		// Self-check every challenge, giving up at once if someone else takes our
		// paths out meanwhile (say, by replacing the spec): they are not re-added,
		// and the order fails; a new one follows after the backoff.
		checkCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		stop := c.watchPaths(checkCtx, d.namespace, byIngress, cancel)
		errs := make([]error, len(challenges))
		var wg sync.WaitGroup
		for i, ch := range challenges {
			wg.Go(func() { errs[i] = c.cfg.SelfCheck.Check(checkCtx, ch.Host, ch.Token, ch.KeyAuth) })
		}
		wg.Wait()
		stop()
		if cause := context.Cause(checkCtx); errors.Is(cause, errPathsRemoved) {
			return cause
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		c.cfg.Fault(FaultSelfChecked)
		return nil
	}

	var chain []byte
	err := c.cfg.Solver.Ensure(ctx, d.namespace)
	if err == nil {
		var replaces *x509.Certificate
		if reason == "renewal due" {
			replaces = leaf
		}
		privateKey, kerr := c.cfg.Secrets.NewKey(d.options.keyType)
		if kerr != nil {
			err = kerr
		} else {
			chain, err = c.cfg.Issuer.Issue(ctx, d.hosts, privateKey, replaces, d.options.profile, func(ctx context.Context, chs []Challenge) error {
				err := present(ctx, chs)
				if err != nil {
					c.cfg.Solver.Forget(d.namespace)
				}
				return err
			})
			if err == nil {
				if !slices.ContainsFunc(c.indexed(indexCert, key), optedIn) {
					cleanupCtx, cancel := cleanupContext(ctx)
					defer cancel()
					c.abandon(cleanupCtx, d, inserted)
					return 0, nil
				}
				err = c.cfg.Secrets.Write(ctx, current, d.namespace, d.secret, chain, privateKey, c.cfg.Issuer.DirectoryURL())
				if err == nil {
					c.cfg.Fault(FaultSecretWritten)
				}
			}
		}
	}
	// Only now, with the Secret written (or the order failed), come the paths out,
	// in the same Update that makes spec.tls name the Secret.
	c.cfg.Fault(FaultBeforeRestore)
	cleanupCtx, cancel := cleanupContext(ctx)
	defer cancel()
	mu.Lock()
	cleanup := c.finish(cleanupCtx, d, inserted, err == nil)
	mu.Unlock()
	took := c.now().Sub(start)
	if err != nil && ctx.Err() != nil {
		log.Info("order interrupted by shutdown", "err", err)
		return 0, errors.Join(err, cleanup)
	}
	if err != nil {
		st.failedFor = fp
		c.cfg.Metrics.Issuance(kind, "failure", took)
		c.event(d, corev1.EventTypeWarning, "Failed", "certificate order failed: "+err.Error())
		return 0, errors.Join(err, cleanup)
	}
	st.failedFor, st.serial = "", ""
	c.limiter.Forget(key)
	c.cfg.Metrics.Issuance(kind, "success", took)
	notAfter := "?"
	if l := parseLeaf(chain); l != nil {
		notAfter = l.NotAfter.UTC().Format(time.RFC3339)
	}
	verb, reasonName := "issued", "Issued"
	if kind == "renew" {
		verb, reasonName = "renewed", "Renewed"
	}
	log.Info("certificate "+verb, "took", took.String(), "not_after", notAfter)
	c.event(d, corev1.EventTypeNormal, reasonName, fmt.Sprintf("certificate for %s %s in %s, stored in Secret %s, valid until %s",
		strings.Join(d.hosts, ", "), verb, took.Round(time.Millisecond), d.secret, notAfter))
	if cleanup != nil {
		return 0, cleanup
	}
	return 0, nil // the Secret's update event brings the next sync, which schedules renewal
}

// cleanupContext is for undoing our Ingress edits: it outlives ctx's cancellation
// (a shutdown must not leave challenge paths behind) but not by more than 10 s.
func cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

// abandon cleans up after an order whose certificate nobody wants any more (the
// annotation was removed, or the Ingresses deleted, while it ran).
func (c *Controller) abandon(ctx context.Context, d desired, inserted map[string]bool) {
	c.log.Info("order abandoned: no Ingress asks for the certificate any more", "secret", d.namespace+"/"+d.secret)
	for name := range inserted {
		// Read afresh: an insert interrupted in flight may have landed unseen.
		_, err := c.editIngress(ctx, d.namespace, name, true, func(ing *networkingv1.Ingress) (bool, error) {
			return removePaths(ing, d.secret, c.cfg.Solver.Name()), nil
		})
		if err == nil {
			if ing, gerr := c.ingresses.Ingresses(d.namespace).Get(name); gerr == nil {
				c.recorder.Event(ing, corev1.EventTypeNormal, "Abandoned", fmt.Sprintf("order for Secret %s abandoned: the Ingress no longer asks for it", d.secret))
			}
		} else if !errors.Is(err, errIngressGone) {
			c.log.Error("abandoned order: clean-up failed", "ingress", d.namespace+"/"+name, "err", err)
		}
	}
}

// finish removes our paths from the Ingresses in inserted and, when withTLS, makes
// every Ingress that asks for the certificate without spec.tls name its Secret;
// one Update per Ingress, none when nothing changes. Deleted Ingresses are skipped.
func (c *Controller) finish(ctx context.Context, d desired, inserted map[string]bool, withTLS bool) error {
	var errs []error
	for _, ing := range d.ingresses {
		spec := d.ownHosts[ing.Name]
		if !inserted[ing.Name] && !(withTLS && ensureTLS(ing.DeepCopy(), d.secret, spec)) {
			continue
		}
		// After an interrupted insert (shutdown, API error) the paths may be in
		// without the cache knowing yet: read afresh then.
		fresh := inserted[ing.Name] && !journals(c.cached(d.namespace, ing.Name), d.secret)
		_, err := c.editIngress(ctx, d.namespace, ing.Name, fresh, func(i *networkingv1.Ingress) (bool, error) {
			changed := removePaths(i, d.secret, c.cfg.Solver.Name())
			if withTLS && optedIn(i) && ensureTLS(i, d.secret, spec) {
				changed = true
			}
			return changed, nil
		})
		if err != nil && !errors.Is(err, errIngressGone) {
			errs = append(errs, fmt.Errorf("clean up ingress %s: %w", ing.Name, err))
		}
	}
	return errors.Join(errs...)
}

// watchPaths checks the Ingress cache every 50 ms until stop is called and calls
// cancel(errPathsRemoved) if an Ingress of byIngress no longer holds its paths.
func (c *Controller) watchPaths(ctx context.Context, namespace string, byIngress map[string][]Entry, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for name, entries := range byIngress {
				ing, err := c.ingresses.Ingresses(namespace).Get(name)
				if apierrors.IsNotFound(err) || err == nil && !hasPaths(ing, entries) {
					cancel(fmt.Errorf("ingress %s: %w", name, errPathsRemoved))
					return
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// hasPaths reports whether ing routes every entry's path.
func hasPaths(ing *networkingv1.Ingress, entries []Entry) bool {
	for _, e := range entries {
		found := false
		for _, r := range ing.Spec.Rules {
			if r.HTTP == nil || !strings.EqualFold(r.Host, e.Host) {
				continue
			}
			if slices.ContainsFunc(r.HTTP.Paths, func(p networkingv1.HTTPIngressPath) bool { return p.Path == e.Path() }) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// editIngress applies edit to a copy of the Ingress and updates it, with the
// resourceVersion it was read at; on a conflict it reads the Ingress afresh from
// the API server and applies edit again, so a concurrent change is never lost.
// It reads the cache first, or the API server when fresh is set (when the cache
// may not have our own last write yet). It never creates an Ingress:
// errIngressGone when it no longer exists. It returns whether it wrote.
func (c *Controller) editIngress(ctx context.Context, namespace, name string, fresh bool, edit func(*networkingv1.Ingress) (bool, error)) (bool, error) {
	api := c.cfg.Client.NetworkingV1().Ingresses(namespace)
	var ing *networkingv1.Ingress
	var err error
	if fresh {
		ing, err = api.Get(ctx, name, metav1.GetOptions{})
	} else {
		ing, err = c.ingresses.Ingresses(namespace).Get(name)
	}
	for attempt := 1; ; attempt++ {
		if apierrors.IsNotFound(err) {
			return false, errIngressGone
		}
		if err != nil {
			return false, err
		}
		next := ing.DeepCopy()
		changed, err := edit(next)
		if err != nil || !changed {
			return false, err
		}
		updated, err := api.Update(ctx, next, metav1.UpdateOptions{})
		switch {
		case err == nil:
			c.awaitCache(namespace, name, ing.ResourceVersion, updated.ResourceVersion)
			return true, nil
		case apierrors.IsNotFound(err):
			return false, errIngressGone
		case !apierrors.IsConflict(err) || attempt >= 10:
			return false, err
		}
		ing, err = api.Get(ctx, name, metav1.GetOptions{})
	}
}

// awaitCache waits, for at most a second, until the Ingress cache holds version
// written of namespace/name or a later one (anything but old), so that the next
// sync reads our write and not what it replaced (which would look like leftover
// challenge paths and cost a conflict).
func (c *Controller) awaitCache(namespace, name, old, written string) {
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		ing, err := c.ingresses.Ingresses(namespace).Get(name)
		if err != nil || ing.ResourceVersion == written || ing.ResourceVersion != old {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// cached returns the cached Ingress, nil if there is none.
func (c *Controller) cached(namespace, name string) *networkingv1.Ingress {
	ing, err := c.ingresses.Ingresses(namespace).Get(name)
	if err != nil {
		return nil
	}
	return ing
}

// journals reports whether ing journals challenge paths of secret.
func journals(ing *networkingv1.Ingress, secret string) bool {
	if ing == nil {
		return false
	}
	entries, err := readJournal(ing)
	return err != nil || slices.ContainsFunc(entries, func(e Entry) bool { return e.Secret == secret })
}

// indexed lists the Ingresses under key in index.
func (c *Controller) indexed(index, key string) []*networkingv1.Ingress {
	objs, err := c.ingIndexer.ByIndex(index, key)
	if err != nil {
		return nil
	}
	ings := make([]*networkingv1.Ingress, 0, len(objs))
	for _, o := range objs {
		ings = append(ings, o.(*networkingv1.Ingress))
	}
	slices.SortFunc(ings, func(a, b *networkingv1.Ingress) int { return strings.Compare(a.Name, b.Name) })
	return ings
}

// secretFor returns the Secret namespace/name: ours from the cache, else whatever
// the API server has (a Secret not of ours, or ours not yet in the cache).
func (c *Controller) secretFor(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	sec, err := c.secrets.Secrets(namespace).Get(name)
	if err == nil {
		return sec, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}
	return c.cfg.Secrets.Get(ctx, namespace, name)
}

// renewAt is when leaf should be renewed: a random time in the CA's suggested
// window when it offers one (asked again every ariRecheck), else RenewBefore (or a
// third of the lifetime) ahead of expiry, less a random jitter of up to 2% of the
// lifetime so that certificates issued together do not renew together.
func (c *Controller) renewAt(ctx context.Context, st *certState, leaf *x509.Certificate) time.Time {
	now := c.now()
	serial := leaf.SerialNumber.String()
	if st.serial == serial && now.Before(st.recheck) {
		return st.renewAt
	}
	start, end, ok, err := c.cfg.Issuer.RenewalWindow(ctx, leaf)
	if err != nil {
		c.log.Warn("renewal information unavailable, using the fallback", "serial", serial, "err", err)
	}
	var at time.Time
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)
	if ok {
		at = start.Add(time.Duration(rand.Int64N(int64(end.Sub(start)) + 1)))
		// Whatever the window says, leave a tenth of the lifetime for retries.
		if latest := leaf.NotAfter.Add(-lifetime / 10); at.After(latest) {
			at = latest
		}
	} else {
		before := c.cfg.RenewBefore
		if before <= 0 || before >= lifetime {
			before = lifetime / 3
		}
		at = leaf.NotAfter.Add(-before).Add(-time.Duration(rand.Int64N(int64(lifetime/50) + 1)))
	}
	st.serial, st.renewAt, st.recheck = serial, at, now.Add(ariRecheck)
	if at.Before(st.recheck) {
		st.recheck = at
	}
	return at
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

func covers(leaf *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if !slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return strings.EqualFold(n, h) }) {
			return false
		}
	}
	return true
}

// fingerprint identifies what d asks for, to tell when it changes.
func fingerprint(d desired) string {
	return strings.Join(d.hosts, ",") + "|" + d.options.keyType + "|" + string(d.options.pathType) + "|" + d.options.profile
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
