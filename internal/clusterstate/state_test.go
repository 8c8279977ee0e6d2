package clusterstate

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

// member is one gateway's state on a real bbolt file, linked to etcd.
type member struct {
	store *audit.Store
	state *ca.State
	cl    *cluster.Cluster
	sync  *Sync
}

func openState(t *testing.T, dir string) (*audit.Store, *ca.State) {
	t.Helper()
	store, err := audit.Open(filepath.Join(dir, "audit.db"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := ca.LoadState(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	return store, st
}

func join(t *testing.T, e *etcdembed.Cluster, id string, store *audit.Store, st *ca.State) *member {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cl, err := cluster.Open(ctx, cluster.Config{GatewayID: id, Endpoints: e.Endpoints(), Prefix: "/t/", DialTimeout: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &member{store: store, state: st, cl: cl, sync: Start(cl, st, nil, nil)}
	if err := m.sync.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *member) leave() {
	m.sync.Close()
	m.cl.Close()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
	}
}

func count(t *testing.T, s *audit.Store, typ string) int {
	t.Helper()
	n := 0
	if err := s.Iterate(t.Context(), audit.Filter{Types: []string{typ}}, func(audit.Event) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSyncConverges: a lock and a revocation written before a gateway
// joined (the offline CLI, a single gateway turned into a cluster) are
// published when it joins; an unlock made while another gateway was away
// applies when it comes back (full read at start); a revocation made
// elsewhere is applied with one state.applied record and the change
// callback runs; the gateway's own changes coming back from etcd record
// nothing.
func TestSyncConverges(t *testing.T) {
	ctx := t.Context()
	e, err := etcdembed.Start(ctx, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)

	dirA, dirB := t.TempDir(), t.TempDir()
	storeA, stA := openState(t, dirA)
	defer storeA.Close()
	// Offline: no cluster yet.
	if err := stA.Locks.Lock(ctx, ca.Lock{Target: "early", By: "cli"}); err != nil {
		t.Fatal(err)
	}
	if err := stA.Revocations.Revoke(ctx, ca.Revocation{Kind: ca.RevokeKeyID, Value: "old-laptop"}); err != nil {
		t.Fatal(err)
	}
	a := join(t, e, "gw-a", storeA, stA)
	defer a.leave()

	storeB, stB := openState(t, dirB)
	defer storeB.Close()
	changed := make(chan struct{}, 1)
	stB.OnChange(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	b := join(t, e, "gw-b", storeB, stB)
	if !stB.Locks.IsLocked("early") {
		t.Fatal("a lock taken before A joined did not reach B")
	}
	if _, ok := stB.Revocations.CheckSubject(ca.Subject{KeyID: "old-laptop"}); !ok {
		t.Fatal("a revocation made before A joined did not reach B")
	}
	eventually(t, "A's outbox was not emptied", func() bool { p, err := stA.Pending(); return err == nil && len(p) == 0 })

	// B leaves; A unlocks; B comes back and applies the unlock.
	b.leave()
	if err := stA.Locks.Unlock(ctx, "early", "ops"); err != nil {
		t.Fatal(err)
	}
	b = join(t, e, "gw-b", storeB, stB)
	defer b.leave()
	if stB.Locks.IsLocked("early") {
		t.Fatal("an unlock made while B was away did not apply when it came back")
	}

	// A revocation on A reaches B once, with the callback.
	select {
	case <-changed:
	default:
	}
	before := count(t, storeB, audit.TypeStateApplied)
	if err := stA.Revocations.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: "99"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("B's change callback did not run for A's revocation")
	}
	if _, ok := stB.Revocations.CheckSubject(ca.Subject{Serial: 99}); !ok {
		t.Fatal("serial 99 not revoked on B")
	}
	if n := count(t, storeB, audit.TypeStateApplied) - before; n != 1 {
		t.Errorf("B wrote %d state.applied for one revocation", n)
	}
	if n := count(t, storeA, audit.TypeStateApplied); n != 0 {
		t.Errorf("A wrote %d state.applied for its own changes", n)
	}
}
