package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/devtarget"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

var devCodeRE = regexp.MustCompile(`enter the code (\S+)`)

// TestDevEndToEnd is the README's first run: bastion dev, log in with
// nothing but OpenSSH, approve as alice, jump to the demo host.
func TestMain(m *testing.M) {
	// The demo host re-runs this binary as its account to serve SFTP.
	if devtarget.ServeSFTPChild() {
		return
	}
	os.Exit(m.Run())
}

func TestDevEndToEnd(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "auto", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	text := env.Instructions()
	for _, want := range []string{"bastion login --gateway " + env.Gateway, "login@127.0.0.1", "ssh -J alice@" + env.Gateway, "audit export", "alice", "bob"} {
		if !strings.Contains(text, want) {
			t.Errorf("instructions lack %q:\n%s", want, text)
		}
	}
	_, gwPort, _ := net.SplitHostPort(env.Gateway)
	c := devLogin(t, ctx, env)

	// 2. Jump to the demo host, as the instructions say.
	host, port, _ := net.SplitHostPort(env.TargetAddr)
	user := env.TargetUser
	if user == "" {
		user = "alice"
	}
	res := c.Run(ctx, "ssh", "-J", "alice@"+env.Gateway, "-p", port, user+"@"+host, "echo", "through-the-gateway")
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "through-the-gateway") {
		t.Fatalf("jump to the demo host (%s): %s", env.TargetKind, res)
	}
	// The gateway knows who alice is.
	res = c.Run(ctx, "ssh", "-p", gwPort, "alice@127.0.0.1", "info")
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "you are alice") || !strings.Contains(res.Stdout, "groups:      eng") {
		t.Fatalf("info on the gateway: %s", res)
	}
}

// devLogin logs a fresh OpenSSH client in as alice over the gateway's SSH
// port with the device flow, approving it at the dev IdP.
func devLogin(t *testing.T, ctx context.Context, env *devEnv) *testbed.Client {
	t.Helper()
	_, gwPort, _ := net.SplitHostPort(env.Gateway)
	c := testbed.NewClient(t)
	// Log in over the SSH port with the device flow.
	cmd := c.Command(ctx, "ssh", "-p", gwPort, "login@127.0.0.1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stderr)
	var prompt strings.Builder
	for {
		line, err := r.ReadString('\n')
		prompt.WriteString(line)
		if m := devCodeRE.FindStringSubmatch(line); m != nil {
			if err := env.IdP.ApproveDevice(m[1], "alice"); err != nil {
				t.Fatal(err)
			}
		}
		if err != nil {
			break
		}
	}
	io.Copy(io.Discard, r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("login: %v\n%s", err, prompt.String())
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(out.String()))
	if err != nil {
		t.Fatalf("login printed no certificate: %q\n%s", out.String(), prompt.String())
	}
	if p := k.(*gossh.Certificate).ValidPrincipals; len(p) == 0 || p[0] != "alice" {
		t.Fatalf("certificate principals %v, want alice", p)
	}
	c.SetCertificate([]byte(out.String()))

	return c
}
