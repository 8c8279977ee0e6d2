package gateway

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestAuthRefusals has the real OpenSSH client try each kind of bad
// credential and checks that it is refused and that the audit log holds
// the refusal's reason code.
func TestAuthRefusals(t *testing.T) {
	tg := startGateway(t, withoutBans)
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	past, err := ca.New(ca.Config{Layout: tg.layout, Now: func() time.Time { return time.Now().Add(-48 * time.Hour) }}, tg.store)
	must(err)
	otherLayout := ca.Layout{DataDir: t.TempDir()}
	_, _, err = ca.Init(otherLayout, ca.InitOptions{})
	must(err)
	other, err := ca.New(ca.Config{Layout: otherLayout}, tg.store)
	must(err)
	keygen := func(c *testbed.Client, args ...string) {
		t.Helper()
		args = append([]string{"-q", "-s", tg.layout.PrivateKey(ca.UserCA)}, append(args, c.KeyPath+".pub")...)
		if out, err := exec.Command("ssh-keygen", args...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
		}
	}

	tests := []struct {
		name   string
		user   string
		setup  func() *testbed.Client
		reason string
	}{
		{"root", "root", func() *testbed.Client { return tg.client(ca.Request{KeyID: "as-root"}) }, ReasonForbiddenUser},
		{"plain key", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "plain"})
			c.SetCertificate(nil)
			return c
		}, ReasonNotACertificate},
		{"expired", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "x"})
			cert, err := past.Sign(ctx, ca.Request{Kind: ca.UserCA, Key: c.PublicKey(), KeyID: "expired", Principals: []string{tg.user}, Validity: mustValidity(t, "+1h")})
			must(err)
			c.SetCertificate(gossh.MarshalAuthorizedKey(cert))
			return c
		}, ReasonExpired},
		{"not yet valid", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "x"})
			keygen(c, "-I", "future", "-n", tg.user, "-V", "+1h:+2h")
			return c
		}, ReasonNotYetValid},
		{"other CA", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "x"})
			cert, err := other.Sign(ctx, ca.Request{Kind: ca.UserCA, Key: c.PublicKey(), KeyID: "other-ca", Principals: []string{tg.user}})
			must(err)
			c.SetCertificate(gossh.MarshalAuthorizedKey(cert))
			return c
		}, ReasonUnknownAuthority},
		{"wrong principal", tg.user, func() *testbed.Client {
			return tg.client(ca.Request{KeyID: "wp", Principals: []string{"someone-else"}})
		}, ReasonPrincipalMismatch},
		{"revoked serial", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "rev", Serial: 777001})
			must(tg.revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: "777001", Reason: "test"}))
			return c
		}, ReasonRevoked},
		{"revoked key id", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "stolen-laptop"})
			must(tg.revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeKeyID, Value: "stolen-laptop"}))
			return c
		}, ReasonRevoked},
		{"source-address", tg.user, func() *testbed.Client {
			return tg.client(ca.Request{KeyID: "src", Options: []string{"source-address=10.0.0.0/8"}})
		}, ReasonSourceAddress},
		{"no principals", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "x"})
			keygen(c, "-I", "no-principals")
			return c
		}, ReasonNoPrincipals},
		{"unknown critical option", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "x"})
			keygen(c, "-I", "crit", "-n", tg.user, "-V", "+1h", "-O", "critical:verify-hardware=yes")
			return c
		}, ReasonUnsupportedCritical},
		{"locked", tg.user, func() *testbed.Client {
			c := tg.client(ca.Request{KeyID: "locked-user-key", Principals: []string{tg.user, "mallory"}})
			must(tg.locks.Lock(ctx, ca.Lock{Target: "mallory", Reason: "test", By: "test"}))
			return c
		}, ReasonLocked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.setup()
			before := len(tg.events("auth.failed"))
			res := c.Run(ctx, "ssh", tg.gatewayArgs(tc.user, "info")...)
			if res.ExitCode != 255 || !strings.Contains(res.Stderr, "Permission denied (publickey)") {
				t.Fatalf("want Permission denied (publickey), got %s", res)
			}
			if strings.Contains(res.Stdout, "you are") {
				t.Fatal("the refused client ran a command")
			}
			ev := tg.waitEvent(t, "auth.failed", map[string]string{"reason": tc.reason, "user": tc.user})
			if ev.Fields["remote"] != "127.0.0.1" {
				t.Errorf("auth.failed lacks the remote address: %v", ev.Fields)
			}
			if tc.reason != ReasonForbiddenUser && !strings.HasPrefix(ev.Fields["key_fp"], "SHA256:") {
				t.Errorf("auth.failed lacks the key fingerprint: %v", ev.Fields)
			}
			// Records are written as the refused connection winds down.
			for deadline := time.Now().Add(10 * time.Second); len(tg.events("auth.failed")) <= before; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no new auth.failed record")
				}
			}
		})
	}
	// OpenSSH never offers a host certificate for user authentication,
	// so an x/crypto client sends them, as an attacker's tool would.
	for _, tc := range []struct {
		name string
		sign func(c *testbed.Client) *gossh.Certificate
	}{
		{"host CA cert", func(c *testbed.Client) *gossh.Certificate {
			cert, err := tg.auth.Sign(ctx, ca.Request{Kind: ca.HostCA, Key: c.PublicKey(), KeyID: "host-ca", Principals: []string{tg.user}})
			must(err)
			return cert
		}},
		{"user CA key signing a host cert", func(c *testbed.Client) *gossh.Certificate {
			keygen(c, "-h", "-I", "host-as-user", "-n", tg.user)
			data, err := os.ReadFile(c.CertPath)
			must(err)
			k, _, _, _, err := gossh.ParseAuthorizedKey(data)
			must(err)
			return k.(*gossh.Certificate)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tg.client(ca.Request{KeyID: "x"})
			cert := tc.sign(c)
			if cl, err := tg.dialGateway(tg.user, gossh.PublicKeys(certSigner(t, c, cert))); err == nil {
				cl.Close()
				t.Fatal("a host certificate logged in as a user")
			}
			tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonNotUserCertificate, "key_id": cert.KeyId})
		})
	}
	if n := len(tg.events("auth.ok")); n != 0 {
		t.Errorf("%d auth.ok records after only bad credentials:\n%s", n, tg.dump())
	}
}

// TestPasswordsAreNeverOffered: OpenSSH gets "Permission denied
// (publickey)" without a prompt, and a client that sends a password anyway
// (as bots do) is refused and audited.
func TestPasswordsAreNeverOffered(t *testing.T) {
	tg := startGateway(t, withoutBans)
	c := tg.client(ca.Request{KeyID: "pw"})
	c.SetCertificate(nil)
	args := append([]string{"-o", "BatchMode=no", "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "NumberOfPasswordPrompts=1"}, tg.gatewayArgs(tg.user, "info")...)
	res := c.RunInput(t.Context(), strings.NewReader("hunter2\n"), "ssh", args...)
	if res.ExitCode != 255 || !strings.Contains(res.Stderr, "Permission denied (publickey)") || strings.Contains(strings.ToLower(res.Stderr), "password:") {
		t.Fatalf("want a refusal naming only publickey and no prompt, got %s", res)
	}
	for _, method := range []gossh.AuthMethod{
		gossh.Password("hunter2"),
		gossh.KeyboardInteractive(func(string, string, []string, []bool) ([]string, error) { return []string{"hunter2"}, nil }),
	} {
		_, err := gossh.Dial("tcp", tg.addr, &gossh.ClientConfig{User: tg.user, Auth: []gossh.AuthMethod{method}, HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
		if err == nil {
			t.Fatal("a password client got in")
		}
	}
	// Neither OpenSSH nor x/crypto's client sends a method the server did
	// not list, but bots do; x/crypto's server then reports the attempt to
	// AuthLogCallback, which must audit it. Drive that hook as x/crypto does.
	botHandshake(tg, "192.0.2.7", "admin", "password", "keyboard-interactive")
	tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonPasswordAttempt, "method": "password", "remote": "192.0.2.7", "user": "admin"})
	tg.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonKeyboardInteractive, "method": "keyboard-interactive"})
}

// fakeMeta is the ConnMetadata x/crypto would pass.
type fakeMeta struct {
	gossh.ConnMetadata
	user string
}

func (m fakeMeta) User() string { return m.user }

func (m fakeMeta) ClientVersion() []byte { return []byte("SSH-2.0-bot") }

// botHandshake drives the hooks x/crypto calls for a client at ip that
// tries methods as user and gives up, as bots do: AuthLogCallback for each
// attempt, then ConnectionFailedCallback when the handshake ends. (Neither
// OpenSSH nor x/crypto's client sends a method the server did not list.)
func botHandshake(tg *testGateway, ip, user string, methods ...string) {
	conn := nopConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000}}
	cs := &connState{id: "bot-" + ip, remote: netip.MustParseAddr(ip), conn: conn, g: tg.gw, handshakeTimer: time.NewTimer(time.Hour), log: tg.gw.log}
	tg.gw.mu.Lock()
	tg.gw.handshaking[conn.RemoteAddr().String()] = cs
	tg.gw.mu.Unlock()
	for _, m := range methods {
		tg.gw.authLog(cs, fakeMeta{user: user}, m, errors.New("ssh: "+m+" auth not configured"))
	}
	tg.gw.handshakeFailed(conn, &gossh.ServerAuthError{})
}

// nopConn is a net.Conn that is already gone.
type nopConn struct {
	net.Conn
	remote net.Addr
}

func (nopConn) Close() error           { return nil }
func (c nopConn) RemoteAddr() net.Addr { return c.remote }

// TestUnprovenKeyThenAnother: a client offers key A (whose private half it
// does not have) and then authenticates with key B; the audit record must
// name B, the key that proved possession.
func TestUnprovenKeyThenAnother(t *testing.T) {
	tg := startGateway(t)
	a := tg.client(ca.Request{KeyID: "key-A-unproven"})
	b := tg.client(ca.Request{KeyID: "key-B-proven"})
	// a offers its certificate but its private key is gone, then b's
	// identity is tried.
	if err := os.Remove(a.KeyPath); err != nil {
		t.Fatal(err)
	}
	extra := []string{"-o", "IdentityFile=" + b.KeyPath, "-o", "CertificateFile=" + b.CertPath}
	res := a.Run(t.Context(), "ssh", append(extra, tg.gatewayArgs(tg.user, "info")...)...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, `key id "key-B-proven"`) {
		t.Fatalf("login with the second key failed or the session names the wrong key: %s", res)
	}
	ok := tg.waitEvent(t, "auth.ok", map[string]string{"user": tg.user})
	if ok.Fields["key_id"] != "key-B-proven" || ok.Fields["key_fp"] != gossh.FingerprintSHA256(b.PublicKey()) {
		t.Errorf("auth.ok names %q %s; want key-B-proven %s", ok.Fields["key_id"], ok.Fields["key_fp"], gossh.FingerprintSHA256(b.PublicKey()))
	}
}

func mustValidity(t *testing.T, s string) ca.Validity {
	t.Helper()
	v, err := ca.ParseValidity(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
