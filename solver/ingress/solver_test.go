package ingress

import (
	"context"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/ingress-acme/ingress-acme/core"
	"github.com/ingress-acme/ingress-acme/internal/testfx"
)

// The shared fixtures (see testfx), by the names these tests use.
var (
	fxIngress  = testfx.Ingress
	fxRule     = testfx.Rule
	fxTLS      = testfx.TLS
	fxAnnotate = testfx.Annotate
)

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

type fakeService struct{}

func (fakeService) Ensure(context.Context, string) error { return nil }
func (fakeService) Forget(string)                        {}
func (fakeService) Name() string                         { return solverSvc }

type fakeSelfCheck struct{}

func (fakeSelfCheck) Check(context.Context, string, string, string) error { return nil }

// fixture is a Solver watching Ingresses on a fake API server.
type fixture struct {
	client *fake.Clientset
	chals  *testfx.Challenges
}

func newFixture(t *testing.T, objs ...*networkingv1.Ingress) *fixture {
	t.Helper()
	client := fake.NewClientset()
	for _, o := range objs {
		if _, err := client.NetworkingV1().Ingresses(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{client: client, chals: testfx.NewChallenges()}
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

// waitLive waits until the challenge server answers exactly want.
func (f *fixture) waitLive(t *testing.T, want map[string]string, what string) {
	t.Helper()
	f.chals.WaitLive(t, want, what)
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
