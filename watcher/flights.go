package watcher

import (
	"slices"
	"sync"
	"time"
)

// flights runs orders outside the work queue's workers, at most limit at once,
// so that time spent waiting on an ingress or a CA never holds a worker. When
// every slot is taken, a certificate waits its turn by urgency (closest to
// expiry first, then new ones in the order they came); a freed slot is reserved
// for the most urgent waiting key, which is woken to sync again. A finished
// order's result waits for the next sync of its key to collect it, so only the
// worker holding a key ever acts on it. Safe for concurrent use.
type flights struct {
	limit int
	wake  func(key string) // queues key for a sync

	// mu guards everything below.
	mu       sync.Mutex
	running  map[string]bool   // keys with an order in flight
	reserved map[string]bool   // keys woken to take a freed slot
	waiting  []waiter          // sorted by urgency
	finished map[string]result // results not yet collected
	seq      int
	wg       sync.WaitGroup
}

type waiter struct {
	key     string
	urgency time.Time // the current certificate's expiry; zero for a new one
	seq     int
}

func newFlights(limit int, wake func(string)) *flights {
	return &flights{limit: max(limit, 1), wake: wake, running: map[string]bool{}, reserved: map[string]bool{}, finished: map[string]result{}}
}

// busy reports whether key has an order in flight.
func (f *flights) busy(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[key]
}

// collect returns, once, the result of key's finished order.
func (f *flights) collect(key string) (result, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.finished[key]
	delete(f.finished, key)
	return r, ok
}

// start runs order for key in its own goroutine if a slot is free for it, and
// reports whether it did; otherwise key waits its turn with urgency (the expiry
// of its current certificate; zero when it has none).
func (f *flights) start(key string, urgency time.Time, order func() result) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.reserved[key] && (len(f.running)+len(f.reserved) >= f.limit || len(f.waiting) > 0) {
		f.enqueue(key, urgency)
		return false
	}
	delete(f.reserved, key)
	f.dequeue(key)
	f.running[key] = true
	f.wg.Go(func() {
		r := order()
		f.mu.Lock()
		delete(f.running, key)
		f.finished[key] = r
		f.grant()
		f.mu.Unlock()
		f.wake(key)
	})
	return true
}

// release gives up key's place: its reserved slot, if any, and its place in line.
func (f *flights) release(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dequeue(key)
	if f.reserved[key] {
		delete(f.reserved, key)
		f.grant()
	}
}

// wait returns once every order has finished.
func (f *flights) wait() { f.wg.Wait() }

// grant reserves free slots for the most urgent waiting keys and wakes them.
// f.mu must be held.
func (f *flights) grant() {
	for len(f.running)+len(f.reserved) < f.limit && len(f.waiting) > 0 {
		w := f.waiting[0]
		f.waiting = f.waiting[1:]
		f.reserved[w.key] = true
		go f.wake(w.key) // never call out with f.mu held
	}
}

// enqueue puts key in line (once; a new urgency replaces the old). f.mu must be held.
func (f *flights) enqueue(key string, urgency time.Time) {
	f.dequeue(key)
	f.seq++
	w := waiter{key: key, urgency: urgency, seq: f.seq}
	i, _ := slices.BinarySearchFunc(f.waiting, w, compareUrgency)
	f.waiting = slices.Insert(f.waiting, i, w)
}

func (f *flights) dequeue(key string) {
	f.waiting = slices.DeleteFunc(f.waiting, func(w waiter) bool { return w.key == key })
}

// compareUrgency orders certificates closest to expiry first, then new ones
// (zero urgency), each in arrival order.
func compareUrgency(a, b waiter) int {
	switch {
	case a.urgency.IsZero() != b.urgency.IsZero():
		if a.urgency.IsZero() {
			return 1
		}
		return -1
	case !a.urgency.Equal(b.urgency):
		return a.urgency.Compare(b.urgency)
	}
	return a.seq - b.seq
}
