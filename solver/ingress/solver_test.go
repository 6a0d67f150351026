package ingress

import (
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/ingress-acme/ingress-acme/core"
)

// fxIngress is an opted-in Ingress in namespace "ns" with a rule for each host,
// each routing "/" to the user's Service "web".
func fxIngress(name string, ruleHosts ...string) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{
		Namespace:   "ns",
		Name:        name,
		Annotations: map[string]string{core.AnnotationTLSACME: "true"},
	}}
	for _, h := range ruleHosts {
		ing.Spec.Rules = append(ing.Spec.Rules, fxRule(h, "/"))
	}
	return ing
}

// fxRule is a rule for host routing each of paths (Prefix) to Service "web".
func fxRule(host string, paths ...string) networkingv1.IngressRule {
	pt := networkingv1.PathTypePrefix
	r := networkingv1.IngressRule{Host: host, IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{}}}
	for _, p := range paths {
		r.HTTP.Paths = append(r.HTTP.Paths, networkingv1.HTTPIngressPath{
			Path:     p,
			PathType: &pt,
			Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
				Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80},
			}},
		})
	}
	return r
}

// fxTLS adds a spec.tls entry.
func fxTLS(ing *networkingv1.Ingress, secret string, hosts ...string) *networkingv1.Ingress {
	ing.Spec.TLS = append(ing.Spec.TLS, networkingv1.IngressTLS{SecretName: secret, Hosts: hosts})
	return ing
}

// fxAnnotate sets annotations, given as key, value pairs.
func fxAnnotate(ing *networkingv1.Ingress, kv ...string) *networkingv1.Ingress {
	if ing.Annotations == nil {
		ing.Annotations = map[string]string{}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		ing.Annotations[kv[i]] = kv[i+1]
	}
	return ing
}

func fxPtr[T any](v T) *T { return &v }

// fakeIngresses is the Ingress source as far as journalKeys needs it: the
// certificates an Ingress would ask for are its spec.tls Secrets.
type fakeIngresses struct{ Ingresses }

func (fakeIngresses) Specs(ing *networkingv1.Ingress) []string {
	var keys []string
	for _, t := range ing.Spec.TLS {
		keys = append(keys, ing.Namespace+"/"+t.SecretName)
	}
	return keys
}

// fakeChallenges records presented tokens.
type fakeChallenges struct {
	// mu guards live.
	mu   sync.Mutex
	live map[string]string
}

func (f *fakeChallenges) Present(_, token, keyAuth string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live[token] = keyAuth
}

func (f *fakeChallenges) Remove(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.live, token)
}

type fakeService struct{}

func (fakeService) Ensure(context.Context, string) error { return nil }
func (fakeService) Forget(string)                        {}
func (fakeService) Name() string                         { return solverSvc }

type fakeSelfCheck struct{}

func (fakeSelfCheck) Check(context.Context, string, string, string) error { return nil }

// fixture is a Solver watching Ingresses on a fake API server.
type fixture struct {
	client *fake.Clientset
	chals  *fakeChallenges
}

func newFixture(t *testing.T, objs ...*networkingv1.Ingress) *fixture {
	t.Helper()
	client := fake.NewClientset()
	for _, o := range objs {
		if _, err := client.NetworkingV1().Ingresses(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{client: client, chals: &fakeChallenges{live: map[string]string{}}}
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Networking().V1().Ingresses()
	s, err := New(Config{Informer: inf, Ingresses: fakeIngresses{}, Challenges: f.chals, Service: fakeService{},
		SelfCheck: fakeSelfCheck{}, Recorder: record.NewFakeRecorder(10)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Watch(func(string) {}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return f
}

// waitLive waits until the challenge server answers exactly want (token ->
// key authorization).
func (f *fixture) waitLive(t *testing.T, want map[string]string, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.chals.mu.Lock()
		got := maps.Clone(f.chals.live)
		f.chals.mu.Unlock()
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: challenge server answers %v, want %v", what, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func journalled(entries ...Entry) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}}
	writeJournal(ing, entries)
	return ing
}

// Every replica answers the tokens journalled on Ingresses, as they come and
// go, without being the one that placed the order.
func TestAnswerFollowsJournal(t *testing.T) {
	ctx := context.Background()
	a := Entry{Secret: "web-tls", Host: "a.example.com", Token: "tokA", Order: "https://ca/o/1", KeyAuth: "tokA.thumb"}
	b := Entry{Secret: "web-tls", Host: "b.example.com", Token: "tokB", Order: "https://ca/o/1", KeyAuth: "tokB.thumb"}
	old := Entry{Secret: "web-tls", Host: "c.example.com", Token: "tokC"} // journalled before keyAuth was
	f := newFixture(t, journalled(a))
	f.waitLive(t, map[string]string{"tokA": "tokA.thumb"}, "an Ingress listed at start")

	api := f.client.NetworkingV1().Ingresses("shop")
	ing, err := api.Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	writeJournal(ing, []Entry{a, b, old})
	ing.ResourceVersion = "2"
	if ing, err = api.Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitLive(t, map[string]string{"tokA": "tokA.thumb", "tokB": "tokB.thumb"}, "an entry added (one without keyAuth is not answered)")

	writeJournal(ing, []Entry{b})
	ing.ResourceVersion = "3"
	if _, err = api.Update(ctx, ing, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitLive(t, map[string]string{"tokB": "tokB.thumb"}, "an entry removed")

	if err := api.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitLive(t, map[string]string{}, "the Ingress deleted")
}

func TestJournalKeys(t *testing.T) {
	tests := []struct {
		name    string
		journal *string
		want    []string
	}{
		{name: "no journal", journal: nil, want: nil},
		{name: "entries, deduplicated", journal: fxPtr(`[{"secret":"a-tls","host":"a.example.com","token":"t1"},{"secret":"b-tls","host":"b.example.com","token":"t2"},{"secret":"a-tls","host":"c.example.com","token":"t3"}]`),
			want: []string{"ns/a-tls", "ns/b-tls"}},
		{name: "empty list", journal: fxPtr(`[]`), want: nil},
		{name: "unparsable: every certificate the Ingress asks for", journal: fxPtr(`{oops`), want: []string{"ns/x-tls", "ns/y-tls"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ing := fxTLS(fxTLS(fxIngress("web", "a.example.com"), "x-tls", "a.example.com"), "y-tls", "b.example.com")
			if tt.journal != nil {
				ing.Annotations[core.AnnotationChallenges] = *tt.journal
			}
			if got := (&Solver{cfg: Config{Ingresses: fakeIngresses{}}}).journalKeys(ing); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("not opted in still cleaned up", func(t *testing.T) {
		ing := fxAnnotate(fxIngress("web", "a.example.com"), core.AnnotationTLSACME, "false",
			core.AnnotationChallenges, `[{"secret":"web-tls","host":"a.example.com","token":"t"}]`)
		if got, want := (&Solver{cfg: Config{Ingresses: fakeIngresses{}}}).journalKeys(ing), []string{"ns/web-tls"}; !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
}

var pathTypes = []networkingv1.PathType{networkingv1.PathTypeExact, networkingv1.PathTypePrefix, networkingv1.PathTypeImplementationSpecific}
