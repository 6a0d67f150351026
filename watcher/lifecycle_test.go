package watcher

import (
	"context"
	"crypto/x509"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ingress-acme/ingress-acme/core"
)

// fakeStates keeps records in memory, shared between controllers as the API is.
type fakeStates struct {
	// mu guards m.
	mu sync.Mutex
	m  map[string][]byte
}

func (f *fakeStates) Load(context.Context) (map[string][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range f.m {
		out[k] = v
	}
	return out, nil
}

func (f *fakeStates) Save(_ context.Context, key string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[key] = data
	return nil
}

func (f *fakeStates) Delete(_ context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, key)
	return nil
}

func TestBackoffSurvivesRestart(t *testing.T) {
	states := &fakeStates{m: map[string][]byte{}}
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	f.c.cfg.States = states
	f.issuer.fail = errors.New("unreachable")
	if _, err := f.sync(t, "ns/shop-tls"); err == nil {
		t.Fatal("sync: got nil, want the order's failure")
	}
	f.c.settle(context.Background(), "ns/shop-tls", f.last)
	if len(states.m) != 1 {
		t.Fatalf("saved states: got %d, want 1 after a failure", len(states.m))
	}

	// A new process on the same cluster: the backoff holds.
	g := newFixture(t)
	g.client = f.client
	g.c.cfg.Client = f.client
	g.c.cfg.States = states
	if err := g.c.loadStates(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := g.c.stateFor("ns/shop-tls")
	if st.failures != 1 || st.backingOff(st.failedFor, time.Now()) <= 0 {
		t.Errorf("after restart: failures %d, backing off %v; want 1 and the rest of the backoff", st.failures, st.backingOff(st.failedFor, time.Now()))
	}
	if len(st.orders) != 1 {
		t.Errorf("after restart: orders this hour %d, want 1 (the cap holds across restarts)", len(st.orders))
	}

	// Once healthy, the record goes.
	g.c.settle(context.Background(), "ns/shop-tls", result{healthy: true})
	if len(states.m) != 0 || st.failures != 0 {
		t.Errorf("after recovery: states %v, failures %d; want none", states.m, st.failures)
	}
}

func TestSyncNeverJudgesACertificateReplacedMomentsAgo(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	sec, err := f.c.secretLister.Secrets("ns").Get("shop-tls")
	if err != nil {
		t.Fatal(err)
	}
	stored, err := f.c.cfg.Secrets.Read(sec)
	if err != nil {
		t.Fatal(err)
	}
	cached := stored.Leaf
	// As if this process had just stored a newer certificate the cache does
	// not hold yet, and the cached one were due. Certificates carry whole
	// seconds: two issued within one second have the same NotBefore (an
	// extra order when hosts were added mid-challenge, found by e2e).
	for _, newer := range []time.Time{cached.NotBefore.Add(time.Minute), cached.NotBefore} {
		st := f.c.stateFor("ns/shop-tls")
		st.issued = &issuedCert{serial: "newer", notBefore: newer}
		st.renewAt, st.recheck = time.Now().Add(-time.Second), time.Now().Add(time.Hour)
		requeue, err := f.sync(t, "ns/shop-tls")
		if err != nil || requeue <= 0 || requeue > 2*time.Second {
			t.Errorf("ours from %s after the cached one: sync got (%s, %v), want a short wait for the cache", newer.Sub(cached.NotBefore), requeue, err)
		}
		if got := f.issuer.count(); got != 1 {
			t.Fatalf("ours from %s after the cached one: orders %d, want 1 (no renewal of a certificate already replaced)", newer.Sub(cached.NotBefore), got)
		}
	}
}

func TestOnTimeRenewalDoesNotCountAgainstTheCap(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	for i := range 5 { // MaxOrdersPerHour is 3 in the fixture
		if _, err := f.sync(t, "ns/shop-tls"); err != nil {
			t.Fatal(err)
		}
		st := f.c.stateFor("ns/shop-tls")
		st.renewAt, st.recheck = time.Now().Add(-time.Second), time.Now().Add(time.Hour) // due again
		if got := f.issuer.count(); got != i+1 {
			t.Fatalf("round %d: orders %d, want %d", i, got, i+1)
		}
	}
	if evs := strings.Join(f.events(), "\n"); strings.Contains(evs, "OrderLimit") {
		t.Errorf("events: got %q, want no OrderLimit for renewals on time", evs)
	}
}

func TestAddedSpecTLSFollowsRuleHosts(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	f.c.cfg.MaxOrdersPerHour = 10
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	edit := func(change func(*networkingv1.Ingress)) {
		t.Helper()
		ing, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
		change(ing)
		if _, err := f.client.NetworkingV1().Ingresses("ns").Update(context.Background(), ing, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	tlsHosts := func() []string {
		ing, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
		return ing.Spec.TLS[0].Hosts
	}
	// A host added to the rules: one order for both, spec.tls follows.
	edit(func(i *networkingv1.Ingress) {
		i.Spec.Rules = append(i.Spec.Rules, ingress("x", nil, "b.test").Spec.Rules...)
	})
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 2 || !core.SameHosts(tlsHosts(), []string{"a.test", "b.test"}) {
		t.Errorf("host added: orders %d, spec.tls hosts %v; want 2 and both hosts", got, tlsHosts())
	}
	// A host removed: re-issued without it.
	edit(func(i *networkingv1.Ingress) { i.Spec.Rules = i.Spec.Rules[:1] })
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 3 || !core.SameHosts(tlsHosts(), []string{"a.test"}) {
		t.Errorf("host removed: orders %d, spec.tls hosts %v; want 3 and a.test only", got, tlsHosts())
	}
	// The user edits the entry: it is theirs from then on.
	edit(func(i *networkingv1.Ingress) {
		i.Spec.TLS[0].Hosts = []string{"a.test", "c.test"}
		i.Spec.Rules = append(i.Spec.Rules, ingress("x", nil, "d.test").Spec.Rules...)
	})
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	ing, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	if _, ok := ing.Annotations[core.AnnotationManagedTLS]; ok || !core.SameHosts(tlsHosts(), []string{"a.test", "c.test"}) {
		t.Errorf("user took over: annotation %q, hosts %v; want no record and the user's hosts", ing.Annotations[core.AnnotationManagedTLS], tlsHosts())
	}
	evs := strings.Join(f.events(), "\n")
	if strings.Contains(evs, `covers "b.test"`) {
		t.Errorf("events: got %q, want no HostWithoutTLS for a host our entry follows", evs)
	}
	for _, want := range []string{"Normal TLSOwnedByUser", "Normal HostWithoutTLS", "d.test"} {
		if !strings.Contains(evs, want) {
			t.Errorf("events: got %q, want %q", evs, want)
		}
	}
}

func TestProfileChangeReissues(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	// A Secret stored before profiles were recorded is taken as it is.
	sec, _ := f.client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{})
	delete(sec.Annotations, core.AnnotationProfile)
	if _, err := f.client.CoreV1().Secrets("ns").Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ing, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	ing.Annotations = map[string]string{core.AnnotationTLSACME: "true", core.AnnotationProfile: "shortlived"}
	if _, err := f.client.NetworkingV1().Ingresses("ns").Update(context.Background(), ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSecretCached(t, f, func(s map[string]string) bool { _, has := s[core.AnnotationProfile]; return !has })
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 1 {
		t.Fatalf("orders with an unrecorded profile: got %d, want 1 (no re-issue on upgrade)", got)
	}
	// A recorded profile other than the one asked for re-issues.
	sec, _ = f.client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{})
	sec.Annotations[core.AnnotationProfile] = ""
	if _, err := f.client.CoreV1().Secrets("ns").Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSecretCached(t, f, func(s map[string]string) bool { _, has := s[core.AnnotationProfile]; return has })
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 2 {
		t.Errorf("orders after the profile changed: got %d, want 2", got)
	}
	sec, _ = f.client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{})
	if got := sec.Annotations[core.AnnotationProfile]; got != "shortlived" {
		t.Errorf("recorded profile: got %q, want shortlived", got)
	}
}

// waitSecretCached waits until the cached shop-tls Secret's annotations satisfy ok.
func waitSecretCached(t *testing.T, f *fixture, ok func(map[string]string) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s, err := f.c.secretLister.Secrets("ns").Get("shop-tls"); err == nil && ok(s.Annotations) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("secret cache did not catch up")
}

func TestRenewAtKeepsTheFirstHalfUnlessTheWindowIsThere(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	leaf := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(99 * time.Minute)}
	half := leaf.NotBefore.Add(50 * time.Minute)
	for _, tt := range []struct {
		name       string
		start, end time.Time
		lo, hi     time.Time
	}{
		{"window over the whole life", leaf.NotBefore, leaf.NotAfter, half, leaf.NotAfter.Add(-10 * time.Minute)},
		{"window in the first half", leaf.NotBefore.Add(5 * time.Minute), leaf.NotBefore.Add(10 * time.Minute), leaf.NotBefore.Add(5 * time.Minute), leaf.NotBefore.Add(10 * time.Minute)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.issuer.window = func(*x509.Certificate) (time.Time, time.Time, bool) { return tt.start, tt.end, true }
			for range 50 {
				st := &certState{serial: "1"} // known: the CA is asked now
				at := f.c.renewAt(context.Background(), st, f.issuer, leaf)
				if at.Before(tt.lo) || at.After(tt.hi) {
					t.Fatalf("renewal at %s: want within [%s, %s]", at.Sub(leaf.NotBefore), tt.lo.Sub(leaf.NotBefore), tt.hi.Sub(leaf.NotBefore))
				}
			}
		})
	}
}

// However late the CA's window ends, a renewal is planned a tenth of the
// lifetime before expiry, and for a certificate living minutes a third of it
// up to a minute: renewing takes seconds whatever the lifetime.
func TestRenewAtKeepsAMarginBeforeExpiry(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	for _, tt := range []struct {
		lifetime, margin time.Duration
	}{
		{20 * time.Second, 20 * time.Second / 3},
		{6 * time.Minute, time.Minute},
		{100 * time.Minute, 10 * time.Minute},
		{6 * 24 * time.Hour, 6 * 24 * time.Hour / 10},
	} {
		leaf := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now, NotAfter: now.Add(tt.lifetime)}
		end := leaf.NotAfter.Add(-time.Millisecond)
		f.issuer.window = func(*x509.Certificate) (time.Time, time.Time, bool) { return end.Add(-time.Millisecond), end, true }
		st := &certState{serial: "1"} // known: the CA is asked now
		at := f.c.renewAt(context.Background(), st, f.issuer, leaf)
		if want := leaf.NotAfter.Add(-tt.margin); !at.Equal(want) {
			t.Errorf("lifetime %s, window at its very end: renewal %s before expiry, want %s", tt.lifetime, leaf.NotAfter.Sub(at), tt.margin)
		}
	}
}
