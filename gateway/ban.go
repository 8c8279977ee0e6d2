package gateway

import (
	"net/netip"
	"sync"
	"time"
)

// banList counts authentication failures per source address and bans
// sources that fail too often. It is in memory: a restart forgives, which
// is acceptable because every failure is also in the audit log.
type banList struct {
	after    int
	window   time.Duration
	duration time.Duration
	now      func() time.Time

	mu       sync.Mutex
	failures map[netip.Addr][]time.Time
	banned   map[netip.Addr]time.Time // until
}

func newBanList(l Limits, now func() time.Time) *banList {
	return &banList{
		after: l.BanAfterFailures, window: l.BanWindow, duration: l.BanDuration, now: now,
		failures: map[netip.Addr][]time.Time{}, banned: map[netip.Addr]time.Time{},
	}
}

// Banned reports whether addr is banned now, and until when.
func (b *banList) Banned(addr netip.Addr) (time.Time, bool) {
	if b.after == 0 {
		return time.Time{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok := b.banned[addr]
	if ok && !b.now().Before(until) {
		delete(b.banned, addr)
		return time.Time{}, false
	}
	return until, ok
}

// Fail records n failures from addr and reports whether this call banned
// it (true exactly once per ban, so a ban is audited once).
func (b *banList) Fail(addr netip.Addr, n int) (until time.Time, banned bool) {
	if b.after == 0 || n <= 0 {
		return time.Time{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if until, ok := b.banned[addr]; ok && now.Before(until) {
		return until, false
	}
	recent := b.failures[addr][:0]
	for _, t := range b.failures[addr] {
		if now.Sub(t) < b.window {
			recent = append(recent, t)
		}
	}
	for range n {
		recent = append(recent, now)
	}
	if len(recent) >= b.after {
		delete(b.failures, addr)
		until = now.Add(b.duration)
		b.banned[addr] = until
		return until, true
	}
	b.failures[addr] = recent
	b.gcLocked(now)
	return time.Time{}, false
}

// Forgive removes n failures of addr: those of a connection that went on to
// authenticate (a client offering several keys before its certificate is
// not an attacker).
func (b *banList) Forgive(addr netip.Addr, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f := b.failures[addr]
	if n >= len(f) {
		delete(b.failures, addr)
		return
	}
	b.failures[addr] = f[:len(f)-n]
}

// gcLocked drops stale entries now and then so the maps stay bounded by
// the number of sources seen within one window.
func (b *banList) gcLocked(now time.Time) {
	if len(b.failures) < 4096 {
		return
	}
	for a, ts := range b.failures {
		if len(ts) == 0 || now.Sub(ts[len(ts)-1]) >= b.window {
			delete(b.failures, a)
		}
	}
	for a, until := range b.banned {
		if !now.Before(until) {
			delete(b.banned, a)
		}
	}
}
