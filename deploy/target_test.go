package deploy_test

import (
	"context"
	"github.com/bastion-ssh/bastion/internal/catest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/deploy"
	"github.com/bastion-ssh/bastion/internal/scan"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

func sign(t *testing.T, c *catest.BastionCA, req ca.Request) *ssh.Certificate {
	t.Helper()
	cert, err := c.Auth.Sign(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// activeDirectives lists the keywords of the snippet's active lines.
func activeDirectives(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if kw, _, ok := deploy.Directive(l); ok {
			out = append(out, strings.ToLower(kw))
		}
	}
	return out
}

// TestTargetSnippetDirectives checks that the snippet sets what issue 6
// lists, so that a careless edit cannot drop one.
func TestTargetSnippetDirectives(t *testing.T) {
	text := deploy.TargetSSHDConfig()
	got := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if kw, arg, ok := deploy.Directive(l); ok {
			if _, dup := got[strings.ToLower(kw)]; dup {
				t.Errorf("%s appears twice; sshd keeps only the first", kw)
			}
			got[strings.ToLower(kw)] = arg
		}
	}
	for kw, want := range map[string]string{
		"permitrootlogin":              "no",
		"passwordauthentication":       "no",
		"kbdinteractiveauthentication": "no",
		"permitemptypasswords":         "no",
		"authenticationmethods":        "publickey",
		"pubkeyauthentication":         "yes",
		"trustedusercakeys":            "/etc/ssh/bastion_user_ca.pub",
		"revokedkeys":                  "/etc/ssh/bastion_revoked.krl",
		"hostcertificate":              "/etc/ssh/ssh_host_ed25519_key-cert.pub",
	} {
		if got[kw] != want {
			t.Errorf("%s = %q, want %q", kw, got[kw], want)
		}
	}
	for _, guidance := range []string{"AuthorizedPrincipalsFile", "bastion ca krl", "bastion ca export --user", "bastion ca sign --host"} {
		if !strings.Contains(text, guidance) {
			t.Errorf("the snippet's comments do not mention %q", guidance)
		}
	}
}

// TestTargetSnippetOnRealSSHD starts a real sshd whose configuration is the
// shipped snippet, with only its file paths pointed at temporary files, and
// proves: a bastion certificate gets in; root does not, even with a
// certificate our CA's key signed; passwords are not offered; a revoked
// certificate is refused.
func TestTargetSnippetOnRealSSHD(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx := t.Context()
	c := catest.NewBastionCA(t)
	login := testbed.LoginUser(t)

	const revokedSerial = 4242
	revs, err := ca.LoadRevocations(c.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: strconv.Itoa(revokedSerial), Reason: "test", By: "deploy_test"}); err != nil {
		t.Fatal(err)
	}
	krl, err := revs.KRL(c.Auth.TrustedKeys(ca.UserCA)).Marshal()
	if err != nil {
		t.Fatal(err)
	}

	d := testbed.NewSSHD(t, testbed.SSHDConfig{})
	hostCert := sign(t, c, ca.Request{Kind: ca.HostCA, Key: d.HostKeyPub, KeyID: "target", Principals: []string{"127.0.0.1"}})
	snippet, err := deploy.TargetSSHDConfigWithPaths(map[string]string{
		"TrustedUserCAKeys": d.WriteFile("bastion_user_ca.pub", []byte(ca.ExportLines(ca.UserCA, c.Auth.TrustedKeys(ca.UserCA), ""))),
		"RevokedKeys":       d.WriteFile("bastion_revoked.krl", krl),
		"HostCertificate":   d.WriteFile("ssh_host_ed25519_key-cert.pub", ssh.MarshalAuthorizedKey(hostCert)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(activeDirectives(snippet), activeDirectives(deploy.TargetSSHDConfig())) {
		t.Fatal("path substitution changed the snippet's directives")
	}
	d.Config.Extra = snippet
	d.Start()

	// sshd's effective configuration is the snippet's.
	effective, err := exec.Command(sshdBinary(t), "-T", "-f", d.ConfigPath).CombinedOutput()
	if err != nil {
		t.Fatalf("sshd -T: %v\n%s", err, effective)
	}
	for _, want := range []string{"permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no", "authenticationmethods publickey", "revokedkeys " + filepath.Join(d.Dir, "bastion_revoked.krl")} {
		if !strings.Contains(string(effective), "\n"+want+"\n") {
			t.Errorf("sshd -T does not show %q", want)
		}
	}

	sshTo := func(t *testing.T, cl *testbed.Client, user string, extra ...string) testbed.Result {
		t.Helper()
		args := append([]string{"-p", strconv.Itoa(d.Port)}, extra...)
		args = append(args, user+"@127.0.0.1", "echo", "in-as-$(id -un)")
		return cl.Run(ctx, "ssh", args...)
	}
	newClient := func(t *testing.T) *testbed.Client {
		cl := testbed.NewClient(t)
		cl.StrictHostKeyChecking = "yes"
		cl.TrustHostCA("127.0.0.1", c.Auth.TrustedKeys(ca.HostCA)[0])
		return cl
	}

	t.Run("bastion certificate gets in", func(t *testing.T) {
		cl := newClient(t)
		cl.SetCertificate(ssh.MarshalAuthorizedKey(sign(t, c, ca.Request{Kind: ca.UserCA, Key: cl.PublicKey(), KeyID: "alice", Principals: []string{login}})))
		r := sshTo(t, cl, login)
		if r.ExitCode != 0 || !strings.Contains(r.Stdout, "in-as-"+login) {
			t.Fatalf("login with a bastion certificate failed (the host certificate is checked too: StrictHostKeyChecking=yes with only the @cert-authority line):\n%s\nsshd log:\n%s", r, d.Log())
		}
	})

	t.Run("root is refused by sshd itself", func(t *testing.T) {
		// Our CA refuses to sign root at all ...
		cl := newClient(t)
		if _, err := c.Auth.Sign(ctx, ca.Request{Kind: ca.UserCA, Key: cl.PublicKey(), KeyID: "root", Principals: []string{"root"}}); err == nil {
			t.Fatal("bastion's CA signed a certificate for root")
		}
		// ... so sign one with the CA's private key directly, as a stolen
		// key would, and show PermitRootLogin no stops it.
		pub := filepath.Join(cl.Dir, "root-key.pub")
		if err := os.WriteFile(pub, ssh.MarshalAuthorizedKey(cl.PublicKey()), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("ssh-keygen", "-q", "-s", c.Layout.PrivateKey(ca.UserCA), "-I", "root-by-stolen-key", "-n", "root", "-V", "-5m:+1h", pub).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
		}
		cert, err := os.ReadFile(filepath.Join(cl.Dir, "root-key-cert.pub"))
		if err != nil {
			t.Fatal(err)
		}
		cl.SetCertificate(cert)
		r := sshTo(t, cl, "root")
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("root got in, or was not refused with Permission denied:\n%s", r)
		}
		// sshd logs this only when the key authenticated and
		// PermitRootLogin refused the account.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := d.WaitLog(wctx, "ROOT LOGIN REFUSED"); err != nil {
			t.Fatalf("%v: the refusal was not PermitRootLogin's (is root's account locked on this machine? sshd then refuses earlier)\nsshd log:\n%s", err, d.Log())
		}
	})

	t.Run("passwords are not offered", func(t *testing.T) {
		res := scan.Scan(ctx, d.Addr, scan.Options{HostCAs: c.Auth.TrustedKeys(ca.HostCA)})
		if !res.Pass || !slices.Equal(res.AuthMethods, []string{"publickey"}) || !res.HostCertFromOurCA {
			t.Fatalf("scan: pass=%v methods=%v ours=%v findings=%v", res.Pass, res.AuthMethods, res.HostCertFromOurCA, res.Findings)
		}
		cl := newClient(t)
		r := sshTo(t, cl, login, "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no", "-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1")
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "Permission denied (publickey)") {
			t.Fatalf("want Permission denied (publickey) with no prompt:\n%s", r)
		}
	})

	t.Run("revoked certificate is refused", func(t *testing.T) {
		cl := newClient(t)
		cl.SetCertificate(ssh.MarshalAuthorizedKey(sign(t, c, ca.Request{Kind: ca.UserCA, Key: cl.PublicKey(), KeyID: "mallory", Principals: []string{login}, Serial: revokedSerial})))
		r := sshTo(t, cl, login)
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("revoked certificate got in:\n%s", r)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := d.WaitLog(wctx, "revoked"); err != nil {
			t.Fatalf("%v\nsshd log:\n%s", err, d.Log())
		}
	})
}

// sshdBinary finds sshd by absolute path (it is often not on PATH).
func sshdBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("sshd"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("sshd not found; install openssh-server")
	return ""
}
