package solver

import (
	"context"
	"fmt"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ingress-acme/ingress-acme/core"
)

// Endpoint is where the challenge server can be reached from the ingress
// controller: in a cluster the pod IP (AddressType IPv4 or IPv6) and the
// challenge port.
type Endpoint struct {
	Address     string
	AddressType discoveryv1.AddressType
	Port        int32
}

// Services keeps, in each namespace that has a challenge, a selector-less Service
// (port 80) and an EndpointSlice naming the challenge servers, so that an
// Ingress path can route to them: this process's Endpoint, or every ready
// replica once FollowPeers knows them. It is safe for concurrent use.
type Services struct {
	client   kubernetes.Interface
	name     string
	endpoint Endpoint

	// mu guards ensured and peers.
	mu      sync.Mutex
	ensured map[string]bool // namespaces found or made right since the last Forget
	peers   peers           // the ready replicas; none: endpoint alone
}

// NewServices returns Services that write through client a Service and
// EndpointSlice called name.
func NewServices(client kubernetes.Interface, name string, endpoint Endpoint) *Services {
	return &Services{client: client, name: name, endpoint: endpoint, ensured: map[string]bool{}}
}

// Name is the Service's name, the backend of every challenge path.
func (s *Services) Name() string { return s.name }

// Ensure makes the Service and its EndpointSlice in namespace exist and point at
// the endpoint. It reads both and writes only what is missing or differs, once:
// later calls for the namespace cost nothing until Forget(namespace).
func (s *Services) Ensure(ctx context.Context, namespace string) error {
	s.mu.Lock()
	done := s.ensured[namespace]
	s.mu.Unlock()
	if done {
		return nil
	}
	if err := s.ensureService(ctx, namespace); err != nil {
		return err
	}
	if err := s.ensureSlice(ctx, namespace); err != nil {
		return err
	}
	s.mu.Lock()
	s.ensured[namespace] = true
	s.mu.Unlock()
	return nil
}

// Forget makes the next Ensure for namespace check the API server again: call it
// when a challenge there did not answer (someone may have deleted the Service).
func (s *Services) Forget(namespace string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ensured, namespace)
}

func (s *Services) labels() map[string]string {
	return map[string]string{core.LabelManagedBy: core.ManagedBy}
}

func (s *Services) ensureService(ctx context.Context, namespace string) error {
	api := s.client.CoreV1().Services(namespace)
	want := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}
	svc, err := api.Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		svc = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: namespace, Labels: s.labels()},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{want}},
		}
		_, err = api.Create(ctx, svc, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return s.ensureService(ctx, namespace) // made meanwhile: check whose it is
		}
		if err != nil {
			return fmt.Errorf("create service %s/%s: %w", namespace, s.name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get service %s/%s: %w", namespace, s.name, err)
	}
	if !core.Owned(svc.Labels) {
		return fmt.Errorf("service %s/%s exists and is not managed by ingress-acme", namespace, s.name)
	}
	if len(svc.Spec.Selector) == 0 && slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		return p.Name == want.Name && p.Port == want.Port
	}) {
		return nil
	}
	svc = svc.DeepCopy()
	svc.Spec.Selector = nil
	svc.Spec.Ports = []corev1.ServicePort{want}
	if _, err := api.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update service %s/%s: %w", namespace, s.name, err)
	}
	return nil
}

// wantSlice is the EndpointSlice namespace should have: every ready replica, or
// this process alone while none is known.
func (s *Services) wantSlice(namespace string) discoveryv1.EndpointSlice {
	s.mu.Lock()
	p := s.peers
	s.mu.Unlock()
	if len(p.addresses) == 0 {
		p = peers{addressType: s.endpoint.AddressType, addresses: []string{s.endpoint.Address}}
	}
	name, protocol, ready := "http", corev1.ProtocolTCP, true
	port := s.endpoint.Port
	slice := discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      s.name,
			Namespace: namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: s.name,
				discoveryv1.LabelManagedBy:   core.ManagedBy,
				core.LabelManagedBy:          core.ManagedBy,
			},
		},
		AddressType: p.addressType,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &protocol, Port: &port}},
	}
	for _, a := range p.addresses {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		})
	}
	return slice
}

func (s *Services) ensureSlice(ctx context.Context, namespace string) error {
	api := s.client.DiscoveryV1().EndpointSlices(namespace)
	want := s.wantSlice(namespace)
	cur, err := api.Get(ctx, s.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &want, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create endpointslice %s/%s: %w", namespace, s.name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get endpointslice %s/%s: %w", namespace, s.name, err)
	}
	// Slices are judged by Kubernetes' own label for who manages them, which
	// the EndpointSlice controllers respect too.
	if cur.Labels[discoveryv1.LabelManagedBy] != core.ManagedBy {
		return fmt.Errorf("endpointslice %s/%s exists and is not managed by ingress-acme", namespace, s.name)
	}
	return s.updateSlice(ctx, cur, &want)
}

// updateSlice makes cur, an EndpointSlice of ours, what want says.
func (s *Services) updateSlice(ctx context.Context, cur, want *discoveryv1.EndpointSlice) error {
	namespace := cur.Namespace
	api := s.client.DiscoveryV1().EndpointSlices(namespace)
	if sliceMatches(cur, want) {
		return nil
	}
	if cur.AddressType != want.AddressType { // immutable: replace the slice
		if err := api.Delete(ctx, s.name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("replace endpointslice %s/%s: %w", namespace, s.name, err)
		}
		if _, err := api.Create(ctx, want, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create endpointslice %s/%s: %w", namespace, s.name, err)
		}
		return nil
	}
	want = want.DeepCopy()
	want.ResourceVersion = cur.ResourceVersion
	if _, err := api.Update(ctx, want, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update endpointslice %s/%s: %w", namespace, s.name, err)
	}
	return nil
}

// sliceMatches reports whether cur routes where want does: the same address
// type, ready addresses and port.
func sliceMatches(cur, want *discoveryv1.EndpointSlice) bool {
	port := func(s *discoveryv1.EndpointSlice) (string, int32) {
		if len(s.Ports) != 1 || s.Ports[0].Port == nil || s.Ports[0].Name == nil {
			return "", 0
		}
		return *s.Ports[0].Name, *s.Ports[0].Port
	}
	curName, curPort := port(cur)
	wantName, wantPort := port(want)
	return cur.AddressType == want.AddressType && len(cur.Endpoints) == len(want.Endpoints) &&
		slices.Equal(readyAddresses(cur), readyAddresses(want)) && curName == wantName && curPort == wantPort
}

// readyAddresses is the addresses s lists as ready, sorted.
func readyAddresses(s *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && *e.Conditions.Ready {
			out = append(out, e.Addresses...)
		}
	}
	slices.Sort(out)
	return out
}
