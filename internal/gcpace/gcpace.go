// Package gcpace paces Go's garbage collector for the gateway by giving the
// heap a fixed amount of room to grow between collections, rather than
// GOGC's fixed proportion of what is live.
//
// Why: relaying bytes through x/crypto/ssh allocates a fresh buffer for
// every packet it reads (about 1 GiB of garbage per GiB relayed) while the
// live heap stays small. With GOGC=100 and a few MiB live, that is a
// collection every few MiB, hundreds per GiB, and measured on 2 cores the
// collector then took half of the gateway's CPU during a bulk transfer.
// With thousands of idle sessions the opposite holds: the live heap is
// large, nothing is allocated, and GOGC=100 lets the heap double anyway,
// which is memory every session pays for.
//
// A Pacer therefore sets the GC percentage after every collection so that
// the next one starts once the heap has grown by Headroom bytes over what
// the collector scans (live heap, goroutine stacks and globals, which is
// what GOGC is a percentage of since Go 1.18), clamped to
// [MinPercent, MaxPercent]. A GOGC or GOMEMLIMIT set in the environment
// is the operator's choice and is left alone (see FromEnvironment).
package gcpace

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// Options are a Pacer's limits. Zero values take the defaults.
type Options struct {
	// Headroom is how far the heap may grow past what the collector
	// scans before the next collection. Default 32 MiB.
	Headroom uint64
	// MinPercent bounds the GC percentage from below, so that a large
	// live heap is still given this proportion of room and collections
	// do not run back to back. Default 25.
	MinPercent int
	// MaxPercent bounds it from above. Default: the percentage at which
	// Go's own minimum heap, 4 MiB scaled by the GC percentage, equals
	// Headroom (800 for 32 MiB); any higher and a small heap would be
	// given more room than Headroom.
	MaxPercent int
}

// runtimeMinimumHeap is the heap size below which Go does not collect at
// GOGC=100; it scales with the GC percentage (runtime's heapMinimum).
const runtimeMinimumHeap = 4 << 20

func (o Options) withDefaults() Options {
	if o.Headroom == 0 {
		o.Headroom = 32 << 20
	}
	if o.MinPercent <= 0 {
		o.MinPercent = 25
	}
	if o.MaxPercent <= 0 {
		o.MaxPercent = int(o.Headroom * 100 / runtimeMinimumHeap)
	}
	if o.MaxPercent < o.MinPercent {
		o.MaxPercent = o.MinPercent
	}
	return o
}

// Percent is the GC percentage that gives a heap whose collector scans
// scanned bytes the room o asks for.
func Percent(scanned uint64, o Options) int {
	o = o.withDefaults()
	if scanned == 0 {
		return o.MaxPercent
	}
	p := o.Headroom * 100 / scanned
	switch {
	case p < uint64(o.MinPercent):
		return o.MinPercent
	case p > uint64(o.MaxPercent):
		return o.MaxPercent
	}
	return int(p)
}

// FromEnvironment reports whether the operator already chose how the
// collector is paced, with GOGC or GOMEMLIMIT, and then which; a Pacer
// must not be started over that choice.
func FromEnvironment() (string, bool) {
	for _, name := range []string{"GOGC", "GOMEMLIMIT"} {
		if v := os.Getenv(name); v != "" {
			return fmt.Sprintf("%s=%s", name, v), true
		}
	}
	return "", false
}

// Pacer adjusts the GC percentage after every collection until Stop.
type Pacer struct {
	opts     Options
	previous int
	stopped  atomic.Bool
	// mu serialises adjust with Stop, so that Stop's restore is final.
	mu      sync.Mutex
	samples []metrics.Sample
	percent atomic.Int64
	runs    atomic.Int64
}

// scannedMetrics sum to what GOGC is a percentage of.
var scannedMetrics = []string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

// Start sets the percentage for the heap as it is now and keeps it
// current after every collection. The GC percentage is process-wide: run
// one Pacer per process.
func Start(o Options) *Pacer {
	p := &Pacer{opts: o.withDefaults(), samples: make([]metrics.Sample, len(scannedMetrics))}
	for i, name := range scannedMetrics {
		p.samples[i].Name = name
	}
	p.mu.Lock()
	p.previous = debug.SetGCPercent(p.compute())
	p.mu.Unlock()
	p.arm()
	return p
}

// sentinel is garbage on purpose: its cleanup runs after each collection
// that finds it unreachable, which is the next one. It holds a pointer so
// that it is not placed in the tiny allocator's shared blocks, whose
// cleanups may never run.
type sentinel struct{ _ *byte }

func (p *Pacer) arm() {
	runtime.AddCleanup(&sentinel{}, func(p *Pacer) { p.afterGC() }, p)
}

func (p *Pacer) afterGC() {
	if p.stopped.Load() {
		return
	}
	p.mu.Lock()
	if !p.stopped.Load() {
		// SetGCPercent takes the heap lock: only when it changes.
		if last := p.Percent(); p.compute() != last {
			debug.SetGCPercent(p.Percent())
		}
		p.runs.Add(1)
	}
	p.mu.Unlock()
	p.arm()
}

// compute reads what the last collection scanned and returns the
// percentage for it. Callers hold mu.
func (p *Pacer) compute() int {
	metrics.Read(p.samples)
	var scanned uint64
	for _, s := range p.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			scanned += s.Value.Uint64()
		}
	}
	percent := Percent(scanned, p.opts)
	p.percent.Store(int64(percent))
	return percent
}

// Percent is the GC percentage the pacer last set.
func (p *Pacer) Percent() int { return int(p.percent.Load()) }

// Adjustments counts the collections after which the pacer ran.
func (p *Pacer) Adjustments() int64 { return p.runs.Load() }

// Stop ends pacing and restores the GC percentage found at Start.
func (p *Pacer) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped.Swap(true) {
		return
	}
	debug.SetGCPercent(p.previous)
}
