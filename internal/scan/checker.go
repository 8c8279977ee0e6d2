package scan

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// maxIdleEntries is the cache size above which Check sweeps out expired
// entries, so a gateway that jumps to many hosts does not keep a result for
// every host it ever saw.
const maxIdleEntries = 1024

// Checker runs Scan for the gateway's require_hardened_targets option and
// caches each address's result for a TTL. Concurrent checks of one address
// share a single probe, so a burst of jumps to one target costs the target
// one connection; the cache also keeps the gateway from tripping a target's
// penalties for unauthenticated connections (OpenSSH 9.8's
// PerSourcePenalties noauth). A Checker is safe for concurrent use.
type Checker struct {
	opts Options
	ttl  time.Duration
	now  func() time.Time
	// scan is Scan, replaceable by tests that count probes.
	scan func(ctx context.Context, addr string, opts Options) Result

	mu      sync.Mutex
	entries map[string]*checkEntry
}

// checkEntry is one address's result, or a probe in flight.
type checkEntry struct {
	done chan struct{} // closed when res is set
	res  Result
	at   time.Time // when the probe finished
}

// NewChecker returns a Checker that probes with opts and keeps a result for
// ttl after its probe finished (a ttl ≤ 0 caches nothing, but concurrent
// checks still share a probe). now is the clock; nil means time.Now.
func NewChecker(opts Options, ttl time.Duration, now func() time.Time) *Checker {
	if now == nil {
		now = time.Now
	}
	opts = opts.withDefaults()
	return &Checker{opts: opts, ttl: ttl, now: now, scan: Scan, entries: map[string]*checkEntry{}}
}

// Check returns addr's scan result, from the cache when it is younger than
// the TTL. The error is non-nil when the target could not be probed
// (Result.Err), or when ctx ended while waiting; such results are not
// cached, so the next check probes again. A result with an error never has
// Pass set: callers that refuse unhardened targets refuse these too.
//
// The probe itself does not stop when ctx does (other callers may be
// waiting for it); it is bounded by Options.Timeout.
func (c *Checker) Check(ctx context.Context, addr string) (Result, error) {
	c.mu.Lock()
	e, ok := c.entries[addr]
	if ok && isDone(e) && c.now().Sub(e.at) >= c.ttl {
		delete(c.entries, addr)
		ok = false
	}
	if !ok {
		e = &checkEntry{done: make(chan struct{})}
		c.sweepLocked()
		c.entries[addr] = e
		go c.run(context.WithoutCancel(ctx), addr, e)
	}
	c.mu.Unlock()

	select {
	case <-e.done:
	case <-ctx.Done():
		return Result{Target: addr, Err: ctx.Err().Error()}, fmt.Errorf("scan: check %s: %w", addr, ctx.Err())
	}
	if e.res.Err != "" {
		return e.res, fmt.Errorf("scan: check %s: %s", addr, e.res.Err)
	}
	return e.res, nil
}

// run probes addr and publishes the result in e. A failed probe is removed
// from the cache so that the next check tries again.
func (c *Checker) run(ctx context.Context, addr string, e *checkEntry) {
	res := c.scan(ctx, addr, c.opts)
	c.mu.Lock()
	e.res, e.at = res, c.now()
	if res.Err != "" && c.entries[addr] == e {
		delete(c.entries, addr)
	}
	c.mu.Unlock()
	close(e.done)
}

// sweepLocked drops expired entries once the cache is large. c.mu is held.
func (c *Checker) sweepLocked() {
	if len(c.entries) < maxIdleEntries {
		return
	}
	now := c.now()
	for addr, e := range c.entries {
		if isDone(e) && now.Sub(e.at) >= c.ttl {
			delete(c.entries, addr)
		}
	}
}

// isDone reports whether e's probe has finished.
func isDone(e *checkEntry) bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}
