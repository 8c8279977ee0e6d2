package gateway

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestClusterLockCutsSessionElsewhere: an admin locks a user over SSH on
// gateway A; the user's live `ssh -J` session held through gateway B ends
// in under a second, B records that it applied A's lock, and new sessions
// are refused on C. Then the propagation of 50 locks from A to B is
// measured (p50, p99 logged; p99 must stay under a second).
func TestClusterLockCutsSessionElsewhere(t *testing.T) {
	tc := startTestCluster(t, clusterOptions{gateways: 3})
	a, b, c := tc.gws[0], tc.gws[1], tc.gws[2]
	ctx := t.Context()
	admin := a.client(ca.Request{KeyID: "admin", Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
	victim := b.client(ca.Request{KeyID: "victim"})
	other := c.client(ca.Request{KeyID: "victim"})
	exited := b.liveSession(t, victim)

	res := admin.Run(ctx, "ssh", a.gatewayArgs("opsadmin", "lock", "victim", "--reason", "stolen")...)
	locked := time.Now()
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "locked victim") || res.Stderr != "" && strings.Contains(res.Stderr, "warning") {
		t.Fatalf("lock over ssh on A: %s", res)
	}
	select {
	case <-exited:
		if d := time.Since(locked); d > time.Second {
			t.Fatalf("the session on B ended %s after the lock on A, want < 1s", d)
		} else {
			t.Logf("session on B ended %s after the lock on A returned", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the locked user's session through B is still running 5s after the lock on A")
	}
	a.waitEvent(t, "user.locked", map[string]string{"target": "victim", "reason": "stolen"})
	b.waitEvent(t, "state.applied", map[string]string{"kind": "lock", "target": "victim", "from_gateway": "gw-0"})
	b.waitEvent(t, "connection.ended", map[string]string{"key_id": "victim", "reason": ReasonLocked})
	if n := len(a.events("state.applied")); n != 0 {
		t.Errorf("A recorded %d state.applied for its own lock", n)
	}
	// New sessions are refused on every gateway.
	if res := other.Run(ctx, "ssh", c.jumpArgs(c.user, "true")...); res.ExitCode == 0 {
		t.Fatal("a locked user jumped through C")
	}
	c.waitEvent(t, "auth.failed", map[string]string{"key_id": "victim", "reason": ReasonLocked})

	// Unlock on C lifts it on A and B.
	if err := c.locks.Unlock(ctx, "victim", "admin"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the unlock on C did not reach A and B", func() bool {
		return !a.locks.IsLocked("victim") && !b.locks.IsLocked("victim")
	})

	// Propagation latency, lock on A to lock in B's state.
	var lat []time.Duration
	for i := range 50 {
		target := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		if err := a.locks.Lock(ctx, ca.Lock{Target: target, By: "bench"}); err != nil {
			t.Fatal(err)
		}
		waitForFast(t, 5*time.Second, "lock "+target+" never reached B", func() bool { return b.locks.IsLocked(target) })
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("lock propagation A→B over %d locks (lock durable on A, published, applied and durable on B): p50 %s, p99 %s, max %s", len(lat), p50, p99, lat[len(lat)-1])
	if p99 > time.Second {
		t.Errorf("lock propagation p99 %s, want < 1s", p99)
	}
}

// waitForFast is waitFor with a 1ms step, for latency measurements.
func waitForFast(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestClusterRevokeRefusedEverywhere: an admin revokes a serial over SSH
// on B; a jump through C with that certificate is refused, and every
// gateway's krl_file is rewritten to list it (ssh-keygen -Q).
func TestClusterRevokeRefusedEverywhere(t *testing.T) {
	tc := startTestCluster(t, clusterOptions{gateways: 3})
	b, c := tc.gws[1], tc.gws[2]
	ctx := t.Context()
	before := make([][]byte, 3)
	for i := range tc.gws {
		var err error
		if before[i], err = os.ReadFile(tc.krlFile(i)); err != nil {
			t.Fatalf("krl_file of gw-%d: %v", i, err)
		}
	}
	victim := c.client(ca.Request{KeyID: "victim", Serial: 777001})
	if res := victim.Run(ctx, "ssh", c.jumpArgs(c.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("jump through C before the revocation: %s", res)
	}
	admin := b.client(ca.Request{KeyID: "admin", Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
	if res := admin.Run(ctx, "ssh", b.gatewayArgs("opsadmin", "revoke", "--serial", "777001", "--reason", "lost")...); res.ExitCode != 0 || strings.Contains(res.Stderr, "warning") {
		t.Fatalf("revoke over ssh on B: %s", res)
	}
	b.waitEvent(t, "cert.revoked", map[string]string{"kind": "serial", "value": "777001"})
	c.waitEvent(t, "state.applied", map[string]string{"kind": "revoke", "target": "serial 777001", "from_gateway": "gw-1"})
	if res := victim.Run(ctx, "ssh", c.jumpArgs(c.user, "true")...); res.ExitCode == 0 {
		t.Fatal("a certificate revoked on B still jumps through C")
	}
	c.waitEvent(t, "auth.failed", map[string]string{"serial": "777001", "reason": ReasonRevoked})
	for i := range tc.gws {
		waitFor(t, 5*time.Second, fmt.Sprintf("the krl_file of gw-%d was not rewritten", i), func() bool { return fileChanged(tc.krlFile(i), before[i]) })
		out, err := exec.Command("ssh-keygen", "-Q", "-f", tc.krlFile(i), victim.CertPath).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "REVOKED") {
			t.Errorf("gw-%d's krl_file does not revoke the certificate: %s (%v)", i, out, err)
		}
	}
}

// TestClusterBans: a source banned on A is banned on B for the same
// window (its connections to B are dropped before the handshake), and an
// unban on B lifts it on A.
func TestClusterBans(t *testing.T) {
	tc := startTestCluster(t, clusterOptions{gateways: 2})
	a, b := tc.gws[0], tc.gws[1]
	banSource(t, a, "127.0.0.7")
	untilA, _ := a.gw.bans.Banned(mustAddr("127.0.0.7"))
	waitFor(t, 5*time.Second, "the ban on A did not reach B", func() bool {
		_, banned := b.gw.bans.Banned(mustAddr("127.0.0.7"))
		return banned
	})
	untilB, _ := b.gw.bans.Banned(mustAddr("127.0.0.7"))
	if d := untilB.Sub(untilA); d < -time.Second || d > time.Second {
		t.Errorf("B bans until %s, A until %s: not the same window", untilB, untilA)
	}
	b.waitEvent(t, "state.applied", map[string]string{"kind": "ban", "target": "127.0.0.7", "by": AutoBan, "from_gateway": "gw-0"})
	// A connection from the banned source to B is closed before the
	// handshake.
	conn, err := dialFrom(t, "127.0.0.7", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := conn.Read(make([]byte, 64)); err == nil || n > 0 {
		t.Errorf("B talked to a source banned on A (%d bytes, %v)", n, err)
	}
	conn.Close()
	if _, was, err := b.gw.Unban(t.Context(), "127.0.0.7", "admin"); err != nil || !was {
		t.Fatalf("unban on B: was %v, %v", was, err)
	}
	waitFor(t, 5*time.Second, "the unban on B did not reach A", func() bool {
		_, banned := a.gw.bans.Banned(mustAddr("127.0.0.7"))
		return !banned
	})
	// A records who lifted the ban and on which gateway, not just "the
	// cluster".
	a.waitEvent(t, "state.applied", map[string]string{"kind": "unban", "target": "127.0.0.7", "by": "admin", "from_gateway": "gw-1"})
}

// TestClusterLoginTokenReplay: an ID token from the real dev IdP used
// for a login through A is refused when replayed through B (over SSH B's
// nonce differs; handed to B's login service with A's nonce it is
// refused as token_replayed, which only the cluster-wide claim can know).
// With etcd's quorum gone a fresh login is refused (fail closed).
func TestClusterLoginTokenReplay(t *testing.T) {
	tc := startTestEtcd(t)
	co := clusterOptions{}
	var lgs []*loginGateway
	for i := range 2 {
		lo := loginOptions{caFrom: tc.caDir}
		if i > 0 {
			lo.sharedIdP = lgs[0].idp
		}
		var cl *cluster.Cluster
		tc.addGateway(t, i, co, func(opts ...gatewayOption) *testGateway {
			cl = tc.cls[i]
			lo.oidc = func(oc *oidc.Config) { oc.Claim = cl.Claim }
			lg := startLoginGatewayWith(t, lo, opts...)
			lgs = append(lgs, lg)
			return lg.testGateway
		})
	}
	a, b := lgs[0], lgs[1]
	var raw, nonceA string
	mint := func(nonce string) string {
		claims, err := a.idp.Claims("eng")
		if err != nil {
			t.Fatal(err)
		}
		claims["nonce"] = nonce
		tok, err := a.idp.SignToken(claims, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	first := testbed.NewClient(t)
	first.TrustHostCA("*", a.auth.PublicKey(ca.HostCA))
	if res := a.tokenLogin(t, first, func(n string) string { nonceA, raw = n, mint(n); return raw }); res.ExitCode != 0 {
		t.Fatalf("login through A: %s", res)
	}
	replay := testbed.NewClient(t)
	replay.TrustHostCA("*", b.auth.PublicKey(ca.HostCA))
	if res := b.tokenLogin(t, replay, func(string) string { return raw }); res.ExitCode == 0 || res.Stdout != "" {
		t.Fatalf("the token used through A logged in through B: %s", res)
	}
	prov := b.gw.cfg.Login.Provider.(*oidc.Provider)
	_, err := prov.VerifyIDToken(t.Context(), raw, nonceA)
	var oe *oidc.Error
	if !errors.As(err, &oe) || oe.Reason != oidc.ReasonTokenReplayed {
		t.Fatalf("B's login service took A's token with A's nonce: %v", err)
	}

	// Quorum lost: a fresh, valid token is refused, with the reason.
	tc.etcd.Stop(1)
	tc.etcd.Stop(2)
	fresh := testbed.NewClient(t)
	fresh.TrustHostCA("*", a.auth.PublicKey(ca.HostCA))
	res := a.tokenLogin(t, fresh, mint)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "etcd") {
		t.Fatalf("a login went through while etcd had no quorum: %s", res)
	}
	a.waitEvent(t, "login.failed", map[string]string{"flow": "token", "reason": oidc.ReasonClusterUnavailable})
}

// TestClusterQuorum: with one etcd member stopped everything works (jumps,
// lock propagation). With two stopped, a strict gateway refuses new
// sessions within seconds (auth.failed cluster_stale, the reason in the
// banner) while a best_effort one admits them until max_staleness; live
// sessions keep running on both. A lock taken on A while cut off is in
// effect on A at once and reaches B when the quorum is back.
func TestClusterQuorum(t *testing.T) {
	tc := startTestEtcd(t)
	strict := tc.addGateway(t, 0, clusterOptions{consistency: cluster.Strict}, func(opts ...gatewayOption) *testGateway {
		return startGatewayWithCA(t, tc.caDir, opts...)
	})
	loose := tc.addGateway(t, 1, clusterOptions{consistency: cluster.BestEffort, maxStaleness: 6 * time.Second}, func(opts ...gatewayOption) *testGateway {
		return startGatewayWithCA(t, tc.caDir, opts...)
	})
	ctx := t.Context()
	user := loose.client(ca.Request{KeyID: "worker"})
	strictUser := strict.client(ca.Request{KeyID: "worker"})

	// One member down: business as usual.
	if err := tc.etcd.Stop(0); err != nil {
		t.Fatal(err)
	}
	if res := strictUser.Run(ctx, "ssh", strict.jumpArgs(strict.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("jump through the strict gateway with one etcd member down: %s", res)
	}
	if err := strict.locks.Lock(ctx, ca.Lock{Target: "one-down", By: "test"}); err != nil {
		t.Fatalf("lock with one member down: %v", err)
	}
	waitFor(t, 5*time.Second, "a lock did not propagate with one member down", func() bool { return loose.locks.IsLocked("one-down") })

	liveStrict := strict.liveSession(t, strictUser)
	liveLoose := loose.liveSession(t, user)

	// Two down: no quorum.
	if err := tc.etcd.Stop(1); err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	waitFor(t, 10*time.Second, "the strict gateway still admits new sessions", func() bool { return strict.gw.admitCluster() != nil })
	t.Logf("strict gateway refused new sessions %s after quorum was lost", time.Since(lost).Round(10*time.Millisecond))
	if d := time.Since(lost); d > cluster.StrictStaleness+3*cluster.ProbeInterval {
		t.Errorf("strict refusal took %s", d)
	}
	if res := strictUser.Run(ctx, "ssh", strict.jumpArgs(strict.user, "true")...); res.ExitCode == 0 {
		t.Fatalf("the strict gateway admitted a new session without quorum: %s", res)
	}
	// The user is told why (the banner, shown at OpenSSH's default
	// LogLevel).
	res := strictUser.Run(ctx, "ssh", append([]string{"-o", "LogLevel=INFO"}, strict.gatewayArgs(strict.user, "whoami")...)...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "cannot reach the cluster") {
		t.Fatalf("refused without the reason: %s", res)
	}
	strict.waitEvent(t, "auth.failed", map[string]string{"key_id": "worker", "reason": ReasonClusterStale})
	if loose.gw.admitCluster() != nil && time.Since(lost) < 5*time.Second {
		t.Errorf("best_effort refused before max_staleness: %v", loose.gw.admitCluster())
	}
	// A lock taken on the strict gateway while cut off: in effect here
	// at once, pending for the others.
	err := strict.locks.Lock(ctx, ca.Lock{Target: "cut-off", By: "test"})
	if !errors.Is(err, ca.ErrPending) || !strict.locks.IsLocked("cut-off") {
		t.Fatalf("lock while cut off: %v (locked here: %v)", err, strict.locks.IsLocked("cut-off"))
	}
	waitFor(t, 15*time.Second, "the best_effort gateway still admits new sessions after max_staleness", func() bool { return loose.gw.admitCluster() != nil })
	t.Logf("best_effort gateway refused new sessions %s after quorum was lost (max_staleness 6s)", time.Since(lost).Round(10*time.Millisecond))
	if res := user.Run(ctx, "ssh", loose.jumpArgs(loose.user, "true")...); res.ExitCode == 0 {
		t.Fatalf("best_effort admitted a session past max_staleness: %s", res)
	}
	select {
	case err := <-liveStrict:
		t.Fatalf("a live session on the strict gateway ended when etcd lost quorum: %v", err)
	case err := <-liveLoose:
		t.Fatalf("a live session on the best_effort gateway ended when etcd lost quorum: %v", err)
	default:
	}
	if loose.locks.IsLocked("cut-off") {
		t.Fatal("a lock reached B without etcd")
	}

	// Quorum back: the pending lock is published and reaches B; both
	// admit again.
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for _, i := range []int{0, 1} {
		if err := tc.etcd.Restart(rctx, i); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "the lock taken on A while cut off never reached B", func() bool { return loose.locks.IsLocked("cut-off") })
	loose.waitEvent(t, "state.applied", map[string]string{"kind": "lock", "target": "cut-off", "from_gateway": "gw-0"})
	waitFor(t, 10*time.Second, "A's outbox was not emptied", func() bool {
		p, err := strict.auth.State().Pending()
		for _, ch := range p {
			if ch.Name() == "cut-off" {
				return false
			}
		}
		return err == nil
	})
	waitFor(t, 15*time.Second, "the gateways do not admit again after quorum came back", func() bool {
		return strict.gw.admitCluster() == nil && loose.gw.admitCluster() == nil
	})
	if res := user.Run(ctx, "ssh", loose.jumpArgs(loose.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("jump after quorum came back: %s", res)
	}
	if !slices.Equal(lockNames(strict.locks.List()), lockNames(loose.locks.List())) {
		t.Errorf("the gateways' locks differ: %v vs %v", lockNames(strict.locks.List()), lockNames(loose.locks.List()))
	}
}

func lockNames(ls []ca.Lock) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Target
	}
	return out
}

// TestClusterCAMismatch: every gateway publishes the CA keys it trusts.
// When one gateway's CA files are replaced and reloaded (what SIGHUP
// does) the others name it: CAMismatch, the bastion_cluster_ca_mismatch
// metric, an error log. Copying the same files back clears it.
func TestClusterCAMismatch(t *testing.T) {
	tc := startTestCluster(t, clusterOptions{gateways: 2})
	a, b := tc.gws[0], tc.gws[1]
	waitFor(t, 5*time.Second, "the gateways see each other's CA keys", func() bool { return a.gw.CAMismatch() == "" && b.gw.CAMismatch() == "" })
	mismatch := func(tg *testGateway) float64 {
		mfs, err := tg.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "bastion_cluster_ca_mismatch" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no bastion_cluster_ca_mismatch metric")
		return 0
	}
	if mismatch(a) != 0 {
		t.Fatal("mismatch reported while the CA files agree")
	}
	// B gets another CA's files.
	other := t.TempDir()
	if _, _, err := ca.Init(ca.Layout{DataDir: other}, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	copyCA(t, other, b.layout)
	if err := b.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	b.gw.ReloadedCA(t.Context())
	waitFor(t, 5*time.Second, "A does not report B's different CA keys", func() bool { return a.gw.CAMismatch() == "gw-1" })
	waitFor(t, 5*time.Second, "B does not report that A differs", func() bool { return b.gw.CAMismatch() == "gw-0" })
	if mismatch(a) != 1 || mismatch(b) != 1 {
		t.Errorf("bastion_cluster_ca_mismatch: A %v, B %v, want 1", mismatch(a), mismatch(b))
	}
	// The same files again: the alarm clears.
	copyCA(t, tc.caDir, b.layout)
	if err := b.auth.Reload(); err != nil {
		t.Fatal(err)
	}
	b.gw.ReloadedCA(t.Context())
	waitFor(t, 5*time.Second, "the mismatch does not clear", func() bool { return a.gw.CAMismatch() == "" && b.gw.CAMismatch() == "" })
	if mismatch(a) != 0 {
		t.Error("bastion_cluster_ca_mismatch still 1")
	}
}
