package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

const (
	journalAnnotation = "ingress-acme.io/challenges"
	challengePrefix   = "/.well-known/acme-challenge/"
	solverService     = "ingress-acme-solver"
)

// newNamespace creates a fresh namespace for the test.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns, err := bed.CreateNamespace(context.Background(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// startBackend starts a backend server named name in ns, closed when the test ends.
func startBackend(t *testing.T, ns, name string) {
	t.Helper()
	b, err := bed.Backend(context.Background(), ns, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
}

// host names a test host unique to ns, since Traefik routes every namespace's
// Ingresses by host.
func host(ns, name string) string { return name + "." + ns + ".test" }

// newIngress is an Ingress in ns routing / of each host to backend, opted in
// when acme is true.
func newIngress(ns, name, backend string, acme bool, hosts ...string) *networkingv1.Ingress {
	return testbed.Ingress(ns, name, backend, acme, hosts...)
}

func createIngress(t *testing.T, ing *networkingv1.Ingress) *networkingv1.Ingress {
	t.Helper()
	got, err := bed.Client().NetworkingV1().Ingresses(ing.Namespace).Create(context.Background(), ing, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func getIngress(t *testing.T, ns, name string) *networkingv1.Ingress {
	t.Helper()
	ing, err := bed.Client().NetworkingV1().Ingresses(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ing
}

// updateIngress applies edit to the Ingress and updates it, retrying on conflict.
func updateIngress(t *testing.T, ns, name string, edit func(*networkingv1.Ingress)) {
	t.Helper()
	api := bed.Client().NetworkingV1().Ingresses(ns)
	for {
		ing := getIngress(t, ns, name)
		edit(ing)
		_, err := api.Update(context.Background(), ing, metav1.UpdateOptions{})
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			t.Fatal(err)
		}
	}
}

// waitFor polls cond every 20 ms until it returns true, failing the test after
// timeout with the last message cond gave.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", what, timeout, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// consistently checks cond every 50 ms for d and fails the test the first time
// it does not hold. It is for asserting that something does not happen.
func consistently(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if ok, msg := cond(); !ok {
			t.Fatalf("%s: stopped holding: %s", what, msg)
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// getSecret returns the Secret, nil when it does not exist.
func getSecret(t *testing.T, ns, name string) *corev1.Secret {
	t.Helper()
	s, err := bed.Client().CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitCertificate waits until Secret ns/name holds a certificate for every host
// that verifies against Pebble's roots, and returns the Secret and its leaf.
func waitCertificate(t *testing.T, ns, name string, timeout time.Duration, hosts ...string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	roots, err := bed.PebbleRootPool(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return waitCertificateFrom(t, roots, ns, name, timeout, hosts...)
}

// waitCertificateFrom is waitCertificate verifying against roots.
func waitCertificateFrom(t *testing.T, roots *x509.CertPool, ns, name string, timeout time.Duration, hosts ...string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	return waitLeaf(t, roots, ns, name, "certificate in Secret "+name, timeout, nil, hosts...)
}

// waitLeaf waits until Secret ns/name holds a chain that verifies against
// roots for every host and whose leaf accept takes (nil: any), and returns both.
func waitLeaf(t *testing.T, roots *x509.CertPool, ns, name, what string, timeout time.Duration, accept func(*x509.Certificate) (bool, string), hosts ...string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	var sec *corev1.Secret
	var leaf *x509.Certificate
	waitFor(t, timeout, what, func() (bool, string) {
		sec = getSecret(t, ns, name)
		if sec == nil {
			return false, "no Secret"
		}
		var err error
		if leaf, err = testbed.VerifyChainPEM(sec.Data[corev1.TLSCertKey], roots, hosts...); err != nil {
			return false, err.Error()
		}
		if accept == nil {
			return true, ""
		}
		return accept(leaf)
	})
	return sec, leaf
}

// servedCertificate GETs https://h/ through Traefik, verifying against Pebble's
// roots, and returns the leaf it served and the status.
func servedCertificate(h string) (*x509.Certificate, int, error) {
	roots, err := bed.PebbleRootPool(context.Background())
	if err != nil {
		return nil, 0, err
	}
	resp, err := bed.HTTPClientWithRoots(h, roots).Get("https://" + h + "/")
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return nil, resp.StatusCode, fmt.Errorf("no TLS")
	}
	return resp.TLS.PeerCertificates[0], resp.StatusCode, nil
}

// waitServed waits until Traefik serves, verified, the certificate with leaf's
// serial on https://h/ with status 200.
// servedWithin is how long Traefik may take to serve a new certificate. It is
// usually under a second; but the short soak restarts the shared
// kube-apiserver while other tests run, and 14 s after one such restart
// Traefik served its default certificate for over 10 s, the Secret written and
// the Ingress naming it (CI, TestZeroDowntime).
const servedWithin = 30 * time.Second

func waitServed(t *testing.T, h string, leaf *x509.Certificate, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, "HTTPS for "+h+" serving the issued certificate", func() (bool, string) {
		got, code, err := servedCertificate(h)
		if err != nil {
			return false, err.Error()
		}
		if got.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			return false, fmt.Sprintf("serial %x served, want %x", got.SerialNumber, leaf.SerialNumber)
		}
		return code == http.StatusOK, fmt.Sprintf("status %d", code)
	})
}

// waitHTTP waits until GET http://h/ through Traefik answers 200.
func waitHTTP(t *testing.T, h string) {
	t.Helper()
	waitFor(t, 10*time.Second, "HTTP for "+h, func() (bool, string) {
		resp, err := bed.HTTPClient(h).Get("http://" + h + "/")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, fmt.Sprintf("status %d", resp.StatusCode)
	})
}

// assertClean checks that the Ingress holds no challenge path, no journal, and
// exactly the rules want has (compared as JSON).
func assertClean(t *testing.T, ing *networkingv1.Ingress, wantRules []networkingv1.IngressRule) {
	t.Helper()
	if v, ok := ing.Annotations[journalAnnotation]; ok {
		t.Errorf("journal annotation left: %s", v)
	}
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if strings.HasPrefix(p.Path, challengePrefix) {
				t.Errorf("challenge path left in rule %s: %s", r.Host, p.Path)
			}
		}
	}
	got, _ := json.Marshal(ing.Spec.Rules)
	want, _ := json.Marshal(wantRules)
	if string(got) != string(want) {
		t.Errorf("rules changed:\ngot  %s\nwant %s", got, want)
	}
}

// tlsNames returns the spec.tls entries as "secret:host,host".
func tlsNames(ing *networkingv1.Ingress) []string {
	var out []string
	for _, t := range ing.Spec.TLS {
		hosts := slices.Clone(t.Hosts)
		slices.Sort(hosts)
		out = append(out, t.SecretName+":"+strings.Join(hosts, ","))
	}
	return out
}

// ninetyDayIngress is an opted-in Ingress asking for Pebble's "default" profile
// (90-day certificates). With no profile in the order, the testbed's Pebble
// picks one of its profiles at random, and its "shortlived" one lasts
// seconds: renewals would race with what these tests compare.
func ninetyDayIngress(ns, name, backend string, hosts ...string) *networkingv1.Ingress {
	ing := newIngress(ns, name, backend, true, hosts...)
	ing.Annotations[profileAnnotation] = "default"
	return ing
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run `make tools` (%v)", name, err)
	}
	return p
}

// deployPath is the path of deploy/name in the repository.
func deployPath(t *testing.T, name string) string {
	t.Helper()
	root, err := testbed.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "deploy", name)
}

// challengePaths lists the challenge paths in ing's rules as "host path".
func challengePaths(ing *networkingv1.Ingress) []string {
	var out []string
	for _, r := range ing.Spec.Rules {
		if r.HTTP == nil {
			continue
		}
		for _, p := range r.HTTP.Paths {
			if strings.HasPrefix(p.Path, challengePrefix) {
				out = append(out, r.Host+" "+p.Path)
			}
		}
	}
	return out
}

// patched reports what of ours is left in ing: the journal and challenge paths.
func patched(ing *networkingv1.Ingress) string {
	var parts []string
	if v, ok := ing.Annotations[journalAnnotation]; ok {
		parts = append(parts, "journal "+v)
	}
	if p := challengePaths(ing); len(p) > 0 {
		parts = append(parts, "paths "+strings.Join(p, ", "))
	}
	return strings.Join(parts, "; ")
}
