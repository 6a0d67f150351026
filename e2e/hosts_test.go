package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/ingress-acme/ingress-acme/e2e/testbed"
)

// Hosts added to and removed from an opted-in Ingress: the spec.tls entry the
// controller added follows the rules; one the user wrote is theirs, and a rule
// host it leaves out is reported.

const (
	managedTLSAnnotation = "ingress-acme.io/managed-tls"
	hostWithoutTLSMetric = "ingress_acme_hosts_without_tls"
)

// managedTLS is the value of the annotation managedTLSAnnotation.
type managedTLS struct {
	Secret string   `json:"secret"`
	Hosts  []string `json:"hosts"`
}

// sortedHosts returns hosts sorted, lowercased.
func sortedHosts(hosts ...string) []string {
	out := make([]string, len(hosts))
	for i, h := range hosts {
		out[i] = strings.ToLower(h)
	}
	slices.Sort(out)
	return out
}

// addRule returns an edit adding a rule for h, routing / to web like the others.
func addRule(h string) func(*networkingv1.Ingress) {
	return func(i *networkingv1.Ingress) {
		i.Spec.Rules = append(i.Spec.Rules, newIngress(i.Namespace, i.Name, "web", true, h).Spec.Rules[0])
	}
}

// removeRule returns an edit removing the rule for h.
func removeRule(h string) func(*networkingv1.Ingress) {
	return func(i *networkingv1.Ingress) {
		i.Spec.Rules = slices.DeleteFunc(i.Spec.Rules, func(r networkingv1.IngressRule) bool { return r.Host == h })
	}
}

// waitManagedTLS waits until Ingress ns/name is clean (no journal, no challenge
// path), its spec.tls is the one entry secret for exactly hosts, and the
// annotation records that entry as the controller's. It fails the test, but
// lets it go on, when that is not so after timeout.
func waitManagedTLS(t *testing.T, ns, name, secret string, timeout time.Duration, hosts ...string) {
	t.Helper()
	want := secret + ":" + strings.Join(sortedHosts(hosts...), ",")
	check := func() (bool, string) {
		ing := getIngress(t, ns, name)
		got := tlsNames(ing)
		raw, ok := ing.Annotations[managedTLSAnnotation]
		state := fmt.Sprintf("spec.tls %v, %s %q, left over %q", got, managedTLSAnnotation, raw, patched(ing))
		if !slices.Equal(got, []string{want}) || patched(ing) != "" || !ok {
			return false, state
		}
		var m managedTLS
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			return false, state + ": " + err.Error()
		}
		return m.Secret == secret && slices.Equal(sortedHosts(m.Hosts...), sortedHosts(hosts...)), state
	}
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("spec.tls %s, recorded in %s, on a clean Ingress %s: not true after %s: %s", want, managedTLSAnnotation, name, timeout, msg)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// revisionOf is a resourceVersion as a number. The testbed has one etcd, whose
// revision orders every write across kinds, so comparing the resourceVersions
// of an Ingress and a Secret tells which was written first.
func revisionOf(t *testing.T, o metav1.Object) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(o.GetResourceVersion(), 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q of %s: %v", o.GetResourceVersion(), o.GetName(), err)
	}
	return n
}

// objectVersions records every version of one Ingress and one Secret written after
// it starts, in the order the API server wrote them.
type objectVersions struct {
	// mu guards ings and secs.
	mu   sync.Mutex
	ings []*networkingv1.Ingress
	secs []*corev1.Secret
}

// recordVersions starts recording Ingress ns/ingress and Secret ns/secret,
// until the test ends.
func recordVersions(t *testing.T, ns, ingress, secret string) *objectVersions {
	t.Helper()
	v := &objectVersions{}
	ctx := context.Background()
	wi, err := bed.Client().NetworkingV1().Ingresses(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + ingress})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := bed.Client().CoreV1().Secrets(ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + secret})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, w := range []watch.Interface{wi, ws} {
		wg.Go(func() {
			for ev := range w.ResultChan() {
				v.mu.Lock()
				switch o := ev.Object.(type) {
				case *networkingv1.Ingress:
					v.ings = append(v.ings, o)
				case *corev1.Secret:
					v.secs = append(v.secs, o)
				}
				v.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() {
		wi.Stop()
		ws.Stop()
		wg.Wait()
	})
	return v
}

// checkTLSFollowed checks that the first recorded version of the Ingress whose
// spec.tls entry for secret lists host was written after the Secret covered
// host, and was the Update that took the challenge paths out.
func (v *objectVersions) checkTLSFollowed(t *testing.T, secret, host string) {
	t.Helper()
	v.mu.Lock()
	ings, secs := slices.Clone(v.ings), slices.Clone(v.secs)
	v.mu.Unlock()
	covered := -1
	for i, s := range secs {
		if leaf := leafFromPEM(s.Data[corev1.TLSCertKey]); leaf != nil && slices.Contains(leaf.DNSNames, host) {
			covered = i
			break
		}
	}
	listed := -1
	for i, ing := range ings {
		if slices.ContainsFunc(ing.Spec.TLS, func(e networkingv1.IngressTLS) bool { return e.SecretName == secret && slices.Contains(e.Hosts, host) }) {
			listed = i
			break
		}
	}
	var hist strings.Builder
	for _, ing := range ings {
		fmt.Fprintf(&hist, "  ingress rv %s: spec.tls %v, left over %q\n", ing.ResourceVersion, tlsNames(ing), patched(ing))
	}
	for _, s := range secs {
		names := "unparsable"
		if leaf := leafFromPEM(s.Data[corev1.TLSCertKey]); leaf != nil {
			names = strings.Join(leaf.DNSNames, ",")
		}
		fmt.Fprintf(&hist, "  secret rv %s: certificate for %s\n", s.ResourceVersion, names)
	}
	switch {
	case covered < 0 || listed < 0:
		t.Errorf("recorded no Secret covering %s (%d) or no spec.tls listing it (%d):\n%s", host, covered, listed, hist.String())
	case revisionOf(t, ings[listed]) < revisionOf(t, secs[covered]):
		t.Errorf("spec.tls listed %s (rv %s) before the Secret covered it (rv %s):\n%s", host, ings[listed].ResourceVersion, secs[covered].ResourceVersion, hist.String())
	case patched(ings[listed]) != "":
		t.Errorf("spec.tls listed %s in a version still holding challenge paths:\n%s", host, hist.String())
	case listed == 0 || patched(ings[listed-1]) == "":
		t.Errorf("spec.tls listed %s in an Update of its own, not in the one that took the challenge paths out:\n%s", host, hist.String())
	}
}

// A host added to an Ingress whose spec.tls the controller wrote gets a
// certificate within seconds: one order, spec.tls and its record updated in
// the Update that restores the Ingress once the Secret covers the host, both
// hosts served over HTTPS, and the first host served throughout.
func TestHostAddedAfterIssuance(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	a, b := host(ns, "a"), host(ns, "b")
	created := createIngress(t, newIngress(ns, "app", "web", true, a))
	_, leaf := waitCertificate(t, ns, "app-tls", 60*time.Second, a)
	waitManagedTLS(t, ns, "app", "app-tls", 10*time.Second, a)
	waitServed(t, a, leaf, servedWithin)

	p := startProber(t, a)
	p.https.Store(true)
	hist := recordVersions(t, ns, "app", "app-tls")
	edited := time.Now()
	updateIngress(t, ns, "app", addRule(b))
	roots, err := bed.PebbleRootPool(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, both := waitLeaf(t, roots, ns, "app-tls", "certificate for both hosts", 30*time.Second, nil, a, b)
	took := time.Since(edited)
	waitManagedTLS(t, ns, "app", "app-tls", 10*time.Second, a, b)
	t.Logf("certificate for the added host %.2f s after the edit", took.Seconds())
	if took > 15*time.Second {
		t.Errorf("the added host took %s to be covered, want seconds", took.Round(time.Millisecond))
	}
	waitServed(t, a, both, servedWithin)
	waitServed(t, b, both, servedWithin)
	p.check(t)
	hist.checkTLSFollowed(t, "app-tls", b)
	assertClean(t, getIngress(t, ns, "app"), append(created.Spec.Rules, newIngress(ns, "app", "web", true, b).Spec.Rules...))
	if n := eventCount(t, ns, "app", "Issuing"); n != 2 {
		t.Errorf("Issuing events: got %d, want 2 (the first host, then both)\n%s", n, eventsByReason(t, ns, "app"))
	}
	if n := ctl.orders(); n != 2 {
		t.Errorf("orders: got %d, want 2", n)
	}
}

// A host added while the first order's challenge is live is picked up as soon
// as that order completes, with no resync: both hosts covered, at most two
// orders, spec.tls and its record updated.
func TestHostAddedDuringChallenge(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startController(t, ns)
	startBackend(t, ns, "web")
	api := bed.Client().NetworkingV1().Ingresses(ns)
	var edited time.Time
	name, _ := duringChallenge(t, ns, "during", func(ing *networkingv1.Ingress) error {
		addRule(host(ns, ing.Name+"-b"))(ing)
		_, err := api.Update(context.Background(), ing, metav1.UpdateOptions{})
		edited = time.Now()
		return err
	})
	a, b := host(ns, name), host(ns, name+"-b")
	_, leaf := waitCertificate(t, ns, name+"-tls", 30*time.Second, a, b)
	took := time.Since(edited)
	waitManagedTLS(t, ns, name, name+"-tls", 10*time.Second, a, b)
	t.Logf("certificate for both hosts %.2f s after the edit", took.Seconds())
	if took > 20*time.Second {
		t.Errorf("the host added during the challenge took %s to be covered, want seconds (no resync)", took.Round(time.Millisecond))
	}
	waitServed(t, a, leaf, servedWithin)
	waitServed(t, b, leaf, servedWithin)
	if n := eventCount(t, ns, name, "Issuing"); n < 1 || n > 2 {
		t.Errorf("Issuing events for %s: got %d, want 1 or 2\n%s", name, n, eventsByReason(t, ns, name))
	}
}

// A host removed from the rules is re-issued without it, and spec.tls and its
// record follow.
func TestHostRemoved(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	startController(t, ns)
	startBackend(t, ns, "web")
	a, b := host(ns, "a"), host(ns, "b")
	createIngress(t, newIngress(ns, "app", "web", true, a, b))
	_, leaf := waitCertificate(t, ns, "app-tls", 60*time.Second, a, b)
	waitManagedTLS(t, ns, "app", "app-tls", 10*time.Second, a, b)

	updateIngress(t, ns, "app", removeRule(b))
	roots, err := bed.PebbleRootPool(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, only := waitLeaf(t, roots, ns, "app-tls", "certificate without the removed host", 30*time.Second, func(l *x509.Certificate) (bool, string) {
		return l.SerialNumber.Cmp(leaf.SerialNumber) != 0 && slices.Equal(sortedHosts(l.DNSNames...), []string{a}), fmt.Sprintf("serial %x for %v", l.SerialNumber, l.DNSNames)
	}, a)
	waitManagedTLS(t, ns, "app", "app-tls", 10*time.Second, a)
	waitServed(t, a, only, servedWithin)
	if n := eventCount(t, ns, "app", "Issuing"); n != 2 {
		t.Errorf("Issuing events: got %d, want 2\n%s", n, eventsByReason(t, ns, "app"))
	}
}

// waitHostWithoutTLS waits for the Normal Event HostWithoutTLS naming h on
// Ingress ns/name and the gauge for it at 1, and returns the Events.
func waitHostWithoutTLS(t *testing.T, ctl *controller, ns, name, h string) []corev1.Event {
	t.Helper()
	var evs []corev1.Event
	waitFor(t, 20*time.Second, "HostWithoutTLS event naming "+h, func() (bool, string) {
		evs = slices.DeleteFunc(events(t, ns, name, "HostWithoutTLS"), func(e corev1.Event) bool { return !strings.Contains(e.Message, h) })
		return len(evs) > 0, "none\n" + eventsByReason(t, ns, name)
	})
	for _, e := range evs {
		if e.Type != corev1.EventTypeNormal {
			t.Errorf("HostWithoutTLS event: type %s, want Normal: %s", e.Type, e.Message)
		}
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("%s{host=%q} = 1", hostWithoutTLSMetric, h), func() (bool, string) {
		got := scrape(ctl, hostWithoutTLSMetric, "namespace", ns, "ingress", name, "host", h)
		return len(got) == 1 && metricSum(ctl, hostWithoutTLSMetric, "namespace", ns, "ingress", name, "host", h) == 1, fmt.Sprintf("samples %v", got)
	})
	return evs
}

// A user who edits the spec.tls entry the controller added owns it from then
// on: the record is dropped (with an Event saying so), the entry is never
// changed again, and a rule host it leaves out is reported, not ordered.
func TestUserTakesOverTLS(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	a, b, c := host(ns, "a"), host(ns, "b"), host(ns, "c")
	createIngress(t, newIngress(ns, "app", "web", true, a))
	waitCertificate(t, ns, "app-tls", 60*time.Second, a)
	waitManagedTLS(t, ns, "app", "app-tls", 10*time.Second, a)

	// The user adds host c, to the rules and to the entry, in one edit.
	userTLS := []networkingv1.IngressTLS{{Hosts: []string{a, c}, SecretName: "app-tls"}}
	updateIngress(t, ns, "app", func(i *networkingv1.Ingress) {
		addRule(c)(i)
		i.Spec.TLS = userTLS
	})
	waitFor(t, 20*time.Second, "TLSOwnedByUser event", func() (bool, string) {
		evs := events(t, ns, "app", "TLSOwnedByUser")
		return len(evs) > 0 && evs[0].Type == corev1.EventTypeNormal, "none\n" + eventsByReason(t, ns, "app")
	})
	_, leaf := waitCertificate(t, ns, "app-tls", 30*time.Second, a, c)
	userEntry := func() (bool, string) {
		ing := getIngress(t, ns, "app")
		raw, managed := ing.Annotations[managedTLSAnnotation]
		want := "app-tls:" + strings.Join(sortedHosts(a, c), ",")
		got := tlsNames(ing)
		return !managed && slices.Equal(got, []string{want}) && slices.Equal(ing.Spec.TLS[0].Hosts, userTLS[0].Hosts),
			fmt.Sprintf("spec.tls %v (want the user's %s), %s %q", got, want, managedTLSAnnotation, raw)
	}
	waitFor(t, 10*time.Second, "the user's entry, no record", userEntry)
	waitServed(t, c, leaf, servedWithin)
	issuing := eventCount(t, ns, "app", "Issuing")

	// The user adds host b to the rules only: it is reported, and neither the
	// entry nor the certificate changes.
	updateIngress(t, ns, "app", addRule(b))
	waitHostWithoutTLS(t, ctl, ns, "app", b)
	consistently(t, 3*time.Second, "the user's entry and certificate left alone", func() (bool, string) {
		if ok, msg := userEntry(); !ok {
			return false, msg
		}
		if n := eventCount(t, ns, "app", "Issuing"); n != issuing {
			return false, fmt.Sprintf("Issuing events %d -> %d\n%s", issuing, n, eventsByReason(t, ns, "app"))
		}
		s := getSecret(t, ns, "app-tls")
		if l := leafFromPEM(s.Data[corev1.TLSCertKey]); l == nil || l.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			return false, "the certificate changed"
		}
		return true, ""
	})
}

// A rule host that the user's spec.tls leaves out is reported once: a Normal
// Event naming it and a gauge, and nothing about the hosts it covers.
func TestUserTLSMissingRuleHost(t *testing.T) {
	t.Parallel()
	ns := newNamespace(t)
	ctl := startController(t, ns)
	startBackend(t, ns, "web")
	a, b := host(ns, "a"), host(ns, "b")
	ing := newIngress(ns, "site", "web", true, a, b)
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{a}, SecretName: "site-tls"}}
	createIngress(t, ing)
	_, leaf := waitCertificate(t, ns, "site-tls", 60*time.Second, a)
	if slices.Contains(leaf.DNSNames, b) {
		t.Errorf("the certificate covers %s, which the user's spec.tls leaves out", b)
	}
	evs := waitHostWithoutTLS(t, ctl, ns, "site", b)
	for _, e := range events(t, ns, "site", "HostWithoutTLS") {
		if strings.Contains(e.Message, a) && !strings.Contains(e.Message, b) {
			t.Errorf("HostWithoutTLS event for a covered host: %s", e.Message)
		}
	}
	if got := scrape(ctl, hostWithoutTLSMetric, "namespace", ns, "host", a); len(got) > 0 {
		t.Errorf("%s for the covered host %s: %v, want no series", hostWithoutTLSMetric, a, got)
	}
	after := getIngress(t, ns, "site")
	if got := tlsNames(after); !slices.Equal(got, []string{"site-tls:" + a}) {
		t.Errorf("spec.tls: got %v, want the user's, unchanged", got)
	}
	if raw, ok := after.Annotations[managedTLSAnnotation]; ok {
		t.Errorf("%s on an Ingress whose spec.tls the user wrote: %s", managedTLSAnnotation, raw)
	}

	// Once: another order for the Ingress (a key type change) is more syncs,
	// and no second Event.
	updateIngress(t, ns, "site", func(i *networkingv1.Ingress) { i.Annotations["ingress-acme.io/key-type"] = "ecdsa-p384" })
	_, p384 := waitRenewed(t, ns, "site-tls", leaf, 30*time.Second, a)
	if got := testbed.KeyTypeOf(p384); got != "ecdsa-p384" {
		t.Errorf("key type after the change: got %s, want ecdsa-p384", got)
	}
	waitFor(t, 10*time.Second, "the re-issued certificate's Issued or Renewed event", func() (bool, string) {
		return eventCount(t, ns, "site", "Issued")+eventCount(t, ns, "site", "Renewed") >= 2, eventsByReason(t, ns, "site")
	})
	if n := sumCounts(slices.DeleteFunc(events(t, ns, "site", "HostWithoutTLS"), func(e corev1.Event) bool { return !strings.Contains(e.Message, b) })); n != 1 {
		t.Errorf("HostWithoutTLS events naming %s: got %d, want 1 (reported once); first seen: %v\n%s", b, n, evs[0].Message, eventsByReason(t, ns, "site"))
	}
	if v := metricSum(ctl, hostWithoutTLSMetric, "namespace", ns, "ingress", "site", "host", b); v != 1 {
		t.Errorf("%s{host=%q}: got %v, want 1", hostWithoutTLSMetric, b, v)
	}
}
