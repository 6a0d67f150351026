package solver

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// replicaSlice is the controller Service's EndpointSlice as Kubernetes keeps
// it: one endpoint per pod, ready as its readiness probe says.
func replicaSlice(name string, t discoveryv1.AddressType, ready map[string]bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ingress-acme", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: "ingress-acme"}},
		AddressType: t,
	}
	for a, r := range ready {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &r}})
	}
	return s
}

// sliceAddresses is the ready addresses the solver slice in ns lists.
func sliceAddresses(client *fake.Clientset, ns string) []string {
	s, err := client.DiscoveryV1().EndpointSlices(ns).Get(context.Background(), svcName, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return readyAddresses(s)
}

func waitAddresses(t *testing.T, client *fake.Clientset, ns string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := sliceAddresses(client, ns)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("solver slice in %s: got %v, want %v", ns, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The solver slices follow the replicas' readiness, in every namespace that
// has one, whether or not this process wrote them: when the leader dies, any
// replica takes its address out.
func TestFollowPeers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	s := NewServices(client, svcName, podEndpoint)
	for _, ns := range []string{"shop", "blog"} {
		if err := s.Ensure(ctx, ns); err != nil {
			t.Fatal(err)
		}
		waitAddresses(t, client, ns, podEndpoint.Address) // no replica known: this process
	}
	done := make(chan error, 1)
	go func() { done <- s.FollowPeers(ctx, "ingress-acme", "ingress-acme", "", slog.New(slog.DiscardHandler)) }()

	srcAPI := client.DiscoveryV1().EndpointSlices("ingress-acme")
	src, err := srcAPI.Create(ctx, replicaSlice("ingress-acme-x", discoveryv1.AddressTypeIPv4,
		map[string]bool{"10.0.0.7": true, "10.0.0.8": true, "10.0.0.9": false}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// An IPv6 slice of a dual-stack Service is left aside: ours are IPv4.
	if _, err := srcAPI.Create(ctx, replicaSlice("ingress-acme-y", discoveryv1.AddressTypeIPv6,
		map[string]bool{"fd00::7": true}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAddresses(t, client, "shop", "10.0.0.7", "10.0.0.8")
	waitAddresses(t, client, "blog", "10.0.0.7", "10.0.0.8")

	// The leader (10.0.0.7) dies: Kubernetes marks it not ready.
	src = replicaSlice(src.Name, discoveryv1.AddressTypeIPv4, map[string]bool{"10.0.0.7": false, "10.0.0.8": true, "10.0.0.9": true})
	if _, err := srcAPI.Update(ctx, src, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAddresses(t, client, "shop", "10.0.0.8", "10.0.0.9")
	waitAddresses(t, client, "blog", "10.0.0.8", "10.0.0.9")

	// A namespace that gets its first challenge now gets the replicas too.
	if err := s.Ensure(ctx, "news"); err != nil {
		t.Fatal(err)
	}
	waitAddresses(t, client, "news", "10.0.0.8", "10.0.0.9")

	// No replica ready (all restarting): the slices stay as they were rather
	// than flap to whichever process writes last.
	if err := srcAPI.Delete(ctx, "ingress-acme-y", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := srcAPI.Delete(ctx, src.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		none := len(s.peers.addresses) == 0
		s.mu.Unlock()
		if none {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replicas' slices were deleted and FollowPeers still knows replicas")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := sliceAddresses(client, "shop"); !slices.Equal(got, []string{"10.0.0.8", "10.0.0.9"}) {
		t.Errorf("with no replica ready the slice changed to %v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestReadyPeers(t *testing.T) {
	unknown := replicaSlice("a", discoveryv1.AddressTypeIPv4, nil)
	unknown.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.5"}}} // Ready nil: take as ready
	six := replicaSlice("b", discoveryv1.AddressTypeIPv6, map[string]bool{"fd00::2": true, "fd00::1": true})
	got := readyPeers([]*discoveryv1.EndpointSlice{unknown, six}, discoveryv1.AddressTypeIPv4)
	if got.addressType != discoveryv1.AddressTypeIPv4 || !slices.Equal(got.addresses, []string{"10.0.0.5"}) {
		t.Errorf("preferring IPv4: got %+v", got)
	}
	got = readyPeers([]*discoveryv1.EndpointSlice{six}, discoveryv1.AddressTypeIPv4)
	if got.addressType != discoveryv1.AddressTypeIPv6 || !slices.Equal(got.addresses, []string{"fd00::1", "fd00::2"}) {
		t.Errorf("only IPv6 there: got %+v", got)
	}
	if got := readyPeers(nil, discoveryv1.AddressTypeIPv4); len(got.addresses) != 0 {
		t.Errorf("no slices: got %+v", got)
	}
}
