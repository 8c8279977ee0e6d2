package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultTimeout bounds Client.Run when its context has no deadline, so a
// hung ssh fails the test instead of stalling it until go test's -timeout.
const DefaultTimeout = 60 * time.Second

// Client is an SSH user for the real OpenSSH client programs: a fresh
// ed25519 key, an optional certificate, a known_hosts file and an
// ssh_config that ignores everything the developer has configured.
//
// All client options live in the generated ssh_config (ConfigPath) and
// SSHArgs is just "-F ConfigPath", for two reasons. ssh keeps the first value
// it obtains for an option and reads -o flags before the -F file, so a
// test's own "-o StrictHostKeyChecking=yes" overrides the file; if the
// defaults were -o flags at the front of the command line they would win
// instead. And ssh passes -F, but not -o, to the ssh it runs for ProxyJump
// (-J), so the jump hop authenticates with the same key and known_hosts.
type Client struct {
	// Dir is the client's private temporary directory.
	Dir string
	// KeyPath is the private key; KeyPath+".pub" is its public half.
	KeyPath string
	// CertPath is KeyPath+"-cert.pub", where SetCertificate puts a
	// certificate. ssh also picks it up implicitly whenever it exists.
	CertPath string
	// KnownHosts is the UserKnownHostsFile; see TrustHostKey and
	// TrustHostCA. The system-wide known hosts file is never read.
	KnownHosts string
	// ConfigPath is the generated ssh_config, rewritten from these fields
	// whenever SSHArgs, Run or Command is called.
	ConfigPath string
	// Home is HOME for the programs Run starts, so git and rsync find no
	// personal configuration. (ssh itself takes ~ from the passwd database,
	// not HOME; the -F config is what isolates it.)
	Home string
	// StrictHostKeyChecking is written to the ssh_config; the default
	// "accept-new" trusts a host on first use. Tests of host keys or host
	// certificates set "yes": with "accept-new", a host certificate that
	// fails validation is silently accepted as a new plain host key.
	StrictHostKeyChecking string
	// Env is added to the environment of every program Run starts, after
	// (and so overriding) the isolated defaults; for example
	// "SSH_AUTH_SOCK=/path" together with -o IdentityAgent=/path for a
	// test that needs an agent.
	Env []string
	// Timeout replaces DefaultTimeout when non-zero.
	Timeout time.Duration

	t   testing.TB
	pub ssh.PublicKey

	mu         sync.Mutex // guards the files below and lastConfig
	lastConfig string
	sshCommand string // shell-quoted "ssh -F ConfigPath" for rsync and git
}

// Result is what a client program did.
type Result struct {
	Stdout, Stderr string
	// ExitCode is the program's exit status, or -1 if it did not exit
	// normally (it could not start, was killed, or timed out).
	ExitCode int
	// Err is set when the program did not run to completion (as opposed
	// to exiting non-zero, which only sets ExitCode).
	Err error
}

// String summarises r for test failure messages.
func (r Result) String() string {
	s := fmt.Sprintf("exit %d", r.ExitCode)
	if r.Err != nil {
		s += fmt.Sprintf(" (%v)", r.Err)
	}
	return fmt.Sprintf("%s\nstdout: %s\nstderr: %s", s, r.Stdout, r.Stderr)
}

// NewClient generates a passphrase-less ed25519 key in a fresh directory and
// returns a Client that uses it.
func NewClient(t testing.TB) *Client {
	t.Helper()
	RequireOpenSSH(t)
	dir := makeTempDir(t, "bastion-client-", 0o700)
	c := &Client{
		Dir:                   dir,
		KeyPath:               filepath.Join(dir, "id_ed25519"),
		CertPath:              filepath.Join(dir, "id_ed25519-cert.pub"),
		KnownHosts:            filepath.Join(dir, "known_hosts"),
		ConfigPath:            filepath.Join(dir, "ssh_config"),
		Home:                  filepath.Join(dir, "home"),
		StrictHostKeyChecking: "accept-new",
		t:                     t,
	}
	runTool(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testbed client", "-f", c.KeyPath)
	c.pub = readPublicKey(t, c.KeyPath+".pub")
	if err := os.Mkdir(c.Home, 0o700); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	if err := os.WriteFile(c.KnownHosts, nil, 0o600); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Fatalf("testbed: %v; %s", err, installHint)
	}
	c.sshCommand = shellQuote(sshBin) + " -F " + shellQuote(c.ConfigPath)
	if err := c.writeConfig(); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return c
}

// PublicKey returns the client's public key.
func (c *Client) PublicKey() ssh.PublicKey { return c.pub }

// AuthorizedKey returns the public key as an authorized_keys line (with a
// trailing newline), ready for SSHDConfig.AuthorizedKeys.
func (c *Client) AuthorizedKey() string {
	return string(ssh.MarshalAuthorizedKey(c.pub))
}

// SetCertificate installs cert (OpenSSH "-cert.pub" format, as returned by
// CA.Sign) as the client's certificate; nil removes it. The certificate is
// not checked against the key, so tests can offer mismatched ones. Call it
// from the test goroutine, not while Run is in progress.
func (c *Client) SetCertificate(cert []byte) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if cert == nil {
		err = os.Remove(c.CertPath)
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	} else {
		err = os.WriteFile(c.CertPath, cert, 0o644)
	}
	if err != nil {
		c.t.Fatalf("testbed: %v", err)
	}
}

// TrustHostKey adds key for addr ("127.0.0.1:2222") to KnownHosts.
func (c *Client) TrustHostKey(addr string, key ssh.PublicKey) {
	c.t.Helper()
	c.appendKnownHosts(knownhosts.Line([]string{addr}, key))
}

// TrustHostCA adds a "@cert-authority pattern key" line to KnownHosts, so
// hosts matching pattern (for example "*" or "[127.0.0.1]:*") are trusted
// when they present a host certificate signed by ca.
func (c *Client) TrustHostCA(pattern string, ca ssh.PublicKey) {
	c.t.Helper()
	c.appendKnownHosts("@cert-authority " + pattern + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca))))
}

func (c *Client) appendKnownHosts(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, err := os.OpenFile(c.KnownHosts, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err == nil {
		_, err = f.WriteString(line + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		c.t.Fatalf("testbed: %v", err)
	}
}

// SSHArgs returns the arguments that make ssh, scp or sftp use this client
// and nothing else: "-F ConfigPath". Put them before any other option. The
// config sets BatchMode, IdentitiesOnly, IdentityAgent none, IdentityFile,
// CertificateFile (when a certificate is set), UserKnownHostsFile,
// GlobalKnownHostsFile /dev/null, StrictHostKeyChecking, LogLevel ERROR and
// ConnectTimeout 10; any -o given after SSHArgs overrides them.
func (c *Client) SSHArgs() []string {
	c.t.Helper()
	if err := c.writeConfig(); err != nil {
		c.t.Fatalf("testbed: %v", err)
	}
	return []string{"-F", c.ConfigPath}
}

// SSHCommand returns the shell-quoted ssh command line that rsync (-e or
// RSYNC_RSH) and git (GIT_SSH_COMMAND) should use; Run sets both variables.
func (c *Client) SSHCommand() string { return c.sshCommand }

// writeConfig renders the ssh_config from the exported fields and writes it
// if it changed, atomically, so concurrent Runs never see a partial file.
func (c *Client) writeConfig() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	opt := func(k, v string) { fmt.Fprintf(&b, "  %s %s\n", k, v) }
	b.WriteString("# Generated by bastion internal/testbed. Options given with -o on the command line override these.\n")
	b.WriteString("Host *\n")
	opt("BatchMode", "yes")
	opt("IdentitiesOnly", "yes")
	opt("IdentityAgent", "none")
	opt("AddKeysToAgent", "no")
	opt("IdentityFile", quoteConfig(c.KeyPath))
	if _, err := os.Stat(c.CertPath); err == nil {
		opt("CertificateFile", quoteConfig(c.CertPath))
	}
	opt("UserKnownHostsFile", quoteConfig(c.KnownHosts))
	opt("GlobalKnownHostsFile", "/dev/null")
	strict := c.StrictHostKeyChecking
	if strict == "" {
		strict = "accept-new"
	}
	opt("StrictHostKeyChecking", strict)
	opt("HashKnownHosts", "no")
	opt("CheckHostIP", "no")
	opt("UpdateHostKeys", "no")
	opt("ControlMaster", "no")
	opt("ControlPath", "none")
	opt("LogLevel", "ERROR")
	opt("ConnectTimeout", "10")
	text := b.String()
	if text == c.lastConfig {
		return nil
	}
	tmp := c.ConfigPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, c.ConfigPath); err != nil {
		return err
	}
	c.lastConfig = text
	return nil
}

// Command prepares name (ssh, scp, sftp, rsync, git or any other program)
// exactly as Run would run it, for tests that need to stream stdin/stdout or
// signal the process. It is killed when ctx is done; Command adds no
// timeout of its own. Safe for concurrent use.
func (c *Client) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	err := c.writeConfig()
	switch filepath.Base(name) {
	case "ssh", "scp", "sftp":
		args = append([]string{"-F", c.ConfigPath}, args...)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.Home
	cmd.Env = append(withoutEnv(os.Environ(),
		"HOME", "SSH_*", "DISPLAY", "XDG_CONFIG_HOME", "GIT_*", "RSYNC_*", "LC_ALL", "LANGUAGE"),
		"HOME="+c.Home,
		"LC_ALL=C", // stable messages to assert on
		"RSYNC_RSH="+c.sshCommand,
		"GIT_SSH_COMMAND="+c.sshCommand,
		"GIT_SSH_VARIANT=ssh",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=bastion testbed",
		"GIT_AUTHOR_EMAIL=testbed@example.invalid",
		"GIT_COMMITTER_NAME=bastion testbed",
		"GIT_COMMITTER_EMAIL=testbed@example.invalid",
		// As root, repositories in SSHD.UserDir belong to the login user,
		// which git would otherwise refuse as "dubious ownership".
		"GIT_CONFIG_COUNT=2",
		"GIT_CONFIG_KEY_0=init.defaultBranch", "GIT_CONFIG_VALUE_0=main",
		"GIT_CONFIG_KEY_1=safe.directory", "GIT_CONFIG_VALUE_1=*",
	)
	cmd.Env = append(cmd.Env, c.Env...)
	// If a grandchild keeps stdout open, give up waiting for it rather than
	// hang after the program itself has exited.
	cmd.WaitDelay = 5 * time.Second
	if err != nil && cmd.Err == nil {
		cmd.Err = fmt.Errorf("testbed: write ssh_config: %w", err)
	}
	return cmd
}

// Run runs name with args and returns its output. For ssh, scp and sftp it
// puts SSHArgs first; rsync and git reach ssh through RSYNC_RSH and
// GIT_SSH_COMMAND. The environment is isolated: HOME is Home, SSH_AUTH_SOCK
// and other SSH_* variables are removed (so a developer's agent never
// interferes), GIT_* and RSYNC_* are reset, and Env is added last. Stdin is
// empty. Without a deadline in ctx, Run gives up after Timeout
// (DefaultTimeout). It does not fail the test and is safe for concurrent
// use.
func (c *Client) Run(ctx context.Context, name string, args ...string) Result {
	return c.RunInput(ctx, nil, name, args...)
}

// RunInput is Run with stdin read from in (nil means empty).
func (c *Client) RunInput(ctx context.Context, in io.Reader, name string, args ...string) Result {
	if _, ok := ctx.Deadline(); !ok {
		timeout := c.Timeout
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := c.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, &stdout, &stderr
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: -1}
	if cmd.ProcessState != nil {
		r.ExitCode = cmd.ProcessState.ExitCode()
	}
	var exitErr *exec.ExitError
	switch {
	case err != nil && ctx.Err() != nil:
		r.Err = fmt.Errorf("testbed: %s: %w", name, ctx.Err())
	case err != nil && !errors.As(err, &exitErr):
		r.Err = fmt.Errorf("testbed: %s: %w", name, err)
	}
	return r
}

// shellQuote quotes s for sh (git runs GIT_SSH_COMMAND through the shell);
// rsync's own RSYNC_RSH splitting understands the same single quotes.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// quoteConfig quotes a path for ssh_config, where IdentityFile and friends
// also expand %-tokens.
func quoteConfig(p string) string {
	return `"` + strings.ReplaceAll(p, "%", "%%") + `"`
}
