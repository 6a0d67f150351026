package e2e

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// waitRestored waits until the Ingress has spec.tls, no journal, and exactly the
// rules of want.
func waitRestored(t *testing.T, want *networkingv1.Ingress) {
	t.Helper()
	waitFor(t, 30*time.Second, want.Name+" restored", func() (bool, string) {
		ing := getIngress(t, want.Namespace, want.Name)
		_, journal := ing.Annotations[journalAnnotation]
		return !journal && len(ing.Spec.TLS) > 0 && len(ing.Spec.Rules) == len(want.Spec.Rules),
			fmt.Sprintf("journal %v, tls %v, %d rules", journal, tlsNames(ing), len(ing.Spec.Rules))
	})
	assertClean(t, getIngress(t, want.Namespace, want.Name), want.Spec.Rules)
}

// startExtraCA starts a second Pebble for the test (named after ns) with env
// and, if eabKeys is not nil, External Account Binding required; it returns
// the CA and its root, and stops it when the test ends.
func startExtraCA(t *testing.T, ns string, env []string, eabKeys map[string]string) (*testbed.ExtraCA, *x509.CertPool) {
	t.Helper()
	ctx := context.Background()
	ca, err := bed.ExtraPebble(ctx, ns, env, eabKeys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ca.Stop)
	roots, err := ca.RootPool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ca, roots
}

// With a CA that rejects 30% of nonces, every certificate is still issued.
func TestCANonceRejection(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ca, roots := startExtraCA(t, ns, []string{"PEBBLE_WFE_NONCEREJECT=30"}, nil)
	startBackend(t, ns, "web")
	ctl := startController(t, ns, "--acme-directory", ca.Directory)
	var created []*networkingv1.Ingress
	for i := range 5 {
		created = append(created, createIngress(t, newIngress(ns, fmt.Sprintf("nonce%d", i), "web", true, host(ns, fmt.Sprintf("nonce%d", i)))))
	}
	for _, c := range created {
		waitCertificateFrom(t, roots, ns, c.Name+"-tls", 60*time.Second, c.Spec.Rules[0].Host)
		waitRestored(t, c)
	}
	t.Logf("5 certificates through 30%% nonce rejection: %d orders, %d failed syncs", ctl.orders(), ctl.count("sync failed"))
}

// A certificate whose validation fails gets a Warning with the CA's problem,
// backs off, stops at the hourly order limit, and does not hold up others.
func TestFailingValidationBacksOff(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	bad, good := host(ns, "unreachable"), host(ns, "fine")
	// The CA resolves bad to a loopback address where nothing listens; the
	// self-check, through Traefik, still passes.
	if err := bed.AddDNS(context.Background(), bad, "127.0.0.2"); err != nil {
		t.Fatal(err)
	}
	ctl := startController(t, ns, "--max-orders-per-hour", "3")
	createIngress(t, newIngress(ns, "bad", "web", true, bad))
	goodIng := createIngress(t, newIngress(ns, "good", "web", true, good))
	waitCertificate(t, ns, "good-tls", 60*time.Second, good)
	waitRestored(t, goodIng)

	waitFor(t, 60*time.Second, "OrderLimit warning", func() (bool, string) {
		return len(events(t, ns, "bad", "OrderLimit")) > 0, fmt.Sprintf("%d orders", ctl.count("ordering certificate", "secret", ns+"/bad-tls"))
	})
	failed := events(t, ns, "bad", "Failed")
	if len(failed) == 0 || failed[0].Type != corev1.EventTypeWarning || !strings.Contains(failed[0].Message, "urn:ietf:params:acme:error:connection") {
		t.Errorf("Failed events: got %v, want a Warning with the CA's connection problem", failed)
	} else {
		t.Logf("the CA's problem, as the user sees it: %s", failed[0].Message)
	}
	time.Sleep(3 * time.Second) // a backoff that ignored the limit would order again by now
	if n := ctl.count("ordering certificate", "secret", ns+"/bad-tls"); n != 3 {
		t.Errorf("orders for the failing certificate: got %d, want 3 (the hourly limit)", n)
	}
	var times []time.Time
	for _, r := range ctl.logs() {
		if r["msg"] == "ordering certificate" && r["secret"] == ns+"/bad-tls" {
			at, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(r["time"]))
			times = append(times, at)
		}
	}
	for i := 2; i < len(times); i++ {
		if prev, gap := times[i-1].Sub(times[i-2]), times[i].Sub(times[i-1]); gap < prev {
			t.Errorf("backoff did not grow: %s then %s", prev, gap)
		}
	}
	if s := getSecret(t, ns, "bad-tls"); s != nil {
		t.Error("a Secret was written for the failing certificate")
	}
	assertClean(t, getIngress(t, ns, "bad"), newIngress(ns, "bad", "web", true, bad).Spec.Rules)
}

// With the CA unreachable for a while, the controller retries with backoff and
// issues once it is back.
func TestCAUnreachable(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	u, err := url.Parse(bed.PebbleDirectory)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := testbed.NewProxy(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Close)
	startBackend(t, ns, "web")
	ctl := startController(t, ns, "--acme-directory", "https://"+proxy.Addr+u.Path)
	proxy.Cut()
	h := host(ns, "later")
	created := createIngress(t, newIngress(ns, "later", "web", true, h))
	waitFor(t, 20*time.Second, "a failure while the CA is unreachable", func() (bool, string) {
		return len(events(t, ns, "later", "Failed")) > 0, "no Failed event"
	})
	time.Sleep(3 * time.Second)
	failures := ctl.count("sync failed")
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	_, leaf := waitCertificate(t, ns, "later-tls", 60*time.Second, h)
	waitRestored(t, created)
	waitServed(t, h, leaf, servedWithin)
	t.Logf("%d failed attempts while the CA was unreachable (~4 s), then issued", failures)
	if failures < 2 || failures > 5 {
		t.Errorf("failed attempts in ~4 s with a 1 s base backoff: got %d, want 2 to 5", failures)
	}
}

// The API server restarted mid-run: the controller keeps going (same process)
// and finishes every certificate. Not parallel: it restarts the shared API server.
func TestAPIServerRestartMidRun(t *testing.T) {
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	pid := ctl.Pid()
	var created []*networkingv1.Ingress
	for i := range 10 {
		created = append(created, createIngress(t, newIngress(ns, fmt.Sprintf("apirestart%d", i), "web", true, host(ns, fmt.Sprintf("apirestart%d", i)))))
	}
	time.Sleep(300 * time.Millisecond) // orders under way
	if err := bed.StopProcess(testbed.KubeAPIServer); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := bed.StartProcess(testbed.KubeAPIServer); err != nil {
		t.Fatal(err)
	}
	for _, c := range created {
		waitCertificate(t, ns, c.Name+"-tls", 90*time.Second, c.Spec.Rules[0].Host)
		waitRestored(t, c)
	}
	if !ctl.Running() || ctl.Pid() != pid {
		t.Errorf("the controller did not survive the API server restart (running %v, pid %d -> %d)", ctl.Running(), pid, ctl.Pid())
	}
	t.Logf("10 certificates across an API server restart: %d orders, %d failed syncs", ctl.orders(), ctl.count("sync failed"))
}

// duringChallenge creates an opted-in Ingress and, as soon as its challenge
// path is in, runs act on the Ingress as it is then; it retries with a new
// Ingress (up to 5) when act comes too late (a conflict). It returns the name
// and the Ingress as created.
func duringChallenge(t *testing.T, ns, base string, act func(*networkingv1.Ingress) error) (string, *networkingv1.Ingress) {
	t.Helper()
	api := bed.Client().NetworkingV1().Ingresses(ns)
	for attempt := 1; attempt <= 5; attempt++ {
		name := fmt.Sprintf("%s%d", base, attempt)
		w, err := api.Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			t.Fatal(err)
		}
		created := createIngress(t, newIngress(ns, name, "web", true, host(ns, name)))
		landed := false
		for ev := range w.ResultChan() {
			ing, ok := ev.Object.(*networkingv1.Ingress)
			if !ok || ev.Type != watch.Modified || ing.Annotations[journalAnnotation] == "" {
				continue
			}
			err := act(ing)
			landed = err == nil
			if err != nil && !apierrors.IsConflict(err) {
				t.Fatal(err)
			}
			break
		}
		w.Stop()
		if landed {
			t.Logf("acted while the challenge path was in (attempt %d)", attempt)
			return name, created
		}
	}
	t.Fatal("5 attempts and the action never landed while the challenge path was in")
	return "", nil
}

// Users' edits while a challenge is in: the controller never resurrects a deleted
// Ingress, never re-adds what the user removed, removes its own path, and
// abandons an order nobody wants any more.
func TestConcurrentEdits(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	api := bed.Client().NetworkingV1().Ingresses(ns)
	ctx := context.Background()

	t.Run("replace spec", func(t *testing.T) {
		var userRules []networkingv1.IngressRule
		name, _ := duringChallenge(t, ns, "replace", func(ing *networkingv1.Ingress) error {
			replacement := newIngress(ns, ing.Name, "web", true, ing.Spec.Rules[0].Host)
			replacement.Spec.Rules[0].HTTP.Paths[0].Path = "/v2"
			userRules = replacement.Spec.Rules
			ing.Spec = replacement.Spec
			_, err := api.Update(ctx, ing, metav1.UpdateOptions{})
			return err
		})
		waitCertificate(t, ns, name+"-tls", 60*time.Second, host(ns, name))
		waitRestored(t, &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: networkingv1.IngressSpec{Rules: userRules}})
	})
	t.Run("delete", func(t *testing.T) {
		name, _ := duringChallenge(t, ns, "delete", func(ing *networkingv1.Ingress) error {
			rv := ing.ResourceVersion
			return api.Delete(ctx, ing.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		})
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := api.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("deleted Ingress %s is back (err %v)", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("remove annotation", func(t *testing.T) {
		name, created := duringChallenge(t, ns, "optout", func(ing *networkingv1.Ingress) error {
			delete(ing.Annotations, "kubernetes.io/tls-acme")
			_, err := api.Update(ctx, ing, metav1.UpdateOptions{})
			return err
		})
		waitFor(t, 20*time.Second, "challenge path and journal removed", func() (bool, string) {
			ing := getIngress(t, ns, name)
			_, journal := ing.Annotations[journalAnnotation]
			return !journal && len(ing.Spec.Rules[0].HTTP.Paths) == 1, fmt.Sprintf("journal %v", journal)
		})
		ing := getIngress(t, ns, name)
		assertClean(t, ing, created.Spec.Rules)
		if len(ing.Spec.TLS) != 0 {
			t.Errorf("spec.tls added to an Ingress that opted out: %v", tlsNames(ing))
		}
		waitFor(t, 10*time.Second, "Abandoned event", func() (bool, string) {
			return len(events(t, ns, name, "Abandoned")) > 0, "none"
		})
		if s := getSecret(t, ns, name+"-tls"); s != nil {
			t.Error("a Secret was written for an abandoned order")
		}
	})
	if t.Failed() {
		t.Logf("orders: %d", ctl.orders())
	}
}

// No private key, of a certificate or of the account, ever reaches a log line
// (at debug level) or an Event.
func TestNoKeyMaterialInLogsOrEvents(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startBackend(t, ns, "web")
	ctl := startController(t, ns)
	h := host(ns, "secret")
	createIngress(t, newIngress(ns, "secret", "web", true, h))
	sec, _ := waitCertificate(t, ns, "secret-tls", 60*time.Second, h)
	accounts, err := bed.Client().CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "ingress-acme.io/role=account"})
	if err != nil || len(accounts.Items) != 1 {
		t.Fatalf("account secrets: %v %v", accounts, err)
	}
	keys := map[string][]byte{"certificate key": sec.Data[corev1.TLSPrivateKeyKey], "account key": accounts.Items[0].Data["key.pem"]}
	waitFor(t, 10*time.Second, "Issued event", func() (bool, string) { return len(events(t, ns, "secret", "Issued")) > 0, "none" })
	var haystack strings.Builder
	haystack.WriteString(ctl.LogTail(1 << 20))
	for _, e := range events(t, ns, "", "") {
		haystack.WriteString(e.Message)
	}
	list, _ := bed.Client().CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	for _, e := range list.Items {
		haystack.WriteString(e.Message)
	}
	text := haystack.String()
	if len(text) < 1000 {
		t.Fatalf("too little log to prove anything (%d bytes)", len(text))
	}
	for what, keyPEM := range keys {
		block, _ := pem.Decode(keyPEM)
		if block == nil {
			t.Fatalf("%s: no PEM", what)
		}
		var needles []string
		for _, line := range strings.Split(string(keyPEM), "\n") {
			if len(line) >= 16 && !strings.HasPrefix(line, "-----") {
				needles = append(needles, line) // the PEM body, line by line
			}
		}
		for _, enc := range []string{base64.StdEncoding.EncodeToString(block.Bytes), base64.StdEncoding.EncodeToString(keyPEM), base64.RawURLEncoding.EncodeToString(block.Bytes)} {
			for i := 0; i+24 <= len(enc); i += 24 {
				needles = append(needles, enc[i:i+24]) // the DER and the PEM as base64, in pieces
			}
		}
		for _, n := range needles {
			if strings.Contains(text, n) {
				t.Errorf("%s material found in the logs or Events: %q", what, n)
				break
			}
		}
	}
}

// A CA that requires External Account Binding refuses the account without it
// (a Warning with the CA's problem) and issues with it.
func TestExternalAccountBinding(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	const kid, hmac = "kid-1", "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
	ca, roots := startExtraCA(t, ns, nil, map[string]string{kid: hmac})
	startBackend(t, ns, "web")
	ctl := startController(t, ns, "--acme-directory", ca.Directory)
	h := host(ns, "eab")
	createIngress(t, newIngress(ns, "eab", "web", true, h))
	waitFor(t, 20*time.Second, "a Failed event without EAB", func() (bool, string) {
		return len(events(t, ns, "eab", "Failed")) > 0, "none"
	})
	if msg := events(t, ns, "eab", "Failed")[0].Message; !strings.Contains(msg, "externalAccountRequired") {
		t.Errorf("failure without EAB: got %q, want the CA's externalAccountRequired problem", msg)
	}
	ctl.stop()
	ctl.Args = append(ctl.Args, "--acme-eab-key-id", kid, "--acme-eab-hmac", hmac)
	ctl.start()
	waitCertificateFrom(t, roots, ns, "eab-tls", 60*time.Second, h)
	if n := ctl.count("acme account ready", "registered", true); n != 1 {
		t.Errorf("accounts registered: got %d, want 1 (with EAB)", n)
	}
}
