package watcher

import (
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/internal/testfx"
	"github.com/ingress-acme/ingress-acme/metrics"
	"github.com/ingress-acme/ingress-acme/secrets"
	ingresssolver "github.com/ingress-acme/ingress-acme/solver/ingress"
	ingresssource "github.com/ingress-acme/ingress-acme/watcher/ingress"
)

// fakeIssuer issues self-signed certificates after presenting one challenge
// per host; it records what it saw of the Ingress while the challenges were in.
type fakeIssuer struct {
	t      *testing.T
	client *fake.Clientset
	fail   error
	window func(*x509.Certificate) (time.Time, time.Time, bool)

	// orderKeys, when set, are the keys OrderKey makes again, by order URL.
	orderKeys map[string]crypto.Signer

	// mu guards orders and pathsSeen.
	mu        sync.Mutex
	orders    int
	pathsSeen []string
}

func (f *fakeIssuer) Order(_ context.Context, req core.OrderRequest) (core.Order, error) {
	f.mu.Lock()
	f.orders++
	f.mu.Unlock()
	o := core.Order{URL: fmt.Sprintf("https://ca.test/order/%d", f.count()), Hosts: req.Hosts, Replacing: req.Replaces != nil}
	for _, h := range req.Hosts {
		o.Challenges = append(o.Challenges, core.Challenge{Host: h, Token: "tok-" + strings.ReplaceAll(h, ".", "-"), KeyAuth: "ka"})
	}
	return o, nil
}

// Validate records the challenge paths in the Ingresses, as the CA would see them.
func (f *fakeIssuer) Validate(ctx context.Context, _ core.Order) error {
	ings, _ := f.client.NetworkingV1().Ingresses("ns").List(ctx, metav1.ListOptions{})
	for _, ing := range ings.Items {
		for _, r := range ing.Spec.Rules {
			for _, p := range r.HTTP.Paths {
				if strings.HasPrefix(p.Path, core.ChallengePathPrefix) {
					f.mu.Lock()
					f.pathsSeen = append(f.pathsSeen, r.Host+p.Path)
					f.mu.Unlock()
				}
			}
		}
	}
	return f.fail
}

func (f *fakeIssuer) OrderKey(_ context.Context, o core.Order, _ core.KeyType) (crypto.Signer, bool, error) {
	key, ok := f.orderKeys[o.URL]
	return key, ok, nil
}

func (f *fakeIssuer) Finalize(_ context.Context, o core.Order, key crypto.Signer) ([]byte, error) {
	return selfSigned(f.t, o.Hosts, key, time.Now().Add(-time.Hour), time.Now().Add(90*24*time.Hour)), nil
}

func (f *fakeIssuer) RenewalWindow(_ context.Context, cert *x509.Certificate) (core.RenewalWindow, error) {
	if f.window != nil {
		if s, e, ok := f.window(cert); ok {
			return core.RenewalWindow{Start: s, End: e}, nil
		}
	}
	return core.RenewalWindow{}, nil
}

func (f *fakeIssuer) Identity() string { return "https://ca.test/dir" }

func (f *fakeIssuer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.orders
}

func selfSigned(t *testing.T, hosts []string, key crypto.Signer, notBefore, notAfter time.Time) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: hosts[0]},
		DNSNames:     hosts,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

type fakeSolver struct{}

func (fakeSolver) Ensure(context.Context, string) error { return nil }
func (fakeSolver) Forget(string)                        {}
func (fakeSolver) Name() string                         { return "ingress-acme-solver" }

type fakeSelfCheck struct{ err error }

func (f fakeSelfCheck) Check(context.Context, string, string, string) error { return f.err }

type fixture struct {
	c        *Controller
	client   *fake.Clientset
	issuer   *fakeIssuer
	chals    *testfx.Challenges
	recorder *record.FakeRecorder
	ings     networkinglisters.IngressLister
	last     result // of the last sync
}

// defaultIssuer is the name the fixture gives its issuer.
const defaultIssuer = "default"

// newFixture is the engine wired as main wires it (the Ingress source, the
// HTTP-01 solver through Ingresses, the Secret store) on a fake API server,
// with a fake CA, challenge server, solver Service and self-check.
func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	t.Helper()
	client := fake.NewClientset(objs...)
	for _, verb := range []string{"create", "update"} {
		client.PrependReactor(verb, "ingresses", resourceVersions(client))
		client.PrependReactor(verb, "secrets", resourceVersions(client))
	}
	f := &fixture{client: client, issuer: &fakeIssuer{t: t, client: client}, chals: testfx.NewChallenges(),
		recorder: record.NewFakeRecorder(100)}
	factory := informers.NewSharedInformerFactory(client, 0)
	ingInformer := factory.Networking().V1().Ingresses()
	m := metrics.New(prometheus.NewRegistry(), "test")
	src, err := ingresssource.New(ingresssource.Config{Client: client, Informer: ingInformer, Recorder: f.recorder, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	http01, err := ingresssolver.New(ingresssolver.Config{Informer: ingInformer, Ingresses: src, Challenges: f.chals,
		Service: fakeSolver{}, SelfCheck: fakeSelfCheck{}, Recorder: f.recorder})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		Client: client, Sources: []Source{src}, Solvers: []Solver{http01},
		Issuers: map[string]Issuer{defaultIssuer: f.issuer}, DefaultIssuer: defaultIssuer,
		Informers: []Informers{factory}, Secrets: secrets.NewStore(client),
		Metrics: m, MaxOrdersPerHour: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.c, f.ings = c, ingInformer.Lister()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, fac := range c.factories {
		fac.Start(ctx.Done())
	}
	cache.WaitForCacheSync(ctx.Done(), c.synced...)
	return f
}

// resourceVersions makes the fake API server do what the real one does with
// resourceVersions: set one on create, refuse a stale one on update with a
// conflict, and move it on with each write (which the informers then see).
func resourceVersions(client *fake.Clientset) k8stesting.ReactionFunc {
	return func(action k8stesting.Action) (bool, runtime.Object, error) {
		obj, err := meta.Accessor(action.(interface{ GetObject() runtime.Object }).GetObject())
		if err != nil {
			return false, nil, nil
		}
		if action.GetVerb() == "create" {
			obj.SetResourceVersion(cmp.Or(obj.GetResourceVersion(), "1"))
			return false, nil, nil
		}
		cur, err := client.Tracker().Get(action.GetResource(), obj.GetNamespace(), obj.GetName())
		if err != nil {
			return false, nil, nil // the tracker answers NotFound
		}
		curMeta, _ := meta.Accessor(cur)
		if obj.GetResourceVersion() != curMeta.GetResourceVersion() {
			return true, nil, apierrors.NewConflict(action.GetResource().GroupResource(), obj.GetName(), errors.New("the object has been modified"))
		}
		rv, _ := strconv.Atoi(curMeta.GetResourceVersion())
		obj.SetResourceVersion(strconv.Itoa(rv + 1))
		return false, nil, nil
	}
}

// sync runs one sync of key after the caches have caught up with the API, as
// the worker does: when it starts an order, the order runs to its end and the
// sync that its end brings collects the outcome.
func (f *fixture) sync(t *testing.T, key string) (time.Duration, error) {
	t.Helper()
	f.waitCaches(t)
	r := f.c.sync(context.Background(), key)
	f.c.flights.wait()
	f.c.flights.mu.Lock()
	_, finished := f.c.flights.finished[key]
	f.c.flights.mu.Unlock()
	if finished {
		f.waitCaches(t)
		r = f.c.sync(context.Background(), key)
	}
	f.last = r
	return r.after, r.err
}

// waitCaches waits until the informers hold what the fake API server holds.
func (f *fixture) waitCaches(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ings, _ := f.client.NetworkingV1().Ingresses("").List(context.Background(), metav1.ListOptions{})
		secs, _ := f.client.CoreV1().Secrets("").List(context.Background(), metav1.ListOptions{LabelSelector: core.Selector})
		cachedIngs, _ := f.ings.List(labelsEverything())
		cachedSecs, _ := f.c.secretLister.List(labelsEverything())
		if sameVersions(ings.Items, cachedIngs) && sameSecrets(secs.Items, cachedSecs) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("caches did not catch up")
}

// sameVersions reports whether the cache holds the Ingresses the API holds, at
// their versions and with what sync reads.
func sameVersions(api []networkingv1.Ingress, cached []*networkingv1.Ingress) bool {
	if len(api) != len(cached) {
		return false
	}
	byName := map[string]*networkingv1.Ingress{}
	for _, i := range cached {
		byName[i.Name] = i
	}
	for _, i := range api {
		c := byName[i.Name]
		if c == nil || c.ResourceVersion != i.ResourceVersion || !maps.Equal(c.Annotations, i.Annotations) || !equality.Semantic.DeepEqual(c.Spec, i.Spec) {
			return false
		}
	}
	return true
}

// sameSecrets reports whether the cache holds the Secrets the API holds, at
// their versions.
func sameSecrets(api []corev1.Secret, cached []*corev1.Secret) bool {
	if len(api) != len(cached) {
		return false
	}
	versions := map[string]string{}
	for _, s := range cached {
		versions[s.Name] = s.ResourceVersion
	}
	for _, s := range api {
		if versions[s.Name] != s.ResourceVersion {
			return false
		}
	}
	return true
}

func (f *fixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func (f *fixture) writes() map[string]int {
	n := map[string]int{}
	for _, a := range f.client.Actions() {
		switch a.GetVerb() {
		case "create", "update", "patch", "delete":
			n[a.GetVerb()+" "+a.GetResource().Resource]++
		}
	}
	return n
}

func ingress(name string, annotations map[string]string, hosts ...string) *networkingv1.Ingress {
	prefix := networkingv1.PathTypePrefix
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Annotations: annotations, ResourceVersion: "1"}}
	for _, h := range hosts {
		ing.Spec.Rules = append(ing.Spec.Rules, networkingv1.IngressRule{Host: h, IngressRuleValue: networkingv1.IngressRuleValue{
			HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{Path: "/", PathType: &prefix,
				Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80}}}}}},
		}})
	}
	return ing
}

var optIn = map[string]string{core.AnnotationTLSACME: "true"}

func TestSyncIssuesStoresAndRestores(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test", "b.test"))
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 1 {
		t.Fatalf("orders: got %d, want 1", got)
	}
	if got := len(f.issuer.pathsSeen); got != 2 {
		t.Errorf("challenge paths in the Ingress while the CA validated: got %v, want one per host", f.issuer.pathsSeen)
	}
	sec, err := f.client.CoreV1().Secrets("ns").Get(context.Background(), "shop-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !core.Owned(sec.Labels) || sec.Type != corev1.SecretTypeTLS {
		t.Errorf("secret: owned %v type %s, want owned kubernetes.io/tls", core.Owned(sec.Labels), sec.Type)
	}
	ing, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	if _, ok := ing.Annotations[core.AnnotationChallenges]; ok {
		t.Error("journal left on the Ingress")
	}
	for _, r := range ing.Spec.Rules {
		if len(r.HTTP.Paths) != 1 || r.HTTP.Paths[0].Path != "/" {
			t.Errorf("rule %s: got paths %v, want only /", r.Host, r.HTTP.Paths)
		}
	}
	if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "shop-tls" || len(ing.Spec.TLS[0].Hosts) != 2 {
		t.Errorf("spec.tls: got %v, want shop-tls for both hosts", ing.Spec.TLS)
	}
	// Every replica's mirror of the journal (answer) may still be catching up
	// with the insert's event: the tokens go once the removal's event is seen.
	f.waitLive(t, map[string]string{}, "after the order")
	w := f.writes()
	if w["update ingresses"] != 2 || w["create secrets"] != 1 {
		t.Errorf("API writes: got %v, want 2 Ingress updates and 1 Secret create", w)
	}
	evs := strings.Join(f.events(), "\n")
	if !strings.Contains(evs, "Normal Issuing") || !strings.Contains(evs, "Normal Issued") {
		t.Errorf("events: got %q, want Issuing and Issued", evs)
	}

	// Once issued, another sync orders nothing and schedules the renewal.
	requeue, err := f.sync(t, "ns/shop-tls")
	if err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 1 {
		t.Errorf("orders after a second sync: got %d, want 1", got)
	}
	if requeue < time.Hour {
		t.Errorf("requeue after: got %s, want hours (renewal at a third of 90 days left, or an ARI recheck)", requeue)
	}
}

func TestSyncNeverTouchesForeignSecret(t *testing.T) {
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "shop-tls", Namespace: "ns"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": []byte("theirs")}}
	f := newFixture(t, ingress("shop", optIn, "a.test"), foreign)
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 0 {
		t.Errorf("orders: got %d, want 0", got)
	}
	if w := f.writes(); len(w) != 0 {
		t.Errorf("API writes: got %v, want none", w)
	}
	if evs := strings.Join(f.events(), "\n"); !strings.Contains(evs, "Warning SecretNotOwned") {
		t.Errorf("events: got %q, want a SecretNotOwned warning", evs)
	}
}

func TestSyncBadInputWarnsAndOrdersNothing(t *testing.T) {
	tests := []struct {
		name   string
		ing    *networkingv1.Ingress
		key    string
		reason string
	}{
		{"bad key type", ingress("a", map[string]string{core.AnnotationTLSACME: "true", core.AnnotationKeyType: "dsa"}, "a.test"), "ns/a-tls", "InvalidAnnotation"},
		{"bad opt-in value", ingress("b", map[string]string{core.AnnotationTLSACME: "yes"}, "b.test"), "ns/b-tls", "InvalidAnnotation"},
		{"wildcard", ingress("c", optIn, "*.c.test"), "ns/c-tls", "InvalidHost"},
		{"no hosts", ingress("d", optIn), "ns/d-tls", "NoHosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.ing)
			requeue, err := f.sync(t, tt.key)
			if err != nil || requeue != 0 {
				t.Errorf("sync: got (%s, %v), want (0, nil): no requeue storm", requeue, err)
			}
			if got := f.issuer.count(); got != 0 {
				t.Errorf("orders: got %d, want 0", got)
			}
			if evs := strings.Join(f.events(), "\n"); !strings.Contains(evs, "Warning "+tt.reason) {
				t.Errorf("events: got %q, want a %s warning", evs, tt.reason)
			}
		})
	}
}

func TestSyncRemovesLeftoverJournal(t *testing.T) {
	ing := ingress("shop", nil, "a.test")
	// A challenge path and its journal entry, as the solver writes them.
	exact := networkingv1.PathTypeExact
	ing.Spec.Rules[0].HTTP.Paths = append([]networkingv1.HTTPIngressPath{{Path: core.ChallengePathPrefix + "old", PathType: &exact,
		Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "ingress-acme-solver", Port: networkingv1.ServiceBackendPort{Number: 80}}}}},
		ing.Spec.Rules[0].HTTP.Paths...)
	ing.Annotations = map[string]string{core.AnnotationChallenges: `[{"secret":"shop-tls","host":"a.test","token":"old"}]`}
	f := newFixture(t, ing) // not opted in any more, paths left by a dead process
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	got, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	if _, ok := got.Annotations[core.AnnotationChallenges]; ok || len(got.Spec.Rules[0].HTTP.Paths) != 1 {
		t.Errorf("leftover not removed: annotations %v, paths %v", got.Annotations, got.Spec.Rules[0].HTTP.Paths)
	}
	if f.issuer.count() != 0 {
		t.Error("an order was placed for an Ingress that does not opt in")
	}
}

func TestSyncFailureCleansUpAndBacksOff(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	f.issuer.fail = errors.New(`acme: error code 403 "urn:ietf:params:acme:error:unauthorized": nope`)
	if _, err := f.sync(t, "ns/shop-tls"); err == nil {
		t.Fatal("sync: got nil error, want the order's failure")
	}
	ing, _ := f.client.NetworkingV1().Ingresses("ns").Get(context.Background(), "shop", metav1.GetOptions{})
	if _, ok := ing.Annotations[core.AnnotationChallenges]; ok || len(ing.Spec.Rules[0].HTTP.Paths) != 1 || len(ing.Spec.TLS) != 0 {
		t.Errorf("after a failure: journal %v, paths %v, tls %v; want the Ingress as written", ing.Annotations, ing.Spec.Rules[0].HTTP.Paths, ing.Spec.TLS)
	}
	if evs := strings.Join(f.events(), "\n"); !strings.Contains(evs, "Warning Failed") || !strings.Contains(evs, "unauthorized") {
		t.Errorf("events: got %q, want a Failed warning with the CA's problem", evs)
	}
	// The worker sets the backoff; a sync brought by an event meanwhile must
	// not order again.
	f.c.settle(context.Background(), "ns/shop-tls", f.last)
	requeue, err := f.sync(t, "ns/shop-tls")
	if err != nil || requeue <= 0 || requeue > time.Minute {
		t.Errorf("sync during backoff: got (%s, %v), want (the rest of the backoff, nil)", requeue, err)
	}
	if got := f.issuer.count(); got != 1 {
		t.Errorf("orders: got %d, want 1", got)
	}
}

func TestSyncOrderLimit(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	f.issuer.fail = errors.New("boom")
	for range 5 {
		_, _ = f.sync(t, "ns/shop-tls")
	}
	if got := f.issuer.count(); got != 3 {
		t.Errorf("orders: got %d, want 3 (MaxOrdersPerHour)", got)
	}
	if evs := strings.Join(f.events(), "\n"); !strings.Contains(evs, "Warning OrderLimit") {
		t.Errorf("events: got %q, want an OrderLimit warning", evs)
	}
}

func TestSyncRenewsInsideARIWindow(t *testing.T) {
	f := newFixture(t, ingress("shop", optIn, "a.test"))
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	f.waitCaches(t)
	// The CA now says: renew in a window that has begun.
	f.issuer.window = func(*x509.Certificate) (time.Time, time.Time, bool) {
		return time.Now().Add(-time.Hour), time.Now().Add(-time.Minute), true
	}
	f.c.stateFor("ns/shop-tls").recheck = time.Time{} // time to ask the CA again
	if _, err := f.sync(t, "ns/shop-tls"); err != nil {
		t.Fatal(err)
	}
	if got := f.issuer.count(); got != 2 {
		t.Errorf("orders: got %d, want 2 (issue, then renew)", got)
	}
	if evs := strings.Join(f.events(), "\n"); !strings.Contains(evs, "Normal Renewed") {
		t.Errorf("events: got %q, want Renewed", evs)
	}
	updates := f.writes()["update secrets"]
	if updates != 1 {
		t.Errorf("secret updates: got %d, want 1 (renewed in place)", updates)
	}
}

func labelsEverything() labels.Selector { return labels.Everything() }

// waitLive waits until the challenge server answers exactly want.
func (f *fixture) waitLive(t *testing.T, want map[string]string, what string) {
	t.Helper()
	f.chals.WaitLive(t, want, what)
}
