// Package watcher is ingress-acme's engine: sources turn the objects that ask
// for certificates into requests (core.Request), and the engine drives each
// certificate (namespace/secretName, the work queue key) through decide, order,
// challenge, storage, write-back and renewal, idempotently, through the small
// interfaces of plugs.go. It knows no kind of object but its own Secrets.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ingress-acme/ingress-acme/core"
)

// Config is what a Controller needs. Client, Sources, Solvers, Issuers (with
// DefaultIssuer among them), Secrets and Metrics are required.
type Config struct {
	Client    kubernetes.Interface
	Namespace string // watch only this namespace; "" for all
	// Sources ask for certificates; a key asked for by two is refused.
	Sources []Source
	// Solvers present challenges: the first that Solves a request does.
	Solvers []Solver
	// Issuers by name; a request names one, or gets DefaultIssuer.
	Issuers       map[string]Issuer
	DefaultIssuer string
	// Outputs run after a certificate is stored, in this order.
	Outputs []Output
	Secrets Secrets
	Metrics Metrics
	Logger  *slog.Logger
	// Informers are the sources' and solvers' informer factories: started with
	// the engine's own (or by Follow), waited for, and stopped when Run returns.
	Informers []Informers

	// DefaultProfile is the CA profile ordered when a request names none; ""
	// leaves it to the CA.
	DefaultProfile string
	// DefaultChallenge is the challenge type answered when a request names
	// none; "": core.ChallengeHTTP01. A certificate with a wildcard host gets
	// core.ChallengeDNS01 instead of HTTP-01.
	DefaultChallenge string
	Workers          int
	// RenewBefore is how long before expiry to renew when the CA offers no
	// renewal information; 0: when a third of the lifetime remains.
	RenewBefore time.Duration
	// MaxOrdersPerHour caps the orders for one certificate in any hour.
	MaxOrdersPerHour int
	// MaxOrdersInFlight bounds the orders waiting on the ingress or the CA at
	// once; they run outside the workers. 0: 100.
	MaxOrdersInFlight int
	// RetryBase and RetryMax bound the exponential backoff after a failure.
	RetryBase, RetryMax time.Duration
	// Settle delays the sync a source's change brings, so that objects applied
	// together (say, two Ingresses naming one Secret) are seen together and
	// share one order.
	Settle time.Duration
	// Resync is the Secret informer's resync period; 0: none.
	Resync time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// States keeps each certificate's failures, backoff and recent orders
	// across restarts and failovers; nil: in memory only.
	States StateStore
	// AtStep, if set, is called each time an order passes a Step.
	AtStep func(Step)
}

// Controller reconciles certificates. Create it with New and start it with Run.
type Controller struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	secretLister corelisters.SecretLister
	synced       []cache.InformerSynced // every handler has seen its informer's initial list
	factories    []Informers
	queue        workqueue.TypedDelayingInterface[string]
	flights      *flights      // orders in flight, run outside the workers
	unjournalled chan struct{} // a slot per order between placing and journalling it (see placeAndPresent)

	// mu guards the state map, ready and started. A certState itself is only
	// touched by the worker holding its key, which the queue gives to one
	// worker at a time.
	mu      sync.Mutex
	state   map[string]*certState // by key
	ready   bool
	started bool // the informers
}

// maxUnjournalled bounds the orders placed but not yet journalled by their
// solver. A crash in that window loses the order: ACME has no idempotency
// key, and a CA need not list an account's orders, so the next process cannot
// find it and orders again. The bound caps what one crash costs, whatever
// --max-orders-in-flight is; the window is an authorization fetch and one
// Update long, so it costs no throughput worth measuring.
const maxUnjournalled = 16

// New wires the informers, the sources, the solvers and the queue; nothing
// runs until Run.
func New(cfg Config) (*Controller, error) {
	if err := complete(cfg); err != nil {
		return nil, err
	}
	cfg = withDefaults(cfg)
	c := &Controller{cfg: cfg, log: cfg.Logger, now: cfg.Now, state: map[string]*certState{}}
	c.queue = workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{
		Name: "certificates", MetricsProvider: cfg.Metrics.Workqueue(),
	})
	c.flights = newFlights(cfg.MaxOrdersInFlight, c.queue.Add)
	c.unjournalled = make(chan struct{}, maxUnjournalled)
	settled := func(key string) {
		// A key already waiting keeps its earlier time: a burst of changes
		// settles once, from its first change.
		c.queue.AddAfter(key, c.cfg.Settle)
	}
	watchers := make([]func(func(string)) (cache.InformerSynced, error), 0, len(cfg.Sources)+len(cfg.Solvers))
	for _, s := range cfg.Sources {
		watchers = append(watchers, s.Watch)
	}
	for _, s := range cfg.Solvers {
		watchers = append(watchers, s.Watch)
	}
	for _, watch := range watchers {
		synced, err := watch(settled)
		if err != nil {
			return nil, err
		}
		c.synced = append(c.synced, synced)
	}
	if err := c.watchSecrets(); err != nil {
		return nil, err
	}
	return c, nil
}

// complete says what cfg lacks, nil when nothing.
func complete(cfg Config) error {
	switch {
	case cfg.Client == nil || cfg.Secrets == nil || cfg.Metrics == nil:
		return errors.New("watcher: incomplete config")
	case len(cfg.Sources) == 0 || len(cfg.Solvers) == 0:
		return errors.New("watcher: no source or no solver")
	case cfg.Issuers[cfg.DefaultIssuer] == nil:
		return fmt.Errorf("watcher: default issuer %q: no such issuer", cfg.DefaultIssuer)
	}
	return nil
}

// withDefaults fills in what cfg leaves unset.
func withDefaults(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AtStep == nil {
		cfg.AtStep = func(Step) {}
	}
	cfg.Workers = max(cfg.Workers, 1)
	if cfg.MaxOrdersPerHour <= 0 {
		cfg.MaxOrdersPerHour = 5
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 30 * time.Second
	}
	if cfg.RetryMax < cfg.RetryBase {
		cfg.RetryMax = max(6*time.Hour, cfg.RetryBase)
	}
	if cfg.MaxOrdersInFlight <= 0 {
		cfg.MaxOrdersInFlight = 100
	}
	return cfg
}

// watchSecrets sets up the informer on our own Secrets, selected by label and
// summarized by Secrets.Summarize, beside the sources' and solvers' informers.
func (c *Controller) watchSecrets() error {
	cfg := c.cfg
	secFactory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = core.Selector }))
	secInformer := secFactory.Core().V1().Secrets()
	if err := secInformer.Informer().SetTransform(cfg.Secrets.Summarize); err != nil {
		return fmt.Errorf("watcher: secret transform: %w", err)
	}
	if _, err := secInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueSecret(nil, obj) },
		UpdateFunc: c.enqueueSecret,
		DeleteFunc: func(obj any) { c.enqueueSecret(nil, obj) },
	}); err != nil {
		return err
	}
	c.secretLister = secInformer.Lister()
	c.synced = append(c.synced, secInformer.Informer().HasSynced)
	c.factories = append(append(c.factories, cfg.Informers...), secFactory)
	return nil
}

// Run starts the informers, waits for their caches, and runs the workers until
// ctx ends; then it waits for the orders in flight to clean up and returns. It
// returns an error only when the caches cannot sync.
func (c *Controller) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	defer c.queue.ShutDown()
	if c.start(ctx) {
		defer func() {
			for _, f := range c.factories {
				f.Shutdown()
			}
		}()
	}
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("watcher: caches did not sync")
	}
	if err := c.loadStates(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	c.log.Info("caches synced, starting workers", "workers", c.cfg.Workers)
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for c.next(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	c.flights.wait() // every order in flight cleans up before Run returns
	return nil
}

// Follow starts the informers until ctx ends, for a replica that does not
// lead (yet): its solvers answer the challenges the leader journals, and its
// caches are warm when it takes over. Run, called later with a shorter
// context, uses these informers instead of starting its own.
func (c *Controller) Follow(ctx context.Context) {
	c.start(ctx)
}

// start starts the informers until ctx ends, once; it reports whether this
// call started them.
func (c *Controller) start(ctx context.Context) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return false
	}
	c.started = true
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	return true
}

// Synced reports whether the informers' caches have synced: from then on the
// process answers every journalled challenge.
func (c *Controller) Synced() bool {
	for _, s := range c.synced {
		if !s() {
			return false
		}
	}
	return true
}

// Ready reports whether the caches have synced and workers run.
func (c *Controller) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// enqueueSecret queues the certificate a Secret of ours holds.
func (c *Controller) enqueueSecret(old, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*corev1.Secret)
	if !ok || s.Type != corev1.SecretTypeTLS {
		return
	}
	if o, ok := old.(*corev1.Secret); ok && o.ResourceVersion == s.ResourceVersion {
		return
	}
	c.queue.Add(s.Namespace + "/" + s.Name)
}
