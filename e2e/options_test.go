package e2e

import (
	"context"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// Each key type and challenge path type asked for is what the certificate and
// the challenge path get; changing the key type re-issues.
func TestKeyAndPathTypeOptions(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	cases := []struct{ name, keyType, pathType string }{
		{"default", "", ""},
		{"p384", "ecdsa-p384", "Prefix"},
		{"rsa2048", "rsa-2048", "ImplementationSpecific"},
		{"rsa4096", "rsa-4096", "Exact"},
	}
	api := bed.Client().NetworkingV1().Ingresses(ns)
	seenPathType := make(map[string]chan string, len(cases))
	for _, c := range cases {
		seen := make(chan string, 1)
		seenPathType[c.name] = seen
		w, err := api.Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + c.name})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer w.Stop()
			for ev := range w.ResultChan() {
				ing, ok := ev.Object.(*networkingv1.Ingress)
				if !ok || ev.Type != watch.Modified {
					continue
				}
				for _, r := range ing.Spec.Rules {
					for _, p := range r.HTTP.Paths {
						if len(p.Path) > len(challengePrefix) && p.Path[:len(challengePrefix)] == challengePrefix {
							seen <- string(*p.PathType)
							return
						}
					}
				}
			}
		}()
		ing := newIngress(ns, c.name, "web", true, host(ns, c.name))
		if c.keyType != "" {
			ing.Annotations["ingress-acme.io/key-type"] = c.keyType
		}
		if c.pathType != "" {
			ing.Annotations["ingress-acme.io/path-type"] = c.pathType
		}
		createIngress(t, ing)
	}
	for _, c := range cases {
		_, leaf := waitCertificate(t, ns, c.name+"-tls", 60*time.Second, host(ns, c.name))
		want := c.keyType
		if want == "" {
			want = "ecdsa-p256"
		}
		if got := testbed.KeyTypeOf(leaf); got != want {
			t.Errorf("%s: key type got %s, want %s", c.name, got, want)
		}
		wantPath := c.pathType
		if wantPath == "" {
			wantPath = "Exact"
		}
		select {
		case got := <-seenPathType[c.name]:
			if got != wantPath {
				t.Errorf("%s: challenge pathType got %s, want %s", c.name, got, wantPath)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: the challenge path was never seen", c.name)
		}
	}

	// Asking for another key type re-issues with it.
	orders := ctl.orders()
	_, before := waitCertificate(t, ns, "default-tls", 10*time.Second, host(ns, "default"))
	updateIngress(t, ns, "default", func(i *networkingv1.Ingress) { i.Annotations["ingress-acme.io/key-type"] = "rsa-2048" })
	_, after := waitRenewed(t, ns, "default-tls", before, 60*time.Second, host(ns, "default"))
	if got := testbed.KeyTypeOf(after); got != "rsa-2048" {
		t.Errorf("after the change: key type got %s, want rsa-2048", got)
	}
	if n := ctl.orders() - orders; n != 1 {
		t.Errorf("orders for the key type change: got %d, want 1", n)
	}
}
