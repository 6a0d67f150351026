package watcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// errIngressGone is returned by editIngress when the Ingress no longer exists.
var errIngressGone = errors.New("ingress no longer exists")

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
			c.awaitCache(ctx, namespace, name, ing.ResourceVersion, updated.ResourceVersion)
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
func (c *Controller) awaitCache(ctx context.Context, namespace, name, old, written string) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_ = c.waitIngress(ctx, namespace, name, func(ing *networkingv1.Ingress) bool {
		return ing == nil || ing.ResourceVersion == written || ing.ResourceVersion != old
	})
}

// waitIngress returns nil as soon as done holds for the cached Ingress (nil
// when the cache has none), checked now and at every informer event about it;
// ctx's error if ctx ends first.
func (c *Controller) waitIngress(ctx context.Context, namespace, name string, done func(*networkingv1.Ingress) bool) error {
	key := namespace + "/" + name
	for {
		changed := c.ingressEvents.next(key)
		if done(c.cached(namespace, name)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
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

// finish removes our paths from d's Ingresses (those in inserted, and any that
// journal some) and, when withTLS, makes every Ingress that asks for the
// certificate without spec.tls name its Secret (see ensureTLS); it also lets go
// of a spec.tls entry the user has taken over (see releaseTLS). One Update per
// Ingress, none when nothing changes. Deleted Ingresses are skipped.
func (c *Controller) finish(ctx context.Context, d desired, inserted map[string]bool, withTLS bool) error {
	var errs []error
	for _, ing := range d.ingresses {
		spec := d.ownHosts[ing.Name]
		journalled := journals(c.cached(d.namespace, ing.Name), d.secret)
		if !inserted[ing.Name] && !journalled && !restores(ing.DeepCopy(), d.secret, spec, withTLS) {
			continue
		}
		// After an interrupted insert (shutdown, API error) the paths may be in
		// without the cache knowing yet: read afresh then.
		fresh := inserted[ing.Name] && !journalled
		released := false
		_, err := c.editIngress(ctx, d.namespace, ing.Name, fresh, func(i *networkingv1.Ingress) (bool, error) {
			released = releaseTLS(i)
			changed := removePaths(i, d.secret, c.cfg.Solver.Name()) || released
			return restores(i, d.secret, spec, withTLS) || changed, nil
		})
		if err != nil && !errors.Is(err, errIngressGone) {
			errs = append(errs, fmt.Errorf("clean up ingress %s: %w", ing.Name, err))
		} else if err == nil && released {
			c.recorder.Event(ing, corev1.EventTypeNormal, "TLSOwnedByUser", "spec.tls was edited: the entry ingress-acme added is yours from now on and is no longer kept in step with the rule hosts")
		}
	}
	return errors.Join(errs...)
}

// restores applies to ing what a restore changes besides our paths, and
// reports whether that changed ing.
func restores(ing *networkingv1.Ingress, secret string, spec certSpec, withTLS bool) bool {
	released := releaseTLS(ing)
	return withTLS && optedIn(ing) && ensureTLS(ing, secret, spec) || released
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
