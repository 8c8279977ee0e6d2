package gateway

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// fakeClock is a settable clock for unit tests.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }
func v4(i int) netip.Addr                { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
func banLimits(after int) Limits {
	l := DefaultLimits()
	l.BanAfterFailures = after
	return l
}

// TestBanListManySources: 40,000 distinct sources failing once each
// (a botnet, or one attacker with many addresses) go through Fail and
// Banned in well under a second, and the list's memory stays bounded.
// Before, past 4096 sources every Fail scanned the whole map under the
// mutex every new connection takes: 22 s for 40,000 sources.
func TestBanListManySources(t *testing.T) {
	clk := newFakeClock()
	b := newBanList(banLimits(10), clk.now)
	const sources = 40000
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	for i := range sources {
		b.Banned(v4(i))
		b.Fail(v4(i), 1)
		clk.add(time.Millisecond) // all within one 10m ban window
	}
	took := time.Since(start)
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%d sources through Banned+Fail: %s, heap %+d KiB", sources, took, (int64(after.HeapAlloc)-int64(before.HeapAlloc))/1024)
	// Not a speed target (those live in benchmarks): a guard against the
	// old scan of every source under the mutex, which took 22 s here.
	if took > 10*time.Second {
		t.Errorf("%d sources took %s: per-call work is no longer constant", sources, took)
	}
	// Twice as many sources hold no more memory than the bound.
	for i := sources; i < 4*maxTrackedSources; i++ {
		b.Fail(v4(i), 1)
	}
	if f, _ := b.size(); f > maxTrackedSources {
		t.Errorf("the ban list tracks %d sources, bound %d", f, maxTrackedSources)
	}
}

// TestBanListIPv6Per64: failures spread over one IPv6 /64 ban the /64;
// another /64 is unaffected, and an IPv4 address counts alone.
func TestBanListIPv6Per64(t *testing.T) {
	clk := newFakeClock()
	b := newBanList(banLimits(10), clk.now)
	base := netip.MustParseAddr("2001:db8:1:2::")
	var bannedAt int
	for i := range 1000 {
		a := base.As16()
		a[15], a[14], a[9] = byte(i), byte(i>>8), byte(i*7)
		if _, banned := b.Fail(netip.AddrFrom16(a), 1); banned {
			bannedAt = i + 1
			break
		}
	}
	if bannedAt != 10 {
		t.Fatalf("1000 failures from one /64 banned it after %d (want 10)", bannedAt)
	}
	if _, banned := b.Banned(netip.MustParseAddr("2001:db8:1:2:ffff:1:2:3")); !banned {
		t.Error("another address of the banned /64 gets in")
	}
	if _, banned := b.Banned(netip.MustParseAddr("2001:db8:1:3::1")); banned {
		t.Error("a neighbouring /64 is banned too")
	}
	for i := range 9 {
		b.Fail(netip.MustParseAddr("192.0.2.1"), 1)
		_ = i
	}
	if _, banned := b.Banned(netip.MustParseAddr("192.0.2.2")); banned {
		t.Error("an IPv4 neighbour is banned")
	}
	if _, banned := b.Banned(netip.MustParseAddr("::ffff:192.0.2.1")); banned {
		t.Error("9 failures banned an IPv4 source (want 10)")
	}
}

// TestBanListWindowAndSweep: failures older than the window do not count,
// a ban ends after its duration, and sweep empties both tables of what
// has expired.
func TestBanListWindowAndSweep(t *testing.T) {
	clk := newFakeClock()
	l := banLimits(3)
	b := newBanList(l, clk.now)
	a := netip.MustParseAddr("192.0.2.9")
	b.Fail(a, 2)
	clk.add(l.BanWindow)
	if _, banned := b.Fail(a, 1); banned {
		t.Fatal("failures outside the window counted")
	}
	if _, banned := b.Fail(a, 1); banned {
		t.Fatal("2 failures in the window banned")
	}
	if _, banned := b.Fail(a, 1); !banned {
		t.Fatal("3 failures in the window did not ban")
	}
	if _, banned := b.Banned(a); !banned {
		t.Fatal("not banned")
	}
	for i := range 100 {
		b.Fail(v4(i), 1)
	}
	clk.add(l.BanDuration)
	b.sweep()
	if f, bn := b.size(); f != 0 || bn != 0 {
		t.Errorf("after the window and the ban ended, sweep left %d failing and %d banned", f, bn)
	}
	if _, banned := b.Banned(a); banned {
		t.Error("the ban outlived its duration")
	}
}

// FuzzBoundString: whatever a client sends, the bounded string is at most
// maxRecordedString plus its note, valid UTF-8 when the input was, and a
// prefix of the input.
func FuzzBoundString(f *testing.F) {
	f.Add("plain")
	f.Add(strings.Repeat("é", 400))
	f.Add(strings.Repeat("x", 100_000))
	f.Add("\xff\xfe" + strings.Repeat("日本", 300))
	f.Fuzz(func(t *testing.T, s string) {
		b := boundString(s, maxRecordedString)
		if len(s) <= maxRecordedString {
			if b != s {
				t.Fatalf("a short string changed: %q -> %q", s, b)
			}
			return
		}
		if len(b) > maxRecordedString+32 {
			t.Fatalf("bounded to %d bytes", len(b))
		}
		cut, _, _ := strings.Cut(b, "...[")
		if !strings.HasPrefix(s, cut) {
			t.Fatalf("not a prefix")
		}
		if utf8.ValidString(s) && !utf8.ValidString(b) {
			t.Fatalf("cut inside a character: %q", b)
		}
	})
}

// FuzzParseSource: unban's argument parser accepts addresses and prefixes
// and nothing else, without panicking.
func FuzzParseSource(f *testing.F) {
	for _, s := range []string{"192.0.2.7", "2001:db8::1", "2001:db8::/64", "::ffff:10.0.0.1", "10.0.0.0/8", "", "not-an-address", "1.2.3.4/33"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseSource(s)
		if err != nil {
			return
		}
		if !p.IsValid() {
			t.Fatalf("%q parsed to an invalid prefix", s)
		}
		_ = sourceKey(p.Addr())
	})
}

// TestRateLimiterMemoryFollowsUse: the login limiter's memory follows the
// logins a source made, not the configured rate (a high rate once
// allocated that many timestamps on every login).
func TestRateLimiterMemoryFollowsUse(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	r := newRateLimiter(1<<30, func() time.Time { return now })
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	src := netip.MustParseAddr("192.0.2.7")
	for i := range 100 {
		now = now.Add(time.Millisecond)
		if !r.allow(src) {
			t.Fatalf("login %d refused under a rate of 2^30 per minute", i)
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("100 logins allocated %d bytes", grew)
	}
	r2 := newRateLimiter(3, func() time.Time { return now })
	for i := range 3 {
		if !r2.allow(src) {
			t.Fatalf("login %d of 3 refused", i)
		}
	}
	if r2.allow(src) {
		t.Fatal("a 4th login within the minute was allowed at 3 per minute")
	}
}
