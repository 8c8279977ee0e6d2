package testbed

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// port returns the -p/-P argument for d.
func port(d *SSHD) string { return strconv.Itoa(d.Port) }

func TestSSHWithAuthorizedKey(t *testing.T) {
	t.Parallel()
	c := NewClient(t)
	d := StartSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})

	r := c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "echo", "hi")
	if r.ExitCode != 0 || r.Stdout != "hi\n" {
		t.Fatalf("ssh echo hi: %v", r)
	}
	r = c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "id", "-un")
	if got := strings.TrimSpace(r.Stdout); got != LoginUser(t) {
		t.Errorf("logged in as %q, want %q (%v)", got, LoginUser(t), r)
	}
	if err := d.WaitLog(t.Context(), "Accepted publickey for "+d.User); err != nil {
		t.Error(err)
	}
}

func TestUnknownKeyIsRefused(t *testing.T) {
	t.Parallel()
	c, other := NewClient(t), NewClient(t)
	d := StartSSHD(t, SSHDConfig{AuthorizedKeys: other.AuthorizedKey()})

	r := c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "true")
	if r.ExitCode != 255 || !strings.Contains(r.Stderr, "Permission denied (publickey)") {
		t.Fatalf("want permission denied, got %v", r)
	}
}

func TestCertificateLogin(t *testing.T) {
	t.Parallel()
	ca := NewCA(t)
	user := LoginUser(t)
	const revokedSerial = 666
	for _, tc := range []struct {
		name   string
		opts   CertOptions
		ok     bool
		reason string // in sshd's log when refused
	}{
		{name: "valid", opts: CertOptions{Principals: []string{user}, Validity: "-5m:+1h"}, ok: true},
		{name: "wrong principal", opts: CertOptions{Principals: []string{"someone-else"}}, reason: "name is not a listed principal"},
		{name: "expired", opts: CertOptions{Principals: []string{user}, Validity: "-2h:-1h"}, reason: "Certificate invalid: expired"},
		{name: "revoked", opts: CertOptions{Principals: []string{user}, Serial: revokedSerial}, reason: "revoked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := NewClient(t)
			c.SetCertificate(ca.Sign(c.PublicKey(), tc.opts))
			d := StartSSHD(t, SSHDConfig{
				TrustedUserCAKeys: ca.AuthorizedKey(),
				RevokedKeys:       ca.KRL("serial: " + strconv.Itoa(revokedSerial) + "\n"),
			})

			r := c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "echo", "in")
			if tc.ok {
				if r.ExitCode != 0 || r.Stdout != "in\n" {
					t.Fatalf("certificate login: %v", r)
				}
				return
			}
			if r.ExitCode != 255 || !strings.Contains(r.Stderr, "Permission denied") {
				t.Fatalf("want the certificate refused, got %v", r)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if err := d.WaitLog(ctx, tc.reason); err != nil {
				t.Errorf("%v\nsshd log:\n%s", err, d.Log())
			}
		})
	}
}

func TestHostCertificate(t *testing.T) {
	t.Parallel()
	hostCA := NewCA(t)
	c := NewClient(t)
	d := NewSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})
	d.Config.HostCertificate = hostCA.Sign(d.HostKeyPub, CertOptions{Host: true, Principals: []string{"127.0.0.1"}})
	d.Start()

	// The known_hosts file is empty, so the host is unknown. A -o given
	// after SSHArgs overrides the generated config's "accept-new".
	r := c.Run(t.Context(), "ssh", "-o", "StrictHostKeyChecking=yes", "-p", port(d), d.Target(), "true")
	if r.ExitCode != 255 || !strings.Contains(r.Stderr, "Host key verification failed") {
		t.Fatalf("want host key verification to fail, got %v", r)
	}

	c.StrictHostKeyChecking = "yes"
	c.TrustHostCA("*", hostCA.PublicKey)
	r = c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "echo", "trusted")
	if r.ExitCode != 0 || r.Stdout != "trusted\n" {
		t.Fatalf("login with a trusted host certificate: %v", r)
	}
}

func TestTrustHostKey(t *testing.T) {
	t.Parallel()
	c := NewClient(t)
	d := StartSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey(), HostKeyType: "ecdsa"})
	if got := d.HostKeyPub.Type(); got != ssh.KeyAlgoECDSA256 {
		t.Errorf("host key type %s, want %s", got, ssh.KeyAlgoECDSA256)
	}
	c.TrustHostKey(d.Addr, d.HostKeyPub)
	c.StrictHostKeyChecking = "yes"

	r := c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "true")
	if r.ExitCode != 0 {
		t.Fatalf("ssh with a trusted host key: %v", r)
	}
}

func TestExtraOverridesDefaults(t *testing.T) {
	t.Parallel()
	c := NewClient(t)
	d := StartSSHD(t, SSHDConfig{
		AuthorizedKeys: c.AuthorizedKey(),
		Extra:          "PasswordAuthentication yes\nMatch User nobody\n\tX11Forwarding yes\n",
	})
	sshd, err := sshdPath()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sshd, "-T", "-f", d.ConfigPath,
		"-C", "user="+d.User+",host=localhost,addr=127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("sshd -T: %v\n%s", err, out)
	}
	for _, want := range []string{"passwordauthentication yes", "x11forwarding no", "permitrootlogin no"} {
		if !strings.Contains(string(out), "\n"+want+"\n") {
			t.Errorf("effective config lacks %q:\n%s", want, out)
		}
	}
	if r := c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "true"); r.ExitCode != 0 {
		t.Errorf("login with Extra set: %v", r)
	}
}

func TestFileTransfer(t *testing.T) {
	t.Parallel()
	c := NewClient(t)
	d := StartSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})
	local := filepath.Join(c.Dir, "payload.txt")
	payload := "bastion testbed payload\n"
	if err := os.WriteFile(local, []byte(payload), 0o644); err != nil {
		t.Fatal(err)
	}
	remote := func(name string) string { return filepath.Join(d.UserDir, name) }
	check := func(t *testing.T, path string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || string(got) != payload {
			t.Fatalf("%s: %q, %v; want %q", path, got, err, payload)
		}
	}

	t.Run("scp", func(t *testing.T) {
		r := c.Run(t.Context(), "scp", "-P", port(d), local, d.Target()+":"+remote("scp.txt"))
		if r.ExitCode != 0 {
			t.Fatalf("scp: %v", r)
		}
		check(t, remote("scp.txt"))
	})
	t.Run("sftp", func(t *testing.T) {
		back := filepath.Join(c.Dir, "sftp-back.txt")
		batch := "put " + local + " " + remote("sftp.txt") + "\nget " + remote("sftp.txt") + " " + back + "\n"
		r := c.RunInput(t.Context(), strings.NewReader(batch), "sftp", "-P", port(d), "-b", "-", d.Target())
		if r.ExitCode != 0 {
			t.Fatalf("sftp: %v", r)
		}
		check(t, remote("sftp.txt"))
		check(t, back)
	})
	t.Run("rsync", func(t *testing.T) {
		RequireCommand(t, "rsync")
		// rsync has no port flag of its own; the port goes into its ssh command.
		r := c.Run(t.Context(), "rsync", "-e", c.SSHCommand()+" -p "+port(d), local, d.Target()+":"+remote("rsync.txt"))
		if r.ExitCode != 0 {
			t.Fatalf("rsync: %v", r)
		}
		check(t, remote("rsync.txt"))
	})
	t.Run("git", func(t *testing.T) {
		RequireCommand(t, "git")
		url := "ssh://" + d.Target() + ":" + port(d) + remote("repo.git")
		work := filepath.Join(c.Dir, "work")
		for _, args := range [][]string{
			{"ssh", "-p", port(d), d.Target(), "git", "init", "-q", "--bare", remote("repo.git")},
			{"git", "init", "-q", work},
			{"cp", local, filepath.Join(work, "payload.txt")},
			{"git", "-C", work, "add", "payload.txt"},
			{"git", "-C", work, "commit", "-q", "-m", "payload"},
			{"git", "-C", work, "push", "-q", url, "main"},
			{"git", "clone", "-q", url, filepath.Join(c.Dir, "clone")},
		} {
			if r := c.Run(t.Context(), args[0], args[1:]...); r.ExitCode != 0 {
				t.Fatalf("%s: %v", strings.Join(args, " "), r)
			}
		}
		check(t, filepath.Join(c.Dir, "clone", "payload.txt"))
	})
}

func TestProxyJump(t *testing.T) {
	t.Parallel()
	c := NewClient(t)
	jump := StartSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})
	target := StartSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})

	// The jump hop gets no -o flags from ssh, only -F; it must still use
	// this client's key and known_hosts.
	r := c.Run(t.Context(), "ssh", "-J", jump.Target()+":"+port(jump), "-p", port(target), target.Target(), "echo", "through")
	if r.ExitCode != 0 || r.Stdout != "through\n" {
		t.Fatalf("ssh -J: %v", r)
	}
	if err := jump.WaitLog(t.Context(), "Accepted publickey"); err != nil {
		t.Error(err)
	}
}

func TestRunIsolatesEnvironment(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "/nonexistent/agent.sock")
	t.Setenv("GIT_DIR", "/nonexistent/.git")
	c := NewClient(t)
	c.Env = []string{"TESTBED_EXTRA=yes"}

	r := c.Run(t.Context(), "sh", "-c", `echo "$HOME|$SSH_AUTH_SOCK|$GIT_DIR|$TESTBED_EXTRA"`)
	if want := c.Home + "|||yes\n"; r.ExitCode != 0 || r.Stdout != want {
		t.Fatalf("environment: got %q, want %q (%v)", r.Stdout, want, r)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	r = c.Run(ctx, "sleep", "10")
	if r.Err == nil || r.ExitCode != -1 {
		t.Errorf("a timed-out command should report an error and exit -1, got %v", r)
	}
}

func TestSSHDStop(t *testing.T) {
	t.Parallel()
	c := NewClient(t)
	d := StartSSHD(t, SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})
	d.Stop()
	d.Stop() // idempotent
	r := c.Run(t.Context(), "ssh", "-p", port(d), d.Target(), "true")
	if r.ExitCode != 255 || !strings.Contains(r.Stderr, "Connection refused") {
		t.Fatalf("want connection refused after Stop, got %v", r)
	}
}
