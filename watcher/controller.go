// Package watcher is the controller loop of ingress-acme: informers on Ingresses
// and on our own Secrets feed a rate-limited work queue of certificates
// (namespace/secretName), and sync drives each one through order, challenge,
// storage and clean-up, idempotently, through the small interfaces declared here.
package watcher

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
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

// Challenge is an HTTP-01 challenge to present.
type Challenge struct {
	Host, Token, KeyAuth string
}

// PresentFunc makes challenges answer through the ingress; it returns once they do.
type PresentFunc func(ctx context.Context, challenges []Challenge) error

// Issuer gets certificates from the CA.
type Issuer interface {
	// Issue orders a certificate for hosts with key (a replacement of replaces,
	// when not nil; with the CA's named profile unless profile is ""), calls
	// present with the challenges to answer, and returns the PEM chain, leaf first.
	Issue(ctx context.Context, hosts []string, key crypto.Signer, replaces *x509.Certificate, profile string, present PresentFunc) ([]byte, error)
	// RenewalWindow is the CA's suggested renewal window for cert; ok is false
	// when the CA offers none.
	RenewalWindow(ctx context.Context, cert *x509.Certificate) (start, end time.Time, ok bool, err error)
	// DirectoryURL identifies the CA.
	DirectoryURL() string
}

// Secrets reads and writes certificate Secrets.
type Secrets interface {
	// Get reads a Secret from the API server, nil when there is none.
	Get(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	// Read parses a certificate Secret: its leaf, its key type (one of KeyTypes)
	// and the directory that issued it.
	Read(s *corev1.Secret) (leaf *x509.Certificate, keyType, directory string, err error)
	// Write stores chainPEM and key in namespace/name, updating current (as last
	// seen, nil if none) and never a Secret that is not ours.
	Write(ctx context.Context, current *corev1.Secret, namespace, name string, chainPEM []byte, key crypto.Signer, directory string) error
	// NewKey generates a private key of keyType (one of KeyTypes).
	NewKey(keyType string) (crypto.Signer, error)
}

// ChallengeServer answers the challenges presented to it.
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

// SelfChecker checks that a challenge answers through the ingress.
type SelfChecker interface {
	Check(ctx context.Context, host, token, keyAuth string) error
}

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
	// DefaultProfile is the CA profile ordered when an Ingress names none; ""
	// leaves it to the CA.
	DefaultProfile string
	Workers        int
	// RenewBefore is how long before expiry to renew when the CA offers no
	// renewal information; 0: when a third of the lifetime remains.
	RenewBefore time.Duration
	// MaxOrdersPerHour caps the orders for one certificate in any hour.
	MaxOrdersPerHour int
	// RetryBase and RetryMax bound the exponential backoff after a failure.
	RetryBase, RetryMax time.Duration
	// Settle delays the sync an Ingress change brings, so that Ingresses applied
	// together (say, two naming one Secret) are seen together and share one order.
	Settle time.Duration
	// Resync is the informers' resync period; 0: none.
	Resync time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Fault, if set, is called at each step of an order named by the Fault*
	// constants; tests make it crash the process there.
	Fault func(point string)
}

// Points in an order where Config.Fault is called.
const (
	FaultPathsInserted = "paths-inserted" // challenge paths are in the Ingress
	FaultSelfChecked   = "self-checked"   // they answer; the CA is told next
	FaultSecretWritten = "secret-written" // the certificate is stored
	FaultBeforeRestore = "before-restore" // the paths are about to come out
)

// Controller reconciles certificates. Create it with New and start it with Run.
type Controller struct {
	cfg      Config
	log      *slog.Logger
	now      func() time.Time
	selector labels.Selector

	ingresses   networkinglisters.IngressLister
	ingIndexer  cache.Indexer
	secrets     corelisters.SecretLister
	synced      []cache.InformerSynced
	factories   []informers.SharedInformerFactory
	queue       workqueue.TypedRateLimitingInterface[string]
	limiter     workqueue.TypedRateLimiter[string]
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster

	// mu guards the state map and ready. A certState itself is only touched by
	// the worker holding its key, which the queue gives to one worker at a time.
	mu    sync.Mutex
	state map[string]*certState // by key
	ready bool
}

// certState is what the controller remembers of a certificate between syncs.
type certState struct {
	orders []time.Time // when orders were placed, for MaxOrdersPerHour
	// After a failure, no new order before retryAt unless the desired state
	// (failedFor) changes: events must not bypass the backoff.
	failedFor string
	retryAt   time.Time
	// The renewal time chosen for the certificate with serial.
	serial   string
	renewAt  time.Time
	recheck  time.Time // when to ask the CA for renewal information again
	warnedOn string    // the desired state last warned about, so a warning is given once
}

const (
	indexCert    = "cert"
	indexJournal = "journal"
)

// New wires the informers and the queue; nothing runs until Run.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Issuer == nil || cfg.Secrets == nil || cfg.Challenges == nil || cfg.Solver == nil || cfg.SelfCheck == nil || cfg.Metrics == nil {
		return nil, errors.New("watcher: incomplete config")
	}
	selector, err := labels.Parse(cfg.SecretSelector)
	if err != nil || selector.Empty() {
		return nil, fmt.Errorf("watcher: secret selector %q: must select our Secrets", cfg.SecretSelector)
	}
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
	c := &Controller{cfg: cfg, log: cfg.Logger, now: cfg.Now, selector: selector, state: map[string]*certState{}}
	c.limiter = workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBase, cfg.RetryMax)
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(c.limiter, workqueue.TypedRateLimitingQueueConfig[string]{
		Name: "certificates", MetricsProvider: cfg.Metrics.Workqueue(),
	})

	ingFactory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithNamespace(cfg.Namespace))
	secFactory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync, informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = cfg.SecretSelector }))
	ingInformer := ingFactory.Networking().V1().Ingresses()
	secInformer := secFactory.Core().V1().Secrets()
	if err := ingInformer.Informer().AddIndexers(cache.Indexers{
		indexCert:    func(obj any) ([]string, error) { return certKeys(obj.(*networkingv1.Ingress)), nil },
		indexJournal: func(obj any) ([]string, error) { return journalKeys(obj.(*networkingv1.Ingress)), nil },
	}); err != nil {
		return nil, fmt.Errorf("watcher: indexers: %w", err)
	}
	if _, err := ingInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueIngress(nil, obj) },
		UpdateFunc: c.enqueueIngress,
		DeleteFunc: func(obj any) { c.enqueueIngress(nil, obj) },
	}); err != nil {
		return nil, err
	}
	if _, err := secInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueSecret(nil, obj) },
		UpdateFunc: c.enqueueSecret,
		DeleteFunc: func(obj any) { c.enqueueSecret(nil, obj) },
	}); err != nil {
		return nil, err
	}
	c.ingresses = ingInformer.Lister()
	c.ingIndexer = ingInformer.Informer().GetIndexer()
	c.secrets = secInformer.Lister()
	c.synced = []cache.InformerSynced{ingInformer.Informer().HasSynced, secInformer.Informer().HasSynced}
	c.factories = []informers.SharedInformerFactory{ingFactory, secFactory}

	c.broadcaster = record.NewBroadcaster(record.WithContext(context.Background()))
	c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ingress-acme"})
	return c, nil
}

// Run starts the informers, waits for their caches, and runs the workers until
// ctx ends; then it waits for the orders in flight to clean up and returns. It
// returns an error only when the caches cannot sync.
func (c *Controller) Run(ctx context.Context) error {
	defer utilruntime.HandleCrash()
	c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cfg.Client.CoreV1().Events("")})
	defer c.broadcaster.Shutdown()
	defer c.queue.ShutDown()
	for _, f := range c.factories {
		f.Start(ctx.Done())
	}
	defer func() {
		for _, f := range c.factories {
			f.Shutdown()
		}
	}()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("watcher: caches did not sync")
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
	return nil
}

// Ready reports whether the caches have synced and workers run.
func (c *Controller) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// next processes one key; it returns false when the queue shuts down.
func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	requeue, err := c.sync(ctx, key)
	switch {
	case err != nil && ctx.Err() != nil:
		// Stopping: the next process picks the key up from its own informers.
	case err != nil:
		delay := c.limiter.When(key)
		var ra interface{ RetryAfter() time.Time }
		if errors.As(err, &ra) {
			delay = max(delay, ra.RetryAfter().Sub(c.now()))
		}
		c.setRetry(key, delay)
		c.log.Error("sync failed", "secret", key, "err", err, "retry_in", delay.Round(time.Second).String())
		c.queue.AddAfter(key, delay)
	default:
		// The failure count is forgotten by sync itself when the certificate is
		// fine, not here: a sync that only waits out a backoff must keep it.
		if requeue > 0 {
			c.queue.AddAfter(key, requeue)
		}
	}
	return true
}

// enqueueIngress queues the certificates old and obj ask for or have challenge
// paths for. Resyncs (same resourceVersion) queue nothing.
func (c *Controller) enqueueIngress(old, obj any) {
	ing, ok := asIngress(obj)
	if !ok {
		return
	}
	var keys []string
	if old != nil {
		o, ok := asIngress(old)
		if ok && (o.ResourceVersion == ing.ResourceVersion || sameForUs(o, ing)) {
			return
		}
		if ok {
			keys = append(append(keys, certKeys(o)...), journalKeys(o)...)
		}
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

// stateFor returns the remembered state of key, creating it.
func (c *Controller) stateFor(key string) *certState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.state[key]
	if !ok {
		s = &certState{}
		c.state[key] = s
	}
	return s
}

func (c *Controller) setRetry(key string, delay time.Duration) {
	c.stateFor(key).retryAt = c.now().Add(delay)
}

// forget drops the remembered state of key, unless it placed orders in the last
// hour: toggling the opt-in must not reset the hourly order limit.
func (c *Controller) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.state[key]; ok && len(s.orders) > 0 && c.now().Sub(s.orders[len(s.orders)-1]) < time.Hour {
		return
	}
	delete(c.state, key)
}
