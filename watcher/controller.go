// Package watcher is the controller loop of ingress-acme: informers on Ingresses
// and on our own Secrets feed a rate-limited work queue of certificates
// (namespace/secretName), and sync drives each one through order, challenge,
// storage and clean-up, idempotently, through the small interfaces declared here.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/ingress-acme/ingress-acme/metrics"
)

// Config is what a Controller needs. Every interface field is required.
type Config struct {
	Client     kubernetes.Interface
	Namespace  string // watch only this namespace; "" for all
	Issuer     Issuer
	Secrets    Secrets
	Challenges ChallengeServer
	Solver     SolverService
	SelfCheck  SelfChecker
	Metrics    *metrics.Metrics
	Logger     *slog.Logger

	// SecretSelector selects the Secrets we own (label selector syntax).
	SecretSelector string
	// SecretTransform, if set, turns each Secret into what the cache keeps of
	// it (say, only what Secrets.Read needs); Read must understand the result.
	SecretTransform cache.TransformFunc
	// DefaultProfile is the CA profile ordered when an Ingress names none; ""
	// leaves it to the CA.
	DefaultProfile string
	Workers        int
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
	// Settle delays the sync an Ingress change brings, so that Ingresses applied
	// together (say, two naming one Secret) are seen together and share one order.
	Settle time.Duration
	// Resync is the informers' resync period; 0: none.
	Resync time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// States keeps each certificate's failures, backoff and recent orders
	// across restarts and failovers; nil: in memory only.
	States StateStore
	// Fault, if set, is called at each step of an order named by the
	// core.Fault* constants; tests make it crash the process there.
	Fault func(point string)
}

// Controller reconciles certificates. Create it with New and start it with Run.
type Controller struct {
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	selector labels.Selector

	ingresses     networkinglisters.IngressLister
	ingIndexer    cache.Indexer
	secretLister  corelisters.SecretLister
	ingressEvents *changes // fires when the Ingress cache changes an object
	synced        []cache.InformerSynced
	factories     []informers.SharedInformerFactory
	queue         workqueue.TypedDelayingInterface[string]
	recorder      record.EventRecorder
	broadcaster   record.EventBroadcaster
	flights       *flights      // orders in flight, run outside the workers
	unjournalled  chan struct{} // a slot per order between placing and journalling it (see placeAndPresent)
	presenter     presenter

	// mu guards the state and uncovered maps, ready and started. A certState itself is only touched by
	// the worker holding its key, which the queue gives to one worker at a time.
	mu        sync.Mutex
	state     map[string]*certState // by key
	uncovered map[string]string     // Ingress (namespace/name) -> its hosts without TLS, as last reported
	ready     bool
	started   bool // the informers
}

const (
	indexCert    = "cert"
	indexJournal = "journal"
)

// maxUnjournalled bounds the orders placed but not yet journalled on their
// Ingress. A crash in that window loses the order: ACME has no idempotency
// key, and a CA need not list an account's orders, so the next process cannot
// find it and orders again. The bound caps what one crash costs, whatever
// --max-orders-in-flight is; the window is an authorization fetch and one
// Update long, so it costs no throughput worth measuring.
const maxUnjournalled = 16

// New wires the informers and the queue; nothing runs until Run.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Issuer == nil || cfg.Secrets == nil || cfg.Challenges == nil || cfg.Solver == nil || cfg.SelfCheck == nil || cfg.Metrics == nil {
		return nil, errors.New("watcher: incomplete config")
	}
	selector, err := labels.Parse(cfg.SecretSelector)
	if err != nil || selector.Empty() {
		return nil, fmt.Errorf("watcher: secret selector %q: must select our Secrets", cfg.SecretSelector)
	}
	cfg = withDefaults(cfg)
	c := &Controller{cfg: cfg, log: cfg.Logger, now: cfg.Now, selector: selector, state: map[string]*certState{}, uncovered: map[string]string{}, ingressEvents: newChanges()}
	c.presenter = &ingressPresenter{c: c}
	c.queue = workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{
		Name: "certificates", MetricsProvider: cfg.Metrics.Workqueue(),
	})
	c.flights = newFlights(cfg.MaxOrdersInFlight, c.queue.Add)
	c.unjournalled = make(chan struct{}, maxUnjournalled)

	if err := c.watch(); err != nil {
		return nil, err
	}
	c.broadcaster = record.NewBroadcaster(record.WithContext(context.Background()))
	c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ingress-acme"})
	return c, nil
}

// withDefaults fills in what cfg leaves unset.
func withDefaults(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Fault == nil {
		cfg.Fault = func(string) {}
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

// watch sets up the informers: Ingresses, indexed by the certificates they ask
// for and journal, and our own Secrets, selected by label.
func (c *Controller) watch() error {
	cfg := c.cfg
	ingFactory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithNamespace(cfg.Namespace))
	secFactory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = cfg.SecretSelector }))
	ingInformer := ingFactory.Networking().V1().Ingresses()
	secInformer := secFactory.Core().V1().Secrets()
	if err := ingInformer.Informer().SetTransform(dropManagedFields); err != nil {
		return fmt.Errorf("watcher: ingress transform: %w", err)
	}
	if err := ingInformer.Informer().AddIndexers(cache.Indexers{
		indexCert:    func(obj any) ([]string, error) { return certKeys(obj.(*networkingv1.Ingress)), nil },
		indexJournal: func(obj any) ([]string, error) { return journalKeys(obj.(*networkingv1.Ingress)), nil },
	}); err != nil {
		return fmt.Errorf("watcher: indexers: %w", err)
	}
	if _, err := ingInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.ingressChanged(nil, obj) },
		UpdateFunc: c.ingressChanged,
		DeleteFunc: c.ingressDeleted,
	}); err != nil {
		return err
	}
	if cfg.SecretTransform != nil {
		if err := secInformer.Informer().SetTransform(cfg.SecretTransform); err != nil {
			return fmt.Errorf("watcher: secret transform: %w", err)
		}
	}
	if _, err := secInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueSecret(nil, obj) },
		UpdateFunc: c.enqueueSecret,
		DeleteFunc: func(obj any) { c.enqueueSecret(nil, obj) },
	}); err != nil {
		return err
	}
	c.ingresses = ingInformer.Lister()
	c.ingIndexer = ingInformer.Informer().GetIndexer()
	c.secretLister = secInformer.Lister()
	c.synced = []cache.InformerSynced{ingInformer.Informer().HasSynced, secInformer.Informer().HasSynced}
	c.factories = []informers.SharedInformerFactory{ingFactory, secFactory}
	return nil
}

// dropManagedFields is the Ingress informer's transform: nothing here reads
// managed fields, and they are often the larger part of an Ingress. Updates
// made from a cached Ingress send none, which the API server takes as "leave
// them as they are". It changes the object in place, as client-go allows of a
// transform, and is idempotent.
func dropManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Run starts the informers, waits for their caches, and runs the workers until
// ctx ends; then it waits for the orders in flight to clean up and returns. It
// returns an error only when the caches cannot sync.
func (c *Controller) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cfg.Client.CoreV1().Events("")})
	defer c.broadcaster.Shutdown()
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
// lead (yet): it answers the challenges journalled on Ingresses (see answer),
// and its caches are warm when it takes over. Run, called later with a shorter
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

// ingressChanged answers the tokens obj journals (see answer) and queues what
// it and old ask for (see queueFor).
func (c *Controller) ingressChanged(old, obj any) {
	ing, ok := asIngress(obj)
	if !ok {
		return
	}
	prev, _ := asIngress(old)
	c.answer(prev, ing)
	c.queueFor(prev, ing)
}

// ingressDeleted stops answering the deleted Ingress's tokens, queues what it
// asked for and drops what is recorded about it alone.
func (c *Controller) ingressDeleted(obj any) {
	ing, ok := asIngress(obj)
	if !ok {
		return
	}
	c.answer(ing, nil)
	c.queueFor(nil, ing)
	c.mu.Lock()
	delete(c.uncovered, ing.Namespace+"/"+ing.Name)
	c.mu.Unlock()
	c.cfg.Metrics.SetHostsWithoutTLS(ing.Namespace, ing.Name, nil)
}

// queueFor wakes whoever waits for the Ingress cache (see changes), then queues
// the certificates prev (nil for none) and ing ask for or have challenge paths
// for. Resyncs (same resourceVersion) queue nothing.
func (c *Controller) queueFor(prev, ing *networkingv1.Ingress) {
	c.ingressEvents.fire(ing.Namespace + "/" + ing.Name)
	var keys []string
	if prev != nil {
		if prev.ResourceVersion == ing.ResourceVersion || sameForUs(prev, ing) {
			return
		}
		keys = append(append(keys, certKeys(prev)...), journalKeys(prev)...)
	}
	keys = append(append(keys, certKeys(ing)...), journalKeys(ing)...)
	for _, k := range keys {
		// A key already waiting keeps its earlier time: a burst of changes
		// settles once, from its first change.
		c.queue.AddAfter(k, c.cfg.Settle)
	}
}

// sameForUs reports whether an update changed nothing sync reads: a status
// update by the ingress controller, a label, managed fields.
func sameForUs(a, b *networkingv1.Ingress) bool {
	return maps.Equal(a.Annotations, b.Annotations) && equality.Semantic.DeepEqual(a.Spec, b.Spec)
}

func asIngress(obj any) (*networkingv1.Ingress, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ing, ok := obj.(*networkingv1.Ingress)
	return ing, ok
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
