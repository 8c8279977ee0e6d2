package clusterstate

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

// startCutProxy is a path to etcd member target that the test can cut.
func startCutProxy(t *testing.T, target string) *etcdembed.Proxy {
	t.Helper()
	p, err := etcdembed.StartProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// syncBuffer is a log sink safe for the Sync's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// appliedTo counts s's state.applied records by "kind target".
func appliedTo(t *testing.T, s *audit.Store) map[string]int {
	t.Helper()
	out := map[string]int{}
	err := s.Iterate(t.Context(), audit.Filter{Types: []string{audit.TypeStateApplied}}, func(ev audit.Event) error {
		out[ev.Fields["kind"]+" "+ev.Fields["target"]]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFollowAfterCompaction: gateway B reaches etcd (3 members) through
// a path the test cuts. While B is cut off, A locks, revokes, locks and
// unlocks a second target, unlocks a lock B holds, and unlocks another
// whose tombstone is then gone (as when it expires); then etcd is
// compacted past the revision B's watch stands at. When the path comes
// back B's watch is refused as compacted (the log says so), B reads the
// tables in full, and ends in A's state: each change B did not have is
// applied with exactly one state.applied record, and the lock and unlock
// both compacted away leave nothing locked and nothing recorded.
func TestFollowAfterCompaction(t *testing.T) {
	ctx := t.Context()
	rctx, cancel := context.WithTimeout(ctx, etcdembed.ReadyTimeout)
	defer cancel()
	e, err := etcdembed.Start(rctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	path := startCutProxy(t, e.Endpoints()[0])

	storeA, stA := openState(t, t.TempDir())
	defer storeA.Close()
	a := join(t, e, "gw-a", storeA, stA)
	defer a.leave()

	storeB, stB := openState(t, t.TempDir())
	defer storeB.Close()
	octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
	defer ocancel()
	clB, err := cluster.Open(octx, cluster.Config{GatewayID: "gw-b", Endpoints: []string{path.URL()}, Prefix: "/t/", DialTimeout: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer clB.Close()
	logB := &syncBuffer{}
	syncB := Start(clB, stB, slog.New(slog.NewTextHandler(logB, &slog.HandlerOptions{Level: slog.LevelDebug})), nil)
	defer syncB.Close()
	if err := syncB.WaitReady(octx); err != nil {
		t.Fatal(err)
	}

	// Before the cut: B follows A's locks by its watch.
	for _, target := range []string{"held", "held-gone"} {
		if err := stA.Locks.Lock(ctx, ca.Lock{Target: target, By: "ops"}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "B did not apply A's locks before the cut", func() bool {
		return stB.Locks.IsLocked("held") && stB.Locks.IsLocked("held-gone")
	})
	before := appliedTo(t, storeB)

	path.SetCut(true)
	cutAt := time.Now()
	if err := stA.Locks.Lock(ctx, ca.Lock{Target: "new", By: "ops", Reason: "while B was cut off"}); err != nil {
		t.Fatal(err)
	}
	if err := stA.Revocations.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: "4242"}); err != nil {
		t.Fatal(err)
	}
	if err := stA.Locks.Lock(ctx, ca.Lock{Target: "blip", By: "ops"}); err != nil {
		t.Fatal(err)
	}
	if err := stA.Locks.Unlock(ctx, "blip", "ops"); err != nil {
		t.Fatal(err)
	}
	if err := stA.Locks.Unlock(ctx, "held", "ops"); err != nil {
		t.Fatal(err)
	}
	if err := stA.Locks.Unlock(ctx, "held-gone", "ops"); err != nil {
		t.Fatal(err)
	}
	cli := a.cl.Client()
	// The tombstone of held-gone is gone, as after tombstoneTTL.
	if _, err := cli.Delete(ctx, a.cl.Key("locks", "held-gone")); err != nil {
		t.Fatal(err)
	}
	if stB.Locks.IsLocked("new") || !stB.Locks.IsLocked("held") {
		t.Fatal("B saw changes through a cut path: the test does not cut it off")
	}
	head, err := cli.Get(ctx, a.cl.Key("locks")+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	rev := head.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	// The member behind B's path has compacted too (compaction goes
	// through raft).
	direct, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints()[:1], DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	eventually(t, "member 0 did not compact", func() bool {
		_, err := direct.Get(ctx, a.cl.Key("locks", "new"), clientv3.WithRev(rev-1))
		return errors.Is(err, rpctypes.ErrCompacted)
	})
	path.SetCut(false)
	mended := time.Now()
	eventually(t, "B did not converge after the compaction", func() bool {
		_, revoked := stB.Revocations.CheckSubject(ca.Subject{Serial: 4242})
		return stB.Locks.IsLocked("new") && revoked && !stB.Locks.IsLocked("held") && !stB.Locks.IsLocked("held-gone")
	})
	t.Logf("B cut off for %s; converged %s after the path came back", mended.Sub(cutAt).Round(time.Millisecond), time.Since(mended).Round(time.Millisecond))
	if stB.Locks.IsLocked("blip") {
		t.Error("a lock and its unlock both compacted away left B locked")
	}
	log := logB.String()
	if strings.Count(log, "watch fell behind a compaction") == 0 {
		t.Errorf("B converged without its watch being refused as compacted: the test missed the compaction path\n%s", log)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate record would be written by now
	after := appliedTo(t, storeB)
	for key, want := range map[string]int{
		"lock new": 1, "revoke serial 4242": 1, "unlock held": 1, "unlock held-gone": 1,
		"lock blip": 0, "unlock blip": 0,
	} {
		if got := after[key] - before[key]; got != want {
			t.Errorf("B recorded %q %d times, want %d (all: %v)", key, got, want, after)
		}
	}
	if stB.Locks.IsLocked("held") || len(stB.Locks.List()) != len(stA.Locks.List()) {
		t.Errorf("B's locks %v differ from A's %v", lockTargets(stB), lockTargets(stA))
	}
	// B keeps following by its new watch.
	if err := stA.Locks.Lock(ctx, ca.Lock{Target: "later", By: "ops"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B stopped following after the full read", func() bool { return stB.Locks.IsLocked("later") })
}

func lockTargets(st *ca.State) []string {
	var out []string
	for _, lk := range st.Locks.List() {
		out = append(out, lk.Target)
	}
	return out
}
