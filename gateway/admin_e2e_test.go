package gateway

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/ca"
)

// TestRevokeAndKRLThroughTheGateway: while the gateway holds the audit
// database, admins revoke over SSH; the revoked user's live session ends,
// and the KRL the gateway hands out makes ssh-keygen (and so sshd) agree.
func TestRevokeAndKRLThroughTheGateway(t *testing.T) {
	krlFile := filepath.Join(t.TempDir(), "revoked.krl")
	tg := startGateway(t, func(c *Config, _ *Deps) { c.KRLFile = krlFile })
	ctx := t.Context()
	if _, err := os.Stat(krlFile); err != nil {
		t.Fatalf("krl_file not written at start: %v", err)
	}
	admin := tg.client(ca.Request{KeyID: "admin", Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
	victim := tg.client(ca.Request{KeyID: "victim", Serial: 4242})
	bystander := tg.client(ca.Request{KeyID: "bystander", Serial: 4343})

	exited := tg.liveSession(t, victim)

	if res := bystander.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "revoke", "--serial", "4242")...); res.ExitCode != 126 {
		t.Fatalf("a non-admin revoked: %s", res)
	}
	res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "revoke", "--serial", "4242", "--reason", "'laptop stolen'")...)
	if res.ExitCode != 0 {
		t.Fatalf("revoke over ssh: %s", res)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the revoked certificate's live session is still running")
	}
	tg.waitEvent(t, "cert.revoked", map[string]string{"kind": "serial", "value": "4242", "reason": "laptop stolen"})
	tg.waitEvent(t, "session.end", map[string]string{"key_id": "victim", "reason": ReasonRevoked})

	res = admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "krl")...)
	if res.ExitCode != 0 {
		t.Fatalf("krl over ssh: %s", res)
	}
	dir := t.TempDir()
	krl := filepath.Join(dir, "revoked.krl")
	if err := os.WriteFile(krl, []byte(res.Stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{krl, krlFile} { // from `krl` and the refreshed krl_file
		for _, tc := range []struct {
			cert    string
			revoked bool
		}{{victim.CertPath, true}, {bystander.CertPath, false}} {
			out, err := exec.Command("ssh-keygen", "-Q", "-f", file, tc.cert).CombinedOutput()
			got := err != nil && strings.Contains(string(out), "REVOKED")
			if got != tc.revoked {
				t.Errorf("ssh-keygen -Q -f %s %s: %s (exit error %v), want revoked=%v", file, tc.cert, out, err, tc.revoked)
			}
		}
	}
	if res := victim.Run(ctx, "ssh", tg.jumpArgs(tg.user, "true")...); res.ExitCode == 0 {
		t.Fatal("a revoked certificate still logs in")
	}
	if res := bystander.Run(ctx, "ssh", tg.jumpArgs(tg.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("an unrevoked certificate was refused: %s", res)
	}
}

// TestAdminBarsThemselves: an admin who revokes their own certificate,
// or locks themselves, sees what was done and that their connection ends,
// with the command's exit status; then the connection ends and the next
// one is refused.
func TestAdminBarsThemselves(t *testing.T) {
	tg := startGateway(t)
	ctx := t.Context()
	// Without --force, a lock that would bar the caller is refused, says
	// why, and leaves the caller able to connect.
	for _, target := range []string{"opsadmin", "admin"} {
		admin := tg.client(ca.Request{KeyID: "admin", Serial: 5353, Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
		res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "lock", target)...)
		if res.ExitCode != 1 || !strings.Contains(res.Stderr, "would bar you too") || !strings.Contains(res.Stderr, "--force") {
			t.Errorf("self-lock of %s without --force: %s", target, res)
		}
		if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "info")...); res.ExitCode != 0 {
			t.Fatalf("a refused self-lock of %s still barred the admin: %s", target, res)
		}
	}
	for _, tc := range []struct {
		name   string
		serial uint64
		args   []string
		want   []string
	}{
		{"revoke own serial", 5151, []string{"revoke", "--serial", "5151"}, []string{"revoked serial 5151", "this also bars you (certificate revoked by serial 5151)", "ends now"}},
		{"lock self", 5252, []string{"lock", "opsadmin", "--reason", "test", "--force"}, []string{"locked opsadmin", "this also bars you (certificate opsadmin is locked: test)", "ends now"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin := tg.client(ca.Request{KeyID: "admin", Serial: tc.serial, Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
			res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", tc.args...)...)
			if res.ExitCode != 0 {
				t.Fatalf("%v: %s", tc.args, res)
			}
			for _, w := range tc.want {
				if !strings.Contains(res.Stdout+res.Stderr, w) {
					t.Errorf("%v: output lacks %q: %s", tc.args, w, res)
				}
			}
			if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "info")...); res.ExitCode != 255 {
				t.Errorf("after barring themselves: %s", res)
			}
		})
	}
}

// TestListenCauseNamesTheAddressOnce: a taken address is named once in
// the listen error, not again in net's "listen tcp ADDR:" prefix.
func TestListenCauseNamesTheAddressOnce(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = net.Listen("tcp", l.Addr().String())
	if err == nil {
		t.Fatal("listening twice on one address succeeded")
	}
	msg := fmt.Sprintf("listen on %s: %v", l.Addr(), ListenCause(err))
	if strings.Count(msg, l.Addr().String()) != 1 || !strings.Contains(msg, "address already in use") {
		t.Errorf("listen error %q", msg)
	}
}
