package ingress

import "sync"

// changes lets a goroutine wait for the next informer event about one object
// (namespace/name) instead of polling the cache. Safe for concurrent use.
type changes struct {
	// mu guards waiters.
	mu      sync.Mutex
	waiters map[string]chan struct{} // closed, and removed, on the object's next event
}

func newChanges() *changes { return &changes{waiters: map[string]chan struct{}{}} }

// next returns a channel closed at the next event about key. Take it before
// reading the cache, so that an event between the read and the wait is not missed.
func (c *changes) next(key string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch, ok := c.waiters[key]
	if !ok {
		ch = make(chan struct{})
		c.waiters[key] = ch
	}
	return ch
}

// fire wakes everyone waiting for key.
func (c *changes) fire(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.waiters[key]; ok {
		close(ch)
		delete(c.waiters, key)
	}
}
