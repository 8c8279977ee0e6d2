package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/scan"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestDevSecondInstance: a second `bastion dev` on a taken port says what
// is wrong and how to fix it; it does not panic while cleaning up what it
// had started.
func TestDevSecondInstance(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	first, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "builtin"})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: first.Gateway, IdPListen: "127.0.0.1:0", Target: "builtin"})
	if err == nil {
		second.Close()
		t.Fatal("a second bastion dev on the same port started")
	}
	if !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("the error does not say the port is taken and how to pick another: %v", err)
	}
	if second != nil {
		t.Fatalf("startDev returned a half-built environment with its error")
	}
	var nilEnv *devEnv
	if err := nilEnv.Close(); err != nil {
		t.Fatal(err)
	}
	// On the same data dir (another port): the data dir is the problem.
	second, err = startDev(ctx, devOptions{DataDir: first.DataDir, Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "builtin"})
	if err == nil {
		second.Close()
		t.Fatal("a second bastion dev on the same data dir started")
	}
	if !strings.Contains(err.Error(), "another bastion (dev or serve) is using "+first.DataDir) || strings.Contains(err.Error(), "stop `bastion serve`") {
		t.Fatalf("the error does not say another bastion uses the data dir: %v", err)
	}
}

// demoJump runs OpenSSH through the dev gateway to the demo host as the
// instructions print it; extra are the remote command's words.
func demoJump(env *devEnv, extra ...string) []string {
	host, port, _ := net.SplitHostPort(env.TargetAddr)
	user := env.TargetUser
	if user == "" {
		user = "alice"
	}
	return append([]string{"-J", "alice@" + env.Gateway, "-p", port, user + "@" + host}, extra...)
}

// checkDemoHost drives every tool the README promises through the gateway
// to env's demo host, and scans it.
func checkDemoHost(t *testing.T, ctx context.Context, env *devEnv) {
	c := devLogin(t, ctx, env)
	hostCAs, err := ca.Layout{DataDir: env.DataDir}.TrustedKeys(ca.HostCA)
	if err != nil {
		t.Fatal(err)
	}
	// The demo host is trusted through its host certificate alone.
	c.TrustHostCA("*", hostCAs[0])
	c.StrictHostKeyChecking = "yes"
	host, port, _ := net.SplitHostPort(env.TargetAddr)
	user := env.TargetUser
	if user == "" {
		user = "alice"
	}
	sshJ := c.SSHCommand() + " -J alice@" + env.Gateway + " -p " + port
	remote := user + "@" + host

	t.Run("exit status", func(t *testing.T) {
		for cmd, want := range map[string]int{"true": 0, "false": 1, "exit 7": 7} {
			if res := c.Run(ctx, "ssh", demoJump(env, cmd)...); res.ExitCode != want {
				t.Errorf("%s: want exit %d, got %s", cmd, want, res)
			}
		}
		res := c.Run(ctx, "ssh", demoJump(env, "id -un; echo $HOME")...)
		if res.ExitCode != 0 || strings.HasPrefix(res.Stdout, "root\n") {
			t.Errorf("commands run as root or not at all: %s", res)
		}
		if res := c.Run(ctx, "ssh", demoJump(env, "kill -TERM $$")...); res.ExitCode != 255 {
			t.Errorf("a command killed by a signal: %s", res)
		}
	})
	t.Run("pty", func(t *testing.T) {
		res := c.RunInput(ctx, strings.NewReader("echo answer=$((6*7)); tty; exit 5\n"), "ssh", append([]string{"-tt"}, demoJump(env)...)...)
		if res.ExitCode != 5 || !strings.Contains(res.Stdout, "answer=42") || !strings.Contains(res.Stdout, "/dev/pts/") {
			t.Errorf("interactive shell on a pty: %s", res)
		}
	})
	local := filepath.Join(c.Home, "hello.txt")
	if err := os.WriteFile(local, []byte("hello through bastion\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("scp", func(t *testing.T) {
		j := []string{"-o", "ProxyJump=alice@" + env.Gateway, "-P", port}
		if res := c.Run(ctx, "scp", append(j, local, remote+":scp-copy.txt")...); res.ExitCode != 0 {
			t.Fatalf("scp upload: %s", res)
		}
		back := filepath.Join(c.Home, "scp-back.txt")
		if res := c.Run(ctx, "scp", append(j, remote+":scp-copy.txt", back)...); res.ExitCode != 0 {
			t.Fatalf("scp download: %s", res)
		}
		if b, _ := os.ReadFile(back); string(b) != "hello through bastion\n" {
			t.Errorf("scp round trip: %q", b)
		}
	})
	t.Run("sftp", func(t *testing.T) {
		res := c.RunInput(ctx, strings.NewReader("put "+local+" sftp-copy.txt\nls -l sftp-copy.txt\n"), "sftp", "-b", "-", "-J", "alice@"+env.Gateway, "-P", port, remote)
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "sftp-copy.txt") {
			t.Errorf("sftp: %s", res)
		}
	})
	t.Run("rsync", func(t *testing.T) {
		testbed.RequireCommand(t, "rsync")
		src := filepath.Join(c.Home, "tree")
		os.MkdirAll(filepath.Join(src, "sub"), 0o755)
		os.WriteFile(filepath.Join(src, "sub", "f"), []byte("rsync\n"), 0o644)
		if res := c.Run(ctx, "rsync", "-a", "-e", sshJ, src+"/", remote+":tree/"); res.ExitCode != 0 {
			t.Fatalf("rsync up: %s", res)
		}
		if res := c.Run(ctx, "ssh", demoJump(env, "cat tree/sub/f")...); res.Stdout != "rsync\n" {
			t.Errorf("rsync did not copy the tree: %s", res)
		}
	})
	t.Run("git", func(t *testing.T) {
		testbed.RequireCommand(t, "git")
		setup := "rm -rf repo && git init -q repo && cd repo && echo demo > README && git add README && git -c user.name=demo -c user.email=demo@example.invalid commit -q -m first"
		if res := c.Run(ctx, "ssh", demoJump(env, setup)...); res.ExitCode != 0 {
			t.Fatalf("git init on the demo host: %s", res)
		}
		c.Env = append(c.Env, "GIT_SSH_COMMAND="+sshJ)
		dst := filepath.Join(c.Home, "clone")
		if res := c.Run(ctx, "git", "clone", "-q", remote+":repo", dst); res.ExitCode != 0 {
			t.Fatalf("git clone: %s", res)
		}
		if b, _ := os.ReadFile(filepath.Join(dst, "README")); string(b) != "demo\n" {
			t.Errorf("git clone: README %q", b)
		}
	})
	t.Run("recorded", func(t *testing.T) {
		// The dev rule is record mode: the shell above is a recorded
		// session under the demo host's login, and replays.
		_, gwPort, _ := net.SplitHostPort(env.Gateway)
		res := c.Run(ctx, "ssh", "-p", gwPort, "alice@127.0.0.1", "audit", "sessions")
		var shell string
		for _, line := range strings.Split(res.Stdout, "\n") {
			if f := strings.Fields(line); len(f) > 6 && f[2] == user && f[6] == "shell" {
				shell = f[0]
			}
		}
		if res.ExitCode != 0 || shell == "" {
			t.Fatalf("audit sessions lists no recorded shell of login %s: %s", user, res)
		}
		if res := c.Run(ctx, "ssh", "-p", gwPort, "alice@127.0.0.1", "audit", "play", shell, "--format", "text"); res.ExitCode != 0 || !strings.Contains(res.Stdout, "answer=42") {
			t.Errorf("audit play %s --format text: %s", shell, res)
		}
	})
	t.Run("bastion scan", func(t *testing.T) {
		res := scan.Scan(ctx, env.TargetAddr, scan.Options{HostCAs: hostCAs})
		if !res.Pass {
			t.Errorf("bastion scan fails the demo host: %+v", res.Findings)
		}
		for _, f := range res.Findings {
			if f.Code == scan.CodeNoHostCert || f.Code == scan.CodeForeignHostCert || f.Code == scan.CodeHostCertPrincipal {
				t.Errorf("the demo host's certificate: %+v", f)
			}
		}
	})
}

// TestDevBuiltinHostIsARealHost: the built-in demo host runs commands with
// exit codes, a pty, scp, sftp, rsync and git, through the gateway, passes
// `bastion scan`, and listens on loopback only.
func TestDevBuiltinHostIsARealHost(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "builtin", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if h, _, _ := net.SplitHostPort(env.TargetAddr); !net.ParseIP(h).IsLoopback() {
		t.Fatalf("the demo host listens on %s", env.TargetAddr)
	}
	checkDemoHost(t, ctx, env)
}

// TestDevSSHDTarget: `bastion dev --target sshd` prints a login that sshd
// accepts (as root: a non-root account, since sshd refuses root), and its
// sshd passes `bastion scan`.
func TestDevSSHDTarget(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "sshd", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if env.TargetUser == "root" || !strings.Contains(env.Instructions(), env.TargetUser+"@127.0.0.1") {
		t.Fatalf("the instructions log in as %q:\n%s", env.TargetUser, env.Instructions())
	}
	checkDemoHost(t, ctx, env)
}
