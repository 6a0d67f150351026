package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ingress-acme/ingress-acme/core"
)

// result is what a sync (or an order it started) says of its certificate. The
// worker alone acts on it (see settle): it is the one owner of the retry state.
type result struct {
	after time.Duration // look again after this long; 0: only on change
	err   error         // the attempt failed: back off, honouring the CA's Retry-After
	// failed is the desired state (see fingerprint) that err is about: until it
	// changes, no new order before the backoff ends.
	failed string
	// healthy: the certificate is as desired; past failures are forgotten.
	healthy bool

	// Set by a finished order, for the sync that collects it:
	issued *issuedCert // the certificate it stored
	// refund is when it started, if it does not count against the hourly
	// budget: it continued an earlier order, or it was a renewal on time that
	// succeeded (the budget guards against loops and failures, not renewals).
	refund time.Time
}

// certState is what the controller remembers of a certificate between syncs.
// Only the worker holding its key touches it.
type certState struct {
	orders   []time.Time // when orders counted against MaxOrdersPerHour were placed
	failures int         // in a row; the backoff doubles with each
	saved    bool        // a record of it is in the StateStore
	// After a failure, no new order before retryAt unless the desired state
	// (failedFor) changes: events must not bypass the backoff.
	failedFor string
	retryAt   time.Time
	// The renewal time chosen for the certificate with serial.
	serial  string
	renewAt time.Time
	recheck time.Time // when to ask the CA for renewal information again
	// issued is the leaf this process stored last: a cached Secret older than
	// it was replaced moments ago and is never judged for renewal.
	issued   *issuedCert
	warnedOn string // the desired state last warned about, so a warning is given once
}

// issuedCert identifies a certificate this process stored.
type issuedCert struct {
	serial    string
	notBefore time.Time
}

// next processes one key; it returns false when the queue shuts down.
func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	c.settle(ctx, key, c.sync(ctx, key))
	return true
}

// settle acts on a sync's result: it backs off after a failure, forgets past
// failures once the certificate is healthy, and schedules the next look. What
// must outlive the process is saved with the StateStore.
func (c *Controller) settle(ctx context.Context, key string, r result) {
	switch {
	case r.err != nil && ctx.Err() != nil:
		return // stopping: the next process picks the key up from its own informers
	case r.err != nil:
		delay := c.backOff(ctx, key, r)
		c.log.Error("sync failed", "secret", key, "err", r.err, "retry_in", delay.Round(time.Second).String())
		c.queue.AddAfter(key, delay)
		return
	case r.healthy:
		c.recovered(ctx, key)
	}
	if r.after > 0 {
		c.queue.AddAfter(key, r.after)
	}
}

// backOff records a failure of key and returns how long to wait: RetryBase,
// doubling with each failure in a row up to RetryMax, and at least until the
// CA's Retry-After.
func (c *Controller) backOff(ctx context.Context, key string, r result) time.Duration {
	st := c.stateFor(key)
	st.failures++
	delay := c.cfg.RetryMax
	if st.failures < 32 {
		delay = min(c.cfg.RetryBase<<(st.failures-1), c.cfg.RetryMax)
	}
	if ra := (*core.RetryAfterError)(nil); errors.As(r.err, &ra) {
		delay = max(delay, ra.At.Sub(c.now()))
	}
	st.failedFor, st.retryAt = r.failed, c.now().Add(delay)
	c.save(ctx, key, st)
	return delay
}

// recovered forgets key's past failures.
func (c *Controller) recovered(ctx context.Context, key string) {
	st := c.stateFor(key)
	st.failures, st.failedFor = 0, ""
	if st.saved && c.cfg.States != nil {
		if err := c.cfg.States.Delete(ctx, key); err != nil {
			c.log.Warn("certificate state not deleted", "secret", key, "err", err)
			return
		}
		st.saved = false
	}
}

// stateFor returns the remembered state of key, creating it.
func (c *Controller) stateFor(key string) *certState {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.state[key]
	if !ok {
		s = &certState{}
		c.state[key] = s
	}
	return s
}

// forget drops the remembered state of key, unless it placed orders in the last
// hour: toggling the opt-in must not reset the hourly order limit.
func (c *Controller) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.state[key]; ok && len(s.orders) > 0 && c.now().Sub(s.orders[len(s.orders)-1]) < time.Hour {
		return
	}
	delete(c.state, key)
}

// backingOff is how long the certificate must still wait after a failure of
// the desired state fp; 0 when it need not.
func (st *certState) backingOff(fp string, now time.Time) time.Duration {
	if st.failedFor != fp || !now.Before(st.retryAt) {
		return 0
	}
	return st.retryAt.Sub(now)
}

// orderBudget is how long until another order fits under max orders in any
// hour; 0 when one fits now.
func (st *certState) orderBudget(now time.Time, max int) time.Duration {
	st.orders = slices.DeleteFunc(st.orders, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	if len(st.orders) < max {
		return 0
	}
	return st.orders[0].Add(time.Hour).Sub(now)
}

// spend counts an order placed at t; refund takes it back (a renewal that was
// due and succeeded: the budget guards against loops and failures, not against
// renewals on time).
func (st *certState) spend(t time.Time) { st.orders = append(st.orders, t) }

func (st *certState) refund(t time.Time) {
	st.orders = slices.DeleteFunc(st.orders, func(o time.Time) bool { return o.Equal(t) })
}

// savedState is what of a certState outlives the process.
type savedState struct {
	Orders    []time.Time `json:"orders,omitempty"`
	Failures  int         `json:"failures,omitempty"`
	FailedFor string      `json:"failedFor,omitempty"`
	RetryAt   time.Time   `json:"retryAt,omitzero"`
}

// save stores what of st must outlive the process; a failure to is logged (the
// state in memory still holds).
func (c *Controller) save(ctx context.Context, key string, st *certState) {
	if c.cfg.States == nil {
		return
	}
	data, _ := json.Marshal(savedState{Orders: st.orders, Failures: st.failures, FailedFor: st.failedFor, RetryAt: st.retryAt})
	if err := c.cfg.States.Save(ctx, key, data); err != nil {
		c.log.Warn("certificate state not saved", "secret", key, "err", err)
		return
	}
	st.saved = true
}

// loadStates reads back what earlier processes saved, before any sync.
func (c *Controller) loadStates(ctx context.Context) error {
	if c.cfg.States == nil {
		return nil
	}
	records, err := c.cfg.States.Load(ctx)
	if err != nil {
		return fmt.Errorf("watcher: %w", err)
	}
	for key, data := range records {
		var s savedState
		if err := json.Unmarshal(data, &s); err != nil {
			c.log.Warn("certificate state unreadable, ignored", "secret", key, "err", err)
			continue
		}
		st := c.stateFor(key)
		st.orders, st.failures, st.failedFor, st.retryAt, st.saved = s.Orders, s.Failures, s.FailedFor, s.RetryAt, true
	}
	c.log.Info("certificate states loaded", "count", len(records))
	return nil
}
