package testbed

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHDConfig describes the sshd a test needs. The zero value is a working
// daemon that accepts nobody (no authorized keys, no trusted CA).
type SSHDConfig struct {
	// TrustedUserCAKeys holds authorized_keys-format CA lines (see
	// CA.AuthorizedKey). They are written to a file that the
	// TrustedUserCAKeys directive points at.
	TrustedUserCAKeys string

	// RevokedKeys, if non-nil, is written to a file that the RevokedKeys
	// directive points at: a binary KRL (see CA.KRL) or a text list of
	// public keys. An empty non-nil value revokes nothing, but note that
	// sshd refuses every key if the file cannot be read.
	RevokedKeys []byte

	// HostKeyType is the ssh-keygen -t type of the generated host key:
	// "ed25519" (the default), "ecdsa" or "rsa".
	HostKeyType string

	// HostCertificate, if non-nil, is a certificate for the generated host
	// key. The key only exists once NewSSHD returns, so sign
	// SSHD.HostKeyPub, set SSHD.Config.HostCertificate, then call Start.
	HostCertificate []byte

	// Extra is sshd_config text placed BEFORE the defaults, because sshd
	// keeps the first value it reads for most keywords: "PasswordAuthentication
	// yes" here overrides the default "no". Everything from the first Match
	// line on is placed at the end instead, where Match blocks must be.
	// Keywords that accumulate (Port, ListenAddress, HostKey, AcceptEnv)
	// add to the defaults rather than replacing them. A "Subsystem sftp"
	// line replaces the default sftp subsystem.
	Extra string

	// AuthorizedKeys is the authorized_keys content for the login user. It
	// is written to a file in the daemon's directory, never to the user's
	// home.
	AuthorizedKeys string
}

// SSHD is a real OpenSSH daemon listening on 127.0.0.1, owned by one test.
// It is stopped by t.Cleanup, which also logs sshd's output if the test
// failed.
type SSHD struct {
	// Addr is "127.0.0.1:Port"; set by Start.
	Addr string
	// Port is the TCP port sshd listens on; set by Start.
	Port int
	// User is the account tests log in as (see LoginUser).
	User string
	// Dir holds the configuration, host key, log and every file sshd reads.
	// It is readable (not writable) by the login user, which is how sshd
	// reads authorized_keys when it runs as root. Use WriteFile to add
	// files that Extra refers to, such as an AuthorizedPrincipalsFile.
	Dir string
	// UserDir is a directory inside Dir owned by the login user, for files
	// that sessions create (scp, sftp, rsync and git destinations).
	UserDir string
	// HostKeyPath is the generated host private key; its public half is at
	// HostKeyPath+".pub".
	HostKeyPath string
	// HostKeyPub is the host public key clients will be shown.
	HostKeyPub ssh.PublicKey
	// ConfigPath is the generated sshd_config; LogPath is sshd's output.
	ConfigPath, LogPath string
	// Config is the configuration Start will use; it may be changed between
	// NewSSHD and Start.
	Config SSHDConfig

	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// StartSSHD is NewSSHD followed by Start, for tests that need no host
// certificate.
func StartSSHD(t testing.TB, cfg SSHDConfig) *SSHD {
	t.Helper()
	d := NewSSHD(t, cfg)
	d.Start()
	return d
}

// NewSSHD prepares a daemon's directory and generates its host key without
// starting it, so that a test can sign HostKeyPub with a host CA first.
func NewSSHD(t testing.TB, cfg SSHDConfig) *SSHD {
	t.Helper()
	RequireOpenSSH(t)
	account, err := loginAccount()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	root := os.Geteuid() == 0
	if root {
		// Privilege separation chroots into /run/sshd. The openssh-server
		// package's systemd unit creates it at boot; containers and fresh CI
		// machines often lack it, and sshd exits with "Missing privilege
		// separation directory".
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("testbed: create sshd privilege separation directory: %v", err)
		}
	}

	dir := makeTempDir(t, "bastion-sshd-", 0o755)
	if root {
		requireTraversable(t, dir)
	}
	d := &SSHD{
		User:       account.Username,
		Dir:        dir,
		UserDir:    filepath.Join(dir, "user"),
		ConfigPath: filepath.Join(dir, "sshd_config"),
		LogPath:    filepath.Join(dir, "sshd.log"),
		Config:     cfg,
		t:          t,
	}

	keyType := cfg.HostKeyType
	if keyType == "" {
		keyType = "ed25519"
	}
	d.HostKeyPath = filepath.Join(dir, "ssh_host_"+keyType+"_key")
	runTool(t, "ssh-keygen", "-q", "-t", keyType, "-N", "", "-C", "testbed host key", "-f", d.HostKeyPath)
	d.HostKeyPub = readPublicKey(t, d.HostKeyPath+".pub")

	if err := os.Mkdir(d.UserDir, 0o755); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	if root {
		uid, _ := strconv.Atoi(account.Uid)
		gid, _ := strconv.Atoi(account.Gid)
		if err := os.Chown(d.UserDir, uid, gid); err != nil {
			t.Fatalf("testbed: give %s to %s: %v", d.UserDir, account.Username, err)
		}
	}
	return d
}

// requireTraversable fails the test if the login user could not reach dir:
// sshd running as root opens authorized_keys with the login user's
// identity, and the user's sessions write into UserDir.
func requireTraversable(t testing.TB, dir string) {
	t.Helper()
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("testbed: %v", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Fatalf("testbed: %s is not searchable by other users (mode %v), so %s cannot read files under %s; point TMPDIR at a directory like /tmp",
				p, fi.Mode().Perm(), TestUser, dir)
		}
		if p == filepath.Dir(p) {
			return
		}
	}
}

// WriteFile writes data to name inside Dir, readable by sshd and the login
// user, and returns its absolute path; use it for files that Extra refers to.
func (d *SSHD) WriteFile(name string, data []byte) string {
	d.t.Helper()
	p := filepath.Join(d.Dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		d.t.Fatalf("testbed: %v", err)
	}
	return p
}

// Target returns "user@127.0.0.1" for ssh, scp and sftp command lines; pair
// it with -p Port (ssh) or -P Port (scp, sftp).
func (d *SSHD) Target() string {
	return d.User + "@127.0.0.1"
}

// Start writes the configuration, starts `sshd -D -e -f CONFIG` and returns
// once the daemon is listening and has sent its SSH banner. It fails the test
// with sshd's output if the configuration is invalid or the daemon exits.
func (d *SSHD) Start() {
	t := d.t
	t.Helper()
	if d.cmd != nil {
		t.Fatalf("testbed: sshd in %s already started", d.Dir)
	}
	sshd, err := sshdPath()
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	files := d.writeFiles()
	penalties := supportsPerSourcePenalties(sshd)

	const attempts = 5
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("testbed: %v", err)
		}
		conf := d.configText(port, files, penalties)
		if err := os.WriteFile(d.ConfigPath, []byte(conf), 0o644); err != nil {
			t.Fatalf("testbed: %v", err)
		}
		if attempt == 1 {
			if out, err := exec.Command(sshd, "-t", "-f", d.ConfigPath).CombinedOutput(); err != nil {
				t.Fatalf("testbed: sshd rejects its configuration: %v\n%s\nsshd_config:\n%s", err, out, conf)
			}
		}
		err = d.launch(sshd, port)
		if err == nil {
			d.Port = port
			d.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			return
		}
		log := d.Log()
		if strings.Contains(log, "Address already in use") && attempt < attempts {
			continue // lost the race for the port to another process
		}
		t.Fatalf("testbed: start sshd: %v\nsshd log:\n%s\nsshd_config:\n%s", err, log, conf)
	}
}

// sshdFiles are the paths of optional files written for the configuration;
// empty means absent.
type sshdFiles struct {
	authorizedKeys, trustedCAs, revoked, hostCert string
}

func (d *SSHD) writeFiles() sshdFiles {
	var f sshdFiles
	f.authorizedKeys = d.WriteFile("authorized_keys", []byte(d.Config.AuthorizedKeys))
	if d.Config.TrustedUserCAKeys != "" {
		f.trustedCAs = d.WriteFile("trusted_user_ca_keys", []byte(d.Config.TrustedUserCAKeys))
	}
	if d.Config.RevokedKeys != nil {
		f.revoked = d.WriteFile("revoked_keys", d.Config.RevokedKeys)
	}
	if d.Config.HostCertificate != nil {
		f.hostCert = d.WriteFile(filepath.Base(d.HostKeyPath)+"-cert.pub", d.Config.HostCertificate)
	}
	return f
}

var (
	matchLine        = regexp.MustCompile(`(?im)^[ \t]*match[ \t]`)
	sftpSubsystem    = regexp.MustCompile(`(?im)^[ \t]*subsystem[ \t]+sftp[ \t]`)
	openSSHVersionRE = regexp.MustCompile(`OpenSSH_(\d+)\.(\d+)`)
)

// configText renders sshd_config. Extra goes first because sshd keeps the
// first value it reads; its Match blocks go last because a Match block runs
// to the end of the file.
func (d *SSHD) configText(port int, f sshdFiles, penalties bool) string {
	head, tail := d.Config.Extra, ""
	if loc := matchLine.FindStringIndex(head); loc != nil {
		head, tail = head[:loc[0]], head[loc[0]:]
	}
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# Generated by bastion internal/testbed.")
	if strings.TrimSpace(head) != "" {
		line("# SSHDConfig.Extra (first, so that it overrides the defaults below):")
		line("%s", strings.TrimRight(head, "\n"))
	}
	line("# Defaults:")
	line("ListenAddress 127.0.0.1")
	line("Port %d", port)
	line("HostKey %s", d.HostKeyPath)
	if f.hostCert != "" {
		line("HostCertificate %s", f.hostCert)
	}
	line("PidFile %s", filepath.Join(d.Dir, "sshd.pid"))
	line("LogLevel VERBOSE")
	// No PAM: it would need root-only files as a normal user, and sshd then
	// checks the password field itself (hence TestUser's "*").
	line("UsePAM no")
	// Ownership checks would reject the temporary directory layout.
	line("StrictModes no")
	line("PubkeyAuthentication yes")
	line("AuthorizedKeysFile %s", f.authorizedKeys)
	if f.trustedCAs != "" {
		line("TrustedUserCAKeys %s", f.trustedCAs)
	}
	if f.revoked != "" {
		line("RevokedKeys %s", f.revoked)
	}
	line("PasswordAuthentication no")
	line("KbdInteractiveAuthentication no")
	line("PermitRootLogin no")
	line("X11Forwarding no")
	line("PrintMotd no")
	line("PrintLastLog no")
	line("UseDNS no")
	// Tests open many connections at once from one address.
	line("MaxStartups 100:30:200")
	if penalties {
		// OpenSSH 9.8+ would otherwise stop answering 127.0.0.1 after a
		// few deliberately failed logins.
		line("PerSourcePenalties no")
	}
	if !sftpSubsystem.MatchString(head) {
		line("Subsystem sftp %s", sftpServerPath())
	}
	if tail != "" {
		line("# SSHDConfig.Extra from its first Match line on:")
		line("%s", strings.TrimRight(tail, "\n"))
	}
	return b.String()
}

// supportsPerSourcePenalties reports whether sshd is OpenSSH 9.8 or later.
func supportsPerSourcePenalties(sshd string) bool {
	out, _ := exec.Command(sshd, "-V").CombinedOutput() // older sshd prints the version in its usage error
	m := openSSHVersionRE.FindSubmatch(out)
	if m == nil {
		return false
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	return major > 9 || major == 9 && minor >= 8
}

// launch starts sshd on port and waits until it is ready. On error the
// process has exited or been killed.
func (d *SSHD) launch(sshd string, port int) error {
	logf, err := os.OpenFile(d.LogPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	// sshd writes its log straight into the file: no pipe, so no copying
	// goroutine, and Wait does not depend on session processes that
	// inherited the descriptor.
	cmd := exec.Command(sshd, "-D", "-e", "-f", d.ConfigPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = withoutEnv(os.Environ(), "SSH_AUTH_SOCK")
	cmd.SysProcAttr = daemonSysProcAttr()
	err = cmd.Start()
	_ = logf.Close()
	if err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	d.cmd, d.exited = cmd, exited

	if err := d.waitReady(port, 15*time.Second); err != nil {
		d.Stop()
		d.cmd, d.exited = nil, nil
		return err
	}
	d.t.Cleanup(func() {
		d.Stop()
		if d.t.Failed() {
			d.t.Logf("testbed: sshd log (%s):\n%s", d.LogPath, d.Log())
		}
	})
	return nil
}

// waitReady returns once sshd has logged that it listens on port and a
// connection to the port receives an SSH banner. Both are needed: the
// banner alone could come from another daemon that won the race for the
// port while ours is failing to bind.
func (d *SSHD) waitReady(port int, timeout time.Duration) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	listening := fmt.Sprintf("Server listening on 127.0.0.1 port %d", port)
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("sshd exited before it was ready: %v", d.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd not ready on %s after %v", addr, timeout)
		}
		if banner, err := readBanner(addr); err == nil && strings.HasPrefix(banner, "SSH-2.0-") {
			if strings.Contains(d.Log(), listening) {
				return nil
			}
			// Extra may have lowered LogLevel below INFO; then settle for
			// our process still being alive.
			select {
			case <-d.exited:
			case <-time.After(50 * time.Millisecond):
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readBanner(addr string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return "", err
	}
	banner, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	// Say goodbye politely so sshd logs a short line, not a protocol error.
	_, _ = conn.Write([]byte("SSH-2.0-bastion-testbed-probe\r\n"))
	return banner, nil
}

// Stop terminates sshd and waits for it to exit. It is idempotent and is
// called automatically by t.Cleanup; tests call it to simulate a target
// going away. Sessions already in progress run in their own processes and
// end when their clients disconnect.
func (d *SSHD) Stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// Log returns everything sshd has logged so far (LogLevel VERBOSE unless
// Extra changed it), including the reasons it refused authentication. The
// first connection in it is Start's readiness probe.
func (d *SSHD) Log() string {
	b, err := os.ReadFile(d.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read sshd log: %v)", err)
	}
	return string(b)
}

// WaitLog waits until sshd's log contains substr or ctx is done. sshd logs
// from separate processes, so a line about a connection can appear a moment
// after the client has exited.
func (d *SSHD) WaitLog(ctx context.Context, substr string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(d.Log(), substr) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testbed: sshd log does not contain %q: %w", substr, ctx.Err())
		case <-tick.C:
		}
	}
}

// readPublicKey parses an OpenSSH .pub file (or -cert.pub file).
func readPublicKey(t testing.TB, path string) ssh.PublicKey {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatalf("testbed: parse %s: %v", path, err)
	}
	return pub
}

// withoutEnv returns env without the named variables; a name ending in "*"
// removes every variable with that prefix.
func withoutEnv(env []string, names ...string) []string {
	out := env[:0:0]
next:
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		for _, n := range names {
			if p, ok := strings.CutSuffix(n, "*"); ok && strings.HasPrefix(k, p) || k == n {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
