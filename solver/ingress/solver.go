// Package ingress is the HTTP-01 solver that presents a challenge through the
// user's own Ingress: the challenge server answers the token, and an exact
// path for it, routed to the solver Service, goes into the Ingress that routes
// the host, journalled in the same Update (see journal.go). Every replica
// answers every journalled token (see answer.go), so any of them may serve the
// CA's request. It writes Ingresses only through the Ingress source
// (Ingresses), which owns their cache.
package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/ingress-acme/ingress-acme/core"
)

// Ingresses is what the solver needs of the Ingress source: its cache and its
// writes.
type Ingresses interface {
	// Cached is the cached Ingress, nil if none; never to be changed.
	Cached(namespace, name string) *networkingv1.Ingress
	// Changed is closed at the next change of the cached Ingress namespace/name.
	Changed(key string) <-chan struct{}
	// Edit updates the Ingress with edit, keeping concurrent changes;
	// core.ErrGone when it no longer exists.
	Edit(ctx context.Context, namespace, name string, fresh bool, edit func(*networkingv1.Ingress) (bool, error)) (bool, error)
	// Specs are the keys of every certificate ing would ask for.
	Specs(ing *networkingv1.Ingress) []string
	// WriteBack applies to ing what the source writes back once req's
	// certificate is stored, so that one Update does both.
	WriteBack(ing *networkingv1.Ingress, req core.Request) bool
}

// ChallengeServer answers the HTTP-01 challenges presented to it. Safe for
// concurrent use.
type ChallengeServer interface {
	Present(host, token, keyAuth string)
	Remove(token string)
}

// SolverService routes a namespace's challenge paths to the challenge server.
type SolverService interface {
	// Ensure makes the Service (and its endpoints) exist in namespace.
	Ensure(ctx context.Context, namespace string) error
	// Forget makes the next Ensure check again, after a challenge failed.
	Forget(namespace string)
	// Name is the Service's name.
	Name() string
}

// SelfChecker checks that a challenge answers through the ingress, the way the
// CA will ask for it. Check returns nil once it does; its error says what
// answered instead.
type SelfChecker interface {
	Check(ctx context.Context, host, token, keyAuth string) error
}

// Config is what a Solver needs; every field but Logger is required.
type Config struct {
	Informer   networkinginformers.IngressInformer
	Ingresses  Ingresses
	Challenges ChallengeServer
	Service    SolverService
	SelfCheck  SelfChecker
	Recorder   record.EventRecorder
	Logger     *slog.Logger
}

// Solver presents HTTP-01 challenges through Ingresses. Safe for concurrent use.
type Solver struct {
	cfg     Config
	indexer cache.Indexer
}

const indexJournal = "journal"

// ingressKind is the kind of object whose challenges this solver presents.
const ingressKind = "Ingress"

// errPathsRemoved ends an order whose challenge paths someone else took out.
var errPathsRemoved = errors.New("the challenge paths were removed from the Ingress by someone else")

// New indexes the Ingress informer by the certificates each journals.
func New(cfg Config) (*Solver, error) {
	if cfg.Informer == nil || cfg.Ingresses == nil || cfg.Challenges == nil || cfg.Service == nil || cfg.SelfCheck == nil || cfg.Recorder == nil {
		return nil, errors.New("ingress solver: incomplete config")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Solver{cfg: cfg, indexer: cfg.Informer.Informer().GetIndexer()}
	if err := cfg.Informer.Informer().AddIndexers(cache.Indexers{
		indexJournal: func(obj any) ([]string, error) { return s.journalKeys(obj.(*networkingv1.Ingress)), nil },
	}); err != nil {
		return nil, fmt.Errorf("ingress solver: indexers: %w", err)
	}
	return s, nil
}

// Watch answers the tokens journalled on Ingresses as they change (see
// answer), and queues the certificates whose journal a change concerns.
func (s *Solver) Watch(queue func(key string)) (cache.InformerSynced, error) {
	reg, err := s.cfg.Informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.changed(nil, obj, queue) },
		UpdateFunc: func(old, obj any) { s.changed(old, obj, queue) },
		DeleteFunc: func(obj any) {
			if ing, ok := asIngress(obj); ok {
				s.answer(ing, nil)
				s.queueJournals(ing, queue)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("ingress solver: %w", err)
	}
	return reg.HasSynced, nil
}

func (s *Solver) changed(old, obj any, queue func(string)) {
	ing, ok := asIngress(obj)
	if !ok {
		return
	}
	prev, _ := asIngress(old)
	s.answer(prev, ing)
	if prev != nil {
		if prev.ResourceVersion == ing.ResourceVersion {
			return // a resync
		}
		s.queueJournals(prev, queue)
	}
	s.queueJournals(ing, queue)
}

func (s *Solver) queueJournals(ing *networkingv1.Ingress, queue func(string)) {
	for _, k := range s.journalKeys(ing) {
		queue(k)
	}
}

func asIngress(obj any) (*networkingv1.Ingress, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ing, ok := obj.(*networkingv1.Ingress)
	return ing, ok
}

// journalKeys are the keys of the certificates with challenge paths journalled on
// ing. An unparsable journal yields every certificate ing would ask for, so that
// the paths are cleaned up anyway.
func (s *Solver) journalKeys(ing *networkingv1.Ingress) []string {
	entries, err := readJournal(ing)
	if err != nil {
		return s.cfg.Ingresses.Specs(ing)
	}
	var keys []string
	for _, e := range entries {
		if k := ing.Namespace + "/" + e.Secret; !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// Solves reports whether req asks for HTTP-01 with every host presented
// through an Ingress.
func (s *Solver) Solves(req core.Request) bool {
	if req.Options.Challenge != core.ChallengeHTTP01 {
		return false
	}
	for _, h := range req.Hosts {
		if req.Presenters[h].Kind != ingressKind {
			return false
		}
	}
	return true
}

// Prepare makes the solver Service and its endpoints exist in req's namespace.
func (s *Solver) Prepare(ctx context.Context, req core.Request) error {
	return s.cfg.Service.Ensure(ctx, req.Namespace)
}

// entriesByIngress groups o's challenges by the Ingress that gets their path.
func entriesByIngress(req core.Request, o core.Order) map[string][]Entry {
	byIngress := map[string][]Entry{}
	for _, ch := range o.Challenges {
		host := strings.ToLower(ch.Host)
		name := req.Presenters[host].Name
		byIngress[name] = append(byIngress[name], Entry{Secret: req.Secret, Host: host, Token: ch.Token, Order: o.URL, KeyAuth: ch.KeyAuth})
	}
	return byIngress
}

// Present has the challenge server answer o's tokens and inserts their paths,
// journalled, into the Ingresses that route their hosts: one Update each.
func (s *Solver) Present(ctx context.Context, req core.Request, o core.Order) error {
	for _, ch := range o.Challenges {
		if _, ok := req.Presenters[strings.ToLower(ch.Host)]; !ok {
			return fmt.Errorf("the CA asked to validate %s, which is not in the order", ch.Host)
		}
	}
	for _, ch := range o.Challenges {
		s.cfg.Challenges.Present(ch.Host, ch.Token, ch.KeyAuth)
	}
	byIngress := entriesByIngress(req, o)
	pathType := networkingv1.PathType(req.Options.Present)
	for _, name := range slices.Sorted(maps.Keys(byIngress)) {
		_, err := s.cfg.Ingresses.Edit(ctx, req.Namespace, name, false, func(ing *networkingv1.Ingress) (bool, error) {
			return insertPaths(ing, byIngress[name], s.cfg.Service.Name(), pathType)
		})
		if err != nil {
			return fmt.Errorf("insert challenge paths into ingress %s: %w", name, err)
		}
	}
	return nil
}

// Check self-checks every challenge at once, giving up as soon as someone else
// takes our paths out (say, by replacing the spec): they are not re-added, and
// the order fails; a new one follows after the backoff. After a failure the
// solver Service is checked again by the next order.
func (s *Solver) Check(ctx context.Context, req core.Request, o core.Order) error {
	checkCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := s.watchPaths(checkCtx, req.Namespace, entriesByIngress(req, o), cancel)
	errs := make([]error, len(o.Challenges))
	var wg sync.WaitGroup
	for i, ch := range o.Challenges {
		wg.Go(func() { errs[i] = s.cfg.SelfCheck.Check(checkCtx, ch.Host, ch.Token, ch.KeyAuth) })
	}
	wg.Wait()
	stop()
	err := errors.Join(errs...)
	if cause := context.Cause(checkCtx); errors.Is(cause, errPathsRemoved) {
		err = cause
	}
	if err != nil {
		s.cfg.Service.Forget(req.Namespace)
	}
	return err
}

// watchPaths calls cancel(errPathsRemoved) as soon as a change shows an
// Ingress of byIngress without its paths, until stop is called. Only changes
// count, not the cache as it is at the start, which may not hold our insert yet.
func (s *Solver) watchPaths(ctx context.Context, namespace string, byIngress map[string][]Entry, cancel context.CancelCauseFunc) (stop func()) {
	ctx, done := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for name, entries := range byIngress {
		wg.Go(func() {
			changed := s.cfg.Ingresses.Changed(namespace + "/" + name)
			for {
				select {
				case <-ctx.Done():
					return
				case <-changed:
				}
				changed = s.cfg.Ingresses.Changed(namespace + "/" + name)
				if ing := s.cfg.Ingresses.Cached(namespace, name); ing == nil || !hasPaths(ing, entries) {
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

// Withdraw removes o's paths and journal entries (from every asker that
// journals some, and those Present was inserting into), with what the source
// writes back once the certificate is stored in the same Update. An abandoned
// order's paths are removed from a fresh read, and each Ingress is told.
func (s *Solver) Withdraw(ctx context.Context, req core.Request, o core.Order, presented bool, outcome core.Outcome) error {
	defer s.forgetTokens(o)
	inserted := map[string]bool{}
	if presented {
		for name := range entriesByIngress(req, o) {
			inserted[name] = true
		}
	}
	if outcome == core.Abandoned {
		s.abandon(ctx, req, inserted)
		return nil
	}
	var errs []error
	for _, a := range req.Askers {
		journalled := journals(s.cfg.Ingresses.Cached(req.Namespace, a.Name), req.Secret)
		if !inserted[a.Name] && !journalled {
			continue
		}
		// After an interrupted insert (shutdown, API error) the paths may be in
		// without the cache knowing yet: read afresh then.
		fresh := inserted[a.Name] && !journalled
		_, err := s.cfg.Ingresses.Edit(ctx, req.Namespace, a.Name, fresh, func(ing *networkingv1.Ingress) (bool, error) {
			removed := removePaths(ing, req.Secret, s.cfg.Service.Name())
			return outcome == core.Issued && s.cfg.Ingresses.WriteBack(ing, req) || removed, nil
		})
		if err != nil && !errors.Is(err, core.ErrGone) {
			errs = append(errs, fmt.Errorf("clean up ingress %s: %w", a.Name, err))
		}
	}
	return errors.Join(errs...)
}

// abandon removes the paths of an order nobody wants any more from the
// Ingresses it inserted them into, read afresh (an insert interrupted in
// flight may have landed unseen).
func (s *Solver) abandon(ctx context.Context, req core.Request, inserted map[string]bool) {
	for name := range inserted {
		_, err := s.cfg.Ingresses.Edit(ctx, req.Namespace, name, true, func(ing *networkingv1.Ingress) (bool, error) {
			return removePaths(ing, req.Secret, s.cfg.Service.Name()), nil
		})
		if err == nil {
			if ing := s.cfg.Ingresses.Cached(req.Namespace, name); ing != nil {
				s.cfg.Recorder.Event(ing, corev1.EventTypeNormal, "Abandoned", fmt.Sprintf("order for Secret %s abandoned: the Ingress no longer asks for it", req.Secret))
			}
		} else if !errors.Is(err, core.ErrGone) {
			s.cfg.Logger.Error("abandoned order: clean-up failed", "ingress", req.Namespace+"/"+name, "err", err)
		}
	}
}

func (s *Solver) forgetTokens(o core.Order) {
	for _, ch := range o.Challenges {
		s.cfg.Challenges.Remove(ch.Token)
	}
}

// Journalled is the order URL journalled for key on any Ingress, "" if none.
func (s *Solver) Journalled(key string) string {
	_, secret, _ := strings.Cut(key, "/")
	for _, ing := range s.journalling(key) {
		entries, _ := readJournal(ing)
		for _, e := range entries {
			if e.Secret == secret && e.Order != "" {
				return e.Order
			}
		}
	}
	return ""
}

// Leftovers removes the challenge paths journalled for key.
func (s *Solver) Leftovers(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	for _, ing := range s.journalling(key) {
		removed, err := s.cfg.Ingresses.Edit(ctx, ns, ing.Name, false, func(i *networkingv1.Ingress) (bool, error) {
			return removePaths(i, name, s.cfg.Service.Name()), nil
		})
		if err != nil && !errors.Is(err, core.ErrGone) {
			return fmt.Errorf("remove leftover challenge paths from ingress %s: %w", ing.Name, err)
		}
		if removed {
			s.cfg.Logger.Info("removed leftover challenge paths", "ingress", ns+"/"+ing.Name, "secret", key)
		}
	}
	return nil
}

// journalling lists the Ingresses that journal paths for key, sorted by name.
func (s *Solver) journalling(key string) []*networkingv1.Ingress {
	objs, err := s.indexer.ByIndex(indexJournal, key)
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

// journals reports whether ing journals challenge paths of secret.
func journals(ing *networkingv1.Ingress, secret string) bool {
	if ing == nil {
		return false
	}
	entries, err := readJournal(ing)
	return err != nil || slices.ContainsFunc(entries, func(e Entry) bool { return e.Secret == secret })
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
		if slices.ContainsFunc(r.HTTP.Paths, func(p networkingv1.HTTPIngressPath) bool { return p.Path == path }) {
			return true
		}
	}
	return false
}
