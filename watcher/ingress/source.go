// Package ingress is the source of certificate requests from Ingresses:
// every Ingress annotated kubernetes.io/tls-acme: "true" asks for one
// certificate per Secret its spec.tls names (or "<name>-tls" for every rule
// host), and once a certificate is stored, its spec.tls names the Secret. It
// owns the Ingress cache and the one way Ingresses are written (Edit), which
// the HTTP-01 solver that presents challenges in Ingresses shares.
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
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/ingress-acme/ingress-acme/core"
)

// Metrics is what the source reports.
type Metrics interface {
	// SetHostsWithoutTLS records the rule hosts an Ingress serves without TLS.
	SetHostsWithoutTLS(namespace, ingress string, hosts []string)
}

// Config is what a Source needs; every field but Logger is required.
type Config struct {
	Client   kubernetes.Interface
	Informer networkinginformers.IngressInformer
	Recorder record.EventRecorder
	Metrics  Metrics
	Logger   *slog.Logger
}

// Source turns opted-in Ingresses into certificate requests. Safe for
// concurrent use.
type Source struct {
	cfg     Config
	lister  networkinglisters.IngressLister
	indexer cache.Indexer
	changes *changes // fires when the cache changes an Ingress

	// mu guards uncovered.
	mu        sync.Mutex
	uncovered map[string]string // Ingress (namespace/name) -> its hosts without TLS, as last reported
}

const indexCert = "cert"

// New sets the Ingress informer up: a transform that drops managed fields, and
// an index by the certificates each Ingress asks for. Nothing is watched until
// Watch.
func New(cfg Config) (*Source, error) {
	if cfg.Client == nil || cfg.Informer == nil || cfg.Recorder == nil || cfg.Metrics == nil {
		return nil, errors.New("ingress source: incomplete config")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	inf := cfg.Informer.Informer()
	if err := inf.SetTransform(dropManagedFields); err != nil {
		return nil, fmt.Errorf("ingress source: transform: %w", err)
	}
	if err := inf.AddIndexers(cache.Indexers{
		indexCert: func(obj any) ([]string, error) { return certKeys(obj.(*networkingv1.Ingress)), nil },
	}); err != nil {
		return nil, fmt.Errorf("ingress source: indexers: %w", err)
	}
	return &Source{cfg: cfg, lister: cfg.Informer.Lister(), indexer: inf.GetIndexer(), changes: newChanges(),
		uncovered: map[string]string{}}, nil
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

// Watch queues the certificates an Ingress asks (or asked) for at each change
// of it; resyncs and changes that alter nothing a request reads queue nothing.
func (s *Source) Watch(queue func(key string)) (cache.InformerSynced, error) {
	reg, err := s.cfg.Informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.changed(nil, obj, queue) },
		UpdateFunc: func(old, obj any) { s.changed(old, obj, queue) },
		DeleteFunc: func(obj any) { s.deleted(obj, queue) },
	})
	if err != nil {
		return nil, fmt.Errorf("ingress source: %w", err)
	}
	return reg.HasSynced, nil
}

// changed wakes whoever waits for the Ingress (see Changed), then queues the
// certificates it and old (nil for none) ask for.
func (s *Source) changed(old, obj any, queue func(string)) {
	ing, ok := asIngress(obj)
	if !ok {
		return
	}
	s.changes.fire(ing.Namespace + "/" + ing.Name)
	var keys []string
	if prev, ok := asIngress(old); ok {
		if prev.ResourceVersion == ing.ResourceVersion || sameForUs(prev, ing) {
			return
		}
		keys = certKeys(prev)
	}
	for _, k := range append(keys, certKeys(ing)...) {
		queue(k)
	}
}

// deleted queues what the deleted Ingress asked for and drops what is
// recorded about it alone.
func (s *Source) deleted(obj any, queue func(string)) {
	ing, ok := asIngress(obj)
	if !ok {
		return
	}
	s.changed(nil, ing, queue)
	s.mu.Lock()
	delete(s.uncovered, ing.Namespace+"/"+ing.Name)
	s.mu.Unlock()
	s.cfg.Metrics.SetHostsWithoutTLS(ing.Namespace, ing.Name, nil)
}

// sameForUs reports whether an update changed nothing a request or a journal
// reads: a status update by the ingress controller, a label, managed fields.
func sameForUs(a, b *networkingv1.Ingress) bool {
	return maps.Equal(a.Annotations, b.Annotations) && equality.Semantic.DeepEqual(a.Spec, b.Spec)
}

// asIngress is obj as an Ingress, also from a deletion's last known state.
func asIngress(obj any) (*networkingv1.Ingress, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	ing, ok := obj.(*networkingv1.Ingress)
	return ing, ok
}

// Request is the certificate key as the opted-in Ingresses naming its Secret
// ask for it (with a malformed opt-in value: as they would, stopped by a
// problem); ok is false when no Ingress does.
func (s *Source) Request(key string) (core.Request, bool) {
	ings := s.indexed(key)
	if len(ings) == 0 {
		return core.Request{}, false
	}
	ns, secret, _ := cache.SplitMetaNamespaceKey(key)
	d, problems := desiredFor(ns, secret, ings)
	return d.request(problems), true
}

// Wants reports whether an opted-in Ingress still asks for key.
func (s *Source) Wants(key string) bool {
	return slices.ContainsFunc(s.indexed(key), optedIn)
}

// Sync makes every asker of req that wants it (no spec.tls, or the entry we
// added) name the Secret once it is stored, lets go of the spec.tls entries we
// added that their users have edited since, and tells of rule hosts an
// asker's own spec.tls leaves out. One Update per Ingress, none when nothing
// changes; deleted Ingresses are skipped.
func (s *Source) Sync(ctx context.Context, req core.Request, stored bool) error {
	s.reportHostsWithoutTLS(s.indexed(req.Key()))
	var errs []error
	for _, a := range req.Askers {
		ing := s.Cached(req.Namespace, a.Name)
		spec := specOf(a, req.Secret)
		if ing == nil || !restores(ing.DeepCopy(), spec, stored) {
			continue
		}
		released := false
		_, err := s.Edit(ctx, req.Namespace, a.Name, false, func(i *networkingv1.Ingress) (bool, error) {
			released = releaseTLS(i)
			return restores(i, spec, stored) || released, nil
		})
		if err != nil && !errors.Is(err, core.ErrGone) {
			errs = append(errs, fmt.Errorf("write back to ingress %s: %w", a.Name, err))
		} else if err == nil && released {
			s.cfg.Recorder.Event(ing, corev1.EventTypeNormal, "TLSOwnedByUser", "spec.tls was edited: the entry ingress-acme added is yours from now on and is no longer kept in step with the rule hosts")
		}
	}
	return errors.Join(errs...)
}

// WriteBack applies to ing, in an Update made for other reasons (an HTTP-01
// solver withdrawing its paths once req's certificate is stored), what Sync
// would write to it; it reports whether ing changed.
func (s *Source) WriteBack(ing *networkingv1.Ingress, req core.Request) bool {
	i := slices.IndexFunc(req.Askers, func(a core.Asker) bool { return a.Name == ing.Name })
	if i < 0 {
		return false
	}
	return optedIn(ing) && ensureTLS(ing, req.Secret, specOf(req.Askers[i], req.Secret))
}

// restores applies to ing what Sync changes, and reports whether that changed ing.
func restores(ing *networkingv1.Ingress, spec certSpec, stored bool) bool {
	released := releaseTLS(ing)
	return stored && optedIn(ing) && ensureTLS(ing, spec.secret, spec) || released
}

// Event records an Event on the Ingress obj names, if the cache has it.
func (s *Source) Event(obj core.Ref, eventType, reason, message string) {
	if ing := s.Cached(obj.Namespace, obj.Name); ing != nil {
		s.cfg.Recorder.Event(ing, eventType, reason, message)
	}
}

// Specs are the keys of every certificate ing would ask for if it opted in.
func (s *Source) Specs(ing *networkingv1.Ingress) []string {
	var keys []string
	for _, spec := range certSpecs(ing) {
		keys = append(keys, ing.Namespace+"/"+spec.secret)
	}
	return keys
}

// reportHostsWithoutTLS tells, once per change, of rule hosts that an opted-in
// Ingress's own spec.tls leaves out: they are served without TLS.
func (s *Source) reportHostsWithoutTLS(ings []*networkingv1.Ingress) {
	for _, ing := range ings {
		hosts := hostsWithoutTLS(ing)
		id := ing.Namespace + "/" + ing.Name
		s.mu.Lock()
		seen, had := s.uncovered[id]
		if len(hosts) == 0 {
			delete(s.uncovered, id)
		} else {
			s.uncovered[id] = strings.Join(hosts, ",")
		}
		s.mu.Unlock()
		if had && seen == strings.Join(hosts, ",") || !had && len(hosts) == 0 {
			continue
		}
		s.cfg.Metrics.SetHostsWithoutTLS(ing.Namespace, ing.Name, hosts)
		if len(hosts) > 0 {
			s.cfg.Recorder.Event(ing, corev1.EventTypeNormal, "HostWithoutTLS", fmt.Sprintf(
				"no spec.tls entry covers %s: served without TLS (add it to an entry's hosts to get a certificate for it)", quoted(strings.Join(hosts, ", "), 300)))
		}
	}
}

// indexed lists the Ingresses that ask for key, sorted by name.
func (s *Source) indexed(key string) []*networkingv1.Ingress {
	objs, err := s.indexer.ByIndex(indexCert, key)
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
