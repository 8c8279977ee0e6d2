package gcpace

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercentGivesFixedHeadroomWithinBounds(t *testing.T) {
	o := Options{Headroom: 32 << 20, MinPercent: 25, MaxPercent: 2000}
	cases := []struct {
		scanned uint64
		want    int
	}{
		{0, 2000},            // nothing scanned yet: the ceiling
		{1 << 20, 2000},      // 1 MiB live: 3200 % asked, capped
		{4 << 20, 800},       // 4 MiB: 32 MiB of room is 800 %
		{32 << 20, 100},      // as much live as room: GOGC's default
		{64 << 20, 50},       // 64 MiB: half
		{1 << 30, 25},        // 1 GiB: 3 % asked, the floor holds
		{(32 << 20) * 3, 33}, // rounds down
	}
	for _, c := range cases {
		if got := Percent(c.scanned, o); got != c.want {
			t.Errorf("Percent(%d MiB) = %d, want %d", c.scanned>>20, got, c.want)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	if got := Percent(32<<20, Options{}); got != 100 {
		t.Errorf("default headroom over 32 MiB = %d %%, want 100 (32 MiB of room)", got)
	}
	if got := Percent(1<<40, Options{}); got != 25 {
		t.Errorf("default floor = %d %%, want 25", got)
	}
	if got := Percent(1, Options{}); got != 800 {
		t.Errorf("default ceiling = %d %%, want 800 (Go's 4 MiB minimum heap times 8 = 32 MiB)", got)
	}
	if got := Percent(1, Options{Headroom: 64 << 20}); got != 1600 {
		t.Errorf("ceiling for 64 MiB of headroom = %d %%, want 1600", got)
	}
	if got := Percent(1, Options{MinPercent: 300, MaxPercent: 200}); got != 300 {
		t.Errorf("a ceiling under the floor = %d %%, want the floor (300)", got)
	}
}

func TestFromEnvironment(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	if s, ok := FromEnvironment(); ok {
		t.Fatalf("nothing set, but FromEnvironment = %q", s)
	}
	t.Setenv("GOMEMLIMIT", "1GiB")
	if s, ok := FromEnvironment(); !ok || s != "GOMEMLIMIT=1GiB" {
		t.Fatalf("FromEnvironment = %q, %v; want GOMEMLIMIT=1GiB", s, ok)
	}
	t.Setenv("GOGC", "200")
	if s, ok := FromEnvironment(); !ok || s != "GOGC=200" {
		t.Fatalf("FromEnvironment = %q, %v; want GOGC=200", s, ok)
	}
}

// currentPercent reads the process's GC percentage.
func currentPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestPacerFollowsTheHeapAndRestoresOnStop(t *testing.T) {
	before := debug.SetGCPercent(77)
	defer debug.SetGCPercent(before)

	// 1 MiB of room against a heap that will hold 64 MiB: the floor.
	p := Start(Options{Headroom: 1 << 20, MinPercent: 30, MaxPercent: 5000})
	hold := make([][]byte, 64)
	for i := range hold {
		hold[i] = make([]byte, 1<<20)
		hold[i][0] = 1
	}
	waitAdjusted(t, p, func() bool { return p.Percent() == 30 })
	if got := currentPercent(); got != 30 {
		t.Fatalf("with 64 MiB live, GC percent = %d, want the floor 30", got)
	}
	runtime.KeepAlive(hold)

	// Release it: the pacer opens up again.
	waitAdjusted(t, p, func() bool { return p.Percent() > 30 })
	if got, want := currentPercent(), p.Percent(); got != want {
		t.Fatalf("GC percent = %d, pacer says %d", got, want)
	}

	p.Stop()
	if got := currentPercent(); got != 77 {
		t.Fatalf("after Stop GC percent = %d, want the 77 found at Start", got)
	}
	runs := p.Adjustments()
	runtime.GC()
	runtime.GC()
	if got := currentPercent(); got != 77 {
		t.Fatalf("a stopped pacer changed GC percent to %d", got)
	}
	if p.Adjustments() != runs {
		t.Fatalf("a stopped pacer still adjusted (%d → %d)", runs, p.Adjustments())
	}
}

// waitAdjusted runs collections until the pacer, having run after one,
// satisfies ok.
func waitAdjusted(t *testing.T, p *Pacer, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runs := p.Adjustments()
		runtime.GC()
		for p.Adjustments() == runs && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if ok() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pacer did not adjust as expected within 10 s (percent %d after %d adjustments)", p.Percent(), p.Adjustments())
		}
	}
}
