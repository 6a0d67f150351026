package ingress

import (
	"context"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// Edit applies edit to a copy of the Ingress and updates it, with the
// resourceVersion it was read at; on a conflict it reads the Ingress afresh from
// the API server and applies edit again, so a concurrent change is never lost.
// It reads the cache first, or the API server when fresh is set (when the cache
// may not have our own last write yet). It never creates an Ingress: core.ErrGone
// when it no longer exists. Once it wrote, it waits (a second at most) for the
// cache to hold the write, so that the next reader sees it and not what it
// replaced. It returns whether it wrote.
func (s *Source) Edit(ctx context.Context, namespace, name string, fresh bool, edit func(*networkingv1.Ingress) (bool, error)) (bool, error) {
	api := s.cfg.Client.NetworkingV1().Ingresses(namespace)
	var ing *networkingv1.Ingress
	var err error
	if fresh {
		ing, err = api.Get(ctx, name, metav1.GetOptions{})
	} else {
		ing, err = s.lister.Ingresses(namespace).Get(name)
	}
	for attempt := 1; ; attempt++ {
		if apierrors.IsNotFound(err) {
			return false, core.ErrGone
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
			s.awaitCache(ctx, namespace, name, ing.ResourceVersion, updated.ResourceVersion)
			return true, nil
		case apierrors.IsNotFound(err):
			return false, core.ErrGone
		case !apierrors.IsConflict(err) || attempt >= 10:
			return false, err
		}
		ing, err = api.Get(ctx, name, metav1.GetOptions{})
	}
}

// awaitCache waits, for at most a second, until the cache holds version
// written of namespace/name or a later one (anything but old), so that the next
// sync reads our write and not what it replaced (which would look like leftover
// challenge paths and cost a conflict).
func (s *Source) awaitCache(ctx context.Context, namespace, name, old, written string) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	key := namespace + "/" + name
	for {
		changed := s.changes.next(key)
		if ing := s.Cached(namespace, name); ing == nil || ing.ResourceVersion == written || ing.ResourceVersion != old {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// Cached returns the cached Ingress, nil if there is none. It is the cache's
// object: never change it.
func (s *Source) Cached(namespace, name string) *networkingv1.Ingress {
	ing, err := s.lister.Ingresses(namespace).Get(name)
	if err != nil {
		return nil
	}
	return ing
}

// Changed returns a channel closed at the next change of the cached Ingress
// key (namespace/name). Take it before reading the cache, so that a change
// between the read and the wait is not missed.
func (s *Source) Changed(key string) <-chan struct{} { return s.changes.next(key) }
