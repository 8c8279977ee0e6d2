package gateway

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// banSource fails authentication from src until the gateway bans it.
func banSource(t *testing.T, tg *testGateway, src string) {
	t.Helper()
	signer := testbed.NewSigner(t)
	for i := range 3 * DefaultLimits().BanAfterFailures {
		conn, err := dialFrom(t, src, tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		c, _, _, err := gossh.NewClientConn(conn, tg.addr, &gossh.ClientConfig{
			User: "root", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second,
		})
		if err == nil {
			c.Close()
			t.Fatal("root logged in")
		}
		conn.Close()
		if _, banned := tg.gw.bans.Banned(mustAddr(src)); banned {
			return
		}
		_ = i
	}
	t.Fatalf("%s is not banned after %d failures", src, 3*DefaultLimits().BanAfterFailures)
}

// TestBansAndUnbanOverSSH: admins list bans and lift one with OpenSSH;
// the lift is audited (source.unbanned) and the source gets in again;
// others may do neither.
func TestBansAndUnbanOverSSH(t *testing.T) {
	tg := startGateway(t)
	banSource(t, tg, "127.0.0.5")
	admin := tg.client(ca.Request{KeyID: "admin", Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
	user := tg.client(ca.Request{KeyID: "user"})
	ctx := t.Context()

	if res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "bans")...); res.ExitCode != 126 {
		t.Fatalf("a non-admin listed bans: %s", res)
	}
	if res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "unban", "127.0.0.5")...); res.ExitCode != 126 {
		t.Fatalf("a non-admin unbanned: %s", res)
	}
	res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "bans")...)
	if res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, "127.0.0.5\t") || strings.Count(res.Stdout, "\n") != 1 {
		t.Fatalf("bans: %s", res)
	}
	res = admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "bans", "--json")...)
	var list []BanEntry
	if res.ExitCode != 0 || json.Unmarshal([]byte(res.Stdout), &list) != nil || len(list) != 1 || list[0].Source != "127.0.0.5" || list[0].SecondsLeft <= 0 {
		t.Fatalf("bans --json: %s", res)
	}
	res = admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "unban", "127.0.0.5")...)
	if res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "unbanned 127.0.0.5" {
		t.Fatalf("unban: %s", res)
	}
	tg.waitEvent(t, audit.TypeSourceUnbanned, map[string]string{"source": "127.0.0.5", "by": "opsadmin"})
	if _, banned := tg.gw.bans.Banned(mustAddr("127.0.0.5")); banned {
		t.Fatal("still banned after unban")
	}
	// An empty list says so on stderr, stdout stays empty; --json is [].
	if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "bans")...); res.ExitCode != 0 || res.Stdout != "" || strings.TrimSpace(res.Stderr) != "no bans" {
		t.Fatalf("bans after unban: %s", res)
	}
	if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "bans", "--json")...); res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "[]" {
		t.Fatalf("bans --json after unban: %s", res)
	}
	if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "locks")...); res.ExitCode != 0 || res.Stdout != "" || strings.TrimSpace(res.Stderr) != "no locks" {
		t.Fatalf("locks with none: %s", res)
	}
	if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "locks", "--json")...); res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "[]" {
		t.Fatalf("locks --json with none: %s", res)
	}
	// Unbanning a source that is not banned is done, with a note, like
	// unlocking a user who is not locked.
	res = admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "unban", "127.0.0.5")...)
	if res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "127.0.0.5 was not banned" {
		t.Fatalf("unbanning an unbanned source: %s", res)
	}
	res = admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "unban", "not-an-address")...)
	if res.ExitCode != 1 || !strings.Contains(res.Stderr, "not an IP address") {
		t.Fatalf("unban of garbage: %s", res)
	}
	if n := len(tg.events(audit.TypeSourceUnbanned)); n != 1 {
		t.Errorf("%d source.unbanned records, want 1", n)
	}
	// The source reaches the handshake again.
	conn, err := dialFrom(t, "127.0.0.5", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 8)
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "SSH-2.0-"[:n] {
		t.Fatalf("the unbanned source gets no banner: %q %v", buf[:n], err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
