package gateway

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
)

// TestClusterCommandsOverSSH: the `cluster` admin command through the
// real ssh client. A user in neither group is told which groups grant
// it; `cluster forget` and `audit ... --cluster` say they are CLI-only
// and give the exact command. With every etcd member stopped, `cluster
// status` and `cluster sessions` still answer at once with the
// gateway's own view (its id, staleness, mode, admission, last-known
// members and how old they are, its own live sessions, what to check)
// and never with a raw "context deadline exceeded".
func TestClusterCommandsOverSSH(t *testing.T) {
	withAuditors := func(c *Config, _ *Deps) { c.AuditorGroups = []string{"auditors"} }
	// gw-0 best_effort (it keeps admitting for a while), gw-1 strict (it
	// refuses new sessions at once).
	tc := startTestEtcd(t)
	for i, mode := range []string{cluster.BestEffort, cluster.Strict} {
		tc.addGateway(t, i, clusterOptions{consistency: mode, opts: []gatewayOption{withAuditors}}, func(opts ...gatewayOption) *testGateway {
			return startGatewayWithCA(t, tc.caDir, opts...)
		})
	}
	ctx := t.Context()
	for i, tg := range tc.gws {
		m := cluster.Member{SSHAddr: tg.addr, Started: time.Now()}
		if err := tc.cls[i].Join(ctx, m); err != nil {
			t.Fatal(err)
		}
		if err := tc.cls[i].Remember(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	gw := tc.gws[0]
	auditor := gw.client(ca.Request{KeyID: "carol", Groups: []string{"auditors"}})
	plain := gw.client(ca.Request{KeyID: "worker"})
	// Item: the refusal names the groups that grant it.
	res := plain.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "cluster", "status")...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "an admin group (admins) or an auditor group (auditors)") {
		t.Errorf("a plain user's refusal does not name the groups: %s", res)
	}

	// CLI-only commands say so, with the exact command.
	res = auditor.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "cluster", "forget", "gw-1")...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "bastion cluster forget GATEWAY_ID --config /etc/bastion/bastion.yaml") {
		t.Errorf("cluster forget over SSH: %s", res)
	}
	res = auditor.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "audit", "sessions", "--cluster", "--active")...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "not served over SSH") || !strings.Contains(res.Stderr, "bastion audit sessions --cluster --gateway ") || !strings.Contains(res.Stderr, " --active") {
		t.Errorf("audit sessions --cluster over SSH: %s", res)
	}

	// A live session on gw-0, in the registry.
	live := gw.liveSession(t, gw.client(ca.Request{KeyID: "worker"}))
	waitFor(t, 10*time.Second, "the live session in the registry", func() bool {
		ss, err := tc.cls[1].Sessions(ctx)
		return err == nil && len(ss) == 1
	})
	res = auditor.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "cluster", "status")...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "etcd as seen by gateway gw-0: reachable") || strings.Contains(res.Stdout, "WARNING") {
		t.Fatalf("cluster status with etcd up: %s", res)
	}

	// Every etcd member down.
	for i := range 3 {
		if err := tc.etcd.Stop(i); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 15*time.Second, "gw-0 to notice etcd is unreachable", func() bool { return !tc.cls[0].Healthy() })

	start := time.Now()
	res = auditor.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "cluster", "status")...)
	took := time.Since(start)
	out := res.Stdout
	for _, want := range []string{
		"etcd as seen by gateway gw-0: UNREACHABLE",
		"WARNING: etcd is unreachable from gateway gw-0",
		"last contact ",
		"new sessions: still admitted on the last state seen",
		"members: the last list read from etcd",
		"gw-1", tc.gws[1].addr,
		"gateway gw-0's own live sessions: 1",
		"what to check: check that a quorum of the etcd members runs",
		tc.etcd.Endpoints()[0],
		"2 member(s) up, 0 down (last known)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster status with etcd down lacks %q:\n%s", want, res)
		}
	}
	if res.ExitCode != 0 || strings.Contains(res.Stdout+res.Stderr, "deadline exceeded") {
		t.Errorf("cluster status with etcd down: %s", res)
	}
	if took > 8*time.Second {
		t.Errorf("cluster status with etcd down took %s", took)
	}
	t.Logf("cluster status with etcd down answered in %s", took.Round(10*time.Millisecond))

	res = auditor.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "cluster", "status", "--json")...)
	var st cluster.Status
	if err := json.Unmarshal([]byte(res.Stdout), &st); err != nil {
		t.Fatalf("cluster status --json with etcd down: %v\n%s", err, res)
	}
	if st.Gateway != "gw-0" || st.Healthy || !st.MembersCached || len(st.Members) != 2 || len(st.OwnSessions) != 1 ||
		!st.Admitting || st.EtcdError == "" || st.MembersAsOf.IsZero() || st.LastContact.IsZero() || st.Consistency != cluster.BestEffort {
		t.Errorf("cluster status --json with etcd down: %+v", st)
	}

	// A gateway that refuses new sessions (strict at once) still lets an
	// admin or auditor in for its own view, and for nothing else: no
	// jump, no other command. A plain user is refused as before.
	strict := tc.gws[1]
	waitFor(t, 15*time.Second, "gw-1 (strict) to refuse new sessions", func() bool { return tc.cls[1].Admit() != nil })
	op := strict.client(ca.Request{KeyID: "carol", Groups: []string{"auditors", "admins"}})
	// LogLevel=INFO shows banners: the admin served gets no refusal
	// banner before the answer; the state is in the answer.
	res = op.Run(ctx, "ssh", append([]string{"-o", "LogLevel=INFO"}, strict.gatewayArgs(strict.user, "cluster", "status")...)...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "new sessions: REFUSED on this gateway until it reaches etcd (consistency strict") ||
		!strings.Contains(res.Stdout, "gateway gw-1's own live sessions: 0") {
		t.Errorf("cluster status on the strict gateway with etcd down: %s", res)
	}
	if strings.Contains(res.Stderr, "new sessions are refused") {
		t.Errorf("the admin served cluster status on the stale gateway first saw a refusal banner: %s", res)
	}
	// Strict: no max_staleness (it does not apply), and one figure for
	// the time since the last contact in every line.
	if strings.Contains(res.Stdout, "max_staleness") || !strings.Contains(res.Stdout, "consistency strict: new sessions refused after 2.5s without a quorum read") {
		t.Errorf("strict status shows the wrong mode line:\n%s", res.Stdout)
	}
	if m := regexp.MustCompile(`last quorum read (\S+) ago`).FindStringSubmatch(res.Stdout); m == nil ||
		!strings.Contains(res.Stdout, "has not reached etcd for "+m[1]+" ") || !strings.Contains(res.Stdout, "("+m[1]+" ago)") {
		t.Errorf("the status lines disagree on the time since etcd was last reached:\n%s", res.Stdout)
	}
	res = op.Run(ctx, "ssh", append([]string{"-o", "LogLevel=INFO"}, strict.gatewayArgs(strict.user, "info")...)...)
	if res.ExitCode != 0 || strings.Contains(res.Stderr, "new sessions are refused") || !strings.Contains(res.Stdout, "NEW SESSIONS REFUSED on this gateway") {
		t.Errorf("info for an admin on the stale strict gateway: want the state in the output, no banner: %s", res)
	}
	res = op.Run(ctx, "ssh", strict.gatewayArgs(strict.user, "locks")...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "serves admins and auditors only `cluster status`, `cluster sessions` and `info`") {
		t.Errorf("another admin command on the stale strict gateway: %s", res)
	}
	if res = op.Run(ctx, "ssh", strict.jumpArgs(strict.user, "true")...); res.ExitCode == 0 {
		t.Errorf("an admin jumped through the stale strict gateway: %s", res)
	}
	strict.waitEvent(t, audit.TypeChannelDenied, map[string]string{"reason": ReasonClusterStale})
	res = strict.client(ca.Request{KeyID: "worker"}).Run(ctx, "ssh", append([]string{"-o", "LogLevel=INFO"}, strict.gatewayArgs(strict.user, "info")...)...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "cannot reach the cluster's shared state (etcd)") {
		t.Errorf("a plain user on the stale strict gateway: %s", res)
	}

	res = auditor.Run(ctx, "ssh", gw.gatewayArgs(gw.user, "cluster", "sessions")...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "gw-0") || !strings.Contains(res.Stdout, gw.user) ||
		!strings.Contains(res.Stderr, "etcd is unreachable from gateway gw-0") || !strings.Contains(res.Stderr, "only its own 1 live session(s)") ||
		strings.Contains(res.Stdout+res.Stderr, "deadline exceeded") {
		t.Errorf("cluster sessions with etcd down: %s", res)
	}
	select {
	case err := <-live:
		t.Errorf("the live session ended with etcd down: %v", err)
	default:
	}
}
