package main

// The cluster harness: a 3-member etcd in the test process, N real
// `bastion serve` processes (the fault suite's binary) with cluster:
// blocks and one shared CA, a real sshd target and the real ssh client.
// Gateways can be killed with SIGKILL, stopped and restarted on the same
// addresses, so rolling-restart and crash tests reuse it:
//
//	env := startClusterGateways(t, 3)
//	env.gw[0].Kill(); env.gw[0].Restart()
//	env.jump(ctx, env.gw[1], "true")

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// clusterPrefix is the etcd prefix the harness's gateways share.
const clusterPrefix = "/bastion-test/"

// clusterEnv is a running test cluster.
type clusterEnv struct {
	t    *testing.T
	bin  string
	etcd *etcdembed.Cluster
	gw   []*clusterGateway
	// target is a real sshd that trusts the cluster's user CA; user is
	// the account jumps log in as.
	target *testbed.SSHD
	user   string
	// client is the real OpenSSH client, with a certificate for user.
	client *testbed.Client
	// auditor is a private key whose certificate (auditor-cert.pub) is in
	// the groups auditors and admins; knownHosts trusts the host CA.
	auditor, knownHosts string
	// observer reads etcd for the test (it never joins).
	observer *cluster.Cluster
	// extraConfig is YAML appended to every gateway's configuration (an
	// oidc: section, ...); $GATEWAY_ID in it becomes the gateway's id
	// (krl_file: krl-$GATEWAY_ID.krl).
	extraConfig string
}

// clusterGateway is one `bastion serve` of the cluster, on fixed
// addresses across restarts.
type clusterGateway struct {
	env                  *clusterEnv
	ID                   string
	Data, Cfg            string
	SSHAddr, MetricsAddr string
	srv                  *server
}

// Addr is the gateway's SSH address.
func (g *clusterGateway) Addr() string { return g.SSHAddr }

// startClusterGateways starts a 3-member etcd and n gateways sharing one
// CA, and waits until all n are in the member list.
func startClusterGateways(t *testing.T, n int) *clusterEnv {
	t.Helper()
	return startClusterGatewaysWith(t, n, "")
}

// startClusterGatewaysWith is startClusterGateways with extraConfig
// appended to every gateway's configuration.
func startClusterGatewaysWith(t *testing.T, n int, extraConfig string) *clusterEnv {
	t.Helper()
	testbed.RequireOpenSSH(t)
	bin, err := faultBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e := &clusterEnv{t: t, bin: bin, user: testbed.LoginUser(t), extraConfig: extraConfig}
	if e.etcd, err = etcdembed.Start(ctx, t.TempDir(), 3); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.etcd.Close)
	dir := t.TempDir()
	for i := range n {
		g := &clusterGateway{env: e, ID: fmt.Sprintf("gw-%d", i+1), Data: filepath.Join(dir, fmt.Sprintf("data%d", i+1)),
			SSHAddr: freeAddr(t), MetricsAddr: freeAddr(t)}
		g.Cfg = filepath.Join(dir, g.ID+".yaml")
		mustRun(t, g.Data, "ca", "init")
		e.gw = append(e.gw, g)
	}
	// One CA for the fleet: every gateway gets the first one's key files
	// (as configuration management or a Kubernetes Secret would).
	first := ca.Layout{DataDir: e.gw[0].Data}
	for _, g := range e.gw[1:] {
		copyCAFiles(t, e.gw[0].Data, g.Data)
	}
	// Certificates, signed before any gateway holds the first data dir.
	e.client = testbed.NewClient(t)
	mustRun(t, e.gw[0].Data, "ca", "sign", "-n", e.user, e.client.KeyPath+".pub")
	keys := t.TempDir()
	e.auditor = writeUserIdentity(t, keys)
	mustRun(t, e.gw[0].Data, "ca", "sign", "-n", "carol", "--groups", "auditors,admins", e.auditor+".pub")
	hostCA, _ := mustRun(t, e.gw[0].Data, "ca", "export", "--host")
	e.knownHosts = filepath.Join(keys, "known_hosts")
	if err := os.WriteFile(e.knownHosts, []byte(hostCA), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.client.KnownHosts, []byte(hostCA), 0o600); err != nil {
		t.Fatal(err)
	}
	e.target = testbed.StartSSHD(t, testbed.SSHDConfig{TrustedUserCAKeys: string(mustRead(t, first.PublicKey(ca.UserCA)))})
	for _, g := range e.gw {
		g.writeConfig()
	}
	if e.observer, err = cluster.Open(ctx, cluster.Config{GatewayID: "test-observer", Endpoints: e.etcd.Endpoints(), Prefix: clusterPrefix}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.observer.Close() })
	for _, g := range e.gw {
		g.start()
	}
	e.waitMembers(30*time.Second, e.ids()...)
	return e
}

// copyCAFiles copies the CA key files of data dir from into data dir to
// (made by `ca init`), as configuration management would.
func copyCAFiles(t *testing.T, from, to string) {
	t.Helper()
	src := ca.Layout{DataDir: from}.Dir()
	files, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.IsDir() {
			continue
		}
		b := mustRead(t, filepath.Join(src, f.Name()))
		if err := os.WriteFile(filepath.Join(ca.Layout{DataDir: to}.Dir(), f.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// signer is a data dir holding the fleet's CA, for `ca sign` while the
// gateways run (each holds its own audit.db).
func (e *clusterEnv) signer() string {
	e.t.Helper()
	dir := filepath.Join(e.t.TempDir(), "signer")
	mustRun(e.t, dir, "ca", "init")
	copyCAFiles(e.t, e.gw[0].Data, dir)
	return dir
}

func (e *clusterEnv) ids() []string {
	var ids []string
	for _, g := range e.gw {
		ids = append(ids, g.ID)
	}
	return ids
}

func (g *clusterGateway) writeConfig() {
	e := g.env
	conf := fmt.Sprintf(`listen: %s
data_dir: %s
metrics_listen: %s
host_names: [127.0.0.1]
shutdown_grace: 2s
admin_groups: [admins]
auditor_groups: [auditors]
access:
  - principals: [%s]
    hosts: [127.0.0.1]
    ports: [%d]
    mode: tunnel
cluster:
  gateway_id: %s
  advertise: %s
  etcd:
    endpoints: [%s]
    prefix: %s
`, g.SSHAddr, g.Data, g.MetricsAddr, e.user, e.target.Port, g.ID, g.SSHAddr, strings.Join(e.etcd.Endpoints(), ", "), clusterPrefix) + strings.ReplaceAll(e.extraConfig, "$GATEWAY_ID", g.ID)
	if err := os.WriteFile(g.Cfg, []byte(conf), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// start runs `bastion serve` and waits until /livez answers.
func (g *clusterGateway) start(extra ...string) {
	t := g.env.t
	t.Helper()
	buf := &bytes.Buffer{}
	s := &server{buf: buf, stderr: &syncWriter{w: buf}, exited: make(chan struct{})}
	s.cmd = exec.Command(g.env.bin, append(extra, "serve", "--config", g.Cfg)...)
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); <-s.exited })
	g.srv = s
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + g.MetricsAddr + "/livez"); err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-s.exited:
			t.Fatalf("%s: bastion serve exited at start:\n%s", g.ID, s.log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: bastion serve did not come up:\n%s", g.ID, s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends the gateway with SIGKILL: no lease revoke, no session end.
func (g *clusterGateway) Kill() { g.srv.stop(g.env.t, syscall.SIGKILL) }

// Stop ends the gateway with SIGTERM: it ends its sessions and leaves.
func (g *clusterGateway) Stop() { g.srv.stop(g.env.t, syscall.SIGTERM) }

// Restart starts the gateway again on its addresses and waits until it
// is back in the member list.
func (g *clusterGateway) Restart() {
	g.start()
	g.env.waitMembersInclude(30*time.Second, g.ID)
}

// Log is the gateway's stderr so far.
func (g *clusterGateway) Log() string { return g.srv.log() }

// members is the member list as etcd has it.
func (e *clusterEnv) members() []cluster.Member {
	ms, err := e.observer.Members(context.Background())
	if err != nil {
		e.t.Fatalf("read the member list: %v", err)
	}
	return ms
}

func memberIDs(ms []cluster.Member) string {
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	return strings.Join(ids, ",")
}

// waitMembers waits until the member list is exactly ids.
func (e *clusterEnv) waitMembers(d time.Duration, ids ...string) {
	e.t.Helper()
	want := strings.Join(ids, ",")
	waitFor(e.t, d, "member list "+want, func() bool { return memberIDs(e.members()) == want })
}

// waitMembersInclude waits until id is in the member list.
func (e *clusterEnv) waitMembersInclude(d time.Duration, id string) {
	e.t.Helper()
	waitFor(e.t, d, id+" in the member list", func() bool { return strings.Contains(","+memberIDs(e.members())+",", ","+id+",") })
}

// jumpCommand is the real ssh client jumping through g to the target and
// running command there.
func (e *clusterEnv) jumpCommand(ctx context.Context, g *clusterGateway, command ...string) *exec.Cmd {
	return e.jumpCommandAs(ctx, e.client, g, command...)
}

// jumpCommandAs is jumpCommand with client c (another certificate).
func (e *clusterEnv) jumpCommandAs(ctx context.Context, c *testbed.Client, g *clusterGateway, command ...string) *exec.Cmd {
	args := append([]string{"-J", e.user + "@" + g.SSHAddr, "-p", fmt.Sprint(e.target.Port), e.user + "@127.0.0.1"}, command...)
	return c.Command(ctx, "ssh", args...)
}

// jump runs command on the target through g and fails the test unless it
// succeeds.
func (e *clusterEnv) jump(ctx context.Context, g *clusterGateway, command ...string) string {
	e.t.Helper()
	out, err := e.jumpCommand(ctx, g, command...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("ssh -J through %s: %v\n%s\ngateway log:\n%s", g.ID, err, out, g.Log())
	}
	return string(out)
}

// cli runs the bastion CLI in the test process with the auditor's
// identity flags appended where asked (remote commands).
func (e *clusterEnv) cli(args ...string) (stdout, stderr string, err error) {
	e.t.Helper()
	return run(e.t, e.t.TempDir(), args...)
}

// auditorFlags are the flags that make the CLI ask gateways as the
// auditor.
func (e *clusterEnv) auditorFlags() []string {
	return []string{"--identity", e.auditor, "--known-hosts", e.knownHosts}
}

// remoteEvents exports g's events of types over SSH, as the auditor.
func (e *clusterEnv) remoteEvents(g *clusterGateway, types string) []audit.Event {
	e.t.Helper()
	out, errOut, err := e.cli(append([]string{"audit", "export", "--gateway", g.SSHAddr, "--type", types}, e.auditorFlags()...)...)
	if err != nil {
		e.t.Fatalf("audit export --gateway %s: %v\n%s", g.ID, err, errOut)
	}
	return decodeEvents(e.t, out)
}

// decodeEvents parses a JSON Lines export.
func decodeEvents(t *testing.T, out string) []audit.Event {
	t.Helper()
	var evs []audit.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		ev, err := audit.DecodeEvent([]byte(line))
		if err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// TestClusterKill9GatewayLost: a gateway killed with SIGKILL while it
// holds a live ssh -J session leaves the member list when its lease
// expires; exactly one other member ends the session in its own log with
// reason gateway_lost and the registry drops it; restarted, the killed
// gateway closes the session in its log (gateway_crashed), and every
// gateway's chain verifies (audit verify --cluster).
func TestClusterKill9GatewayLost(t *testing.T) {
	e := startClusterGateways(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	victim := e.gw[0]
	sess := e.jumpCommand(ctx, victim, "sleep", "300")
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sess.Process.Kill(); _ = sess.Wait() }()
	var id string
	waitFor(t, 20*time.Second, "the session in the live-session registry", func() bool {
		ss, err := e.observer.Sessions(ctx)
		if err == nil && len(ss) == 1 && ss[0].Gateway == victim.ID && ss[0].User == e.user && ss[0].Kind == "tunnel" {
			id = ss[0].ID
			return true
		}
		return false
	})
	waitFor(t, 10*time.Second, "the member record counting the session", func() bool {
		ms := e.members()
		return len(ms) == 3 && ms[0].ID == victim.ID && ms[0].LiveSessions == 1
	})
	// audit watch of the session through another gateway: that gateway
	// names the holder and the command to run there, and --cluster goes
	// to the holder itself (a tunnel session has no recording to show).
	_, errOut, err := e.cli(append([]string{"audit", "watch", id, "--gateway", e.gw[1].SSHAddr}, e.auditorFlags()...)...)
	if err == nil || !strings.Contains(errOut, "session "+id+" is live on gateway "+victim.ID+" ("+victim.SSHAddr+")") || !strings.Contains(errOut, "--gateway "+victim.SSHAddr) {
		t.Errorf("audit watch through gw-2 of a session on gw-1: %v\n%s", err, errOut)
	}
	_, errOut, err = e.cli(append([]string{"audit", "watch", id, "--cluster", "--gateway", e.gw[1].SSHAddr}, e.auditorFlags()...)...)
	if err == nil || !strings.Contains(errOut, "session "+id+" is on gateway "+victim.ID) || !strings.Contains(errOut, "has no recording") {
		t.Errorf("audit watch --cluster did not reach the holder: %v\n%s", err, errOut)
	}
	killed := time.Now()
	victim.Kill()
	e.waitMembers(cluster.LeaseTTL+10*time.Second, "gw-2", "gw-3")
	t.Logf("%s left the member list %s after kill -9 (lease TTL %s)", victim.ID, time.Since(killed).Round(100*time.Millisecond), cluster.LeaseTTL)
	if ss, err := e.observer.Sessions(ctx); err != nil || len(ss) != 0 {
		t.Errorf("registry after the lease expired = %+v, %v; want empty", ss, err)
	}
	var lost []audit.Event
	waitFor(t, 20*time.Second, "a gateway_lost record", func() bool {
		lost = nil
		for _, g := range e.gw[1:] {
			for _, ev := range e.remoteEvents(g, "session.end") {
				if ev.Session == id {
					lost = append(lost, ev)
				}
			}
		}
		return len(lost) > 0
	})
	time.Sleep(2 * time.Second) // a duplicate would be written by now
	lost = nil
	for _, g := range e.gw[1:] {
		for _, ev := range e.remoteEvents(g, "session.end") {
			if ev.Session == id {
				lost = append(lost, ev)
			}
		}
	}
	if len(lost) != 1 {
		t.Fatalf("session %s ended %d times across the surviving gateways, want exactly once: %+v", id, len(lost), lost)
	}
	f := lost[0].Fields
	if f["reason"] != cluster.ReasonGatewayLost || f["lost_gateway"] != victim.ID || (f["gateway"] != "gw-2" && f["gateway"] != "gw-3") || lost[0].Actor != e.user {
		t.Errorf("the gateway_lost record = %+v", lost[0])
	}

	victim.Restart()
	ends := e.remoteEvents(victim, "session.end")
	var crashed int
	for _, ev := range ends {
		if ev.Session == id && ev.Fields["reason"] == audit.ReasonGatewayCrashed && ev.Fields["gateway"] == victim.ID {
			crashed++
		}
	}
	if crashed != 1 {
		t.Errorf("%s's own log closed session %s %d times at restart, want once: %+v", victim.ID, id, crashed, ends)
	}
	out, errOut, err := e.cli(append([]string{"audit", "verify", "--cluster", "--gateway", e.gw[1].SSHAddr}, e.auditorFlags()...)...)
	if err != nil {
		t.Fatalf("audit verify --cluster: %v\n%s\n%s", err, out, errOut)
	}
	for _, g := range e.gw {
		if !strings.Contains(out, g.ID+" ("+g.SSHAddr+"): ok, hash chain intact") {
			t.Errorf("verify --cluster does not vouch for %s:\n%s", g.ID, out)
		}
	}
}

// TestClusterAuditExport: audit export --cluster merges the three
// gateways' logs in time order, each event naming its gateway; sessions
// --cluster lists every gateway's sessions; with one gateway stopped the
// export names it and exits 3, still writing the others' events.
func TestClusterAuditExport(t *testing.T) {
	e := startClusterGateways(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, g := range e.gw {
		if out := e.jump(ctx, g, "echo", "via-"+g.ID); !strings.Contains(out, "via-"+g.ID) {
			t.Fatalf("jump through %s: %q", g.ID, out)
		}
	}
	export := func() (string, string, error) {
		return e.cli(append([]string{"audit", "export", "--cluster", "--gateway", e.gw[0].SSHAddr, "--type", "session.*,gateway.start"}, e.auditorFlags()...)...)
	}
	waitFor(t, 10*time.Second, "three session.end records", func() bool {
		out, _, err := export()
		return err == nil && strings.Count(out, `"type":"session.end"`) == 3
	})
	out, errOut, err := export()
	if err != nil {
		t.Fatalf("audit export --cluster: %v\n%s", err, errOut)
	}
	evs := decodeEvents(t, out)
	seen := map[string]int{}
	for i, ev := range evs {
		gw := ev.Fields["gateway"]
		if gw == "" {
			t.Errorf("event %s (%s) names no gateway", ev.ID, ev.Type)
		}
		seen[gw+" "+ev.Type]++
		if i > 0 && ev.Time.Before(evs[i-1].Time) {
			t.Errorf("event %d (%s on %s) is before event %d: not merged in time order", i, ev.Time, gw, i-1)
		}
	}
	for _, g := range e.gw {
		for _, typ := range []string{"gateway.start", "session.start", "session.end"} {
			if seen[g.ID+" "+typ] != 1 {
				t.Errorf("%s: %d %s events in the merged export, want 1 (%v)", g.ID, seen[g.ID+" "+typ], typ, seen)
			}
		}
	}
	sessions, errOut, err := e.cli(append([]string{"audit", "sessions", "--cluster", "--config", e.gw[1].Cfg}, e.auditorFlags()...)...)
	if err != nil {
		t.Fatalf("audit sessions --cluster: %v\n%s", err, errOut)
	}
	if !strings.HasPrefix(sessions, "GATEWAY") || strings.Count(sessions, e.user) != 3 {
		t.Errorf("audit sessions --cluster:\n%s", sessions)
	}
	for _, g := range e.gw {
		if !strings.Contains(sessions, g.ID) {
			t.Errorf("audit sessions --cluster lacks %s:\n%s", g.ID, sessions)
		}
	}

	e.gw[2].Stop()
	e.waitMembers(10*time.Second, "gw-1", "gw-2")
	out, errOut, err = export()
	if err == nil || exitCode(err) != exitPartial {
		t.Fatalf("export --cluster with gw-3 stopped: err %v (exit %d), want exit %d", err, exitCode(err), exitPartial)
	}
	if !strings.Contains(errOut, "gateway gw-3 ("+e.gw[2].SSHAddr+") could not be read") || !strings.Contains(err.Error(), "gw-3") {
		t.Errorf("the stopped gateway is not named: %v\n%s", err, errOut)
	}
	partial := decodeEvents(t, out)
	got := map[string]bool{}
	for _, ev := range partial {
		got[ev.Fields["gateway"]] = true
	}
	if !got["gw-1"] || !got["gw-2"] || got["gw-3"] {
		t.Errorf("partial export has events of %v, want gw-1 and gw-2 only", got)
	}
}

// TestClusterStatus: bastion cluster status (etcd through --config, and
// a gateway over SSH, and the admin command through the real ssh client)
// lists the members with their addresses and version; a gateway killed
// with SIGKILL leaves the list once its lease expires and is shown down.
func TestClusterStatus(t *testing.T) {
	e := startClusterGateways(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, err := e.cli("cluster", "status", "--config", e.gw[0].Cfg)
	if err != nil {
		t.Fatalf("cluster status --config: %v\n%s", err, errOut)
	}
	for _, g := range e.gw {
		if !strings.Contains(out, g.ID) || !strings.Contains(out, g.SSHAddr) {
			t.Errorf("cluster status lacks %s at %s:\n%s", g.ID, g.SSHAddr, out)
		}
	}
	if !strings.Contains(out, "etcd as seen by this CLI: reachable") || !strings.Contains(out, "2 member(s) up, 0 down") {
		t.Errorf("cluster status:\n%s", out)
	}
	js, errOut, err := e.cli(append([]string{"cluster", "status", "--json", "--gateway", e.gw[1].SSHAddr}, e.auditorFlags()...)...)
	if err != nil {
		t.Fatalf("cluster status --gateway: %v\n%s", err, errOut)
	}
	if !strings.Contains(js, `"gateway":"gw-2"`) || !strings.Contains(js, `"etcd_healthy":true`) || !strings.Contains(js, `"ssh_addr":"`+e.gw[0].SSHAddr+`"`) {
		t.Errorf("cluster status --json through gw-2: %s", js)
	}
	// The admin command, through the real ssh client, as the auditor's
	// identity (admins and auditors may run it; others may not).
	admin := e.client.Command(ctx, "ssh", "-i", e.auditor, "-o", "CertificateFile="+e.auditor+"-cert.pub", "-o", "IdentitiesOnly=yes", "-p", portOf(e.gw[0].SSHAddr), "carol@127.0.0.1", "cluster", "status")
	res, err := admin.CombinedOutput()
	if err != nil || !strings.Contains(string(res), "etcd as seen by gateway gw-1: reachable") || !strings.Contains(string(res), e.gw[1].SSHAddr) {
		t.Errorf("ssh carol@gw-1 cluster status: %v\n%s", err, res)
	}
	denied, err := e.client.Command(ctx, "ssh", "-p", portOf(e.gw[0].SSHAddr), e.user+"@127.0.0.1", "cluster", "status").CombinedOutput()
	if err == nil || !strings.Contains(string(denied), "an admin group (admins) or an auditor group (auditors)") {
		t.Errorf("a plain user ran cluster status: %v\n%s", err, denied)
	}

	e.gw[1].Kill()
	e.waitMembers(cluster.LeaseTTL+10*time.Second, "gw-1")
	out, _, err = e.cli("cluster", "status", "--config", e.gw[0].Cfg)
	if err != nil || !strings.Contains(out, "1 member(s) up, 1 down") || !strings.Contains(out, "gw-2") {
		t.Errorf("cluster status after gw-2 was killed: %v\n%s", err, out)
	}
}

// portOf is the port of HOST:PORT.
func portOf(addr string) string {
	return addr[strings.LastIndexByte(addr, ':')+1:]
}
