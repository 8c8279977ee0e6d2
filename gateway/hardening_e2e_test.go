package gateway

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestStateChangeEndsIdleConnections: a connection that has authenticated
// but opened no channel (ssh -N) is ended by a revocation or a lock, not
// only connections with a live session.
func TestStateChangeEndsIdleConnections(t *testing.T) {
	tg := startGateway(t)
	ctx := t.Context()
	tests := []struct {
		name   string
		req    ca.Request
		change func(c *testbed.Client) error
		reason string
	}{
		{"revoke serial", ca.Request{KeyID: "idle-serial", Serial: 4242}, func(*testbed.Client) error {
			return tg.revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: "4242", Reason: "test"})
		}, ReasonRevoked},
		{"revoke key id", ca.Request{KeyID: "idle-keyid"}, func(*testbed.Client) error {
			return tg.revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeKeyID, Value: "idle-keyid"})
		}, ReasonRevoked},
		{"revoke key", ca.Request{KeyID: "idle-key"}, func(c *testbed.Client) error {
			return tg.revs.Revoke(ctx, ca.RevokeKeyRequest(c.PublicKey()))
		}, ReasonRevoked},
		{"lock key id owner", ca.Request{KeyID: "idler@example.com sub=123"}, func(*testbed.Client) error {
			return tg.locks.Lock(ctx, ca.Lock{Target: "idler@example.com", By: "test"})
		}, ReasonLocked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tg.client(tc.req)
			cmd := c.Command(ctx, "ssh", append([]string{"-N"}, tg.gatewayArgs(tg.user)...)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			// auth.ok is written when the connection authenticates, before
			// any channel: wait for it so the connection is surely idle.
			tg.waitEvent(t, "auth.ok", map[string]string{"key_id": tc.req.KeyID})
			select {
			case err := <-exited:
				t.Fatalf("ssh -N ended before the change: %v", err)
			case <-time.After(200 * time.Millisecond):
			}
			changed := time.Now()
			if err := tc.change(c); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
				t.Logf("idle connection ended %s after the change", time.Since(changed).Round(time.Millisecond))
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatal("the idle connection outlived its revocation or lock")
			}
		})
	}
}

// TestStateIsCheckedOnEveryChannel: a channel opened after a revocation on
// an already authenticated connection is refused, even if the connection
// were somehow still open (checked with x/crypto's client, which keeps the
// connection object usable to try).
func TestStateIsCheckedOnEveryChannel(t *testing.T) {
	tg := startGateway(t)
	c := tg.client(ca.Request{KeyID: "per-channel", Serial: 5151})
	client, err := tg.dialGateway(tg.user, gossh.PublicKeys(certSigner(t, c, tg.certOf(c))))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if err := tg.revs.Revoke(t.Context(), ca.Revocation{Kind: ca.RevokeSerial, Value: "5151"}); err != nil {
		t.Fatal(err)
	}
	if conn, err := client.Dial("tcp", tg.target.Addr); err == nil {
		conn.Close()
		t.Fatal("a revoked certificate jumped on a connection opened before the revocation")
	}
}

// TestCertificateRestrictionsBindTheGateway: the certificate's options and
// extensions bind the gateway as they bind sshd: no-port-forwarding and
// force-command certificates cannot jump, no-pty gets no pty.
func TestCertificateRestrictionsBindTheGateway(t *testing.T) {
	tg := startGateway(t)
	ctx := t.Context()
	for _, tc := range []struct {
		name    string
		options []string
		reason  string
	}{
		{"no-port-forwarding", []string{"no-port-forwarding"}, ReasonForwardingNotPermitted},
		{"force-command", []string{"force-command=/bin/true"}, ReasonForceCommand},
		{"clear", []string{"clear"}, ReasonForwardingNotPermitted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tg.client(ca.Request{KeyID: "restricted-" + tc.name, Options: tc.options})
			for _, args := range [][]string{
				tg.jumpArgs(tg.user, "true"),
				append([]string{"-W", tg.target.Addr}, tg.gatewayArgs(tg.user)...),
			} {
				res := c.RunInput(ctx, strings.NewReader(""), "ssh", args...)
				if res.ExitCode == 0 {
					t.Fatalf("ssh %v with a %s certificate went through: %s", args, tc.name, res)
				}
			}
			tg.waitEvent(t, "channel.refused", map[string]string{"key_id": "restricted-" + tc.name, "reason": tc.reason})
		})
	}
	t.Run("no-pty", func(t *testing.T) {
		c := tg.client(ca.Request{KeyID: "nopty", Options: []string{"no-pty"}})
		res := c.Run(ctx, "ssh", append([]string{"-tt"}, tg.gatewayArgs(tg.user, "info")...)...)
		if !strings.Contains(res.Stderr, "PTY allocation request failed") {
			t.Fatalf("a no-pty certificate got a pty: %s", res)
		}
		tg.waitEvent(t, "request.refused", map[string]string{"key_id": "nopty", "reason": ReasonPTYNotPermitted})
	})
	t.Run("unrestricted still jumps", func(t *testing.T) {
		c := tg.client(ca.Request{KeyID: "free"})
		if res := c.Run(ctx, "ssh", tg.jumpArgs(tg.user, "true")...); res.ExitCode != 0 {
			t.Fatalf("an unrestricted certificate cannot jump: %s", res)
		}
	})
}

// TestValidForeverCertificateRefused: a certificate made by ssh-keygen -s
// without -V is valid until 2^64-1; it is refused with a clear reason, and
// its times convert without overflow.
func TestValidForeverCertificateRefused(t *testing.T) {
	tg := startGateway(t)
	c := tg.client(ca.Request{KeyID: "x"})
	if out, err := exec.Command("ssh-keygen", "-q", "-s", tg.layout.PrivateKey(ca.UserCA), "-I", "forever", "-n", tg.user, c.KeyPath+".pub").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	cert := tg.certOf(c)
	if cert.ValidBefore != gossh.CertTimeInfinity {
		t.Fatalf("ssh-keygen wrote valid_before %d, want forever", cert.ValidBefore)
	}
	res := c.Run(t.Context(), "ssh", tg.gatewayArgs(tg.user, "info")...)
	if res.ExitCode == 0 {
		t.Fatalf("a certificate valid forever logged in: %s", res)
	}
	ev := tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonNoExpiry, "key_id": "forever"})
	if !strings.Contains(ev.Fields["detail"], "-V") {
		t.Errorf("the refusal does not say how to fix it: %q", ev.Fields["detail"])
	}
	if got := ca.CertFields(cert)["valid_before"]; got != "forever" {
		t.Errorf("CertFields valid_before = %q, want forever", got)
	}
	if got := ca.CertTime(cert.ValidBefore); got.Year() != 9999 {
		t.Errorf("CertTime(2^64-1) = %v, want the year 9999", got)
	}
	// "Forever" by another name: valid until the year 9999.
	long := tg.client(ca.Request{KeyID: "x"})
	if out, err := exec.Command("ssh-keygen", "-q", "-s", tg.layout.PrivateKey(ca.UserCA), "-I", "centuries", "-n", tg.user, "-V", "-5m:99991231235959", long.KeyPath+".pub").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	if res := long.Run(t.Context(), "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode == 0 {
		t.Fatalf("a certificate valid until 9999 logged in: %s", res)
	}
	tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonValidityTooLong, "key_id": "centuries"})
}

// TestSourceAddressMeansWhatSshdMeans: for each source-address list the
// gateway decides exactly as the target's sshd does for the same
// certificate, and is never more permissive. The certificates are signed
// directly with the CA key, since ssh-keygen and bastion refuse to sign
// malformed lists.
func TestSourceAddressMeansWhatSshdMeans(t *testing.T) {
	tg := startGateway(t, withoutBans)
	caSigner := caKeySigner(t, tg.layout.PrivateKey(ca.UserCA))
	for _, tc := range []struct {
		list  string
		allow bool
	}{
		{"127.0.0.0/8", true},
		{"10.0.0.1,127.0.0.1", true},
		{"127.0.0.1/32", true},
		{"127.0.0.1/8", false},      // host bits set: sshd refuses the certificate
		{"::ffff:127.0.0.1", false}, // IPv4-mapped entry never matches an IPv4 client
		{"::ffff:127.0.0.0/104", false},
		{"127.0.0.1,,10.0.0.1", false}, // empty entry
		{"127.0.0.1, 10.0.0.1", false}, // a space
		{"10.0.0.0/8", false},
		{"127.0.0.1/33", false},
	} {
		t.Run(tc.list, func(t *testing.T) {
			c := testbed.NewClient(t)
			c.TrustHostCA("*", tg.auth.PublicKey(ca.HostCA))
			c.TrustHostKey(tg.target.Addr, tg.target.HostKeyPub)
			cert := &gossh.Certificate{
				Key: c.PublicKey(), Serial: 1, CertType: gossh.UserCert, KeyId: "sa",
				ValidPrincipals: []string{tg.user},
				ValidAfter:      uint64(time.Now().Add(-time.Minute).Unix()),
				ValidBefore:     uint64(time.Now().Add(time.Hour).Unix()),
				Permissions: gossh.Permissions{
					CriticalOptions: map[string]string{"source-address": tc.list},
					Extensions:      map[string]string{"permit-port-forwarding": "", "permit-pty": ""},
				},
			}
			if err := cert.SignCert(rand.Reader, caSigner); err != nil {
				t.Fatal(err)
			}
			c.SetCertificate(gossh.MarshalAuthorizedKey(cert))
			sshd := c.Run(t.Context(), "ssh", "-p", strconv.Itoa(tg.target.Port), tg.user+"@127.0.0.1", "true")
			gw := c.Run(t.Context(), "ssh", tg.gatewayArgs(tg.user, "info")...)
			if (sshd.ExitCode == 0) != tc.allow {
				t.Fatalf("sshd allowed=%v, the test expects %v: %s", sshd.ExitCode == 0, tc.allow, sshd)
			}
			if (gw.ExitCode == 0) != tc.allow {
				t.Fatalf("gateway allowed=%v where sshd allowed=%v: %s", gw.ExitCode == 0, tc.allow, gw)
			}
		})
	}
}

// caKeySigner loads a CA private key file.
func caKeySigner(t *testing.T, path string) gossh.Signer {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestOrdinaryClientsAreNotBanned: five parallel ssh -J from a client whose
// agent holds four other keys before the certificate (ansible's default)
// all succeed, nobody is banned, and the rejected offers are recorded in
// each connection's auth.ok rather than as auth.failed.
func TestOrdinaryClientsAreNotBanned(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) { c.Limits.BanAfterFailures = 5 })
	// The certificate lives only in the agent, after four other keys, as
	// ssh-add leaves it for someone who added keys over time.
	holder := tg.client(ca.Request{KeyID: "ansible"})
	priv, err := os.ReadFile(holder.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	rawKey, err := gossh.ParseRawPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	sock := testbed.StartSSHAgent(t)
	ac, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	keyring := agent.NewClient(ac)
	for range 4 {
		_, other, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := keyring.Add(agent.AddedKey{PrivateKey: other}); err != nil {
			t.Fatal(err)
		}
	}
	if err := keyring.Add(agent.AddedKey{PrivateKey: rawKey, Certificate: tg.certOf(holder)}); err != nil {
		t.Fatal(err)
	}
	c := testbed.NewClient(t) // its own key has no certificate
	c.TrustHostCA("*", tg.auth.PublicKey(ca.HostCA))
	c.TrustHostKey(tg.target.Addr, tg.target.HostKeyPub)
	c.Env = append(c.Env, "SSH_AUTH_SOCK="+sock)
	agentArgs := []string{"-o", "IdentitiesOnly=no", "-o", "IdentityAgent=" + sock}
	var wg sync.WaitGroup
	errs := make(chan string, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			proxy := "ssh -F " + c.ConfigPath + " " + strings.Join(agentArgs, " ") + " -W %h:%p -p " + strconv.Itoa(tg.port) + " " + tg.user + "@127.0.0.1"
			args := append(append([]string{}, agentArgs...), "-o", "ProxyCommand="+proxy, "-p", strconv.Itoa(tg.target.Port), tg.user+"@127.0.0.1", "true")
			if res := c.Run(t.Context(), "ssh", args...); res.ExitCode != 0 {
				errs <- res.String()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("a jump failed: %s", e)
	}
	if n := len(tg.events("source.banned")); n != 0 {
		t.Fatalf("the client's own address was banned (%d bans):\n%s", n, tg.dump())
	}
	if n := len(tg.events("auth.failed")); n != 0 {
		t.Errorf("%d auth.failed records for connections that authenticated:\n%s", n, tg.dump())
	}
	oks := 0
	for _, ev := range tg.events("auth.ok") {
		if ev.Fields["key_id"] == "ansible" && ev.Fields["attempts_failed"] != "" {
			oks++
		}
	}
	if oks == 0 {
		t.Errorf("no auth.ok records the rejected key offers:\n%s", tg.dump())
	}
}

// TestLoginDoesNotForgiveFailures: a connection that fails and then
// authenticates as the reserved login user (any key gets in there) keeps
// its failures: they are recorded and counted towards a ban. Driven
// through the hooks x/crypto calls, since no stock client changes its
// user name mid-connection.
func TestLoginDoesNotForgiveFailures(t *testing.T) {
	tg := startLoginGateway(t, func(c *Config, _ *Deps) {
		c.Limits.BanAfterFailures = 2 // failed connections
		c.Limits.BanWindow = time.Minute
		c.Limits.BanDuration = time.Hour
	}).testGateway
	for i := range 2 {
		conn := nopConn{remote: &net.TCPAddr{IP: net.ParseIP("192.0.2.9"), Port: 40000 + i}}
		cs := &connState{id: fmt.Sprint("c", i), remote: netip.MustParseAddr("192.0.2.9"), conn: conn, g: tg.gw, handshakeTimer: time.NewTimer(time.Hour), log: tg.gw.log}
		for range 2 {
			err := error(&authError{reason: ReasonForbiddenUser, detail: "never"})
			cs.lastErr.Store(&err)
			tg.gw.authLog(cs, fakeMeta{user: "root"}, "publickey", errors.New("ssh: permission denied"))
		}
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		sshPub, err := gossh.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		perms, err := tg.gw.checker.verifyKey(fakeMeta{user: LoginUser}, sshPub)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tg.gw.verified(cs, fakeMeta{user: LoginUser}, perms); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(tg.events("auth.failed")); n != 4 {
		t.Errorf("%d auth.failed records, want 4 (2 per connection):\n%s", n, tg.dump())
	}
	tg.waitEvent(t, "source.banned", map[string]string{"remote": "192.0.2.9"})
	if _, banned := tg.gw.bans.Banned(netip.MustParseAddr("192.0.2.9")); !banned {
		t.Fatal("failures that ended in a login were forgiven")
	}
}

// TestForgedSignatureIsRecorded: a client presenting someone else's
// certificate with a signature from another key is dropped by x/crypto
// before any callback sees the failure; each attempt is still recorded
// and counted towards a ban.
func TestForgedSignatureIsRecorded(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Limits.BanAfterFailures = 3
		c.Limits.BanWindow = time.Minute
		c.Limits.BanDuration = time.Hour
	})
	victim := tg.client(ca.Request{KeyID: "victim-cert"})
	_, attackerKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	attacker, err := gossh.NewSignerFromKey(attackerKey)
	if err != nil {
		t.Fatal(err)
	}
	forged := forgedSigner{pub: tg.certOf(victim), sign: attacker}
	for i := range 3 {
		client, err := tg.dialGateway(tg.user, gossh.PublicKeys(forged))
		if err == nil {
			client.Close()
			t.Fatalf("attempt %d: a forged signature authenticated", i)
		}
	}
	tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonBadSignature, "key_id": "victim-cert"})
	tg.waitEvent(t, "source.banned", map[string]string{"remote": "127.0.0.1"})
	n := 0
	for _, ev := range tg.events("auth.failed") {
		if ev.Fields["reason"] == ReasonBadSignature {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d bad_signature records for 3 forged attempts", n)
	}
}

// forgedSigner presents pub (a certificate) but signs with another key.
type forgedSigner struct {
	pub  gossh.PublicKey
	sign gossh.Signer
}

func (f forgedSigner) PublicKey() gossh.PublicKey { return f.pub }
func (f forgedSigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	return f.sign.Sign(r, data)
}

// TestLoginServiceRefusesBarredIdentities: the login service goes through
// the signing pipeline, which refuses a locked user or a revoked key with
// a reason the user sees and a cert.refused record.
func TestLoginServiceRefusesBarredIdentities(t *testing.T) {
	lg := startLoginGateway(t)
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		bar    func(c *testbed.Client) error
		reason string
	}{
		{"locked user", func(*testbed.Client) error {
			return lg.locks.Lock(ctx, ca.Lock{Target: lg.user, Reason: "incident 7", By: "test"})
		}, ca.RuleLocked},
		{"revoked key", func(c *testbed.Client) error {
			return lg.revs.Revoke(ctx, ca.RevokeKeyRequest(c.PublicKey()))
		}, ca.RuleRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testbed.NewClient(t)
			c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			if err := tc.bar(c); err != nil {
				t.Fatal(err)
			}
			issued := len(lg.events("cert.issued"))
			stdout, stderr, exit, _ := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, "eng") })
			if exit == 0 || stdout != "" {
				t.Fatalf("a barred identity got a certificate: exit %d stdout %q", exit, stdout)
			}
			if !strings.Contains(stderr, tc.reason) {
				t.Errorf("the user is not told why: %s", stderr)
			}
			lg.waitEvent(t, "login.failed", map[string]string{"reason": tc.reason})
			lg.waitEvent(t, "cert.refused", map[string]string{"rule": tc.reason})
			if n := len(lg.events("cert.issued")); n != issued {
				t.Errorf("%d certificates issued to a barred identity", n-issued)
			}
			if tc.reason == ca.RuleLocked {
				if err := lg.locks.Unlock(ctx, lg.user, "test"); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestLockBetweenQueryAndSignature: x/crypto asks the check about a key
// when the client queries it and caches the answer; a lock made before the
// client then signs must still refuse the login (and record why), not let
// an already-barred identity in until its first channel.
func TestLockBetweenQueryAndSignature(t *testing.T) {
	tg := startGateway(t, withoutBans)
	c := tg.client(ca.Request{KeyID: "racer", Principals: []string{tg.user, "racer"}})
	inner := certSigner(t, c, tg.certOf(c))
	locking := lockingSigner{Signer: inner, lock: func() error {
		return tg.locks.Lock(t.Context(), ca.Lock{Target: "racer", Reason: "between query and signature", By: "test"})
	}}
	if client, err := tg.dialGateway(tg.user, gossh.PublicKeys(locking)); err == nil {
		client.Close()
		t.Fatal("a user locked before signing logged in")
	}
	tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonLocked, "key_id": "racer"})
	for _, ev := range tg.events("auth.ok") {
		if ev.Fields["key_id"] == "racer" {
			t.Fatalf("auth.ok written for a locked user: %v", ev.Fields)
		}
	}
}

// lockingSigner locks its user when asked to sign, i.e. after the
// server accepted the key's query and before it verifies the signature.
type lockingSigner struct {
	gossh.Signer
	lock func() error
}

func (s lockingSigner) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	return s.Signer.Sign(r, data)
}

// TestBansCountConnectionsNotKeyOffers: a client whose agent offers six
// keys before giving up (an expired certificate among them) has failed
// once, not six times: a handful of such attempts does not ban its
// address, while the same number of failed connections as the limit does.
func TestBansCountConnectionsNotKeyOffers(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Limits.BanAfterFailures = 5
		c.Limits.BanWindow = time.Minute
		c.Limits.BanDuration = time.Hour
	})
	six := []string{"publickey", "publickey", "publickey", "publickey", "publickey", "publickey"}
	for range 4 {
		botHandshake(tg, "192.0.2.44", "alice", six...)
	}
	if _, banned := tg.gw.bans.Banned(netip.MustParseAddr("192.0.2.44")); banned {
		t.Fatal("4 failed connections of 6 key offers each banned the source (key offers counted)")
	}
	botHandshake(tg, "192.0.2.44", "alice", six...)
	if _, banned := tg.gw.bans.Banned(netip.MustParseAddr("192.0.2.44")); !banned {
		t.Fatal("5 failed connections did not ban the source")
	}
	if n := len(tg.events("auth.failed")); n != 30 {
		t.Errorf("%d auth.failed records, want one per attempt (30)", n)
	}
}
