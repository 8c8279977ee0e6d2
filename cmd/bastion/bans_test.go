package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestBansOffline: with no gateway running there are no bans; the
// commands say so rather than fail obscurely.
func TestBansOffline(t *testing.T) {
	newHome(t)
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	out, errOut := mustRun(t, dir, "bans")
	if out != "" || !strings.HasPrefix(errOut, "no bans") || !strings.Contains(errOut, "no gateway is running") {
		t.Errorf("bans offline: stdout %q stderr %q", out, errOut)
	}
	if out, _ := mustRun(t, dir, "bans", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("bans --json offline: %q", out)
	}
	// Like unlock of a user who is not locked: done, with a note.
	if out, _, err := run(t, dir, "unban", "192.0.2.7"); err != nil || !strings.HasPrefix(out, "192.0.2.7 was not banned") {
		t.Errorf("unban offline: %v %q", err, out)
	}
}

// TestBansOfflineInCluster: on a stopped cluster gateway's data dir,
// bans and unban do not claim "no bans" (a cluster's bans live in etcd,
// held by the running members): they fail and name the command to run
// through a running gateway.
func TestBansOfflineInCluster(t *testing.T) {
	newHome(t)
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "ca", "init")
	store, err := audit.Open(ca.Layout{DataDir: dir}.AuditDB(), audit.Options{GatewayID: "gw-7"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(t.Context(), audit.Event{Type: audit.TypeGatewayStart, Actor: "gateway"}); err != nil {
		t.Fatal(err)
	}
	store.Close()
	for _, args := range [][]string{{"bans"}, {"bans", "--json"}, {"unban", "192.0.2.7"}} {
		out, _, err := run(t, dir, args...)
		if err == nil || out != "" {
			t.Errorf("bastion %s on a stopped cluster gateway: err %v stdout %q; want an error and nothing on stdout", strings.Join(args, " "), err, out)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "gateway gw-7 of a cluster") || !strings.Contains(msg, "bastion "+args[0]) || !strings.Contains(msg, "--gateway HOST:PORT") {
			t.Errorf("bastion %s on a stopped cluster gateway: %v", strings.Join(args, " "), err)
		}
	}
}

// TestBansThroughGateway: an admin lists the running gateway's bans and
// lifts one with the CLI; the source gets in again and the lift is
// audited.
func TestBansThroughGateway(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{banAfter: 3})
	signer := testbed.NewSigner(t)
	for range 3 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.6")}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		if c, _, _, err := gossh.NewClientConn(conn, e.addr, &gossh.ClientConfig{
			User: "root", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}, HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		}); err == nil {
			c.Close()
			t.Fatal("root logged in")
		}
		conn.Close()
	}
	e.waitEvent(audit.TypeSourceBanned, map[string]string{"remote": "127.0.0.6"})

	useHome(t, t.TempDir())
	if _, stderr, err := runLoginCLI(t, e.addr, e.approveDevice(t, "ops")); err != nil {
		t.Fatalf("ops login: %v\n%s", err, stderr)
	}
	out, errOut, err := run(t, e.layout.DataDir, "bans", "--gateway", e.addr)
	if err != nil || !strings.HasPrefix(out, "127.0.0.6\t") {
		t.Fatalf("bans: %v\n%s%s", err, out, errOut)
	}
	// The audit log is held: unban goes through the gateway of the last login.
	out, errOut, err = run(t, e.layout.DataDir, "unban", "127.0.0.6")
	if err != nil || strings.TrimSpace(out) != "unbanned 127.0.0.6" {
		t.Fatalf("unban: %v\n%s%s", err, out, errOut)
	}
	e.waitEvent(audit.TypeSourceUnbanned, map[string]string{"source": "127.0.0.6", "by": "ops"})
	if out, errOut, err := run(t, e.layout.DataDir, "bans"); err != nil || out != "" || strings.TrimSpace(errOut) != "no bans" {
		t.Errorf("bans after unban: %v %q %q", err, out, errOut)
	}
	if out, _, err := run(t, e.layout.DataDir, "bans", "--json"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("bans --json after unban: %v %q", err, out)
	}
	if out, errOut, err := run(t, e.layout.DataDir, "unban", "127.0.0.6"); err != nil || strings.TrimSpace(out) != "127.0.0.6 was not banned" {
		t.Errorf("unban of an unbanned source: %v: %q %s", err, out, errOut)
	}
}
