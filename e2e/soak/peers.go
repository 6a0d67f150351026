package soak

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// soakPeersService is the Service whose EndpointSlice lists the soak's
// replicas (--solver-peers-service), as a Deployment's Service would.
const soakPeersService = "soak-peers"

// soakPeers plays Kubernetes' part for the replicas' Service on a testbed with
// no kubelet: a replica's endpoint is ready from when it is ready until it
// stops, as a pod's readiness probe would say. Each replica listens on its own
// loopback address and the same port, so the solver EndpointSlices list every
// ready replica and any of them may get the CA's request.
type soakPeers struct {
	client kubernetes.Interface
	ns     string
	port   int

	// mu guards ready and serializes writes.
	mu    sync.Mutex
	ready map[string]bool // address -> ready
}

// newSoakPeers writes the slice in ns with admin (the testbed's AdminConfig).
func newSoakPeers(admin *rest.Config, ns string) (*soakPeers, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := rest.CopyConfig(admin)
	cfg.WarningHandler = rest.NoWarnings{} // FQDN slices draw a warning on every write
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &soakPeers{client: client, ns: ns, port: port, ready: map[string]bool{}}, nil
}

// flags are replica i's challenge server flags: its own loopback address.
func (p *soakPeers) flags(i int) []string {
	addr := p.address(i)
	return []string{"--challenge-addr", net.JoinHostPort(addr, fmt.Sprint(p.port)), "--solver-address", addr,
		"--solver-address-type", "FQDN", "--solver-peers-service", soakPeersService}
}

func (p *soakPeers) address(i int) string { return fmt.Sprintf("127.0.0.%d", i+2) }

// set records whether addr is ready and writes the slice, trying for up to
// 30 s (the soak may have the API server restarting).
func (p *soakPeers) set(addr string, ready bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ready[addr] = ready
	want := p.slice()
	api := p.client.DiscoveryV1().EndpointSlices(p.ns)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cur, err := api.Get(ctx, soakPeersService, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = api.Create(ctx, want, metav1.CreateOptions{})
		case err == nil:
			want.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, want, metav1.UpdateOptions{})
		}
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond) // the API server is away or the write conflicted
	}
}

func (p *soakPeers) slice() *discoveryv1.EndpointSlice {
	name, port := "challenge", int32(p.port)
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: soakPeersService, Namespace: p.ns, Labels: map[string]string{discoveryv1.LabelServiceName: soakPeersService}},
		AddressType: discoveryv1.AddressTypeFQDN,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
	}
	for _, a := range slices.Sorted(maps.Keys(p.ready)) {
		r := p.ready[a]
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	return s
}
