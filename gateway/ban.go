package gateway

import (
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// maxTrackedSources bounds how many sources the ban list remembers
// failures of, and how many bans it holds, each. Every call is O(1)
// whatever the number of sources; past the bound the least recently
// failing source (or the ban that ends first) is forgotten, so a botnet
// of more sources than this within one ban window is not fully banned,
// but never makes the gateway slow or its memory grow.
const maxTrackedSources = 32768

// sourceKey groups a source address the way the gateway counts it: one
// IPv4 address, or one IPv6 /64 (a single host usually holds a whole
// /64, so counting IPv6 addresses one by one would let it fail 2^64
// times without a ban).
func sourceKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// Ban is one banned source.
type Ban struct {
	// Source is the banned address (/32) or IPv6 network (/64).
	Source netip.Prefix
	// Until is when the ban ends.
	Until time.Time
}

// banList counts authentication failures per source (see sourceKey) and
// bans sources that fail too often. It is in memory: a restart forgives,
// which is acceptable because every failure is also in the audit log.
// Both tables are LRU-bounded (maxTrackedSources) and swept by sweep.
type banList struct {
	after    int
	window   time.Duration
	duration time.Duration
	now      func() time.Time

	mu sync.Mutex
	// failures holds the times (unix nanoseconds) of a source's recent
	// failures, at most after of them; recency is the last failure, so
	// the oldest entry is the stalest.
	failures *simplelru.LRU[netip.Prefix, *[]int64]
	// banned holds when each ban ends; entries are only added (never
	// touched), so the oldest entry is the one that ends first.
	banned *simplelru.LRU[netip.Prefix, time.Time]
}

func newBanList(l Limits, now func() time.Time) *banList {
	return newBanListSized(l, now, maxTrackedSources)
}

func newBanListSized(l Limits, now func() time.Time, size int) *banList {
	failures, _ := simplelru.NewLRU[netip.Prefix, *[]int64](size, nil)
	banned, _ := simplelru.NewLRU[netip.Prefix, time.Time](size, nil)
	return &banList{
		after: l.BanAfterFailures, window: l.BanWindow, duration: l.BanDuration, now: now,
		failures: failures, banned: banned,
	}
}

// Banned reports whether addr's source is banned now, and until when.
func (b *banList) Banned(addr netip.Addr) (time.Time, bool) {
	if b.after == 0 {
		return time.Time{}, false
	}
	key := sourceKey(addr)
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok := b.banned.Peek(key)
	if ok && !b.now().Before(until) {
		b.banned.Remove(key)
		return time.Time{}, false
	}
	return until, ok
}

// Fail records n failures from addr's source and reports whether this
// call banned it (true exactly once per ban, so a ban is audited once).
func (b *banList) Fail(addr netip.Addr, n int) (until time.Time, banned bool) {
	if b.after == 0 || n <= 0 {
		return time.Time{}, false
	}
	key := sourceKey(addr)
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if until, ok := b.banned.Peek(key); ok && now.Before(until) {
		return until, false
	}
	var old []int64
	if p, ok := b.failures.Peek(key); ok {
		old = *p
	}
	cutoff := now.Add(-b.window).UnixNano()
	recent := make([]int64, 0, min(len(old)+n, b.after))
	for _, t := range old {
		if t > cutoff {
			recent = append(recent, t)
		}
	}
	for i := 0; i < n && len(recent) < b.after; i++ {
		recent = append(recent, now.UnixNano())
	}
	if len(recent) >= b.after {
		b.failures.Remove(key)
		until = now.Add(b.duration)
		b.banned.Add(key, until)
		return until, true
	}
	b.failures.Add(key, &recent)
	return time.Time{}, false
}

// set bans addr's source until until (a ban another gateway of the
// cluster made). It reports whether that changed anything: false when the
// source is banned here already until then or later.
func (b *banList) set(addr netip.Addr, until time.Time) bool {
	if b.after == 0 {
		return false
	}
	key := sourceKey(addr)
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.banned.Peek(key); ok && !cur.Before(until) {
		return false
	}
	b.failures.Remove(key)
	b.banned.Add(key, until)
	return true
}

// Unban lifts the ban of addr's source (an address, or any address or
// prefix inside a banned IPv6 /64) and forgets its failures. It reports
// the source and whether it was banned.
func (b *banList) Unban(p netip.Prefix) (netip.Prefix, bool) {
	key := sourceKey(p.Addr())
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures.Remove(key)
	until, ok := b.banned.Peek(key)
	b.banned.Remove(key)
	return key, ok && b.now().Before(until)
}

// List returns the bans in force, soonest to end first.
func (b *banList) List() []Ban {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var out []Ban
	for _, k := range b.banned.Keys() {
		if until, ok := b.banned.Peek(k); ok && now.Before(until) {
			out = append(out, Ban{Source: k, Until: until})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// sweep drops ended bans and failures older than the window. Both tables
// are ordered so that what is stale is at their oldest end, so a sweep
// costs what it removes, not what the tables hold.
func (b *banList) sweep() {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	cutoff := now.Add(-b.window).UnixNano()
	for {
		_, ts, ok := b.failures.GetOldest()
		if !ok || (len(*ts) > 0 && (*ts)[len(*ts)-1] > cutoff) {
			break
		}
		b.failures.RemoveOldest()
	}
	for {
		_, until, ok := b.banned.GetOldest()
		if !ok || now.Before(until) {
			break
		}
		b.banned.RemoveOldest()
	}
}

// size is how many sources the list holds (failing, banned).
func (b *banList) size() (failing, banned int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failures.Len(), b.banned.Len()
}
