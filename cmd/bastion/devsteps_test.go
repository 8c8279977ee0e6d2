package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

// stepLines returns the command lines of the printed instructions that
// follow the line containing after, up to the next blank-ish heading.
func stepLines(t *testing.T, text, after string, n int) []string {
	t.Helper()
	i := strings.Index(text, after)
	if i < 0 {
		t.Fatalf("instructions lack %q:\n%s", after, text)
	}
	lines := strings.Split(text[i:], "\n")[1:]
	var out []string
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "(") || strings.HasPrefix(l, "keeps") {
			continue
		}
		out = append(out, l)
		if len(out) == n {
			break
		}
	}
	return out
}

// freshAccount is a home directory with no ~/.ssh, and a PATH whose ssh is
// the real OpenSSH client pointed at that home (OpenSSH takes ~ from the
// password database, not $HOME) with accept-new host key checking.
type freshAccount struct {
	home, bin string
}

func newFreshAccount(t *testing.T) freshAccount {
	t.Helper()
	return newAccount(t, "accept-new", "")
}

// newAccount is newFreshAccount with the given StrictHostKeyChecking and
// known_hosts file ("": one outside the home).
func newAccount(t *testing.T, strict, knownHosts string) freshAccount {
	t.Helper()
	testbed.RequireOpenSSH(t)
	dir := t.TempDir()
	a := freshAccount{home: filepath.Join(dir, "home"), bin: filepath.Join(dir, "bin")}
	for _, d := range []string{a.home, a.bin} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "ssh_config")
	if knownHosts == "" {
		knownHosts = dir + "/known_hosts"
	}
	knownHosts = strings.Replace(knownHosts, "~", a.home, 1)
	if err := os.WriteFile(cfg, []byte("Host *\n  IdentityFile "+a.home+"/.ssh/id_ed25519\n  UserKnownHostsFile "+knownHosts+"\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking "+strict+"\n  BatchMode yes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/bin/sh\nexec " + sshBin + " -F " + cfg + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(a.bin, "ssh"), []byte(wrapper), 0o700); err != nil {
		t.Fatal(err)
	}
	return a
}

// sh runs a printed line verbatim with sh as the fresh account; answer
// sees each line of its stderr.
func (a freshAccount) sh(ctx context.Context, t *testing.T, line string, answer func(string)) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Env = append(os.Environ(), "HOME="+a.home, "PATH="+a.bin+":"+os.Getenv("PATH"), "SSH_AUTH_SOCK=", "LC_ALL=C")
	cmd.Dir = a.home
	cmd.WaitDelay = 5 * time.Second
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	r := bufio.NewReader(stderr)
	for {
		l, err := r.ReadString('\n')
		all.WriteString(l)
		if answer != nil {
			answer(l)
		}
		if err != nil {
			break
		}
	}
	io.Copy(io.Discard, r)
	err = cmd.Wait()
	return out.String() + all.String(), err
}

// TestDevFirstStepsVerbatim runs the OpenSSH-only steps `bastion dev`
// prints, verbatim, on an account with no ~/.ssh: they make the key, log
// in, jump; a second run keeps the key; a failed login keeps the old
// certificate.
// sessionIDRE finds the session ids of an `audit sessions` table.
var sessionIDRE = regexp.MustCompile(`(?m)^[0-9a-f]{16}\b`)

func TestDevFirstStepsVerbatim(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "auto", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	text := env.Instructions()
	login := stepLines(t, text, "with nothing but OpenSSH", 2)
	jump := stepLines(t, text, "Jump to the demo host", 1)[0]
	acct := newFreshAccount(t)
	keyPath := filepath.Join(acct.home, ".ssh", "id_ed25519")
	certPath := keyPath + "-cert.pub"

	approve := func(l string) {
		if m := devCodeRE.FindStringSubmatch(l); m != nil {
			if err := env.IdP.ApproveDevice(m[1], "alice"); err != nil {
				t.Error(err)
			}
		}
	}
	deny := func(l string) {
		if m := devCodeRE.FindStringSubmatch(l); m != nil {
			if err := env.IdP.DenyDevice(m[1]); err != nil {
				t.Error(err)
			}
		}
	}
	if out, err := acct.sh(ctx, t, login[0], nil); err != nil {
		t.Fatalf("%s: %v\n%s", login[0], err, out)
	}
	key1, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatalf("the key step made no key: %v", err)
	}
	if fi, err := os.Stat(filepath.Dir(keyPath)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("~/.ssh: %v %v, want mode 0700", fi.Mode(), err)
	}
	if out, err := acct.sh(ctx, t, login[1], approve); err != nil {
		t.Fatalf("%s: %v\n%s", login[1], err, out)
	}
	cert1, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	if k, _, _, _, err := gossh.ParseAuthorizedKey(cert1); err != nil {
		t.Fatalf("no certificate in %s: %v", certPath, err)
	} else if c, ok := k.(*gossh.Certificate); !ok || c.ValidPrincipals[0] != "alice" {
		t.Fatalf("certificate %v, want one for alice", k)
	}
	if out, err := acct.sh(ctx, t, jump+" echo through-the-gateway", nil); err != nil || !strings.Contains(out, "through-the-gateway") {
		t.Fatalf("%s: %v\n%s", jump, err, out)
	}
	// The jump was recorded, and the printed steps show it.
	play := stepLines(t, text, "one by the id in its first column:", 2)
	out, err := acct.sh(ctx, t, play[0], nil)
	ids := sessionIDRE.FindAllString(out, -1)
	if err != nil || len(ids) == 0 || !strings.Contains(out, " exec ") {
		t.Fatalf("%s: %v\n%s", play[0], err, out)
	}
	if out, err := acct.sh(ctx, t, strings.Replace(play[1], "SESSION", ids[len(ids)-1], 1), nil); err != nil || !strings.Contains(out, "through-the-gateway") {
		t.Fatalf("%s: %v\n%s", play[1], err, out)
	}

	// The steps again: the key stays; a denied login keeps the certificate.
	if out, err := acct.sh(ctx, t, login[0], nil); err != nil {
		t.Fatalf("%s again: %v\n%s", login[0], err, out)
	}
	if key2, _ := os.ReadFile(keyPath); !bytes.Equal(key1, key2) {
		t.Fatal("the key step replaced an existing key")
	}
	if out, err := acct.sh(ctx, t, login[1], deny); err == nil {
		t.Fatalf("a denied login succeeded:\n%s", out)
	}
	if cert2, _ := os.ReadFile(certPath); !bytes.Equal(cert1, cert2) {
		t.Fatalf("a failed login changed the certificate to %q", cert2)
	}
	// And leaves nothing behind.
	if left, _ := filepath.Glob(filepath.Join(acct.home, ".ssh", "*.new")); len(left) != 0 {
		t.Errorf("a failed login left %v behind", left)
	}
}

// TestDevNamesTheCLIAsItCanRun: with no bastion on $PATH the steps say
// `go run ./cmd/bastion`; with one, `bastion`.
func TestDevNamesTheCLIAsItCanRun(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if got := devCLI(); got != "go run ./cmd/bastion" {
		t.Errorf("without bastion on PATH: %q", got)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bastion"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	if got := devCLI(); got != "bastion" {
		t.Errorf("with bastion on PATH: %q", got)
	}
}

// TestReadmeFirstStepsMatchDev: the README's OpenSSH login is the one
// `bastion dev` prints for its default address.
func TestReadmeFirstStepsMatchDev(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{devKeyStep, devCertStep("2222", "127.0.0.1"), "Include ~/.ssh/bastion/config", includeWhy,
		// go install's bin directory is often not on PATH.
		"go install ./cmd/bastion\nexport PATH=\"$(go env GOPATH)/bin:$PATH\"\n"} {
		if !strings.Contains(string(readme), want) {
			t.Errorf("README lacks %q", want)
		}
	}
	if strings.Contains(string(readme), ">> ~/.ssh/config") {
		t.Error("README appends the Include line to ~/.ssh/config; it must go at the top")
	}
}

// TestDevBastionLoginThenPrintedJump: after `bastion login` to a dev
// gateway and the Include line at the top of ~/.ssh/config, as the login
// says, the printed `ssh -J` to the demo host works with strict host key
// checking (the gateway's Host block also matches the demo host's
// address, so the demo host must pass bastion's known_hosts).
func TestDevBastionLoginThenPrintedJump(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "auto", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	home := newHome(t)
	out, errOut, err := runLoginCLI(t, env.Gateway, func(l string) {
		if m := devCodeRE.FindStringSubmatch(l); m != nil {
			if err := env.IdP.ApproveDevice(m[1], "alice"); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil {
		t.Fatalf("bastion login: %v\n%s%s", err, out, errOut)
	}
	if !strings.Contains(out, "at the top of ~/.ssh/config") || !strings.Contains(out, includeWhy) {
		t.Errorf("login output does not say where the Include line goes and why:\n%s", out)
	}
	cfg := filepath.Join(home, ".ssh", "config")
	text := "Include " + filepath.Join(home, ".ssh", "bastion", "config") + "\n\nHost *\n  BatchMode yes\n  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n  IdentityAgent none\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	jump := strings.Fields(stepLines(t, env.Instructions(), "Jump to the demo host", 1)[0])
	res, code := sshVia(t, home, cfg, append(jump[1:], "echo", "through-the-gateway")...)
	if code != 0 || !strings.Contains(res, "through-the-gateway") {
		t.Fatalf("%s after bastion login: exit %d\n%s", strings.Join(jump, " "), code, res)
	}
}

// TestDevAnnouncesTemporaryDataDir: `bastion dev` without --data-dir says
// at start that its data, audit log included, goes when it stops and how
// to keep it, and on Ctrl-C says it deleted it.
func TestDevAnnouncesTemporaryDataDir(t *testing.T) {
	testbed.RequireOpenSSH(t)
	t.Setenv("BASTION_DATA_DIR", "")
	var outBuf, errBuf bytes.Buffer
	stdout, stderr := &lockedText{w: &outBuf}, &lockedText{w: &errBuf}
	cmd := newRootCommand(buildInfo{Version: "v-test"}, strings.NewReader(""), stdout, stderr)
	cmd.SetArgs([]string{"dev", "--listen", "127.0.0.1:0"})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	for !strings.Contains(stdout.String(), "Press Ctrl-C") {
		select {
		case err := <-done:
			t.Fatalf("bastion dev ended: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	start := stderr.String()
	if !strings.Contains(start, "deleted (audit log included) when bastion dev stops; pass --data-dir DIR to keep it") {
		t.Fatalf("no word on the temporary data dir at start:\n%s", start)
	}
	dir := strings.Fields(strings.SplitN(start, "temporary directory ", 2)[1])[0]
	dir = strings.TrimSuffix(dir, ",")
	if _, err := os.Stat(filepath.Join(dir, "audit.db")); err != nil {
		t.Fatalf("the announced dir %q has no audit log: %v", dir, err)
	}
	if fp := gatewayFingerprint(dir); !strings.HasPrefix(fp, "SHA256:") || !strings.Contains(stdout.String(), "host key "+fp) {
		t.Errorf("the gateway's host key fingerprint %s is not printed:\n%s", fp, stdout.String())
	}
	cancel() // Ctrl-C
	if err := <-done; err != nil {
		t.Fatalf("bastion dev: %v", err)
	}
	if !strings.Contains(stderr.String(), "deleted the temporary data directory "+dir) {
		t.Errorf("no word on deleting the data dir on exit:\n%s", stderr.String())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", dir, err)
	}
}

// lockedText is a syncWriter whose text can be read while it is written.
type lockedText struct {
	syncWriter
	w *bytes.Buffer
}

func (l *lockedText) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedText) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// TestDevRestartExplainsTheChangedHostCA: `bastion login` to a bastion dev,
// which is restarted (a new temporary data dir, so a new host CA) on the
// same address; the next login is refused as a changed host CA, with why
// that happens with bastion dev and what to do.
func TestDevRestartExplainsTheChangedHostCA(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	start := func(listen string) *devEnv {
		env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: listen, IdPListen: "127.0.0.1:0", Target: "builtin", PollInterval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	approve := func(env *devEnv) func(string) {
		return func(l string) {
			if m := devCodeRE.FindStringSubmatch(l); m != nil {
				if err := env.IdP.ApproveDevice(m[1], "alice"); err != nil {
					t.Error(err)
				}
			}
		}
	}
	home := newHome(t)
	first := start("127.0.0.1:0")
	if _, errOut, err := runLoginCLI(t, first.Gateway, approve(first)); err != nil {
		t.Fatalf("first login: %v\n%s", err, errOut)
	}
	addr := first.Gateway
	first.Close()
	second := start(addr)
	defer second.Close()
	_, _, err := runLoginCLI(t, addr, approve(second))
	known := filepath.Join(home, ".ssh", "bastion", "known_hosts")
	if err == nil {
		t.Fatal("a login after a dev restart succeeded without a word about the new host CA")
	}
	for _, want := range []string{"HOST CA HAS CHANGED", "bastion dev", "temporary directory", "delete " + known, "bastion dev --data-dir DIR"} {
		if !strings.Contains(userError(err), want) {
			t.Errorf("the error lacks %q:\n%s", want, userError(err))
		}
	}
	// The way out it names works.
	if err := os.Remove(known); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := runLoginCLI(t, addr, approve(second)); err != nil {
		t.Fatalf("login after deleting %s: %v\n%s", known, err, errOut)
	}
}

// TestDevKnownHostsStepVerbatim: the OpenSSH-only steps include the host
// CA line for ~/.ssh/known_hosts; with it, and nothing trusted on first
// use, the printed jump (record mode: the gateway answers for the demo
// host) works with strict host key checking; the step is idempotent.
func TestDevKnownHostsStepVerbatim(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	env, err := startDev(ctx, devOptions{DataDir: t.TempDir(), Listen: "127.0.0.1:0", IdPListen: "127.0.0.1:0", Target: "auto", PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	text := env.Instructions()
	login := stepLines(t, text, "with nothing but OpenSSH", 2)
	known := stepLines(t, text, "so ssh never asks about them", 1)[0]
	if !strings.Contains(known, "@cert-authority ") || !strings.Contains(known, strings.TrimSpace(string(gossh.MarshalAuthorizedKey(env.HostCAs[0])))) {
		t.Fatalf("the known_hosts step does not add the host CA line: %s", known)
	}
	jump := stepLines(t, text, "Jump to the demo host", 1)[0]
	acct := newAccount(t, "yes", "~/.ssh/known_hosts")
	approve := func(l string) {
		if m := devCodeRE.FindStringSubmatch(l); m != nil {
			if err := env.IdP.ApproveDevice(m[1], "alice"); err != nil {
				t.Error(err)
			}
		}
	}
	if out, err := acct.sh(ctx, t, login[0], nil); err != nil {
		t.Fatalf("%s: %v\n%s", login[0], err, out)
	}
	// Strict checking before the line: the login itself is refused.
	if out, err := acct.sh(ctx, t, login[1], approve); err == nil || !strings.Contains(out, "Host key verification failed") {
		t.Fatalf("%s without the host CA line: %v\n%s; want a host key verification failure", login[1], err, out)
	}
	for range 2 {
		if out, err := acct.sh(ctx, t, known, nil); err != nil {
			t.Fatalf("%s: %v\n%s", known, err, out)
		}
	}
	kh, err := os.ReadFile(filepath.Join(acct.home, ".ssh", "known_hosts"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(kh), "@cert-authority"); n != len(env.HostCAs) {
		t.Errorf("known_hosts after the step twice has %d @cert-authority lines; want %d:\n%s", n, len(env.HostCAs), kh)
	}
	if out, err := acct.sh(ctx, t, login[1], approve); err != nil {
		t.Fatalf("%s with the host CA line: %v\n%s", login[1], err, out)
	}
	if out, err := acct.sh(ctx, t, jump+" echo through-the-gateway", nil); err != nil || !strings.Contains(out, "through-the-gateway") {
		t.Fatalf("%s with strict host key checking: %v\n%s", jump, err, out)
	}
	if kh2, _ := os.ReadFile(filepath.Join(acct.home, ".ssh", "known_hosts")); !bytes.Equal(kh, kh2) {
		t.Errorf("ssh added host keys of its own; the CA line should have covered every host:\n%s", kh2)
	}
}
