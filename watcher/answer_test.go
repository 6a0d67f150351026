package watcher

import (
	"context"
	"maps"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

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

// A follower's caches sync (it answers challenges, /readyz may say so) while it
// does not run workers; Run later uses the same informers.
func TestFollowThenRun(t *testing.T) {
	f := newFixture(t)
	followCtx, stopFollowing := context.WithCancel(context.Background())
	defer stopFollowing()
	f.c.Follow(followCtx)
	if !f.c.Synced() {
		t.Fatal("Synced: got false with the caches synced")
	}
	if f.c.Ready() {
		t.Fatal("Ready: got true before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.c.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for !f.c.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("Run did not become ready on the followed informers")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended (informers it did not start must not be waited for)")
	}
}
