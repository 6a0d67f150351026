package ingress

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/ingress-acme/ingress-acme/core"
)

type fakeMetrics struct{}

func (fakeMetrics) SetHostsWithoutTLS(string, string, []string) {}

func newSource(t *testing.T) *Source {
	t.Helper()
	client := fake.NewClientset()
	s, err := New(Config{Client: client, Informer: informers.NewSharedInformerFactory(client, 0).Networking().V1().Ingresses(),
		Recorder: record.NewFakeRecorder(10), Metrics: fakeMetrics{}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEnqueueIngressDropsUpdatesThatChangeNothingForUs(t *testing.T) {
	s := newSource(t)
	old := fxIngress("shop", "a.test")
	tests := []struct {
		name string
		edit func(*networkingv1.Ingress)
		want int
	}{
		{"status only", func(i *networkingv1.Ingress) {
			i.Status.LoadBalancer.Ingress = []networkingv1.IngressLoadBalancerIngress{{IP: "192.0.2.1"}}
		}, 0},
		{"label only", func(i *networkingv1.Ingress) { i.Labels = map[string]string{"team": "shop"} }, 0},
		{"spec", func(i *networkingv1.Ingress) { i.Spec.Rules[0].Host = "b.test" }, 1},
		{"annotation", func(i *networkingv1.Ingress) { i.Annotations = map[string]string{core.AnnotationTLSACME: "false"} }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := old.DeepCopy()
			next.ResourceVersion = "2"
			tt.edit(next)
			queued := map[string]bool{}
			s.changed(old, next, func(key string) { queued[key] = true })
			if got := len(queued); got != tt.want {
				t.Errorf("keys queued: got %d, want %d", got, tt.want)
			}
		})
	}
}
