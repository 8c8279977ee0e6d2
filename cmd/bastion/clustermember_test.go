package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/cluster"
)

// TestClusterDuplicateGatewayIDRefused: a second `bastion serve` given
// the gateway_id of a live gateway exits non-zero naming the id, the
// holder's address and the fix; the live gateway stays in the member
// list with its own address and its live session stays registered to it.
func TestClusterDuplicateGatewayIDRefused(t *testing.T) {
	e := startClusterGateways(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	live, dup := e.gw[0], e.gw[1]
	sess := e.jumpCommand(ctx, live, "sleep", "120")
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sess.Process.Kill(); _ = sess.Wait() }()
	var id string
	waitFor(t, 20*time.Second, "the session in the registry", func() bool {
		ss, err := e.observer.Sessions(ctx)
		if err == nil && len(ss) == 1 && ss[0].Gateway == live.ID {
			id = ss[0].ID
			return true
		}
		return false
	})
	dup.Stop()
	e.waitMembers(10*time.Second, live.ID)
	conf := strings.Replace(string(mustRead(t, dup.Cfg)), "gateway_id: "+dup.ID, "gateway_id: "+live.ID, 1)
	if err := os.WriteFile(dup.Cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := exec.CommandContext(ctx, e.bin, "serve", "--config", dup.Cfg).CombinedOutput()
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("bastion serve with a live gateway's id: %v, want a non-zero exit\n%s", err, out)
	}
	for _, want := range []string{`gateway id "` + live.ID + `" is already held by a live gateway at ` + live.SSHAddr + " (started ", "cluster.gateway_id or BASTION_GATEWAY_ID", "expires within 10s"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	t.Logf("the duplicate exited %d after %s", ee.ExitCode(), took.Round(100*time.Millisecond))
	ms := e.members()
	if len(ms) != 1 || ms[0].ID != live.ID || ms[0].SSHAddr != live.SSHAddr || ms[0].LiveSessions != 1 {
		t.Fatalf("members after the duplicate exited = %+v, want %s at %s with its session", ms, live.ID, live.SSHAddr)
	}
	if s, found, err := e.observer.LookupSession(ctx, id); err != nil || !found || s.Gateway != live.ID {
		t.Fatalf("session %s after the duplicate exited: %+v, %v, %v; want it registered to %s", id, s, found, err, live.ID)
	}
	out2, _, err := e.cli("cluster", "status", "--config", live.Cfg)
	if err != nil || !strings.Contains(out2, "1 member(s) up") || strings.Contains(firstLineWith(out2, live.SSHAddr), "DOWN") {
		t.Errorf("cluster status after the duplicate exited: %v\n%s", err, out2)
	}
}

// lockedBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// firstLineWith is the first line of s containing sub ("" if none).
func firstLineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// clusterSessions is `audit sessions --cluster --json` through etcd
// (--config of g), decoded.
func (e *clusterEnv) clusterSessions(g *clusterGateway) ([]audit.SessionSummary, error) {
	out, errOut, err := e.cli(append([]string{"audit", "sessions", "--cluster", "--json", "--config", g.Cfg}, e.auditorFlags()...)...)
	if err != nil {
		return nil, errors.New(err.Error() + ": " + errOut)
	}
	var list []audit.SessionSummary
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var s audit.SessionSummary
		if err := dec.Decode(&s); err != nil {
			return nil, err
		}
		list = append(list, s)
	}
	return list, nil
}

// TestClusterFrozenGatewayResumes: a gateway frozen with SIGSTOP past
// its lease's TTL, holding a live ssh -J session, has the session ended
// as gateway_lost by its peer; continued with SIGCONT, it records
// session.resumed (naming the peer and how long it was cut off) and
// registers the session again; the session goes on, `audit sessions
// --cluster` shows it live and then ended normally (never gateway_lost),
// and every chain verifies.
func TestClusterFrozenGatewayResumes(t *testing.T) {
	e := startClusterGateways(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	holder, peer := e.gw[0], e.gw[1]
	stdin, feed := io.Pipe()
	sess := e.jumpCommand(ctx, holder, "echo ready && read line && echo got-$line")
	sess.Stdin = stdin
	sessOut := &lockedBuffer{}
	sess.Stdout, sess.Stderr = sessOut, sessOut
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sess.Process.Kill() }()
	var id string
	waitFor(t, 20*time.Second, "the session in the registry", func() bool {
		ss, err := e.observer.Sessions(ctx)
		if err == nil && len(ss) == 1 && ss[0].Gateway == holder.ID {
			id = ss[0].ID
			return true
		}
		return false
	})
	waitFor(t, 20*time.Second, "the command running on the target", func() bool { return strings.Contains(sessOut.String(), "ready") })

	proc := holder.srv.cmd.Process
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	defer func() { _ = proc.Signal(syscall.SIGCONT) }()
	var lost audit.Event
	deadline := time.Now().Add(cluster.LeaseTTL + 20*time.Second)
	for lost.Session == "" {
		if time.Now().After(deadline) {
			t.Fatalf("%s never ended the frozen gateway's session as gateway_lost", peer.ID)
		}
		time.Sleep(500 * time.Millisecond)
		for _, ev := range e.remoteEvents(peer, "session.end") {
			if ev.Session == id && ev.Fields["reason"] == cluster.ReasonGatewayLost {
				lost = ev
			}
		}
	}
	lostAfter := lost.Time.Sub(stopped)
	if lost.Fields["lost_gateway"] != holder.ID {
		t.Errorf("the gateway_lost record = %+v", lost)
	}

	if err := proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumedAt := time.Now()
	var resumed audit.Event
	for deadline := time.Now().Add(20 * time.Second); resumed.Session == ""; {
		if time.Now().After(deadline) {
			t.Fatalf("no session.resumed in %s's log 20s after SIGCONT; session output %q; its log:\n%s", holder.ID, sessOut.String(), holder.Log())
		}
		time.Sleep(300 * time.Millisecond)
		for _, ev := range e.remoteEvents(holder, audit.TypeSessionResumed) {
			if ev.Session == id {
				resumed = ev
			}
		}
	}
	f := resumed.Fields
	cutOff, _ := strconv.ParseInt(f["cut_off_ms"], 10, 64)
	if f["lost_by"] != peer.ID || f["gateway"] != holder.ID || resumed.Actor != e.user || cutOff < cluster.LeaseTTL.Milliseconds() || f["lost_reason"] != cluster.ReasonGatewayLost {
		t.Errorf("session.resumed = %+v; want lost_by %s, gateway %s, actor %s, cut_off_ms >= %d", resumed, peer.ID, holder.ID, e.user, cluster.LeaseTTL.Milliseconds())
	}
	t.Logf("frozen %s: gateway_lost recorded by %s %s after SIGSTOP (lease TTL %s); session.resumed %s after SIGCONT (cut off %d ms)",
		holder.ID, peer.ID, lostAfter.Round(100*time.Millisecond), cluster.LeaseTTL, resumed.Time.Sub(resumedAt).Round(10*time.Millisecond), cutOff)
	waitFor(t, 10*time.Second, "the session registered again", func() bool {
		s, found, err := e.observer.LookupSession(ctx, id)
		return err == nil && found && s.Gateway == holder.ID
	})

	find := func() (audit.SessionSummary, int) {
		list, err := e.clusterSessions(peer)
		if err != nil {
			t.Fatalf("audit sessions --cluster: %v", err)
		}
		var got audit.SessionSummary
		n := 0
		for _, s := range list {
			if s.Session == id {
				got, n = s, n+1
			}
		}
		return got, n
	}
	if s, n := find(); n != 1 || !s.Active || s.Reason != "" || s.Gateway != holder.ID {
		t.Errorf("audit sessions --cluster after the resumption: %d entries for %s, %+v; want one, live, on %s", n, id, s, holder.ID)
	}
	// The session goes on: it reads a line and ends.
	if _, err := io.WriteString(feed, "x\n"); err != nil {
		t.Fatal(err)
	}
	feed.Close()
	if err := sess.Wait(); err != nil || !strings.Contains(sessOut.String(), "got-x") {
		t.Fatalf("the session after the freeze: %v\n%s", err, sessOut.String())
	}
	var ended audit.SessionSummary
	waitFor(t, 10*time.Second, "the session ended in audit sessions --cluster", func() bool {
		time.Sleep(300 * time.Millisecond)
		s, n := find()
		ended = s
		return n == 1 && !s.Active
	})
	if ended.Reason == cluster.ReasonGatewayLost || ended.Gateway != holder.ID || ended.BytesUp == nil {
		t.Errorf("audit sessions --cluster shows the ended session as %+v; want its holder's own end (bytes counted), not gateway_lost", ended)
	}
	out, errOut, err := e.cli(append([]string{"audit", "verify", "--cluster", "--gateway", peer.SSHAddr}, e.auditorFlags()...)...)
	if err != nil {
		t.Fatalf("audit verify --cluster: %v\n%s\n%s", err, out, errOut)
	}
	for _, g := range e.gw {
		if !strings.Contains(out, g.ID+" ("+g.SSHAddr+"): ok, hash chain intact") {
			t.Errorf("verify --cluster does not vouch for %s:\n%s", g.ID, out)
		}
	}
}
