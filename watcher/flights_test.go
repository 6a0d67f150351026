package watcher

import (
	"slices"
	"sync"
	"testing"
	"time"
)

func TestFlightsServeMostUrgentFirst(t *testing.T) {
	// mu guards woken.
	var mu sync.Mutex
	var woken []string
	f := newFlights(1, func(k string) {
		mu.Lock()
		defer mu.Unlock()
		woken = append(woken, k)
	})
	release := make(chan struct{})
	if !f.start("busy", time.Time{}, func() result { <-release; return result{} }) {
		t.Fatal("first order: not started with a free slot")
	}
	now := time.Now()
	for _, w := range []struct {
		key     string
		urgency time.Time
	}{{"new-1", time.Time{}}, {"late", now.Add(48 * time.Hour)}, {"soon", now.Add(time.Hour)}, {"new-2", time.Time{}}} {
		if f.start(w.key, w.urgency, func() result { return result{} }) {
			t.Fatalf("%s: started with every slot taken", w.key)
		}
	}
	f.mu.Lock()
	got := len(f.waiting)
	f.mu.Unlock()
	if got != 4 {
		t.Fatalf("waiting: got %d, want 4", got)
	}
	close(release)
	f.wait()
	var started []string
	// Each woken key takes its reserved slot (its sync starts the order), and
	// the next is woken when that order ends.
	for range 4 {
		deadline := time.Now().Add(2 * time.Second)
		var next string
		for next == "" && time.Now().Before(deadline) {
			mu.Lock()
			for _, k := range woken {
				if k != "busy" && !slices.Contains(started, k) {
					next = k
				}
			}
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
		if next == "" {
			t.Fatalf("no key woken after %v", started)
		}
		started = append(started, next)
		if !f.start(next, time.Time{}, func() result { return result{} }) {
			t.Fatalf("%s: woken but not started", next)
		}
		f.wait()
	}
	if want := []string{"soon", "late", "new-1", "new-2"}; !slices.Equal(started, want) {
		t.Errorf("order served: got %v, want %v (closest to expiry first, then new ones as they came)", started, want)
	}
}

func TestFlightsReleaseGivesTheSlotOn(t *testing.T) {
	woke := make(chan string, 4)
	f := newFlights(1, func(k string) { woke <- k })
	block := make(chan struct{})
	f.start("a", time.Time{}, func() result { <-block; return result{} })
	f.start("b", time.Time{}, func() result { return result{} })
	f.start("c", time.Time{}, func() result { return result{} })
	close(block)
	f.wait()
	got := map[string]bool{}
	for len(got) < 2 {
		got[<-woke] = true // a (its end) and b (granted the slot)
	}
	if !got["b"] {
		t.Fatalf("woken: got %v, want b granted the freed slot", got)
	}
	f.release("b") // b's sync found nothing to order
	select {
	case k := <-woke:
		if k != "c" {
			t.Errorf("woken after release: got %s, want c", k)
		}
	case <-time.After(2 * time.Second):
		t.Error("released slot not given to c")
	}
	if _, ok := f.collect("a"); !ok {
		t.Error("a's result not kept for its next sync")
	}
	if _, ok := f.collect("a"); ok {
		t.Error("a's result collected twice")
	}
}
