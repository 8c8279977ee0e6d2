package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// manualClock is a test clock that moves only when told.
type manualClock struct{ ns atomic.Int64 }

func newManualClock() *manualClock {
	c := &manualClock{}
	c.ns.Store(testEpoch.UnixNano())
	return c
}

func (c *manualClock) Now() time.Time           { return time.Unix(0, c.ns.Load()).UTC() }
func (c *manualClock) Advance(d time.Duration)  { c.ns.Add(int64(d)) }
func (c *manualClock) Set(t time.Time)          { c.ns.Store(t.UnixNano()) }
func (c *manualClock) Since(t time.Time) string { return c.Now().Sub(t).String() }

// appendDays appends perDay events on each of days consecutive days,
// starting at the clock's time, and returns them.
func appendDays(t *testing.T, s *Store, clk *manualClock, days, perDay int) []Event {
	t.Helper()
	var out []Event
	for d := 0; d < days; d++ {
		for i := 0; i < perDay; i++ {
			out = append(out, mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprintf("d%d-%d", d, i)}))
			clk.Advance(time.Second)
		}
		clk.Advance(24*time.Hour - time.Duration(perDay)*time.Second)
	}
	return out
}

func TestPrune(t *testing.T) {
	clk := newManualClock()
	s, path := newStore(t, Options{Now: clk.Now})
	evs := appendDays(t, s, clk, 10, 3)
	ctx := context.Background()

	// Keep the last 4 days: days 0-5 (18 events) go.
	cutoff := testEpoch.Add(6 * 24 * time.Hour)
	res, err := s.Prune(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 18 || res.Transactions != 1 {
		t.Fatalf("Prune = %+v, want 18 deleted in 1 transaction", res)
	}
	want := Checkpoint{Pruned: 18, ID: evs[17].ID, Hash: evs[17].Hash}
	if res.Checkpoint != want {
		t.Errorf("checkpoint %+v, want %+v", res.Checkpoint, want)
	}
	left := all(t, s, Filter{})
	if len(left) != 13 || left[0].ID != evs[18].ID {
		t.Fatalf("after pruning: %d events starting at %s; want 12 kept plus audit.pruned, starting at %s", len(left), left[0].ID, evs[18].ID)
	}
	if p := left[12]; p.Type != TypeAuditPruned || p.Fields["events"] != "18" || p.Fields["through_id"] != want.ID || p.Fields["through_hash"] != want.Hash {
		t.Errorf("last event %+v, want audit.pruned naming the checkpoint", p)
	}
	v, err := s.VerifyChain(ctx)
	if err != nil || v.Checked != 13 || v.From != want {
		t.Fatalf("VerifyChain = %+v, %v; want 13 checked from %+v", v, err, want)
	}
	if h, _ := s.Head(); h.Count != 13 {
		t.Errorf("Head.Count = %d, want the 13 events held", h.Count)
	}
	// Pruning again with the same cutoff deletes nothing and appends nothing.
	if res, err := s.Prune(ctx, cutoff); err != nil || res.Deleted != 0 || res.Checkpoint != want {
		t.Errorf("second Prune = %+v, %v", res, err)
	}
	// A cutoff past everything keeps the newest event: the chain's end.
	res, err = s.Prune(ctx, clk.Now().Add(1000*time.Hour))
	if err != nil || res.Deleted != 12 {
		t.Fatalf("Prune everything = %+v, %v; want 12 deleted", res, err)
	}
	left = all(t, s, Filter{})
	if len(left) != 2 || left[0].Type != TypeAuditPruned || left[1].Type != TypeAuditPruned {
		t.Fatalf("after pruning everything: %+v; want the newest event and the new audit.pruned", left)
	}
	mustAppend(t, s, Event{Type: TypeAuthOK})
	if n, err := s.Verify(ctx); err != nil || n != 3 {
		t.Fatalf("Verify after pruning everything = %d, %v", n, err)
	}
	// The checkpoint survives a reopen, read-only as well.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	v, err = ro.VerifyChain(ctx)
	if err != nil || v.Checked != 3 || v.From.Pruned != 30 {
		t.Errorf("read-only VerifyChain = %+v, %v", v, err)
	}
	if _, err := ro.Prune(ctx, clk.Now()); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Prune on a read-only store = %v", err)
	}
}

// TestVerifyAfterPruneDetectsTampering: the checkpoint anchors the chain,
// so deleting more old events, or editing the checkpoint, is caught.
func TestVerifyAfterPruneDetectsTampering(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(events, meta *bbolt.Bucket, evs []Event) error
		reason string
	}{
		{"delete the oldest held event", func(events, _ *bbolt.Bucket, evs []Event) error {
			return events.Delete(key(evs[5]))
		}, ReasonPrevHashMismatch},
		{"forge the checkpoint hash", func(_, meta *bbolt.Bucket, _ []Event) error {
			return meta.Put([]byte(metaPrunedHash), []byte(fmt.Sprintf("%064x", 1)))
		}, ReasonPrevHashMismatch},
		{"move the checkpoint past held events", func(_, meta *bbolt.Bucket, evs []Event) error {
			return meta.Put([]byte(metaPrunedID), key(evs[7]))
		}, ReasonIDOrder},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newManualClock()
			s, path := newStore(t, Options{Now: clk.Now})
			evs := appendDays(t, s, clk, 10, 1)
			if _, err := s.Prune(context.Background(), testEpoch.Add(5*24*time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			tamper(t, path, func(events, meta *bbolt.Bucket) error { return tc.edit(events, meta, evs) })
			ro, err := Open(path, Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close()
			_, err = ro.Verify(context.Background())
			var ce *ChainError
			if !errors.As(err, &ce) || ce.Reason != tc.reason {
				t.Fatalf("Verify = %v, want a %s", err, tc.reason)
			}
		})
	}
}

// TestPruneStopsAtABrokenLink: retention never deletes the evidence of
// tampering: a log with an edited record is refused to every writer,
// retention included, before anything is pruned.
// tampering; it prunes up to the break and reports it.
func TestPruneStopsAtABrokenLink(t *testing.T) {
	path, evs := chainFixture(t, 10)
	tamper(t, path, func(events, _ *bbolt.Bucket) error {
		rec := events.Get(key(evs[4]))
		edited := []byte(string(rec))
		copy(edited[len(edited)-20:], "0000000000")
		return events.Put(key(evs[4]), edited)
	})
	// A writer (and so retention) never runs on it: the edited record is
	// found when the log is opened, before anything is pruned.
	if s, err := Open(path, Options{}); err == nil {
		s.Close()
		t.Fatal("a log with an edited record opened for writing")
	} else if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), evs[4].ID) {
		t.Fatalf("Open = %v; want ErrDamaged naming event 4", err)
	}
	r, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := all(t, r, Filter{}); len(got) != 10 {
		t.Errorf("%d events left, want all 10", len(got))
	}
}

// TestPruneKeepsScansWhole: an export, tail or verify in progress keeps
// every event of its snapshot, even when retention would prune them all.
func TestPruneKeepsScansWhole(t *testing.T) {
	clk := newManualClock()
	s, _ := newStore(t, Options{Now: clk.Now})
	n := 3*scanPage + 10
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				mustAppend(t, s, Event{Type: TypeAuthOK})
			}
		}()
	}
	wg.Wait()
	want := all(t, s, Filter{})
	paused, resume := make(chan struct{}), make(chan struct{})
	var got []Event
	errc := make(chan error, 1)
	go func() {
		errc <- s.Iterate(context.Background(), Filter{}, func(ev Event) error {
			got = append(got, ev)
			if len(got) == scanPage+5 { // inside the second page
				close(paused)
				<-resume
			}
			return nil
		})
	}()
	<-paused
	clk.Advance(time.Hour)
	res, err := s.Prune(context.Background(), clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Only the first page, which the scan has finished, may go.
	if res.Deleted != scanPage {
		t.Errorf("pruned %d events under a scan that had read %d pages, want %d", res.Deleted, 1, scanPage)
	}
	close(resume)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("the scan saw %d events, want its whole snapshot of %d", len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i].ID {
			t.Fatalf("event %d differs", i)
		}
	}
	if _, err := s.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestPruneInterleavesWithAppends: pruning a large backlog is many small
// transactions, and appends commit between them.
func TestPruneInterleavesWithAppends(t *testing.T) {
	clk := newManualClock()
	s, _ := newStore(t, Options{Now: clk.Now})
	const old = 20 * pruneBatch
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < old; i += 32 {
				mustAppend(t, s, Event{Type: TypeAuthOK})
			}
		}()
	}
	wg.Wait()
	clk.Advance(24 * time.Hour)
	cutoff := clk.Now()
	stop := make(chan struct{})
	var (
		appended atomic.Int64
		worst    atomic.Int64
	)
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err := s.Append(context.Background(), Event{Type: TypeSessionStart}); err != nil {
				return
			}
			if d := int64(time.Since(start)); d > worst.Load() {
				worst.Store(d)
			}
			appended.Add(1)
		}
	}()
	start := time.Now()
	res, err := s.Prune(context.Background(), cutoff)
	took := time.Since(start)
	close(stop)
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != old || res.Transactions < old/pruneBatch {
		t.Fatalf("Prune = %+v, want %d deleted in at least %d transactions", res, old, old/pruneBatch)
	}
	t.Logf("pruned %d events in %d transactions in %s; %d appends committed meanwhile, the slowest took %s",
		res.Deleted, res.Transactions, took, appended.Load(), time.Duration(worst.Load()))
	if _, err := s.Verify(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestRetentionRunsInTheBackground: Options.Retention prunes at Open and
// then periodically, by the store's clock.
func TestRetentionRunsInTheBackground(t *testing.T) {
	clk := newManualClock()
	path := t.TempDir() + "/audit.db"
	s, err := Open(path, Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	evs := appendDays(t, s, clk, 5, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{Now: clk.Now, Retention: 48 * time.Hour, PruneEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		cp, err := s.Checkpoint()
		if err != nil {
			t.Fatal(err)
		}
		// The clock stands at the end of day 4 (plus a day): days 0-2 are
		// older than 48h.
		if cp.Pruned == 6 {
			if cp.ID != evs[5].ID {
				t.Errorf("checkpoint at %s, want %s", cp.ID, evs[5].ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention pruned %d events, want 6", cp.Pruned)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := Open(t.TempDir()+"/x.db", Options{Retention: -time.Hour}); err == nil {
		t.Error("a negative retention was accepted")
	}
}

// TestRetentionBoundsFileSize measures what retention relies on: bbolt
// puts the pages of deleted records on its freelist and later commits
// reuse them, so under steady load the file stops growing once it holds
// a retention period of events. Without retention the same load grows it
// round after round.
func TestRetentionBoundsFileSize(t *testing.T) {
	const (
		rounds    = 40
		perRound  = 2000
		keep      = 5 // rounds of events retention keeps
		roundTime = 24 * time.Hour
		writers   = 256
	)
	// The file grows in 16 MiB steps (bbolt's AllocSize) once its mapping
	// is large, so the finer measure is the high-water mark: the pages up
	// to the highest one in use (Tx.Size).
	type size struct{ file, used int64 }
	run := func(t *testing.T, retention bool) []size {
		clk := newManualClock()
		s, path := newStore(t, Options{Now: clk.Now})
		sizes := make([]size, 0, rounds)
		for r := range rounds {
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < perRound; i += writers {
						mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprintf("user%d@example.com", i), Session: "01HZX3J4K5M6N7P8Q9R0S1T2V3", Fields: map[string]string{
							"reason": "cert_expired", "remote": "203.0.113.7", "key_fp": "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", "round": fmt.Sprint(r),
						}})
					}
				}()
			}
			wg.Wait()
			clk.Advance(roundTime)
			if retention {
				if _, err := s.Prune(context.Background(), clk.Now().Add(-keep*roundTime)); err != nil {
					t.Fatal(err)
				}
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			var used int64
			if err := s.View(func(tx *bbolt.Tx) error { used = tx.Size(); return nil }); err != nil {
				t.Fatal(err)
			}
			sizes = append(sizes, size{fi.Size(), used})
		}
		if _, err := s.Verify(context.Background()); err != nil {
			t.Fatal(err)
		}
		return sizes
	}
	with := run(t, true)
	without := run(t, false)
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	for r := 0; r < rounds; r += 3 {
		t.Logf("round %2d (%6d events appended): with retention file %s, pages used %s; without: file %s, pages used %s",
			r+1, (r+1)*perRound, mib(with[r].file), mib(with[r].used), mib(without[r].file), mib(without[r].used))
	}
	last, half := rounds-1, rounds/2
	t.Logf("final: with retention file %s (pages used %s); without %s (%s)", mib(with[last].file), mib(with[last].used), mib(without[last].file), mib(without[last].used))
	// The second half of the run must not grow the file at all, and may
	// raise the high-water mark only by a little (freelist fragmentation):
	// the pages it needs come from the freelist.
	if with[last].file != with[half].file {
		t.Errorf("with retention the file grew from %s after round %d to %s after round %d", mib(with[half].file), half+1, mib(with[last].file), rounds)
	}
	if with[last].used > with[half].used+with[half].used/10 {
		t.Errorf("with retention the pages in use grew from %s after round %d to %s after round %d", mib(with[half].used), half+1, mib(with[last].used), rounds)
	}
	if without[last].file <= without[half].file || without[last].used < 2*with[last].used {
		t.Errorf("without retention the file did not grow (%s to %s): the load is too small to show anything", mib(without[half].file), mib(without[last].file))
	}
}
