package solver

import (
	"context"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

const svcName = "ingress-acme-solver"

var podEndpoint = Endpoint{Address: "10.0.0.7", AddressType: discoveryv1.AddressTypeIPv4, Port: 8089}

// actionList is "verb resource" for every action on client, in order.
func actionList(client *fake.Clientset) []string {
	var out []string
	for _, a := range client.Actions() {
		out = append(out, a.GetVerb()+" "+a.GetResource().Resource)
	}
	return out
}

func writeActions(client *fake.Clientset) []string {
	return slices.DeleteFunc(actionList(client), func(a string) bool { return strings.HasPrefix(a, "get ") })
}

func getSlice(t *testing.T, client *fake.Clientset, ns string) *discoveryv1.EndpointSlice {
	t.Helper()
	s, err := client.DiscoveryV1().EndpointSlices(ns).Get(context.Background(), svcName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get endpointslice: %v", err)
	}
	return s
}

func TestServicesName(t *testing.T) {
	if got := NewServices(fake.NewClientset(), svcName, podEndpoint).Name(); got != svcName {
		t.Errorf("got %q, want %q", got, svcName)
	}
}

func TestServicesEnsureCreates(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	s := NewServices(client, svcName, podEndpoint)
	if err := s.Ensure(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	want := []string{"get services", "create services", "get endpointslices", "create endpointslices"}
	if got := actionList(client); !slices.Equal(got, want) {
		t.Errorf("got actions %v, want %v", got, want)
	}

	svc, err := client.CoreV1().Services("shop").Get(ctx, svcName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.Selector) != 0 {
		t.Errorf("got selector %v, want none (the EndpointSlice is ours to write)", svc.Spec.Selector)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("got ports %+v, want one TCP port 80 named http", svc.Spec.Ports)
	}
	if got := svc.Labels["app.kubernetes.io/managed-by"]; got != "ingress-acme" {
		t.Errorf("got managed-by label %q, want ingress-acme", got)
	}

	sl := getSlice(t, client, "shop")
	if got := sl.Labels[discoveryv1.LabelServiceName]; got != svcName {
		t.Errorf("got service-name label %q, want %q", got, svcName)
	}
	if got := sl.Labels[discoveryv1.LabelManagedBy]; got != "ingress-acme" {
		t.Errorf("got %s %q, want ingress-acme (so the EndpointSlice controller leaves it alone)", discoveryv1.LabelManagedBy, got)
	}
	if sl.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("got address type %q, want IPv4", sl.AddressType)
	}
	if len(sl.Endpoints) != 1 || !slices.Equal(sl.Endpoints[0].Addresses, []string{"10.0.0.7"}) {
		t.Fatalf("got endpoints %+v, want one with 10.0.0.7", sl.Endpoints)
	}
	if r := sl.Endpoints[0].Conditions.Ready; r == nil || !*r {
		t.Errorf("got ready %v, want true", r)
	}
	if len(sl.Ports) != 1 || sl.Ports[0].Port == nil || *sl.Ports[0].Port != 8089 || sl.Ports[0].Name == nil || *sl.Ports[0].Name != "http" {
		t.Errorf("got ports %+v, want http 8089", sl.Ports)
	}
}

func TestServicesEnsureIdempotent(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	s := NewServices(client, svcName, podEndpoint)
	if err := s.Ensure(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	client.ClearActions()
	if err := s.Ensure(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	if got := actionList(client); len(got) != 0 {
		t.Errorf("got actions %v, want none: the namespace is known to be in place", got)
	}

	// After Forget, it checks again: two reads, no writes.
	s.Forget("shop")
	client.ClearActions()
	if err := s.Ensure(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	want := []string{"get services", "get endpointslices"}
	if got := actionList(client); !slices.Equal(got, want) {
		t.Errorf("after Forget: got actions %v, want only the two reads %v", got, want)
	}

	// Another namespace gets its own pair.
	client.ClearActions()
	if err := s.Ensure(ctx, "blog"); err != nil {
		t.Fatal(err)
	}
	if got, want := writeActions(client), []string{"create services", "create endpointslices"}; !slices.Equal(got, want) {
		t.Errorf("got writes %v, want %v", got, want)
	}
}

func TestServicesEnsureUpdatesSlice(t *testing.T) {
	tests := []struct {
		name       string
		endpoint   Endpoint
		wantWrites []string
	}{
		{name: "address changed (pod restarted)", endpoint: Endpoint{Address: "10.0.0.9", AddressType: discoveryv1.AddressTypeIPv4, Port: 8089}, wantWrites: []string{"update endpointslices"}},
		{name: "port changed", endpoint: Endpoint{Address: "10.0.0.7", AddressType: discoveryv1.AddressTypeIPv4, Port: 9000}, wantWrites: []string{"update endpointslices"}},
		{name: "address type changed: replaced", endpoint: Endpoint{Address: "fd00::7", AddressType: discoveryv1.AddressTypeIPv6, Port: 8089}, wantWrites: []string{"delete endpointslices", "create endpointslices"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			client := fake.NewClientset()
			if err := NewServices(client, svcName, podEndpoint).Ensure(ctx, "shop"); err != nil {
				t.Fatal(err)
			}
			client.ClearActions()
			if err := NewServices(client, svcName, tt.endpoint).Ensure(ctx, "shop"); err != nil {
				t.Fatal(err)
			}
			if got := writeActions(client); !slices.Equal(got, tt.wantWrites) {
				t.Errorf("got writes %v, want %v", got, tt.wantWrites)
			}
			sl := getSlice(t, client, "shop")
			if sl.AddressType != tt.endpoint.AddressType {
				t.Errorf("got address type %q, want %q", sl.AddressType, tt.endpoint.AddressType)
			}
			if len(sl.Endpoints) != 1 || !slices.Equal(sl.Endpoints[0].Addresses, []string{tt.endpoint.Address}) {
				t.Errorf("got endpoints %+v, want %s", sl.Endpoints, tt.endpoint.Address)
			}
			if len(sl.Ports) != 1 || *sl.Ports[0].Port != tt.endpoint.Port {
				t.Errorf("got ports %+v, want %d", sl.Ports, tt.endpoint.Port)
			}

			// And then it is in place.
			client.ClearActions()
			if err := NewServices(client, svcName, tt.endpoint).Ensure(ctx, "shop"); err != nil {
				t.Fatal(err)
			}
			if got := writeActions(client); len(got) != 0 {
				t.Errorf("got writes %v on the next call, want none", got)
			}
		})
	}
}

func TestServicesEnsureRepairsSlice(t *testing.T) {
	ctx := context.Background()
	ready := false
	client := fake.NewClientset(&discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: svcName, Labels: map[string]string{discoveryv1.LabelManagedBy: "ingress-acme"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.7"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	})
	if err := NewServices(client, svcName, podEndpoint).Ensure(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	sl := getSlice(t, client, "shop")
	if r := sl.Endpoints[0].Conditions.Ready; r == nil || !*r {
		t.Errorf("got ready %v, want true", r)
	}
	if len(sl.Ports) != 1 {
		t.Errorf("got ports %+v, want the http port", sl.Ports)
	}
	if got := sl.Labels[discoveryv1.LabelServiceName]; got != svcName {
		t.Errorf("got service-name label %q, want %q", got, svcName)
	}
}

func TestServicesEnsureRepairsService(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: svcName, Labels: map[string]string{"app.kubernetes.io/managed-by": "ingress-acme"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "x"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80}},
		},
	})
	if err := NewServices(client, svcName, podEndpoint).Ensure(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	if got := writeActions(client); !slices.Contains(got, "update services") {
		t.Errorf("got writes %v, want the Service updated", got)
	}
	svc, err := client.CoreV1().Services("shop").Get(ctx, svcName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Spec.Selector) != 0 {
		t.Errorf("got selector %v, want none", svc.Spec.Selector)
	}
}

func TestServicesEnsureRefusesForeign(t *testing.T) {
	tests := []struct {
		name     string
		existing runtime.Object
	}{
		{name: "service without labels", existing: &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: svcName},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "shop"}, Ports: []corev1.ServicePort{{Name: "web", Port: 8080}}},
		}},
		{name: "service of another manager", existing: &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: svcName, Labels: map[string]string{"app.kubernetes.io/managed-by": "helm"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}},
		{name: "endpointslice of the EndpointSlice controller", existing: &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: svcName, Labels: map[string]string{discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			client := fake.NewClientset(tt.existing)
			before := tt.existing.DeepCopyObject()
			err := NewServices(client, svcName, podEndpoint).Ensure(ctx, "shop")
			if err == nil || !strings.Contains(err.Error(), "not managed by ingress-acme") {
				t.Errorf("got %v, want a not-managed error", err)
			}
			for _, w := range writeActions(client) {
				if strings.HasPrefix(w, "update ") || strings.HasPrefix(w, "delete ") {
					t.Errorf("got %s, want the foreign object untouched", w)
				}
			}
			switch b := before.(type) {
			case *corev1.Service:
				svc, err := client.CoreV1().Services("shop").Get(ctx, svcName, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if svc.Spec.Selector["app"] != b.Spec.Selector["app"] || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != b.Spec.Ports[0].Port {
					t.Errorf("got service %+v, want it unchanged", svc.Spec)
				}
				if got := writeActions(client); len(got) != 0 {
					t.Errorf("got writes %v, want none after a foreign Service", got)
				}
			case *discoveryv1.EndpointSlice:
				sl := getSlice(t, client, "shop")
				if !slices.Equal(sl.Endpoints[0].Addresses, b.Endpoints[0].Addresses) {
					t.Errorf("got addresses %v, want them unchanged", sl.Endpoints[0].Addresses)
				}
			}
		})
	}
}
