package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An Ingress with two hosts and no spec.tls gets Secret <ingress>-tls for both,
// spec.tls naming it, nothing of ours left behind, and Traefik serving it.
func TestIssueTwoHostsNoTLS(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	a, b := host(ns, "shop"), host(ns, "www")
	start := time.Now()
	created := createIngress(t, newIngress(ns, "shop", "web", true, a, b))

	sec, leaf := waitCertificate(t, ns, "shop-tls", 60*time.Second, a, b)
	t.Logf("certificate for 2 hosts in the Secret %.2f s after the Ingress was created", time.Since(start).Seconds())
	if sec.Type != corev1.SecretTypeTLS {
		t.Errorf("secret type: got %s, want %s", sec.Type, corev1.SecretTypeTLS)
	}
	if len(sec.Data[corev1.TLSPrivateKeyKey]) == 0 {
		t.Error("secret has no tls.key")
	}
	want := []string{"shop-tls:" + a + "," + b}
	if a > b {
		want = []string{"shop-tls:" + b + "," + a}
	}
	waitFor(t, 10*time.Second, "spec.tls names the Secret and the Ingress is clean", func() (bool, string) {
		ing := getIngress(t, ns, "shop")
		_, journal := ing.Annotations[journalAnnotation]
		got := tlsNames(ing)
		return slices.Equal(got, want) && !journal, fmt.Sprintf("spec.tls %v, journal %v", got, journal)
	})
	assertClean(t, getIngress(t, ns, "shop"), created.Spec.Rules)
	waitServed(t, a, leaf, servedWithin)
	waitServed(t, b, leaf, servedWithin)
	if n := ctl.orders(); n != 1 {
		t.Errorf("orders: got %d, want 1", n)
	}
	issued := events(t, ns, "shop", "Issued")
	if len(issued) == 0 {
		t.Error("no Issued event on the Ingress")
	}
}

// A restarted controller finds the certificate valid: no new order, no new
// account, the Secret untouched.
func TestRestartReusesAccountAndCertificate(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	h := host(ns, "app")
	createIngress(t, newIngress(ns, "app", "web", true, h))
	sec, leaf := waitCertificate(t, ns, "app-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)
	if n := ctl.count("acme account ready", "registered", true); n != 1 {
		t.Fatalf("accounts registered on the first run: got %d, want 1", n)
	}
	accounts, err := bed.Client().CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "ingress-acme.io/role=account"})
	if err != nil || len(accounts.Items) != 1 {
		t.Fatalf("account secrets: got %d (%v), want 1", len(accounts.Items), err)
	}

	ctl.stop()
	ctl.start()
	// Let the new process sync every key (the Ingress event brings one sync per
	// certificate right after the caches fill) and look at the certificate.
	waitFor(t, 10*time.Second, "the restarted controller to look at the certificate", func() (bool, string) {
		_, ok := ctl.metric("ingress_acme_certificate_expiry_timestamp_seconds", "namespace", ns, "secret", "app-tls")
		return ok, "no expiry metric yet"
	})
	if n := ctl.orders(); n != 1 {
		t.Errorf("orders after restart: got %d, want 1", n)
	}
	if n := ctl.count("acme account ready", "key_created", true); n != 1 {
		t.Errorf("account keys created over both runs: got %d, want 1", n)
	}
	if n := ctl.count("acme account ready", "registered", true); n != 1 {
		t.Errorf("accounts registered over both runs: got %d, want 1", n)
	}
	after := getSecret(t, ns, "app-tls")
	if after.ResourceVersion != sec.ResourceVersion {
		t.Errorf("secret rewritten after restart: resourceVersion %s -> %s", sec.ResourceVersion, after.ResourceVersion)
	}
	accounts2, err := bed.Client().CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "ingress-acme.io/role=account"})
	if err != nil || len(accounts2.Items) != 1 || accounts2.Items[0].ResourceVersion != accounts.Items[0].ResourceVersion {
		t.Errorf("account secret changed across the restart")
	}
}
