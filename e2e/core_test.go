package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

const profileAnnotation = "ingress-acme.io/profile"

// prober GETs http://host/ through Traefik every 10 ms and, once https is on,
// https://host/ verified against Pebble's roots, counting every answer that is
// not a 2xx and every transport error.
type prober struct {
	host  string
	https atomic.Bool
	stopc chan struct{}
	done  chan struct{}

	// mu guards ok, failures and firstFailures.
	mu            sync.Mutex
	ok            map[string]int
	failures      int
	firstFailures []string
}

func startProber(t *testing.T, h string) *prober {
	t.Helper()
	roots, err := bed.PebbleRootPool(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p := &prober{host: h, stopc: make(chan struct{}), done: make(chan struct{}), ok: map[string]int{}}
	plain, secure := bed.HTTPClient(h), bed.HTTPClientWithRoots(h, roots)
	plain.Timeout, secure.Timeout = 5*time.Second, 5*time.Second
	go func() {
		defer close(p.done)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-p.stopc:
				return
			case <-tick.C:
			}
			p.get(plain, "http://"+h+"/")
			if p.https.Load() {
				p.get(secure, "https://"+h+"/")
			}
		}
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *prober) get(c *http.Client, url string) {
	resp, err := c.Get(url)
	msg := ""
	if err != nil {
		msg = err.Error()
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			msg = fmt.Sprintf("status %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if msg == "" {
		p.ok[url[:strings.Index(url, ":")]]++
		return
	}
	p.failures++
	if len(p.firstFailures) < 10 {
		p.firstFailures = append(p.firstFailures, time.Now().Format("15:04:05.000")+" "+url+": "+msg)
	}
}

func (p *prober) stop() {
	select {
	case <-p.stopc:
	default:
		close(p.stopc)
	}
	<-p.done
}

// check fails the test on any failed request and logs the counts.
func (p *prober) check(t *testing.T) {
	t.Helper()
	p.stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	t.Logf("prober: %d http and %d https requests answered 2xx, %d failed", p.ok["http"], p.ok["https"], p.failures)
	if p.failures > 0 {
		t.Errorf("%d requests failed; the first:\n%s", p.failures, strings.Join(p.firstFailures, "\n"))
	}
	if p.ok["http"] == 0 || p.ok["https"] == 0 {
		t.Errorf("the prober made too few requests to prove anything: %v", p.ok)
	}
}

// waitRenewed waits until Secret ns/name holds a valid certificate other than
// old, and returns it.
func waitRenewed(t *testing.T, ns, name string, old *x509.Certificate, timeout time.Duration, hosts ...string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	roots, err := bed.PebbleRootPool(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return waitLeaf(t, roots, ns, name, "renewal of "+name, timeout, func(leaf *x509.Certificate) (bool, string) {
		return leaf.SerialNumber.Cmp(old.SerialNumber) != 0, "same serial"
	}, hosts...)
}

// Every request to the Ingress's normal path succeeds while it opts in, gets its
// certificate, and has it renewed.
func TestZeroDowntime(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startController(t, ns)
	startBackend(t, ns, "web")
	h := host(ns, "live")
	ing := newIngress(ns, "live", "web", false, h)
	ing.Annotations[profileAnnotation] = "shortlived"
	createIngress(t, ing)
	waitHTTP(t, h)

	p := startProber(t, h)
	time.Sleep(200 * time.Millisecond) // requests before the opt-in
	updateIngress(t, ns, "live", func(i *networkingv1.Ingress) { i.Annotations["kubernetes.io/tls-acme"] = "true" })
	sec, leaf := waitCertificate(t, ns, "live-tls", 60*time.Second, h)
	waitServed(t, h, leaf, servedWithin)
	p.https.Store(true)

	renewedSec, renewed := waitRenewed(t, ns, "live-tls", leaf, 2*shortLived, h)
	if renewedSec.UID != sec.UID {
		t.Errorf("renewal replaced the Secret (uid %s -> %s), want an update in place", sec.UID, renewedSec.UID)
	}
	waitServed(t, h, renewed, servedWithin)
	time.Sleep(200 * time.Millisecond) // requests after the renewal is served
	p.check(t)
}

// A short-lived certificate is renewed in place before it expires, with a
// replacement order (ARI), and the Ingress keeps serving it.
func TestRenewalBeforeExpiry(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	h := host(ns, "renew")
	ing := newIngress(ns, "renew", "web", true, h)
	ing.Annotations[profileAnnotation] = "shortlived"
	createIngress(t, ing)
	_, leaf := waitCertificate(t, ns, "renew-tls", 60*time.Second, h)
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got > shortLived+time.Minute {
		t.Fatalf("validity %s: the shortlived profile was not used", got)
	}
	for i := range 2 {
		_, next := waitRenewed(t, ns, "renew-tls", leaf, 2*shortLived, h)
		if now := time.Now(); !now.Before(leaf.NotAfter) {
			t.Errorf("renewal %d seen at %s, after the old certificate expired at %s", i+1, now.Format(time.RFC3339Nano), leaf.NotAfter.Format(time.RFC3339Nano))
		}
		leaf = next
	}
	waitServed(t, h, leaf, servedWithin)
	if n := ctl.count("order created", "replaces", true); n < 2 {
		t.Errorf("replacement orders: got %d, want at least 2", n)
	}
	if len(events(t, ns, "renew", "Renewed")) == 0 {
		t.Error("no Renewed event")
	}
	if v, ok := ctl.metric("ingress_acme_issuances_total", "kind", "renew", "outcome", "success"); !ok || v < 2 {
		t.Errorf("ingress_acme_issuances_total{kind=renew,outcome=success}: got %v (%v), want >= 2", v, ok)
	}
}

// Two Ingresses naming one Secret get exactly one order, for the union of
// their hosts, and both are served.
func TestSharedSecretOneOrder(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	a, b := host(ns, "a"), host(ns, "b")
	for _, x := range []struct{ name, host string }{{"ing-a", a}, {"ing-b", b}} {
		ing := newIngress(ns, x.name, "web", true, x.host)
		ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{x.host}, SecretName: "shared-tls"}}
		createIngress(t, ing)
	}
	_, leaf := waitCertificate(t, ns, "shared-tls", 60*time.Second, a, b)
	waitServed(t, a, leaf, servedWithin)
	waitServed(t, b, leaf, servedWithin)
	time.Sleep(time.Second) // any second order would have started by now
	if n := ctl.orders(); n != 1 {
		t.Errorf("orders: got %d, want 1", n)
	}
	if len(events(t, ns, "ing-a", "HostsDiffer")) == 0 {
		t.Error("no HostsDiffer warning for Ingresses asking for different hosts")
	}
}

// A Secret that is not ours is never modified, and the user is told.
func TestForeignSecretUntouched(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	h := host(ns, "foreign")
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "foreign-tls", Namespace: ns, Labels: map[string]string{"owner": "someone-else"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: []byte("not ours"), corev1.TLSPrivateKeyKey: []byte("not ours either")},
	}
	before, err := bed.Client().CoreV1().Secrets(ns).Create(context.Background(), foreign, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ing := newIngress(ns, "foreign", "web", true, h)
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{h}, SecretName: "foreign-tls"}}
	createIngress(t, ing)
	waitFor(t, 20*time.Second, "SecretNotOwned event", func() (bool, string) {
		return len(events(t, ns, "foreign", "SecretNotOwned")) > 0, "no event"
	})
	time.Sleep(500 * time.Millisecond)
	after := getSecret(t, ns, "foreign-tls")
	if after.ResourceVersion != before.ResourceVersion || !bytes.Equal(after.Data[corev1.TLSCertKey], before.Data[corev1.TLSCertKey]) ||
		!bytes.Equal(after.Data[corev1.TLSPrivateKeyKey], before.Data[corev1.TLSPrivateKeyKey]) || len(after.Labels) != 1 {
		t.Errorf("foreign secret modified: resourceVersion %s -> %s, labels %v", before.ResourceVersion, after.ResourceVersion, after.Labels)
	}
	if n := ctl.orders(); n != 0 {
		t.Errorf("orders: got %d, want 0", n)
	}
}

// A path the user adds while a challenge path is in survives; the challenge
// path does not.
func TestUserEditDuringChallenge(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startController(t, ns)
	startBackend(t, ns, "web")
	startBackend(t, ns, "api")
	api := bed.Client().NetworkingV1().Ingresses(ns)
	prefix := networkingv1.PathTypePrefix
	userPath := networkingv1.HTTPIngressPath{Path: "/api", PathType: &prefix, Backend: networkingv1.IngressBackend{
		Service: &networkingv1.IngressServiceBackend{Name: "api", Port: networkingv1.ServiceBackendPort{Number: 80}},
	}}
	// The edit must land while the token path is in: watch for the journal and
	// update at that resourceVersion. If the controller was faster, the update
	// conflicts and the attempt is repeated with a new Ingress.
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("edit%d", attempt)
		h := host(ns, name)
		w, err := api.Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			t.Fatal(err)
		}
		created := createIngress(t, newIngress(ns, name, "web", true, h))
		landed := false
		for ev := range w.ResultChan() {
			ing, ok := ev.Object.(*networkingv1.Ingress)
			if !ok || ev.Type != watch.Modified || ing.Annotations[journalAnnotation] == "" {
				continue
			}
			ing.Spec.Rules[0].HTTP.Paths = append(ing.Spec.Rules[0].HTTP.Paths, userPath)
			_, err := api.Update(context.Background(), ing, metav1.UpdateOptions{})
			landed = err == nil
			if err != nil && !apierrors.IsConflict(err) {
				t.Fatal(err)
			}
			break
		}
		w.Stop()
		_, leaf := waitCertificate(t, ns, name+"-tls", 60*time.Second, h)
		if !landed {
			if attempt == 5 {
				t.Fatal("5 attempts and the edit never landed while the challenge path was in")
			}
			continue
		}
		t.Logf("the user's edit landed while the challenge path was in (attempt %d)", attempt)
		want := created.Spec.Rules[0].DeepCopy()
		want.HTTP.Paths = append(want.HTTP.Paths, userPath)
		waitFor(t, 10*time.Second, "challenge path removed, user path kept", func() (bool, string) {
			ing := getIngress(t, ns, name)
			_, journal := ing.Annotations[journalAnnotation]
			return !journal && len(ing.Spec.TLS) == 1, fmt.Sprintf("journal %v, tls %v", journal, tlsNames(ing))
		})
		assertClean(t, getIngress(t, ns, name), []networkingv1.IngressRule{*want})
		waitServed(t, h, leaf, servedWithin)
		return
	}
}

// Bad input is a Warning Event on the Ingress and no order; a spec.tls host no
// rule serves is still issued, through a rule added and removed for it.
func TestBadInputAndTLSOnlyHosts(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	bad := []struct {
		name, reason string
		edit         func(*networkingv1.Ingress)
	}{
		{"wildcard", "InvalidHost", func(i *networkingv1.Ingress) { i.Spec.Rules[0].Host = "*." + host(ns, "wild") }},
		{"optin", "InvalidAnnotation", func(i *networkingv1.Ingress) { i.Annotations["kubernetes.io/tls-acme"] = "yes" }},
		{"profile", "InvalidAnnotation", func(i *networkingv1.Ingress) { i.Annotations["ingress-acme.io/profile"] = "short lived" }},
		{"keytype", "InvalidAnnotation", func(i *networkingv1.Ingress) { i.Annotations["ingress-acme.io/key-type"] = "dsa-1024" }},
		{"pathtype", "InvalidAnnotation", func(i *networkingv1.Ingress) { i.Annotations["ingress-acme.io/path-type"] = "Regex" }},
	}
	for _, b := range bad {
		ing := newIngress(ns, b.name, "web", true, host(ns, b.name))
		b.edit(ing)
		createIngress(t, ing)
	}
	// A good Ingress alongside, whose spec.tls adds a host no rule serves.
	good, extra := host(ns, "good"), host(ns, "tlsonly")
	ing := newIngress(ns, "good", "web", true, good)
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{good, extra}, SecretName: "good-tls"}}
	created := createIngress(t, ing)
	_, leaf := waitCertificate(t, ns, "good-tls", 60*time.Second, good, extra)
	waitFor(t, 10*time.Second, "the added rule removed", func() (bool, string) {
		ing := getIngress(t, ns, "good")
		return len(ing.Spec.Rules) == 1 && ing.Annotations[journalAnnotation] == "", fmt.Sprintf("%d rules", len(ing.Spec.Rules))
	})
	assertClean(t, getIngress(t, ns, "good"), created.Spec.Rules)
	waitServed(t, good, leaf, servedWithin)

	for _, b := range bad {
		waitFor(t, 10*time.Second, b.name+": "+b.reason+" event", func() (bool, string) {
			evs := events(t, ns, b.name, b.reason)
			return len(evs) > 0 && evs[0].Type == corev1.EventTypeWarning, "none"
		})
		if s := getSecret(t, ns, b.name+"-tls"); s != nil {
			t.Errorf("%s: a Secret was written", b.name)
		}
	}
	if n := ctl.orders(); n != 1 {
		t.Errorf("orders: got %d, want 1 (only the good Ingress)", n)
	}
	if !slices.ContainsFunc(ctl.logs(), func(r map[string]any) bool { return r["msg"] == "certificate not ordered" }) {
		t.Error("no log line for the bad input")
	}
}
