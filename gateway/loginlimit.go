package gateway

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// rateLimiter allows n logins per source (see sourceKey) per minute. Its
// table is LRU-bounded (maxTrackedSources) and swept by the gateway's
// janitor, so every call is O(1) however many sources try.
type rateLimiter struct {
	n   int
	now func() time.Time

	mu sync.Mutex
	// seen holds each source's logins (unix nanoseconds) within the last
	// minute, at most n; recency is the last login, so the oldest entry
	// is the stalest.
	seen *simplelru.LRU[netip.Prefix, *[]int64]
}

func newRateLimiter(n int, now func() time.Time) *rateLimiter {
	if n <= 0 {
		n = 10
	}
	seen, _ := simplelru.NewLRU[netip.Prefix, *[]int64](maxTrackedSources, nil)
	return &rateLimiter{n: n, now: now, seen: seen}
}

func (r *rateLimiter) allow(a netip.Addr) bool {
	key := sourceKey(a)
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	cutoff := now.Add(-time.Minute).UnixNano()
	var old []int64
	if p, ok := r.seen.Peek(key); ok {
		old = *p
	}
	// Sized by what the source used, not by n: n may be large (a
	// benchmark's, or a generous logins_per_minute) and most sources log
	// in once.
	recent := make([]int64, 0, min(len(old)+1, r.n))
	for _, t := range old {
		if t > cutoff {
			recent = append(recent, t)
		}
	}
	if len(recent) >= r.n {
		*r.seenPtr(key) = recent
		return false
	}
	recent = append(recent, now.UnixNano())
	r.seen.Add(key, &recent)
	return true
}

// seenPtr returns key's entry without changing its recency.
func (r *rateLimiter) seenPtr(key netip.Prefix) *[]int64 {
	p, _ := r.seen.Peek(key)
	return p
}

// sweep drops sources with no login in the last minute.
func (r *rateLimiter) sweep() {
	r.mu.Lock()
	defer r.mu.Unlock()
	cutoff := r.now().Add(-time.Minute).UnixNano()
	for {
		_, ts, ok := r.seen.GetOldest()
		if !ok || (len(*ts) > 0 && (*ts)[len(*ts)-1] > cutoff) {
			break
		}
		r.seen.RemoveOldest()
	}
}

// size is how many sources the limiter holds.
func (r *rateLimiter) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen.Len()
}
