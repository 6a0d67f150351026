package watcher

import (
	"context"
	"testing"
	"time"
)

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
