package gateway

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
)

// TestJumpPolicy: the access rules decide host and port; guarded addresses
// (cloud metadata, link-local, loopback) need a rule that names them.
func TestJumpPolicy(t *testing.T) {
	tg := startGateway(t, withoutBans, func(c *Config, _ *Deps) {
		c.Access = append(c.Access,
			AccessRule{Groups: []string{"eng"}, Hosts: []string{"*.internal", "0.0.0.0/0"}, Ports: []int{22}},
		)
	}, withResolver(map[string][]netip.Addr{
		// DNS that points an allowed name at the metadata service.
		"metadata.internal": {netip.MustParseAddr("169.254.169.254")},
		"web1.internal":     {netip.MustParseAddr("192.0.2.10")},
	}))
	c := tg.client(ca.Request{KeyID: "policy", Groups: []string{"eng"}})
	ctx := t.Context()
	tests := []struct {
		name, host string
		port       int
		reason     string
	}{
		{"port not allowed", "127.0.0.1", 1, ReasonPortNotAllowed},
		{"host not allowed", "127.0.0.2", tg.target.Port, ReasonGuardedAddress},
		{"cloud metadata even under 0.0.0.0/0", "169.254.169.254", 22, ReasonGuardedAddress},
		{"link-local v6", "fe80::1", 22, ReasonGuardedAddress},
		{"unknown name", "nosuchhost.invalid", 22, ReasonResolveFailed},
		{"allowed name resolving to metadata", "metadata.internal", 22, ReasonGuardedAddress},
		{"allowed name, port not allowed", "web1.internal", 2222, ReasonPortNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// ssh -W is what -J runs on the jump hop; run it directly so
			// its LogLevel shows the open failure the server sent.
			target := net.JoinHostPort(tc.host, strconv.Itoa(tc.port))
			res := c.Run(ctx, "ssh", "-o", "LogLevel=INFO", "-W", target, "-p", strconv.Itoa(tg.port), tg.user+"@127.0.0.1")
			if res.ExitCode == 0 || !strings.Contains(res.Stderr, "open failed: administratively prohibited: bastion:") {
				t.Fatalf("jump to %s was not refused with a reason: %s", target, res)
			}
			// And through -J, as users run it.
			res = c.Run(ctx, "ssh", "-J", tg.user+"@"+tg.addr, "-p", strconv.Itoa(tc.port), tg.user+"@"+tc.host, "true")
			if res.ExitCode == 0 || !strings.Contains(res.Stderr, "stdio forwarding failed") {
				t.Fatalf("ssh -J to %s was not refused: %s", target, res)
			}
			ev := tg.waitEvent(t, "channel.refused", map[string]string{"reason": tc.reason, "target": net.JoinHostPort(tc.host, strconv.Itoa(tc.port))})
			if ev.Fields["key_id"] != "policy" {
				t.Errorf("refusal record lacks the identity: %v", ev.Fields)
			}
		})
	}
	if n := len(tg.events("session.start")); n != 0 {
		t.Errorf("%d sessions started to refused destinations", n)
	}
	// A rule naming a guarded address explicitly lets it through.
	if res := c.Run(ctx, "ssh", tg.jumpArgs(tg.user, "true")...); res.ExitCode != 0 {
		t.Errorf("the explicitly named 127.0.0.1 was refused: %s", res)
	}
}

// TestDialFailureIsClear: a refused or unreachable target gives the client
// an "open failed" with the reason.
func TestDialFailureIsClear(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Access[0].Ports = append(c.Access[0].Ports, closedPort)
	})
	c := tg.client(ca.Request{KeyID: "dial"})
	res := c.Run(t.Context(), "ssh", "-o", "LogLevel=INFO", "-W", "127.0.0.1:"+strconv.Itoa(closedPort), "-p", strconv.Itoa(tg.port), tg.user+"@127.0.0.1")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "open failed: connect failed: bastion: cannot connect to 127.0.0.1:"+strconv.Itoa(closedPort)) || !strings.Contains(res.Stderr, "connection refused") {
		t.Fatalf("want an open failure saying connection refused, got %s", res)
	}
	tg.waitEvent(t, "channel.refused", map[string]string{"reason": ReasonDialFailed})
}

// TestGatewaySessionRunsNoShell: a session on the gateway prints who you
// are and where you may go; it runs no shell, no other command, and refuses
// agent and X11 forwarding, remote forwarding and Unix-socket channels.
func TestGatewaySessionRunsNoShell(t *testing.T) {
	tg := startGateway(t)
	c := tg.client(ca.Request{KeyID: "info-key", Groups: []string{"eng"}})
	ctx := t.Context()
	res := c.Run(ctx, "ssh", tg.gatewayArgs(tg.user)...)
	for _, want := range []string{"you are " + tg.user, `key id "info-key"`, "groups:      eng", "certificate: expires", "127.0.0.1  port " + strconv.Itoa(tg.target.Port)} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("info lacks %q:\n%s", want, res)
		}
	}
	res = c.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "cat", "/etc/passwd")...)
	if res.ExitCode != 127 || strings.Contains(res.Stdout, "root:") {
		t.Errorf("an arbitrary command ran on the gateway: %s", res)
	}
	// Remote forwarding from OpenSSH.
	res = c.Run(ctx, "ssh", append([]string{"-o", "LogLevel=INFO", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"}, tg.gatewayArgs(tg.user, "info")...)...)
	if res.ExitCode != 255 || !strings.Contains(res.Stderr, "remote port forwarding failed") {
		t.Fatalf("remote forwarding was not refused: %s", res)
	}
	tg.waitEvent(t, "request.refused", map[string]string{"request": "tcpip-forward"})

	// Agent and X11 forwarding requests on a session (OpenSSH sends them
	// only with an agent and a display at hand; x/crypto sends them as is).
	cl, err := tg.dialGateway(tg.user, gossh.PublicKeys(certSigner(t, c, tg.certOf(c))))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sess, err := cl.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []string{"auth-agent-req@openssh.com", "x11-req"} {
		ok, err := sess.SendRequest(req, true, x11Payload(req))
		if err != nil || ok {
			t.Errorf("%s: ok=%v err=%v, want a refusal", req, ok, err)
		}
		tg.waitEvent(t, "request.refused", map[string]string{"request": req})
	}
	sess.Close()

	// direct-streamlocal: OpenSSH opens it for -L to a socket path.
	payload := gossh.Marshal(struct {
		Path     string
		Reserved string
		Port     uint32
	}{"/var/run/docker.sock", "", 0})
	if _, _, err := cl.OpenChannel("direct-streamlocal@openssh.com", payload); err == nil {
		t.Error("a direct-streamlocal channel was opened")
	}
	tg.waitEvent(t, "channel.refused", map[string]string{"request": "direct-streamlocal@openssh.com"})
}

// TestForceCommandOnGateway: a certificate's force-command replaces what
// the client asks the gateway to run.
func TestForceCommandOnGateway(t *testing.T) {
	tg := startGateway(t)
	c := tg.client(ca.Request{KeyID: "forced", Groups: []string{"admins"}, Options: []string{"force-command=info"}})
	res := c.Run(t.Context(), "ssh", tg.gatewayArgs(tg.user, "lock", "someone")...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "you are") || strings.Contains(res.Stdout, "locked") {
		t.Fatalf("force-command=info was not honoured: %s", res)
	}
	if _, locked := tg.locks.FindAny([]string{"someone"}); locked {
		t.Error("the client's own command ran instead of the forced one")
	}
}

// TestLockEndsLiveSession: an admin locks a user over SSH; the user's live
// jumped session ends at once and new logins are refused.
func TestLockEndsLiveSession(t *testing.T) {
	tg := startGateway(t)
	ctx := t.Context()
	victim := tg.client(ca.Request{KeyID: "victim", Principals: []string{tg.user, "victim"}})
	admin := tg.client(ca.Request{KeyID: "admin", Principals: []string{"opsadmin"}, Groups: []string{"admins"}})
	notAdmin := tg.client(ca.Request{KeyID: "not-admin", Principals: []string{"eve"}})

	exited := tg.liveSession(t, victim)

	if res := notAdmin.Run(ctx, "ssh", tg.gatewayArgs("eve", "lock", "victim")...); res.ExitCode == 0 {
		t.Fatalf("a non-admin locked a user: %s", res)
	}
	lockedAt := time.Now()
	res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "lock", "victim", "--reason", "'incident 42'")...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "locked victim") {
		t.Fatalf("lock over ssh: %s", res)
	}
	select {
	case <-exited:
		t.Logf("live session ended %s after the lock command returned", time.Since(lockedAt).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatal("the locked user's live session is still running")
	}
	tg.waitEvent(t, "session.end", map[string]string{"key_id": "victim", "reason": ReasonLocked})
	tg.waitEvent(t, "user.locked", map[string]string{"target": "victim", "reason": "incident 42"})
	if res := victim.Run(ctx, "ssh", tg.jumpArgs(tg.user, "true")...); res.ExitCode == 0 {
		t.Fatal("a locked user logged in again")
	}
	tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonLocked, "key_id": "victim"})

	if res := admin.Run(ctx, "ssh", tg.gatewayArgs("opsadmin", "unlock", "victim")...); res.ExitCode != 0 {
		t.Fatalf("unlock: %s", res)
	}
	if res := victim.Run(ctx, "ssh", tg.jumpArgs(tg.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("an unlocked user cannot log in: %s", res)
	}
}

// TestBanAfterFailures: a source that fails ban_after_failures times is
// cut off before the handshake, with one audit record for the ban.
func TestBanAfterFailures(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Limits.BanAfterFailures = 3
		c.Limits.BanWindow = time.Minute
		c.Limits.BanDuration = time.Hour
	})
	c := tg.client(ca.Request{KeyID: "good"})
	for range 3 {
		cl, err := tg.dialGateway("root", gossh.PublicKeys(certSigner(t, c, nil)))
		if err == nil {
			cl.Close()
			t.Fatal("root logged in")
		}
	}
	tg.waitEvent(t, "source.banned", map[string]string{"remote": "127.0.0.1"})
	// Even valid credentials are now cut off before the handshake.
	res := c.Run(t.Context(), "ssh", tg.gatewayArgs(tg.user, "info")...)
	if res.ExitCode != 255 || strings.Contains(res.Stdout, "you are") {
		t.Fatalf("a banned source got in: %s", res)
	}
	for range 3 {
		c.Run(t.Context(), "ssh", tg.gatewayArgs("root", "info")...)
	}
	if n := len(tg.events("source.banned")); n != 1 {
		t.Errorf("%d source.banned records, want exactly 1 per ban", n)
	}
	failed := len(tg.events("auth.failed"))
	if failed != 3 {
		t.Errorf("%d auth.failed records; attempts after the ban must not reach authentication", failed)
	}
}

// TestSlowLoris: connections that never finish the handshake are capped
// and timed out.
func TestSlowLoris(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Limits.MaxUnauthenticated = 3
		c.Limits.HandshakeTimeout = time.Second
	})
	var idle []net.Conn
	for range 3 {
		conn, err := net.Dial("tcp", tg.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		idle = append(idle, conn)
	}
	// The fourth is closed at once, before any banner.
	waitClosed := func(conn net.Conn, within time.Duration) bool {
		conn.SetReadDeadline(time.Now().Add(within))
		buf := make([]byte, 256)
		for {
			if _, err := conn.Read(buf); err != nil {
				var ne net.Error
				return !(errorsAs(err, &ne) && ne.Timeout())
			}
		}
	}
	// Make sure the three are counted before the fourth arrives.
	time.Sleep(200 * time.Millisecond)
	fourth, err := net.Dial("tcp", tg.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fourth.Close()
	if !waitClosed(fourth, 5*time.Second) {
		t.Error("a connection over the unauthenticated cap was kept open")
	}
	// The idle three are closed by the handshake deadline.
	for _, conn := range idle {
		if !waitClosed(conn, 10*time.Second) {
			t.Error("an idle unauthenticated connection outlived the handshake timeout")
		}
	}
	// And the slots are free again.
	c := tg.client(ca.Request{KeyID: "after"})
	if res := c.Run(context.Background(), "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode != 0 {
		t.Fatalf("login after the slow clients left: %s", res)
	}
}

// TestGracefulShutdown: SIGTERM-style shutdown lets a live session finish
// within the grace period and records its end.
func TestGracefulShutdown(t *testing.T) {
	tg := startGateway(t)
	c := tg.client(ca.Request{KeyID: "graceful"})
	ctx := t.Context()
	cmd := c.Command(ctx, "ssh", tg.jumpArgs(tg.user, "echo", "started;", "sleep", "1;", "echo", "finished")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	if line, _ := r.ReadString('\n'); strings.TrimSpace(line) != "started" {
		t.Fatalf("session did not start: %q", line)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := tg.gw.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	rest, _ := r.ReadString('\n')
	if err := cmd.Wait(); err != nil || strings.TrimSpace(rest) != "finished" {
		t.Fatalf("the live session was cut by a graceful shutdown: %v %q", err, rest)
	}
	tg.waitEvent(t, "session.end", map[string]string{"key_id": "graceful"})
	tg.waitEvent(t, "gateway.stop", nil)
	if conn, err := net.DialTimeout("tcp", tg.addr, time.Second); err == nil {
		conn.Close()
		t.Error("the gateway still accepts connections after shutdown")
	}
}

// x11Payload is the x11-req payload (RFC 4254 §6.3.1); other requests
// carry none.
func x11Payload(req string) []byte {
	if req != "x11-req" {
		return nil
	}
	return gossh.Marshal(struct {
		Single   bool
		Protocol string
		Cookie   string
		Screen   uint32
	}{false, "MIT-MAGIC-COOKIE-1", "00112233445566778899aabbccddeeff", 0})
}

// TestSelfLockReplies: an admin who locks themselves gets the reply and
// exit status 0 before the connection ends (the re-check the lock sets
// off used to cut the connection first: exit 255, no reply), and is
// refused from then on; the same for a revoke of their own key id.
func TestSelfLockReplies(t *testing.T) {
	tg := startGateway(t)
	ctx := t.Context()
	for _, tc := range []struct{ keyID, principal, verb string }{
		{"self-lock", "selflocker", "lock"},
		{"self-revoke", "selfrevoker", "revoke"},
	} {
		t.Run(tc.verb, func(t *testing.T) {
			admin := tg.client(ca.Request{KeyID: tc.keyID, Principals: []string{tc.principal}, Groups: []string{"admins"}})
			// Locking oneself needs --force (the gateway refuses it
			// otherwise, see TestAdminBarsThemselves).
			args := []string{tc.verb, "--force", tc.principal}
			if tc.verb == "revoke" {
				args = []string{"revoke", "--key-id", tc.keyID}
			}
			res := admin.Run(ctx, "ssh", tg.gatewayArgs(tc.principal, args...)...)
			if res.ExitCode != 0 || res.Stdout == "" {
				t.Fatalf("%s of oneself: %s", tc.verb, res)
			}
			if res := admin.Run(ctx, "ssh", tg.gatewayArgs(tc.principal, "info")...); res.ExitCode == 0 {
				t.Fatalf("after %s of oneself, the admin still gets in: %s", tc.verb, res)
			}
		})
	}
}
