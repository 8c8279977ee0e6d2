package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// crash stops c as kill -9 would: no lease revoke, no last flush of
// anything new; then, instead of waiting LeaseTTL, it revokes the lease
// through other (etcd deletes a lease's keys in one revision either way).
func crash(t *testing.T, c, other *Cluster) {
	t.Helper()
	lease := c.Lease()
	if lease == 0 {
		t.Fatal("crash: no lease")
	}
	c.cancel()
	c.done.Wait()
	c.client.Close()
	if _, err := other.Client().Revoke(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
}

func join(t *testing.T, c *Cluster) {
	t.Helper()
	waitFor(t, 5*time.Second, c.GatewayID()+" has no lease", func() bool { return c.Lease() != 0 })
	if err := c.Join(context.Background(), Member{SSHAddr: "127.0.0.1:22", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func sessionIDs(ss []Session) string {
	var ids []string
	for _, s := range ss {
		ids = append(ids, s.Gateway+"/"+s.ID)
	}
	sort.Strings(ids)
	return strings.Join(ids, ",")
}

// TestSessionRegistry: a session registered on one gateway is listed and
// found by id on another with its holder, leaves when it ends, and the
// membership record counts it.
func TestSessionRegistry(t *testing.T) {
	e := startEtcd(t, 1)
	a, b := open(t, e, "gw-a", BestEffort), open(t, e, "gw-b", BestEffort)
	join(t, a)
	join(t, b)
	ctx := context.Background()
	start := time.Now()
	a.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: start, Kind: "record"})
	a.SessionStarted(Session{ID: "s2", User: "bob", Target: strings.Repeat("x", 1000), Start: start, Kind: "tunnel"})
	a.SessionStarted(Session{ID: "bad/id", User: "eve"})
	waitFor(t, 5*time.Second, "gw-b never saw gw-a's two sessions", func() bool {
		ss, err := b.Sessions(ctx)
		return err == nil && sessionIDs(ss) == "gw-a/s1,gw-a/s2"
	})
	s, found, err := b.LookupSession(ctx, "s1")
	if err != nil || !found || s.Gateway != "gw-a" || s.User != "alice" || s.Target != "web1:22" || s.Kind != "record" || !s.Start.Equal(start.UTC()) {
		t.Fatalf("LookupSession(s1) = %+v, %v, %v", s, found, err)
	}
	if s, _, _ := b.LookupSession(ctx, "s2"); len(s.Target) > maxSessionField || len(s.Target) < maxSessionField-16 || !strings.Contains(s.Target, "bytes cut") {
		t.Errorf("a 1000-byte target was stored as %d bytes (%q), want it cut to the bound %d", len(s.Target), s.Target, maxSessionField)
	}
	waitFor(t, 5*time.Second, "the member record never counted 2 live sessions", func() bool {
		ms, err := b.Members(ctx)
		return err == nil && len(ms) == 2 && ms[0].ID == "gw-a" && ms[0].LiveSessions == 2
	})
	a.SessionEnded("s1")
	waitFor(t, 5*time.Second, "s1 stayed in the registry after it ended", func() bool {
		_, found, err := b.LookupSession(ctx, "s1")
		return err == nil && !found
	})
	waitFor(t, 5*time.Second, "the member record never counted 1 live session", func() bool {
		ms, err := b.Members(ctx)
		return err == nil && len(ms) == 2 && ms[0].LiveSessions == 1
	})
}

// lostLog collects what OnGatewayLost callbacks were given.
type lostLog struct {
	mu  sync.Mutex
	got []string // "member:gateway/session"
}

func (l *lostLog) watch(c *Cluster) {
	c.OnGatewayLost(func(_ context.Context, gw string, ss []Session) {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, s := range ss {
			if s.Gateway != gw {
				l.got = append(l.got, "WRONG:"+s.Gateway)
			}
			l.got = append(l.got, c.GatewayID()+":"+gw+"/"+s.ID)
		}
	})
}

func (l *lostLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string{}, l.got...)
}

// TestGatewayLostExactlyOnce: when a gateway dies with live sessions,
// exactly one of the surviving members is given each of them (not the
// ones it ended itself); a gateway that stops cleanly loses nothing.
func TestGatewayLostExactlyOnce(t *testing.T) {
	e := startEtcd(t, 3)
	a := open(t, e, "gw-a", BestEffort)
	b, c := open(t, e, "gw-b", BestEffort), open(t, e, "gw-c", BestEffort)
	d, err := Open(context.Background(), Config{GatewayID: "gw-d", Endpoints: e.Endpoints()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var lost lostLog
	for _, m := range []*Cluster{a, b, c, d} {
		join(t, m)
		lost.watch(m)
	}
	ctx := context.Background()
	for i := range 3 {
		a.SessionStarted(Session{ID: fmt.Sprintf("a%d", i), User: "alice", Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	}
	a.SessionEnded("a0")
	d.SessionStarted(Session{ID: "d0", User: "dave", Target: "web2:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "the registry never held a1, a2 and d0", func() bool {
		ss, err := b.Sessions(ctx)
		return err == nil && sessionIDs(ss) == "gw-a/a1,gw-a/a2,gw-d/d0"
	})
	// A clean stop ends its sessions first, then leaves: nothing is lost.
	d.SessionEnded("d0")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	crash(t, a, b)
	waitFor(t, 10*time.Second, "the lost sessions were never handed to a member", func() bool { return len(lost.list()) >= 2 })
	time.Sleep(2 * time.Second) // any duplicate would arrive by now
	got := lost.list()
	sort.Slice(got, func(i, j int) bool { return got[i][strings.Index(got[i], ":"):] < got[j][strings.Index(got[j], ":"):] })
	if len(got) != 2 || !strings.HasSuffix(got[0], ":gw-a/a1") || !strings.HasSuffix(got[1], ":gw-a/a2") {
		t.Fatalf("lost sessions handed out = %v, want gw-a/a1 and gw-a/a2 exactly once each", got)
	}
	for _, g := range got {
		if strings.HasPrefix(g, "gw-a:") || strings.HasPrefix(g, "gw-d:") || strings.HasPrefix(g, "WRONG") {
			t.Errorf("handed to the wrong member: %s", g)
		}
	}
	if ss, err := b.Sessions(ctx); err != nil || len(ss) != 0 {
		t.Errorf("registry after the crash = %+v, %v; want empty", ss, err)
	}
}

// TestSessionsRewrittenUnderNewLease: a gateway whose lease is lost (cut
// off from etcd past the TTL) writes its live sessions again under the
// new one.
func TestSessionsRewrittenUnderNewLease(t *testing.T) {
	e := startEtcd(t, 1)
	a, b := open(t, e, "gw-a", BestEffort), open(t, e, "gw-b", BestEffort)
	join(t, a)
	ctx := context.Background()
	a.SessionStarted(Session{ID: "s1", User: "alice", Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	waitFor(t, 5*time.Second, "s1 never registered", func() bool { _, f, _ := b.LookupSession(ctx, "s1"); return f })
	old := a.Lease()
	if _, err := b.Client().Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "s1 was not written again under a new lease", func() bool {
		resp, err := b.Client().Get(ctx, b.Key("sessions", "s1"))
		return err == nil && len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) != old && resp.Kvs[0].Lease != 0
	})
}

// TestRegistryFootprint measures what 1000 live sessions cost etcd: keys
// and bytes (key plus value) under <prefix>sessions/.
func TestRegistryFootprint(t *testing.T) {
	e := startEtcd(t, 1)
	a := open(t, e, "gw-a", BestEffort)
	join(t, a)
	ctx := context.Background()
	const n = 1000
	for i := range n {
		// Ids and fields as the gateway makes them: 16 random bytes in
		// hex, a user, HOST:PORT.
		a.SessionStarted(Session{ID: fmt.Sprintf("%032x", i*7919+1), User: fmt.Sprintf("user%04d", i), Target: fmt.Sprintf("web%03d.prod.example.com:22", i%100), Start: time.Now(), Kind: "record"})
	}
	var keys, bytes int
	waitFor(t, 10*time.Second, "1000 sessions never registered", func() bool {
		resp, err := a.Client().Get(ctx, a.Key("sessions")+"/", clientv3.WithPrefix())
		if err != nil {
			return false
		}
		keys, bytes = len(resp.Kvs), 0
		for _, kv := range resp.Kvs {
			bytes += len(kv.Key) + len(kv.Value)
		}
		return keys == n
	})
	t.Logf("etcd footprint of %d live sessions: %d keys, %d bytes of keys and values (%.0f bytes per session), plus one membership record", n, keys, bytes, float64(bytes)/n)
	if bytes > 250*n {
		t.Errorf("%d bytes for %d sessions: more than 250 bytes each", bytes, n)
	}
}

// TestLostWatchBehindCompaction: while a member's gateway_lost watch is
// behind (down, as over a network cut), one gateway crashes with live
// sessions, one stops cleanly, one ends a session and lives on, and etcd
// compacts its history past all of it. When the watch resumes it finds
// its events compacted away, reads the registry again, and hands out the
// crashed gateway's sessions (once), and nothing else.
func TestLostWatchBehindCompaction(t *testing.T) {
	e := startEtcd(t, 1)
	w := open(t, e, "gw-w", BestEffort)
	a, f := open(t, e, "gw-a", BestEffort), open(t, e, "gw-f", BestEffort)
	d, err := Open(context.Background(), Config{GatewayID: "gw-d", Endpoints: e.Endpoints()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*Cluster{w, a, f, d} {
		join(t, m)
	}
	var lost lostLog
	lost.watch(w) // the only member that ends lost sessions here
	ctx := context.Background()
	for _, s := range []struct {
		c  *Cluster
		id string
	}{{a, "a1"}, {a, "a2"}, {d, "d1"}, {f, "f1"}, {f, "f2"}} {
		s.c.SessionStarted(Session{ID: s.id, User: "u-" + s.id, Target: "web1:22", Start: time.Now(), Kind: "tunnel"})
	}
	waitFor(t, 5*time.Second, "the registry never held every session", func() bool {
		ss, err := w.Sessions(ctx)
		return err == nil && sessionIDs(ss) == "gw-a/a1,gw-a/a2,gw-d/d1,gw-f/f1,gw-f/f2"
	})
	time.Sleep(500 * time.Millisecond) // w's watch has seen the puts

	// w's watch goes down and stays down.
	w.lostGate.Lock()
	w.lostWatch()
	d.SessionEnded("d1")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	f.SessionEnded("f1")
	crash(t, a, f)
	waitFor(t, 5*time.Second, "the registry never settled", func() bool {
		ss, err := f.Sessions(ctx)
		return err == nil && sessionIDs(ss) == "gw-f/f2"
	})
	resp, err := f.Client().Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Client().Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	w.lostGate.Unlock()

	waitFor(t, 10*time.Second, "the watch never read the registry again after the compaction", func() bool { return w.resyncs.Load() > 0 })
	waitFor(t, 10*time.Second, "the crashed gateway's sessions were never handed out", func() bool { return len(lost.list()) >= 2 })
	time.Sleep(time.Second) // anything more would arrive by now
	got := lost.list()
	sort.Strings(got)
	if strings.Join(got, ",") != "gw-w:gw-a/a1,gw-w:gw-a/a2" {
		t.Fatalf("handed out after the compaction: %v; want gw-a's a1 and a2 only (d1 ended before a clean stop, f1 ended on a live gateway)", got)
	}
}
