package watcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// presenter makes an order's challenges answer where the CA will look for them,
// and takes them back when the order ends: plug point 2 of the design. HTTP-01
// through an exact path in the user's own Ingress is the one there is; DNS-01
// and Gateway API routes come as other implementations.
type presenter interface {
	// present makes every challenge of o answer for d, journalled so that a
	// crash leaves nothing behind.
	present(ctx context.Context, d desired, o core.Order) error
	// check returns once every challenge of o answers where the CA will ask.
	check(ctx context.Context, d desired, o core.Order) error
	// withdraw takes back what present did (when presented) and, when withTLS,
	// makes the Ingresses that asked for it without spec.tls name the Secret.
	withdraw(ctx context.Context, d desired, o core.Order, presented, withTLS bool) error
	// abandon takes back what present did, for a certificate nobody wants now.
	abandon(ctx context.Context, d desired, o core.Order, presented bool)
}

// errPathsRemoved ends an order whose challenge paths someone else took out.
var errPathsRemoved = errors.New("the challenge paths were removed from the Ingress by someone else")

// ingressPresenter presents HTTP-01 challenges through the Ingress that asks for
// the host: the challenge server answers the token, and an exact path for it,
// routed to the solver Service, goes into the Ingress with the journal.
type ingressPresenter struct{ c *Controller }

// entriesByIngress groups o's challenges by the Ingress that gets their path.
func entriesByIngress(d desired, o core.Order) map[string][]Entry {
	byIngress := map[string][]Entry{}
	for _, ch := range o.Challenges {
		host := strings.ToLower(ch.Host)
		name := d.hostIngress[host].Name
		byIngress[name] = append(byIngress[name], Entry{Secret: d.secret, Host: host, Token: ch.Token, Order: o.URL, KeyAuth: ch.KeyAuth})
	}
	return byIngress
}

func (p *ingressPresenter) present(ctx context.Context, d desired, o core.Order) error {
	for _, ch := range o.Challenges {
		p.c.cfg.Challenges.Present(ch.Host, ch.Token, ch.KeyAuth)
	}
	byIngress := entriesByIngress(d, o)
	for _, name := range sortedKeys(byIngress) {
		_, err := p.c.editIngress(ctx, d.namespace, name, false, func(ing *networkingv1.Ingress) (bool, error) {
			return insertPaths(ing, byIngress[name], p.c.cfg.Solver.Name(), d.options.pathType)
		})
		if err != nil {
			return fmt.Errorf("insert challenge paths into ingress %s: %w", name, err)
		}
	}
	return nil
}

// check self-checks every challenge at once, giving up as soon as someone else
// takes our paths out (say, by replacing the spec): they are not re-added, and
// the order fails; a new one follows after the backoff.
func (p *ingressPresenter) check(ctx context.Context, d desired, o core.Order) error {
	checkCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := p.watchPaths(checkCtx, d.namespace, entriesByIngress(d, o), cancel)
	errs := make([]error, len(o.Challenges))
	var wg sync.WaitGroup
	for i, ch := range o.Challenges {
		wg.Go(func() { errs[i] = p.c.cfg.SelfCheck.Check(checkCtx, ch.Host, ch.Token, ch.KeyAuth) })
	}
	wg.Wait()
	stop()
	if cause := context.Cause(checkCtx); errors.Is(cause, errPathsRemoved) {
		return cause
	}
	return errors.Join(errs...)
}

// watchPaths calls cancel(errPathsRemoved) as soon as an informer event shows
// an Ingress of byIngress without its paths, until stop is called. Only events
// count, not the cache as it is at the start, which may not hold our insert yet.
func (p *ingressPresenter) watchPaths(ctx context.Context, namespace string, byIngress map[string][]Entry, cancel context.CancelCauseFunc) (stop func()) {
	ctx, done := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for name, entries := range byIngress {
		wg.Go(func() {
			changed := p.c.ingressEvents.next(namespace + "/" + name)
			for {
				select {
				case <-ctx.Done():
					return
				case <-changed:
				}
				changed = p.c.ingressEvents.next(namespace + "/" + name)
				if ing := p.c.cached(namespace, name); ing == nil || !hasPaths(ing, entries) {
					cancel(fmt.Errorf("ingress %s: %w", name, errPathsRemoved))
					return
				}
			}
		})
	}
	return func() {
		done()
		wg.Wait()
	}
}

func (p *ingressPresenter) withdraw(ctx context.Context, d desired, o core.Order, presented, withTLS bool) error {
	defer p.forgetTokens(o)
	inserted := map[string]bool{}
	if presented {
		for name := range entriesByIngress(d, o) {
			inserted[name] = true
		}
	}
	return p.c.finish(ctx, d, inserted, withTLS)
}

func (p *ingressPresenter) abandon(ctx context.Context, d desired, o core.Order, presented bool) {
	defer p.forgetTokens(o)
	if !presented {
		return
	}
	for name := range entriesByIngress(d, o) {
		// Read afresh: an insert interrupted in flight may have landed unseen.
		_, err := p.c.editIngress(ctx, d.namespace, name, true, func(ing *networkingv1.Ingress) (bool, error) {
			return removePaths(ing, d.secret, p.c.cfg.Solver.Name()), nil
		})
		if err == nil {
			if ing := p.c.cached(d.namespace, name); ing != nil {
				p.c.recorder.Event(ing, corev1.EventTypeNormal, "Abandoned", fmt.Sprintf("order for Secret %s abandoned: the Ingress no longer asks for it", d.secret))
			}
		} else if !errors.Is(err, errIngressGone) {
			p.c.log.Error("abandoned order: clean-up failed", "ingress", d.namespace+"/"+name, "err", err)
		}
	}
}

func (p *ingressPresenter) forgetTokens(o core.Order) {
	for _, ch := range o.Challenges {
		p.c.cfg.Challenges.Remove(ch.Token)
	}
}

// hasPaths reports whether ing routes every entry's path.
func hasPaths(ing *networkingv1.Ingress, entries []Entry) bool {
	for _, e := range entries {
		if !routes(ing, e.Host, e.Path()) {
			return false
		}
	}
	return true
}

func routes(ing *networkingv1.Ingress, host, path string) bool {
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil || !strings.EqualFold(r.Host, host) {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if p.Path == path {
				return true
			}
		}
	}
	return false
}
