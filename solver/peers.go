package solver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/ingress-acme/ingress-acme/core"
)

// peers are the replicas' challenge servers the solver slices list.
type peers struct {
	addressType discoveryv1.AddressType
	addresses   []string // sorted
}

func (p peers) equal(o peers) bool {
	return p.addressType == o.addressType && slices.Equal(p.addresses, o.addresses)
}

// FollowPeers makes the solver EndpointSlices list every ready replica, until
// ctx ends. The replicas are the ready endpoints of Service service in
// namespace: the controller's own Service, whose EndpointSlices Kubernetes keeps
// from the pods' readiness. Every replica runs it, leader or not, so that when
// the leader dies the others take its address out at once; all of them write
// the same slices from the same source, so they agree. scope is the namespace
// whose solver slices it keeps ("" for all). While no replica is ready, the
// slices are left as they are and Ensure writes this process's Endpoint.
func (s *Services) FollowPeers(ctx context.Context, namespace, service, scope string, log *slog.Logger) error {
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelServiceName + "=" + service
		}))
	informer := factory.Discovery().V1().EndpointSlices()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, obj any) { poke(obj) }, DeleteFunc: poke,
	}); err != nil {
		return fmt.Errorf("solver peers: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	// A failed rewrite is tried again after a second (the API server was away or
	// a slice changed meanwhile), or at the next change, whichever comes first.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	failed := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry.C:
		}
		list, err := informer.Lister().List(labels.Everything())
		if err != nil {
			return fmt.Errorf("solver peers: %w", err)
		}
		p := readyPeers(list, s.endpoint.AddressType)
		if !s.setPeers(p) && !failed {
			continue
		}
		retry.Stop()
		err = s.refreshSlices(ctx, scope)
		if failed = err != nil; failed {
			if ctx.Err() == nil {
				log.Warn("solver endpoints not updated yet, trying again in a second", "replicas", p.addresses, "err", err)
				retry.Reset(time.Second)
			}
			continue
		}
		log.Info("solver endpoints follow the ready replicas", "replicas", p.addresses)
	}
}

// setPeers records p, and reports whether it differs from what was recorded.
func (s *Services) setPeers(p peers) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers.equal(p) {
		return false
	}
	s.peers = p
	clear(s.ensured)
	return true
}

// refreshSlices rewrites every solver EndpointSlice in scope that does not list
// the ready replicas; with none ready, it leaves them be.
func (s *Services) refreshSlices(ctx context.Context, scope string) error {
	s.mu.Lock()
	none := len(s.peers.addresses) == 0
	s.mu.Unlock()
	if none {
		return nil
	}
	selector := labels.Set{discoveryv1.LabelServiceName: s.name, discoveryv1.LabelManagedBy: core.ManagedBy}.String()
	list, err := s.client.DiscoveryV1().EndpointSlices(scope).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return fmt.Errorf("list solver endpointslices: %w", err)
	}
	var errs []error
	for i := range list.Items {
		cur := &list.Items[i]
		if cur.Name != s.name {
			continue
		}
		want := s.wantSlice(cur.Namespace)
		errs = append(errs, s.updateSlice(ctx, cur, &want))
	}
	return errors.Join(errs...)
}

// readyPeers is the ready endpoints of slices, of address type prefer when
// there are such (a dual-stack Service has a slice per family).
func readyPeers(list []*discoveryv1.EndpointSlice, prefer discoveryv1.AddressType) peers {
	byType := map[discoveryv1.AddressType][]string{}
	for _, sl := range list {
		for _, e := range sl.Endpoints {
			// A nil Ready is unknown, which consumers are to take as ready.
			if len(e.Addresses) == 0 || (e.Conditions.Ready != nil && !*e.Conditions.Ready) {
				continue
			}
			if !slices.Contains(byType[sl.AddressType], e.Addresses[0]) {
				byType[sl.AddressType] = append(byType[sl.AddressType], e.Addresses[0])
			}
		}
	}
	t := prefer
	if len(byType[t]) == 0 {
		for _, other := range slices.Sorted(maps.Keys(byType)) {
			if len(byType[other]) > 0 {
				t = other
				break
			}
		}
	}
	addrs := byType[t]
	slices.Sort(addrs)
	if len(addrs) == 0 {
		return peers{}
	}
	return peers{addressType: t, addresses: addrs}
}
