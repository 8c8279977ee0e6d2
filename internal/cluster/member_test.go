package cluster

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// memberLease is the lease <prefix>members/<id> is bound to (0: absent).
func memberLease(t *testing.T, c *Cluster, id string) clientv3.LeaseID {
	t.Helper()
	resp, err := c.Client().Get(context.Background(), c.Key("members", id))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

// TestDuplicateGatewayIDRefused: a second gateway given the id of a live
// one is refused at Join, with an error naming the id, the holder's
// address and start time, and the fix; when it leaves, the first is
// still a member with its own record and sessions.
func TestDuplicateGatewayIDRefused(t *testing.T) {
	e := startEtcd(t, 1)
	first := open(t, e, "gw-a", BestEffort)
	waitFor(t, 5*time.Second, "no lease", func() bool { return first.Lease() != 0 })
	started := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	ctx := context.Background()
	if err := first.Join(ctx, Member{SSHAddr: "10.0.0.1:2222", Started: started}); err != nil {
		t.Fatal(err)
	}
	first.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "s1 never registered", func() bool { _, f, _ := first.LookupSession(ctx, "s1"); return f })

	second, err := Open(ctx, Config{GatewayID: "gw-a", Endpoints: e.Endpoints()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "no lease", func() bool { return second.Lease() != 0 })
	t0 := time.Now()
	err = second.Join(ctx, Member{SSHAddr: "10.0.0.2:2222", Started: time.Now()})
	took := time.Since(t0)
	if !errors.Is(err, ErrIDInUse) {
		t.Fatalf("second Join with a live gateway's id = %v, want ErrIDInUse", err)
	}
	msg := err.Error()
	for _, want := range []string{`"gw-a"`, "10.0.0.1:2222", "2026-11-30T09:00:00Z", "cluster.gateway_id", "BASTION_GATEWAY_ID", "expires within 10s"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not say %q", msg, want)
		}
	}
	// A live holder renews its lease every LeaseTTL/3: seen in about that.
	if took > LeaseTTL/3+2*time.Second {
		t.Errorf("the refusal took %s; a live holder is seen renewing within about %s", took, LeaseTTL/3)
	}
	t.Logf("duplicate id refused after %s", took.Round(10*time.Millisecond))
	if got := memberLease(t, first, "gw-a"); got != first.Lease() {
		t.Fatalf("after the refused Join the record's lease is %x, want the first gateway's %x", int64(got), int64(first.Lease()))
	}
	// The refused gateway leaves (its lease revoked): the first stays.
	second.SessionEnded("s1") // not its session: nothing to delete
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	ms, err := first.Members(ctx)
	if err != nil || len(ms) != 1 || ms[0].ID != "gw-a" || ms[0].SSHAddr != "10.0.0.1:2222" {
		t.Fatalf("after the second gateway left, members = %+v, %v; want the first, gw-a at 10.0.0.1:2222", ms, err)
	}
	if _, f, err := first.LookupSession(ctx, "s1"); err != nil || !f {
		t.Fatalf("the first gateway's session s1 is gone from the registry after the second left: %v, %v", f, err)
	}
}

// TestRuntimeIDConflictLeavesOtherAlone: a gateway that comes back under
// a new lease to find its id held by another live gateway does not
// overwrite nor delete that one's record; it reports the conflict, and
// takes its record back once the other leaves.
func TestRuntimeIDConflictLeavesOtherAlone(t *testing.T) {
	e := startEtcd(t, 1)
	a := open(t, e, "gw-x", BestEffort)
	b := open(t, e, "gw-x", BestEffort)
	obs := open(t, e, "observer", BestEffort)
	ctx := context.Background()
	join(t, a)
	var mu sync.Mutex
	var told []error
	a.OnIDConflict(func(err error) { mu.Lock(); told = append(told, err); mu.Unlock() })
	// a is cut off past its TTL (its lease revoked), and b, given the
	// same id, joins meanwhile.
	if _, err := obs.Client().Revoke(ctx, a.Lease()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "b has no lease", func() bool { return b.Lease() != 0 })
	if err := b.Join(ctx, Member{SSHAddr: "10.0.0.2:2222", Started: time.Now()}); err != nil {
		t.Fatalf("b's Join once a's record expired: %v", err)
	}
	waitFor(t, 10*time.Second, "a never noticed the conflict", func() bool { return errors.Is(a.IDConflict(), ErrIDInUse) })
	if !strings.Contains(a.IDConflict().Error(), "10.0.0.2:2222") {
		t.Errorf("a's conflict %q does not name the holder's address", a.IDConflict())
	}
	time.Sleep(2 * countEvery) // a keeps trying meanwhile
	mu.Lock()
	if len(told) != 1 || !errors.Is(told[0], ErrIDInUse) {
		t.Errorf("OnIDConflict callbacks got %v, want the conflict once", told)
	}
	mu.Unlock()
	if got := memberLease(t, obs, "gw-x"); got != b.Lease() {
		t.Fatalf("the record's lease is %x, want b's %x: a overwrote b's record", int64(got), int64(b.Lease()))
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a never took its record back after b left", func() bool {
		return a.IDConflict() == nil && memberLease(t, obs, "gw-x") == a.Lease() && a.Lease() != 0
	})
}

// TestRejoinAfterOwnLeaseLoss: a gateway whose client gives up its lease
// while etcd still holds it (and the member record bound to it) writes
// its record again under the new lease instead of being blocked by its
// own stale one; its live session is not taken for lost by any peer, and
// it records no resumption.
func TestRejoinAfterOwnLeaseLoss(t *testing.T) {
	e := startEtcd(t, 1)
	a, b := open(t, e, "gw-a", BestEffort), open(t, e, "gw-b", BestEffort)
	join(t, a)
	join(t, b)
	var lost lostLog
	lost.watch(b)
	var resumed resumedLog
	resumed.watch(a)
	ctx := context.Background()
	a.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "s1 never registered", func() bool { _, f, _ := b.LookupSession(ctx, "s1"); return f })
	old := a.Lease()
	a.mu.Lock()
	drop := a.dropKeepAlive
	a.mu.Unlock()
	drop()
	waitFor(t, 10*time.Second, "a's record was not written under a new lease", func() bool {
		l := memberLease(t, b, "gw-a")
		return l != 0 && l != old && l == a.Lease()
	})
	waitFor(t, 10*time.Second, "s1 was not written under the new lease", func() bool {
		resp, err := b.Client().Get(ctx, b.Key("sessions", "s1"))
		return err == nil && len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) == a.Lease()
	})
	if ttl, err := b.Client().TimeToLive(ctx, old); err != nil || ttl.TTL != -1 {
		t.Errorf("the old lease is still held (TTL %v, %v): it should be revoked", ttl, err)
	}
	if err := a.IDConflict(); err != nil {
		t.Errorf("a reports a conflict with itself: %v", err)
	}
	time.Sleep(time.Second)
	if got := lost.list(); len(got) != 0 {
		t.Errorf("a live session of a gateway that renewed its lease was taken for lost: %v", got)
	}
	if got := resumed.list(); len(got) != 0 {
		t.Errorf("resumptions recorded though no peer ended anything: %v", got)
	}
}

// resumedLog collects what OnSessionsResumed callbacks were given.
type resumedLog struct {
	mu  sync.Mutex
	got []ResumedSession
}

func (l *resumedLog) watch(c *Cluster) {
	c.OnSessionsResumed(func(_ context.Context, ss []ResumedSession) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.got = append(l.got, ss...)
	})
}

func (l *resumedLog) list() []ResumedSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ResumedSession{}, l.got...)
}

// TestLostThenResumed: a gateway cut off past its lease's TTL (the lease
// expires under it) has its live session ended as gateway_lost by
// exactly one peer; back in touch, it learns so (which peer, how long it
// was cut off), registers the session again, and a second loss of the
// same session is handed out again.
func TestLostThenResumed(t *testing.T) {
	e := startEtcd(t, 1)
	a := open(t, e, "gw-a", BestEffort)
	b, c := open(t, e, "gw-b", BestEffort), open(t, e, "gw-c", BestEffort)
	var lost lostLog
	for _, m := range []*Cluster{a, b, c} {
		join(t, m)
		lost.watch(m)
	}
	var resumed resumedLog
	resumed.watch(a)
	ctx := context.Background()
	a.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: time.Now(), Kind: "record"})
	a.SessionStarted(Session{ID: "s2", User: "bob", Target: "web2:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "sessions never registered", func() bool {
		ss, err := b.Sessions(ctx)
		return err == nil && sessionIDs(ss) == "gw-a/s1,gw-a/s2"
	})
	// The holder and its peers race for each session's claim: the peers
	// learn of the expiry from their watch at once, the holder at its next
	// keepalive, so the peers nearly always win. A round the holder wins
	// must record nothing on either side; two rounds of loss are required.
	losses := 0
	for round := 1; round <= 5 && losses < 2; round++ {
		prevLost, prevRes, oldLease := len(lost.list()), len(resumed.list()), a.Lease()
		// The lease expires as it would while a is frozen or cut off: a's
		// client learns at its next keepalive.
		if _, err := b.Client().Revoke(ctx, oldLease); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, "a never settled its sessions under a new lease", func() bool {
			if l := a.Lease(); l == 0 || l == oldLease {
				return false
			}
			ss, err := b.Sessions(ctx)
			return err == nil && sessionIDs(ss) == "gw-a/s1,gw-a/s2" &&
				len(lost.list())-prevLost == len(resumed.list())-prevRes
		})
		time.Sleep(time.Second) // a duplicate or a late hand-out would arrive by now
		got, res := lost.list()[prevLost:], resumed.list()[prevRes:]
		if len(got) == 0 && len(res) == 0 {
			t.Logf("round %d: the holder claimed its sessions first; nothing recorded on either side", round)
			continue
		}
		if len(got) != 2 || len(res) != 2 {
			t.Fatalf("round %d: handed out %v, resumed %d; want each session once per loss", round, got, len(res))
		}
		losses++
		for _, r := range res {
			if r.Gateway != "gw-a" || (r.LostBy != "gw-b" && r.LostBy != "gw-c") || r.CutOff <= 0 || r.CutOff > LeaseTTL || r.User == "" {
				t.Errorf("round %d: resumed %+v", round, r)
			}
			var by string
			for _, g := range got {
				if strings.HasSuffix(g, ":gw-a/"+r.ID) {
					by = strings.TrimSuffix(g, ":gw-a/"+r.ID)
				}
			}
			if by != r.LostBy {
				t.Errorf("round %d: %s resumed as lost by %q, but %q ended it", round, r.ID, r.LostBy, by)
			}
		}
	}
	if losses < 2 {
		t.Fatalf("the sessions were handed to a peer in %d of the rounds; want 2", losses)
	}
}

// TestJoinWaitsOutCrashedPredecessor: a gateway restarted at once after
// kill -9 finds its own previous record, bound to a lease nobody renews:
// Join waits for it to expire (within LeaseTTL) and joins, rather than
// refusing the id.
func TestJoinWaitsOutCrashedPredecessor(t *testing.T) {
	e := startEtcd(t, 1)
	obs := open(t, e, "observer", BestEffort)
	before := open(t, e, "gw-a", BestEffort)
	join(t, before)
	old := before.Lease()
	// kill -9: nothing revoked, the record stays until the lease expires.
	before.cancel()
	before.done.Wait()
	before.client.Close()
	after := open(t, e, "gw-a", BestEffort)
	waitFor(t, 5*time.Second, "no lease", func() bool { return after.Lease() != 0 })
	t0 := time.Now()
	if err := after.Join(context.Background(), Member{SSHAddr: "127.0.0.1:22", Started: time.Now()}); err != nil {
		t.Fatalf("Join after the predecessor crashed: %v", err)
	}
	took := time.Since(t0)
	if got := memberLease(t, obs, "gw-a"); got != after.Lease() || got == old {
		t.Fatalf("the record's lease is %x, want the restarted gateway's %x", int64(got), int64(after.Lease()))
	}
	if took > LeaseTTL+2*time.Second {
		t.Errorf("Join took %s, more than the lease TTL %s", took, LeaseTTL)
	}
	t.Logf("joined %s after the predecessor's crash left its record", took.Round(10*time.Millisecond))
}

// TestSessionEntryNeverClobbered: a registry entry belongs to the lease
// that created it: another gateway registering (or ending) a session
// under the same id neither overwrites nor deletes it.
func TestSessionEntryNeverClobbered(t *testing.T) {
	e := startEtcd(t, 1)
	a, b := open(t, e, "gw-a", BestEffort), open(t, e, "gw-b", BestEffort)
	join(t, a)
	join(t, b)
	ctx := context.Background()
	a.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "s1 never registered", func() bool { _, f, _ := b.LookupSession(ctx, "s1"); return f })
	b.SessionStarted(Session{ID: "s1", User: "mallory", Target: "web9:22", Start: time.Now(), Kind: "tunnel"})
	b.SessionStarted(Session{ID: "s2", User: "bob", Target: "web2:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "b's own s2 never registered", func() bool { _, f, _ := a.LookupSession(ctx, "s2"); return f })
	time.Sleep(2 * retryEvery) // b's writes of s1 are done (or retried) by now
	if s, f, err := a.LookupSession(ctx, "s1"); err != nil || !f || s.Gateway != "gw-a" || s.User != "alice" {
		t.Fatalf("s1 after gw-b registered the same id = %+v, %v, %v; want gw-a's entry untouched", s, f, err)
	}
	b.SessionEnded("s1")
	time.Sleep(2 * retryEvery)
	if s, f, err := a.LookupSession(ctx, "s1"); err != nil || !f || s.Gateway != "gw-a" {
		t.Fatalf("s1 after gw-b ended the same id = %+v, %v, %v; want gw-a's entry still there", s, f, err)
	}
	a.SessionEnded("s1")
	waitFor(t, 5*time.Second, "a could not end its own s1", func() bool { _, f, err := b.LookupSession(ctx, "s1"); return err == nil && !f })
}

// TestResumedNeverAfterEnd: a session of a gateway cut off past its
// lease's TTL, and ended as gateway_lost by a peer, is recorded as
// resumed only while it lives: one that ends between the lease loss and
// the settle is not resumed at all, and one that ends while its
// session.resumed is being recorded has its end recorded after it.
func TestResumedNeverAfterEnd(t *testing.T) {
	e := startEtcd(t, 1)
	a := open(t, e, "gw-a", BestEffort)
	peer := open(t, e, "gw-b", BestEffort)
	join(t, a)
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	// end is how the gateway ends a session: its session.end recorded,
	// then the registry told, under SessionEnding.
	end := func(id string) {
		done := a.SessionEnding()
		note("end " + id)
		a.SessionEnded(id)
		done()
	}
	var ended sync.WaitGroup
	a.OnSessionsResumed(func(_ context.Context, ss []ResumedSession) {
		for _, s := range ss {
			if s.ID == "s2" {
				// s2 ends while its session.resumed is being written.
				ended.Add(1)
				go func() { defer ended.Done(); end("s2") }()
				time.Sleep(300 * time.Millisecond)
			}
			note("resumed " + s.ID)
		}
	})
	ctx := context.Background()
	a.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	a.SessionStarted(Session{ID: "s2", User: "bob", Target: "web2:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "sessions never registered", func() bool {
		ss, err := peer.Sessions(ctx)
		return err == nil && sessionIDs(ss) == "gw-a/s1,gw-a/s2"
	})
	old := a.Lease()
	// A peer wins both sessions' claims (it ended them as gateway_lost),
	// and the lease expires under a.
	for _, id := range []string{"s1", "s2"} {
		if first, err := peer.Claim(ctx, ReasonGatewayLost, lostClaimID("gw-a", id, old), lostClaimTTL); err != nil || !first {
			t.Fatalf("peer's claim on %s: %v, %v", id, first, err)
		}
	}
	if _, err := peer.Client().Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	// s1 ends before a is back under a new lease.
	end("s1")
	if l := a.Lease(); l != old && l != 0 {
		t.Logf("a had a new lease before s1 ended; the test is weaker this round")
	}
	waitFor(t, 15*time.Second, "s2 was never recorded as resumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(order, "resumed s2")
	})
	ended.Wait()
	mu.Lock()
	defer mu.Unlock()
	if slices.Contains(order, "resumed s1") {
		t.Errorf("s1, ended before the settle, was recorded as resumed: %v", order)
	}
	if i, j := slices.Index(order, "resumed s2"), slices.Index(order, "end s2"); j < 0 || j < i {
		t.Errorf("s2's end and its session.resumed are out of order: %v", order)
	}
}
