package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/cluster"
)

// internalTextRE matches what no user-visible error may carry: a
// package prefix, Go's raw deadline text, a raw dial error.
var internalTextRE = regexp.MustCompile(`(^|: |\n)(sshclient|ssh|gateway|cluster|clusterstate|etcdembed): |context deadline exceeded|dial tcp`)

// checkUserText fails when text (what the CLI shows: stderr, and main's
// userError of the returned error) carries internal text.
func checkUserText(t *testing.T, what, text string) {
	t.Helper()
	if m := internalTextRE.FindString(text); m != "" {
		t.Errorf("%s shows %q to the user:\n%s", what, m, text)
	}
}

// sessionRows are the rows of an `audit sessions` table, each as its
// fields joined by one space, without the header.
func sessionRows(t *testing.T, table string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) < 2 {
		t.Fatalf("no sessions in:\n%s", table)
	}
	var rows []string
	for _, l := range lines[1:] {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	return rows
}

// TestClusterCLIUnderFailure: the cluster-facing CLI tells the truth
// when the cluster is whole and when parts of it fail, with real
// `bastion serve` gateways, a real 3-member etcd and OpenSSH.
//
//   - `audit sessions --cluster` shows every column (duration included)
//     exactly as `audit sessions --gateway` shows it on each gateway
//     alone, table and --json;
//   - a member that accepts connections and never answers (SIGSTOP) is
//     named with how long it was waited for and what to check; one that
//     is gone (SIGKILL) is named with "connection refused" and what to
//     check; no internal prefix or raw deadline text reaches the user;
//   - with every etcd member stopped, `cluster status --gateway` gives
//     the gateway's own view; `cluster status --config` and the
//     --cluster reads say what failed and what to do; the fan-out goes
//     on with the gateway's last-known members;
//   - a gateway started while etcd is down is refused with a message
//     that says why and what to do.
func TestClusterCLIUnderFailure(t *testing.T) {
	e := startClusterGateways(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	gw1, gw2 := e.gw[0], e.gw[1]
	auditor := func(args ...string) (string, string, error) {
		t.Helper()
		out, errOut, err := e.cli(append(args, e.auditorFlags()...)...)
		if err != nil {
			errOut += "\nerror: " + userError(err)
		}
		return out, errOut, err
	}

	t.Run("sessions columns match each gateway", func(t *testing.T) {
		e.jump(ctx, gw1, "sleep", "2")
		e.jump(ctx, gw2, "sleep", "1")
		waitFor(t, 15*time.Second, "both sessions ended", func() bool {
			out, _, err := auditor("audit", "sessions", "--cluster", "--gateway", gw1.SSHAddr, "--json")
			return err == nil && strings.Count(out, `"active":false`) == 2 && !strings.Contains(out, `"active":true`)
		})
		var perGatewayJSON, perGatewayRows []string
		for _, g := range e.gw {
			js, errOut, err := auditor("audit", "sessions", "--gateway", g.SSHAddr, "--json")
			if err != nil {
				t.Fatalf("audit sessions --gateway %s: %v\n%s", g.ID, err, errOut)
			}
			perGatewayJSON = append(perGatewayJSON, strings.Split(strings.TrimSpace(js), "\n")...)
			table, errOut, err := auditor("audit", "sessions", "--gateway", g.SSHAddr)
			if err != nil {
				t.Fatalf("audit sessions --gateway %s: %v\n%s", g.ID, err, errOut)
			}
			// A gateway in a cluster names itself in the GATEWAY column.
			perGatewayRows = append(perGatewayRows, sessionRows(t, table)...)
		}
		js, errOut, err := auditor("audit", "sessions", "--cluster", "--gateway", gw1.SSHAddr, "--json")
		if err != nil {
			t.Fatalf("audit sessions --cluster --json: %v\n%s", err, errOut)
		}
		clusterJSON := strings.Split(strings.TrimSpace(js), "\n")
		slices.Sort(perGatewayJSON)
		slices.Sort(clusterJSON)
		if !slices.Equal(perGatewayJSON, clusterJSON) {
			t.Errorf("audit sessions --cluster --json differs from the gateways' own lists:\n cluster:\n%s\n gateways:\n%s", strings.Join(clusterJSON, "\n"), strings.Join(perGatewayJSON, "\n"))
		}
		table, errOut, err := auditor("audit", "sessions", "--cluster", "--gateway", gw1.SSHAddr)
		if err != nil {
			t.Fatalf("audit sessions --cluster: %v\n%s", err, errOut)
		}
		clusterRows := sessionRows(t, table)
		slices.Sort(perGatewayRows)
		slices.Sort(clusterRows)
		if !slices.Equal(perGatewayRows, clusterRows) {
			t.Errorf("audit sessions --cluster rows differ from the gateways' own:\n cluster:\n%s\n gateways:\n%s", strings.Join(clusterRows, "\n"), strings.Join(perGatewayRows, "\n"))
		}
		for _, r := range clusterRows {
			if f := strings.Fields(r); len(f) < 7 || f[6] == "0s" {
				t.Errorf("a session of %s lasted 0s in the cluster list: %s", f[0], r)
			}
		}
	})

	t.Run("an unresponsive member is named with what to check", func(t *testing.T) {
		if err := gw2.srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, errOut, err := auditor("audit", "export", "--cluster", "--gateway", gw1.SSHAddr, "--type", "gateway.start")
		took := time.Since(start)
		if err := gw2.srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if exitCode(err) != exitPartial || !strings.Contains(errOut, "gateway gw-2 ("+gw2.SSHAddr+") could not be read: the gateway at "+gw2.SSHAddr+" did not answer within 10s: is it running") ||
			!strings.Contains(errOut, "/healthz") {
			t.Errorf("export --cluster with gw-2 stopped (SIGSTOP), %s: exit %d\n%s", took, exitCode(err), errOut)
		}
		checkUserText(t, "export --cluster with a member that does not answer", errOut)
		if took > 20*time.Second {
			t.Errorf("the fan-out waited %s for a member that does not answer", took)
		}
		e.waitMembersInclude(30*time.Second, gw2.ID)
		gw2.Kill()
		_, errOut, err = auditor("audit", "verify", "--cluster", "--gateway", gw1.SSHAddr)
		if exitCode(err) != exitPartial || !(strings.Contains(errOut, "nothing answers at "+gw2.SSHAddr+" (connection refused): is the gateway running? check its /healthz") ||
			strings.Contains(errOut, "gw-2 ("+gw2.SSHAddr+") could not be read: not running")) {
			t.Errorf("verify --cluster with gw-2 killed: exit %d\n%s", exitCode(err), errOut)
		}
		checkUserText(t, "verify --cluster with a killed member", errOut)
	})

	t.Run("etcd down", func(t *testing.T) {
		sess := e.jumpCommand(ctx, gw1, "sleep", "300")
		if err := sess.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sess.Process.Kill(); _ = sess.Wait() }()
		var id string
		waitFor(t, 20*time.Second, "the live session in the registry", func() bool {
			ss, err := e.observer.Sessions(ctx)
			if err == nil && len(ss) == 1 {
				id = ss[0].ID
				return true
			}
			return false
		})
		for i := range 3 {
			if err := e.etcd.Stop(i); err != nil {
				t.Fatal(err)
			}
		}
		var st cluster.Status
		waitFor(t, 20*time.Second, "gw-1 to see etcd unreachable", func() bool {
			js, _, err := auditor("cluster", "status", "--json", "--gateway", gw1.SSHAddr)
			return json.Unmarshal([]byte(js), &st) == nil && !st.Healthy && exitCode(err) == exitPartial
		})
		if st.Gateway != gw1.ID || !st.MembersCached || len(st.OwnSessions) != 1 || st.OwnSessions[0].ID != id || st.MembersAsOf.IsZero() {
			t.Errorf("cluster status --json --gateway with etcd down: %+v", st)
		}
		out, errOut, err := auditor("cluster", "status", "--gateway", gw1.SSHAddr)
		for _, want := range []string{"etcd as seen by gateway gw-1: UNREACHABLE", "WARNING: etcd is unreachable from gateway gw-1", "members: the last list read from etcd", "gateway gw-1's own live sessions: 1", "what to check:"} {
			if exitCode(err) != exitPartial || !strings.Contains(out, want) {
				t.Errorf("cluster status --gateway with etcd down lacks %q: %v\n%s\n%s", want, err, out, errOut)
			}
		}
		_, errOut, err = auditor("cluster", "status", "--config", gw1.Cfg)
		// Every member is stopped: their ports refuse, and the CLI says so
		// at once rather than waiting out a timeout.
		if err == nil || !strings.Contains(errOut, "connection refused") || !strings.Contains(errOut, "bastion cluster status --gateway HOST:PORT") || !strings.Contains(errOut, "quorum") {
			t.Errorf("cluster status --config with etcd down: %v\n%s", err, errOut)
		}
		checkUserText(t, "cluster status --config with etcd down", errOut)
		_, errOut, err = auditor("audit", "sessions", "--cluster", "--config", gw1.Cfg)
		if err == nil || !strings.Contains(errOut, "connection refused") {
			t.Errorf("audit sessions --cluster --config with etcd down: %v\n%s", err, errOut)
		}
		checkUserText(t, "audit sessions --cluster --config with etcd down", errOut)
		// Through a gateway: its last-known members are asked.
		out, errOut, err = auditor("audit", "sessions", "--cluster", "--gateway", gw1.SSHAddr, "--active")
		if exitCode(err) != exitPartial || !strings.Contains(errOut, "etcd is unreachable from gateway gw-1; asking the gateways in the last member list") ||
			!strings.Contains(out, id) || !strings.Contains(errOut, "gateway gw-2") {
			t.Errorf("audit sessions --cluster --gateway with etcd down: exit %d\n%s\n%s", exitCode(err), out, errOut)
		}
		checkUserText(t, "audit sessions --cluster --gateway with etcd down", errOut)
		_, errOut, _ = auditor("audit", "watch", id, "--cluster", "--gateway", gw1.SSHAddr)
		if !strings.Contains(errOut, "session "+id+" is on gateway gw-1") {
			t.Errorf("audit watch --cluster with etcd down did not find the session's gateway:\n%s", errOut)
		}
		checkUserText(t, "audit watch --cluster with etcd down", errOut)

		// A gateway started now is refused, and told why.
		start := time.Now()
		cmd := exec.CommandContext(ctx, e.bin, "serve", "--config", gw2.Cfg)
		res, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(res), "this gateway did not start") || !strings.Contains(string(res), "starts only once it reaches etcd") ||
			!strings.Contains(string(res), "etcdctl endpoint health") {
			t.Errorf("bastion serve with etcd down: %v after %s\n%s", err, time.Since(start).Round(time.Millisecond), res)
		}
		checkUserText(t, "bastion serve with etcd down", string(res))
	})
}
