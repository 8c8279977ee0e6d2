package clusterstate

import (
	"context"
	"path/filepath"
	"strings"
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

// appliedRecords returns s's state.applied records.
func appliedRecords(t *testing.T, s *audit.Store) []audit.Event {
	t.Helper()
	var out []audit.Event
	if err := s.Iterate(t.Context(), audit.Filter{Types: []string{audit.TypeStateApplied}}, func(ev audit.Event) error {
		out = append(out, ev)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAppliedSaysWhoAndWhere: every kind of change another gateway takes
// (lock, unlock, revoke) is written to etcd with who took it and where,
// and the gateways that apply it record both (by, from_gateway) in
// state.applied: an unlock is as attributable as a lock.
func TestAppliedSaysWhoAndWhere(t *testing.T) {
	ctx := t.Context()
	e, err := etcdembed.Start(ctx, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	storeA, stA := openState(t, t.TempDir())
	defer storeA.Close()
	storeB, stB := openState(t, t.TempDir())
	defer storeB.Close()
	a := join(t, e, "gw-a", storeA, stA)
	defer a.leave()
	b := join(t, e, "gw-b", storeB, stB)
	defer b.leave()

	if err := stA.Locks.Lock(ctx, ca.Lock{Target: "mallory", By: "carol", Reason: "laptop stolen"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lock did not reach B", func() bool { return stB.Locks.IsLocked("mallory") })
	if err := stA.Locks.Unlock(ctx, "mallory", "carol"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the unlock did not reach B", func() bool { return !stB.Locks.IsLocked("mallory") })
	// What is in etcd says who unlocked, and where.
	resp, err := a.cl.Client().Get(ctx, a.cl.Key("locks", "mallory"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the unlock's record in etcd: %v, %v", resp, err)
	}
	if v := string(resp.Kvs[0].Value); !strings.Contains(v, `"by":"carol"`) || !strings.Contains(v, `"gateway":"gw-a"`) {
		t.Errorf("the unlock's record in etcd does not say who and where: %s", v)
	}
	if err := stA.Revocations.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: "4242", By: "dave"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the revocation did not reach B", func() bool {
		_, ok := stB.Revocations.CheckSubject(ca.Subject{Serial: 4242})
		return ok
	})
	want := map[string]string{"lock": "carol", "unlock": "carol", "revoke": "dave"}
	got := map[string]bool{}
	for _, ev := range appliedRecords(t, storeB) {
		kind := ev.Fields["kind"]
		if ev.Fields["by"] != want[kind] || ev.Fields["from_gateway"] != "gw-a" || ev.Actor != want[kind] || ev.Fields["outcome"] != "applied" {
			t.Errorf("B's state.applied for %s: actor %q, fields %v; want by and actor %q, from_gateway gw-a, outcome applied", kind, ev.Actor, ev.Fields, want[kind])
		}
		got[kind] = true
	}
	if len(got) != len(want) {
		t.Errorf("B recorded state.applied for %v, want %v", got, want)
	}
}

// TestPendingLockOverriddenIsRecorded: a lock taken on B while B could
// not reach etcd (it sits in B's outbox) and overridden meanwhile by a
// later unlock of the same target on A never takes effect cluster-wide:
// B drops it, records state.applied with outcome "discarded" naming who
// took it and what overrode it, and ends unlocked like A.
func TestPendingLockOverriddenIsRecorded(t *testing.T) {
	ctx := t.Context()
	e, err := etcdembed.Start(ctx, t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	storeA, stA := openState(t, t.TempDir())
	defer storeA.Close()
	storeB, stB := openState(t, t.TempDir())
	defer storeB.Close()
	a := join(t, e, "gw-a", storeA, stA)
	defer a.leave()

	// B, cut off (not linked yet), locks; the lock waits in its outbox.
	if err := stB.Locks.Lock(ctx, ca.Lock{Target: "mallory", By: "bob", Reason: "suspicious"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	// A, later, locks and unlocks the same target.
	if err := stA.Locks.Lock(ctx, ca.Lock{Target: "mallory", By: "carol"}); err != nil {
		t.Fatal(err)
	}
	if err := stA.Locks.Unlock(ctx, "mallory", "carol"); err != nil {
		t.Fatal(err)
	}
	b := join(t, e, "gw-b", storeB, stB)
	defer b.leave()
	eventually(t, "B's outbox was not emptied", func() bool { p, err := stB.Pending(); return err == nil && len(p) == 0 })
	eventually(t, "B still holds the overridden lock", func() bool { return !stB.Locks.IsLocked("mallory") })
	if stA.Locks.IsLocked("mallory") {
		t.Fatal("B's older lock overrode A's later unlock")
	}
	var discarded []audit.Event
	for _, ev := range appliedRecords(t, storeB) {
		if ev.Fields["outcome"] == "discarded" {
			discarded = append(discarded, ev)
		}
	}
	if len(discarded) != 1 {
		t.Fatalf("B recorded %d discarded changes, want 1: %v", len(discarded), appliedRecords(t, storeB))
	}
	f := discarded[0].Fields
	for k, v := range map[string]string{"kind": "lock", "target": "mallory", "by": "bob", "from_gateway": "gw-b",
		"overridden_kind": "unlock", "overridden_by": "carol", "overridden_from_gateway": "gw-a"} {
		if f[k] != v {
			t.Errorf("discarded record field %s = %q, want %q (%v)", k, f[k], v, f)
		}
	}
}
