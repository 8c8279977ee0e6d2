package cluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

func startEtcd(t *testing.T, n int) *etcdembed.Cluster {
	t.Helper()
	e, err := etcdembed.Start(context.Background(), t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func open(t *testing.T, e *etcdembed.Cluster, id string, mode string) *Cluster {
	t.Helper()
	c, err := Open(context.Background(), Config{GatewayID: id, Advertise: "127.0.0.1:2222", Endpoints: e.Endpoints(), Consistency: mode, MaxStaleness: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMembershipFollowsLeases: members appear when they join and leave
// at once on a clean Close.
func TestMembershipFollowsLeases(t *testing.T) {
	e := startEtcd(t, 1)
	a := open(t, e, "gw-a", BestEffort)
	b, err := Open(context.Background(), Config{GatewayID: "gw-b", Endpoints: e.Endpoints()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waitFor(t, 5*time.Second, "no lease", func() bool { return a.Lease() != 0 && b.Lease() != 0 })
	if err := a.Join(ctx, Member{SSHAddr: "127.0.0.1:1", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := b.Join(ctx, Member{SSHAddr: "127.0.0.1:2", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetLiveSessions(ctx, 7); err != nil {
		t.Fatal(err)
	}
	ms, err := a.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].ID != "gw-a" || ms[1].ID != "gw-b" || ms[0].LiveSessions != 7 || ms[1].SSHAddr != "127.0.0.1:2" {
		t.Fatalf("members = %+v", ms)
	}
	b.Close()
	ms, err = a.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].ID != "gw-a" {
		t.Fatalf("after gw-b closed, members = %+v", ms)
	}
}

// TestClaimIsOncePerCluster: of many concurrent claims of one id through
// two gateways, exactly one wins; a different id or kind is independent.
func TestClaimIsOncePerCluster(t *testing.T) {
	e := startEtcd(t, 1)
	a := open(t, e, "gw-a", BestEffort)
	b := open(t, e, "gw-b", BestEffort)
	ctx := context.Background()
	var mu sync.Mutex
	wins := 0
	var wg sync.WaitGroup
	for i := range 10 {
		c := a
		if i%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := c.Claim(ctx, "token", "eyJhbGciOi.payload", time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d claims of one token succeeded, want exactly 1", wins)
	}
	for _, kc := range [][2]string{{"token", "other"}, {"nonce", "eyJhbGciOi.payload"}} {
		ok, err := b.Claim(ctx, kc[0], kc[1], time.Minute)
		if err != nil || !ok {
			t.Fatalf("claim %v = %v, %v; want a first claim to succeed", kc, ok, err)
		}
	}
}

// TestAdmitFollowsConsistencyMode: with quorum lost, strict refuses new
// sessions within seconds and best_effort only after max_staleness;
// both admit again once quorum is back.
func TestAdmitFollowsConsistencyMode(t *testing.T) {
	e := startEtcd(t, 3)
	strict := open(t, e, "gw-strict", Strict)
	best := open(t, e, "gw-best", BestEffort) // MaxStaleness 2s in open
	if err := strict.Admit(); err != nil {
		t.Fatalf("strict refuses with etcd healthy: %v", err)
	}
	if err := e.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(2); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	waitFor(t, 10*time.Second, "strict still admits without quorum", func() bool { return errors.Is(strict.Admit(), ErrStale) })
	strictAfter := time.Since(lost)
	waitFor(t, 15*time.Second, "best_effort still admits past max_staleness", func() bool { return errors.Is(best.Admit(), ErrStale) })
	// The last contact may predate the loss by up to one probe interval.
	if since := time.Since(lost); since < 2*time.Second-ProbeInterval {
		t.Fatalf("best_effort refused %s after quorum was lost, before its max_staleness of 2s", since)
	}
	if strictAfter > StrictStaleness+2*ProbeInterval+time.Second {
		t.Fatalf("strict took %s to refuse", strictAfter)
	}
	if err := e.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "no admission after quorum came back", func() bool { return strict.Admit() == nil && best.Admit() == nil })
}

// TestRecoversSoonAfterEtcdPathReturns: a gateway whose network path to
// etcd is cut for three times its lease's TTL refuses new sessions
// meanwhile, and within a few seconds of the path coming back admits
// them again, under a new lease with its membership record written (the
// etcd client's reconnect backoff is bounded; gRPC's default grows to two
// minutes).
func TestRecoversSoonAfterEtcdPathReturns(t *testing.T) {
	e := startEtcd(t, 1)
	path, err := etcdembed.StartProxy(e.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(path.Close)
	obs := open(t, e, "observer", BestEffort)
	c, err := Open(context.Background(), Config{GatewayID: "gw-cut", Endpoints: []string{path.URL()}, DialTimeout: 2 * time.Second, Consistency: BestEffort, MaxStaleness: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	join(t, c)
	old := c.Lease()
	path.SetCut(true)
	waitFor(t, 10*time.Second, "the gateway still admits with its path to etcd cut", func() bool { return errors.Is(c.Admit(), ErrStale) })
	// About 30 s cut off in all: gRPC's default backoff would next try
	// etcd some 10 s after the path comes back.
	time.Sleep(28 * time.Second)
	if c.Admit() == nil {
		t.Fatal("the gateway admits new sessions after 30 s cut off from etcd")
	}
	path.SetCut(false)
	mended := time.Now()
	waitFor(t, 20*time.Second, "the gateway never recovered after its path to etcd came back", func() bool {
		if c.Admit() != nil || !c.Healthy() {
			return false
		}
		l := c.Lease()
		return l != 0 && l != old && memberLease(t, obs, "gw-cut") == l
	})
	took := time.Since(mended)
	t.Logf("back (admitting, member under a new lease) %s after the path to etcd came back", took.Round(10*time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("recovery took %s after etcd was reachable again, want under 5 s", took.Round(10*time.Millisecond))
	}
}
