// Package testbed starts real OpenSSH daemons and clients on loopback for
// bastion's end-to-end tests.
//
// The project's rule is that end-to-end tests talk to the real OpenSSH
// binaries (sshd, ssh, scp, sftp, ssh-keygen, plus rsync and git over ssh)
// on 127.0.0.1, random ports and temporary directories — never mocks. This
// package hides the fiddly parts: a login account sshd accepts, an sshd_config
// that works both as root and as a normal user, client invocations that never
// read the developer's ~/.ssh or ssh-agent, and log capture so tests can
// assert on sshd's stated reasons.
//
// A typical test:
//
//	testbed.RequireOpenSSH(t)
//	c := testbed.NewClient(t)
//	d := testbed.StartSSHD(t, testbed.SSHDConfig{AuthorizedKeys: c.AuthorizedKey()})
//	r := c.Run(ctx, "ssh", "-p", strconv.Itoa(d.Port), d.User+"@127.0.0.1", "echo", "hi")
//	if r.ExitCode != 0 || r.Stdout != "hi\n" {
//		t.Fatalf("ssh: %v\nsshd log:\n%s", r, d.Log())
//	}
//
// Root versus non-root. In CI the tests run as root: sshd then runs as root
// with privilege separation (it needs /run/sshd and the "sshd" account, both
// provided by the openssh-server package; /run/sshd is created if missing),
// and tests log in as the dedicated account "bastiontest", created on first
// use. On a developer machine the tests run as a normal user: sshd runs as
// that user, and that user is the only account it can log in as. LoginUser
// hides the difference. Files sshd opens as the login user (authorized_keys,
// AuthorizedPrincipalsFile) must live in SSHD.Dir, which is readable by both;
// files the login user writes belong in SSHD.UserDir.
//
// Every helper takes the test's testing.TB and fails the test with
// t.Fatalf when the environment is broken (a missing binary is an error, not
// a skip: CI installs OpenSSH, so a skip would hide a broken pipeline). Such
// helpers must be called from the test's own goroutine. Client.Run and
// Client.Command do not fail the test and are safe to call concurrently.
package testbed

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestUser is the account tests log in as when they run as root. It is
// created on first use with a usable shell and a "*" password field: with
// UsePAM no, sshd refuses accounts whose password field starts with "!"
// (locked), which is what useradd leaves by default.
const TestUser = "bastiontest"

// installHint is appended to every "binary not found" failure.
const installHint = "install openssh-server openssh-client (Debian: apt-get install openssh-server openssh-client rsync git)"

// RequireOpenSSH fails the test (it does not skip it) unless the OpenSSH
// server and client binaries that this package drives are installed.
func RequireOpenSSH(t testing.TB) {
	t.Helper()
	var missing []string
	if _, err := sshdPath(); err != nil {
		missing = append(missing, "sshd")
	}
	for _, name := range []string{"ssh", "ssh-keygen", "scp", "sftp"} {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("testbed: OpenSSH binaries not found: %s; %s", strings.Join(missing, ", "), installHint)
	}
}

// RequireCommand fails the test unless every named program (for example
// "rsync" or "git") is on PATH.
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	var missing []string
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("testbed: programs not found on PATH: %s; install them (Debian: apt-get install %s)",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process can take it before the caller binds it; StartSSHD retries
// with a new port when that happens.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return port
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find a free loopback port: %w", err)
	}
	return port, nil
}

// LoginUser returns the account that sshd started by this package lets tests
// log in as: TestUser when running as root (created on first use), otherwise
// the current user.
func LoginUser(t testing.TB) string {
	t.Helper()
	u, err := loginAccount()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return u.Username
}

// loginAccount resolves (and as root, creates) the login account once per
// test binary. This is the package's only mutable state: useradd and usermod
// rewrite /etc/passwd and /etc/shadow, so running them for every test would
// be slow and would contend for the password-file lock. Across test binaries
// running in parallel, ensureTestUser serialises with a file lock instead.
var loginAccount = sync.OnceValues(func() (*user.User, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return nil, fmt.Errorf("look up the current user (sshd can only log in as an account in the passwd database): %w", err)
		}
		return u, nil
	}
	return ensureTestUser()
})

// ensureTestUser creates TestUser if needed and makes sure sshd will accept
// it. It is idempotent and safe to run from several processes at once.
func ensureTestUser() (*user.User, error) {
	unlock, err := lockFile(filepath.Join(os.TempDir(), "bastion-testbed-useradd.lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	if _, err := user.Lookup(TestUser); err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return nil, fmt.Errorf("look up %s: %w", TestUser, err)
		}
		out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", TestUser).CombinedOutput()
		// Exit status 9 means "username already in use": another process
		// that does not honour our lock got there first, which is fine.
		if err != nil && !isExitCode(err, 9) {
			return nil, fmt.Errorf("useradd %s: %w: %s", TestUser, err, strings.TrimSpace(string(out)))
		}
	}
	// "*" instead of useradd's "!": unusable for passwords either way, but
	// sshd with UsePAM no treats "!" as a locked account and refuses it.
	if out, err := exec.Command("usermod", "-p", "*", TestUser).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("usermod -p '*' %s: %w: %s", TestUser, err, strings.TrimSpace(string(out)))
	}
	u, err := user.Lookup(TestUser)
	if err != nil {
		return nil, fmt.Errorf("look up %s after creating it: %w", TestUser, err)
	}
	return u, nil
}

func isExitCode(err error, code int) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == code
}

// sshdPath finds sshd. It is looked up by absolute path because sshd
// refuses to start otherwise (it re-executes itself for every connection),
// and because /usr/sbin is often missing from a normal user's PATH.
func sshdPath() (string, error) {
	if p, err := exec.LookPath("sshd"); err == nil {
		return filepath.Abs(p)
	}
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errors.New("sshd not found on PATH or in /usr/sbin, /usr/local/sbin, /sbin; " + installHint)
}

// sftpServerPath finds the sftp-server binary; targets in production run the
// external one, so tests prefer it. If it is missing, sshd's built-in
// internal-sftp is used instead.
func sftpServerPath() string {
	for _, p := range []string{
		"/usr/lib/openssh/sftp-server",     // Debian, Ubuntu
		"/usr/libexec/openssh/sftp-server", // Fedora, RHEL
		"/usr/lib/ssh/sftp-server",         // Arch
		"/usr/libexec/sftp-server",         // macOS
		"/usr/local/libexec/sftp-server",
	} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	return "internal-sftp"
}

// makeTempDir creates a fresh directory with the given mode and removes it in
// t.Cleanup. Unlike t.TempDir, its name never contains the test name, so paths
// need no quoting or %-escaping in ssh configuration files, and its mode is
// not forced to 0700 (sshd reads some files as the login user).
func makeTempDir(t testing.TB, prefix string, mode os.FileMode) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("testbed: remove %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	if strings.ContainsAny(dir, " \t\"'%\\") {
		t.Fatalf("testbed: temporary directory %q contains characters that ssh configuration files would misread; set TMPDIR to a plain path", dir)
	}
	return dir
}

// runTool runs a helper program (ssh-keygen, sshd -t) and fails the test
// with its output when it fails.
func runTool(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("testbed: %s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}
