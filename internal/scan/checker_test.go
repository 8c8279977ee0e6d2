package scan

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for the cache's TTL.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// countingChecker returns a Checker whose probes are counted and, while
// gate is open, block until it is closed.
func countingChecker(ttl time.Duration, clock *fakeClock, gate chan struct{}, result func(n int32) Result) (*Checker, *atomic.Int32) {
	var n atomic.Int32
	c := NewChecker(Options{}, ttl, clock.now)
	c.scan = func(ctx context.Context, addr string, _ Options) Result {
		k := n.Add(1)
		if gate != nil {
			<-gate
		}
		r := result(k)
		r.Target = addr
		return r
	}
	return c, &n
}

func passing(int32) Result { return Result{Pass: true, Findings: []Finding{}} }

func TestCheckerTTL(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c, probes := countingChecker(time.Minute, clock, nil, passing)
	ctx := t.Context()

	for i := 0; i < 3; i++ {
		if r, err := c.Check(ctx, "web1:22"); err != nil || !r.Pass {
			t.Fatalf("check %d: %+v %v", i, r, err)
		}
	}
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes for 3 checks within the TTL, want 1", n)
	}
	clock.advance(59 * time.Second)
	_, _ = c.Check(ctx, "web1:22")
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes at 59s with a 1m TTL, want 1", n)
	}
	clock.advance(time.Second)
	_, _ = c.Check(ctx, "web1:22")
	if n := probes.Load(); n != 2 {
		t.Fatalf("%d probes once the TTL has passed, want 2", n)
	}
	_, _ = c.Check(ctx, "web2:22")
	if n := probes.Load(); n != 3 {
		t.Fatalf("%d probes after a second address, want 3 (the cache is per address)", n)
	}
}

func TestCheckerSingleflight(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	gate := make(chan struct{})
	c, probes := countingChecker(time.Minute, clock, gate, passing)

	const callers = 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := c.Check(t.Context(), "web1:22")
			if err == nil && !r.Pass {
				err = errors.New("not passed")
			}
			errs <- err
		}()
	}
	// Let every caller reach the wait before the probe finishes.
	deadline := time.Now().Add(5 * time.Second)
	for probes.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes for %d concurrent checks, want 1", n, callers)
	}
}

func TestCheckerErrorsAreNotCached(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c, probes := countingChecker(time.Minute, clock, nil, func(n int32) Result {
		if n == 1 {
			return finish(Result{}, errors.New("scan: connect to web1:22: connection refused"))
		}
		return passing(n)
	})
	r, err := c.Check(t.Context(), "web1:22")
	if err == nil || r.Pass {
		t.Fatalf("unreachable target: Pass=%v err=%v, want an error and no pass", r.Pass, err)
	}
	if r, err := c.Check(t.Context(), "web1:22"); err != nil || !r.Pass {
		t.Fatalf("second check: Pass=%v err=%v; a failed probe must not be cached", r.Pass, err)
	}
	if n := probes.Load(); n != 2 {
		t.Fatalf("%d probes, want 2", n)
	}
}

func TestCheckerCallerCancelled(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	gate := make(chan struct{})
	c, probes := countingChecker(time.Minute, clock, gate, passing)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.Check(ctx, "web1:22"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// The probe goes on for the callers that still wait, and its result
	// is cached.
	close(gate)
	if r, err := c.Check(t.Context(), "web1:22"); err != nil || !r.Pass {
		t.Fatalf("Pass=%v err=%v", r.Pass, err)
	}
	if n := probes.Load(); n != 1 {
		t.Fatalf("%d probes, want 1", n)
	}
}

func TestCheckerSweepsExpiredEntries(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c, _ := countingChecker(time.Minute, clock, nil, passing)
	for i := 0; i < maxIdleEntries; i++ {
		_, _ = c.Check(t.Context(), fmt.Sprintf("host%d:22", i))
	}
	clock.advance(time.Hour)
	_, _ = c.Check(t.Context(), "fresh:22")
	c.mu.Lock()
	n := len(c.entries)
	c.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d entries after the sweep, want 1", n)
	}
}
