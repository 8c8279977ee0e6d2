//go:build unix

package devtarget

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	gliderssh "github.com/gliderlabs/ssh"
	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// Algorithms the demo host offers: what ssh-audit rates good, as the
// gateway and deploy/target's sshd snippet do.
var (
	kexAlgorithms = []string{gossh.KeyExchangeMLKEM768X25519, gossh.KeyExchangeCurve25519, "curve25519-sha256@libssh.org"}
	ciphers       = []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}
	macs          = []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM}
)

// account is who commands run as.
type account struct {
	name, home, shell string
	cred              *syscall.Credential // nil: as this process
}

func resolveAccount(u *user.User) (account, error) {
	if u == nil {
		cur, err := user.Current()
		if err != nil {
			return account{}, fmt.Errorf("devtarget: look up the current user: %w", err)
		}
		u = cur
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return account{}, fmt.Errorf("devtarget: account %s has a non-numeric uid or gid", u.Username)
	}
	if os.Geteuid() == 0 && uid == 0 {
		return account{}, errors.New("devtarget: running as root, the demo host needs a non-root account to run commands as")
	}
	a := account{name: u.Username, home: u.HomeDir, shell: loginShell(u.Username)}
	if uint64(os.Geteuid()) != uid {
		var groups []uint32
		if ids, err := u.GroupIds(); err == nil {
			for _, id := range ids {
				if g, err := strconv.ParseUint(id, 10, 32); err == nil {
					groups = append(groups, uint32(g))
				}
			}
		}
		a.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	}
	return a, nil
}

// loginShell reads the account's shell from /etc/passwd; /bin/sh when it
// has none or cannot be read.
func loginShell(name string) string {
	data, err := os.ReadFile("/etc/passwd")
	if err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Split(line, ":")
			if len(f) == 7 && f[0] == name && f[6] != "" && !strings.HasSuffix(f[6], "nologin") && !strings.HasSuffix(f[6], "false") {
				return f[6]
			}
		}
	}
	return "/bin/sh"
}

// Start serves the demo host on cfg.Addr.
func Start(cfg Config) (*Target, error) {
	if cfg.Listener != nil {
		cfg.Addr = cfg.Listener.Addr().String()
	}
	ap, err := netip.ParseAddrPort(cfg.Addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("devtarget: %q is not a loopback address; the demo host listens on loopback only", cfg.Addr)
	}
	acct, err := resolveAccount(cfg.Account)
	if err != nil {
		return nil, err
	}
	var exe, dir string
	if acct.cred != nil {
		if exe, dir, err = copyExecutable(cfg.Executable); err != nil {
			return nil, err
		}
	}
	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("devtarget: listen on %s: %w", cfg.Addr, err)
		}
	}
	checker := &gossh.CertChecker{IsUserAuthority: cfg.IsUserCA}
	h := &handler{acct: acct, exe: exe}
	srv := &gliderssh.Server{
		Version:     "bastion_demo_target",
		IdleTimeout: 15 * time.Minute,
		ServerConfigCallback: func(gliderssh.Context) *gossh.ServerConfig {
			return &gossh.ServerConfig{Config: gossh.Config{KeyExchanges: kexAlgorithms, Ciphers: ciphers, MACs: macs}}
		},
		PublicKeyHandler: func(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
			cert, ok := key.(*gossh.Certificate)
			if !ok || len(cert.ValidPrincipals) == 0 {
				return false
			}
			_, err := checker.Authenticate(ctxMeta{ctx}, cert)
			return err == nil
		},
		Handler:           h.session,
		SubsystemHandlers: map[string]gliderssh.SubsystemHandler{"sftp": h.sftp},
	}
	for _, s := range cfg.HostSigners {
		srv.AddHostKey(s)
	}
	t := &Target{srv: srv, ln: ln, dir: dir}
	go srv.Serve(ln)
	return t, nil
}

// copyExecutable copies exe (default: this program) into a new directory
// that every account may enter, and returns the copy and the directory.
func copyExecutable(exe string) (string, string, error) {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return "", "", fmt.Errorf("devtarget: find the program to serve SFTP with: %w", err)
		}
	}
	dir, err := os.MkdirTemp("", "bastion-devtarget-")
	if err != nil {
		return "", "", err
	}
	dst := dir + "/" + baseName(exe)
	err = func() error {
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
		data, err := os.ReadFile(exe)
		if err != nil {
			return err
		}
		return atomicfile.WriteNew(dst, data, 0o755)
	}()
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("devtarget: copy %s for the SFTP server: %w", exe, err)
	}
	return dst, dir, nil
}

type handler struct {
	acct account
	exe  string
}

// env is the environment of a command: the account's, plus the client's
// locale and, with a pty, its terminal type.
func (h *handler) env(s gliderssh.Session, term string) []string {
	env := []string{
		"HOME=" + h.acct.home, "USER=" + h.acct.name, "LOGNAME=" + h.acct.name, "SHELL=" + h.acct.shell,
		"PATH=/usr/local/bin:/usr/bin:/bin",
	}
	if ra, ok := s.RemoteAddr().(*net.TCPAddr); ok {
		la, _ := s.LocalAddr().(*net.TCPAddr)
		if la != nil {
			env = append(env, fmt.Sprintf("SSH_CONNECTION=%s %d %s %d", ra.IP, ra.Port, la.IP, la.Port))
		}
	}
	for _, kv := range s.Environ() {
		if strings.HasPrefix(kv, "LANG=") || strings.HasPrefix(kv, "LC_") {
			env = append(env, kv)
		}
	}
	if term != "" {
		env = append(env, "TERM="+term)
	}
	return env
}

// command is the shell running raw (or a login shell when raw is empty).
func (h *handler) command(raw string) *exec.Cmd {
	var cmd *exec.Cmd
	if raw == "" {
		cmd = exec.Command(h.acct.shell)
		cmd.Args[0] = "-" + baseName(h.acct.shell) // a login shell, as sshd starts it
	} else {
		cmd = exec.Command(h.acct.shell, "-c", raw)
	}
	cmd.Dir = h.acct.home
	if st, err := os.Stat(cmd.Dir); err != nil || !st.IsDir() {
		cmd.Dir = "/"
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: h.acct.cred}
	return cmd
}

func baseName(p string) string { return p[strings.LastIndex(p, "/")+1:] }

// session runs a shell or a command, with or without a pty, and reports
// its exit status or the signal that killed it.
func (h *handler) session(s gliderssh.Session) {
	ptyReq, winCh, isPty := s.Pty()
	term := ""
	if isPty {
		term = ptyReq.Term
	}
	cmd := h.command(s.RawCommand())
	cmd.Env = h.env(s, term)
	var err error
	if isPty {
		err = h.runPty(s, cmd, ptyReq.Window, winCh)
	} else {
		err = h.runPipes(s, cmd)
	}
	h.exit(s, cmd, err)
}

func (h *handler) runPipes(s gliderssh.Session, cmd *exec.Cmd) error {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = s, s.Stderr()
	// A background child that keeps stdout open must not hold the
	// session after the command itself exits.
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() {
		io.Copy(stdin, s) // until the client's EOF
		stdin.Close()
	}()
	stop := forwardSignals(s, cmd)
	defer stop()
	return cmd.Wait()
}

func (h *handler) runPty(s gliderssh.Session, cmd *exec.Cmd, win gliderssh.Window, winCh <-chan gliderssh.Window) error {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return err
	}
	// Window changes arrive until the session ends, which is after this
	// returns; resizing must not race with closing the pty.
	var mu sync.Mutex
	closed := false
	resize := func(w gliderssh.Window) {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(w.Height), Cols: uint16(w.Width)})
		}
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		ptmx.Close()
	}()
	if c := h.acct.cred; c != nil {
		os.Chown(tty.Name(), int(c.Uid), -1)
	}
	resize(win)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr.Setctty = true
	err = cmd.Start()
	tty.Close()
	if err != nil {
		return err
	}
	go func() {
		for w := range winCh {
			resize(w)
		}
	}()
	go io.Copy(ptmx, s)
	out := make(chan struct{})
	go func() {
		io.Copy(s, ptmx) // until the pty's last holder exits (EIO)
		close(out)
	}()
	stop := forwardSignals(s, cmd)
	defer stop()
	err = cmd.Wait()
	select {
	case <-out:
	case <-time.After(2 * time.Second): // a background job holds the pty
	}
	return err
}

// signals maps SSH signal names (RFC 4254 §6.10) to the kernel's.
var signals = map[gliderssh.Signal]syscall.Signal{
	gliderssh.SIGABRT: syscall.SIGABRT, gliderssh.SIGALRM: syscall.SIGALRM, gliderssh.SIGFPE: syscall.SIGFPE,
	gliderssh.SIGHUP: syscall.SIGHUP, gliderssh.SIGILL: syscall.SIGILL, gliderssh.SIGINT: syscall.SIGINT,
	gliderssh.SIGKILL: syscall.SIGKILL, gliderssh.SIGPIPE: syscall.SIGPIPE, gliderssh.SIGQUIT: syscall.SIGQUIT,
	gliderssh.SIGSEGV: syscall.SIGSEGV, gliderssh.SIGTERM: syscall.SIGTERM, gliderssh.SIGUSR1: syscall.SIGUSR1,
	gliderssh.SIGUSR2: syscall.SIGUSR2,
}

// forwardSignals delivers the client's signal requests to the command's
// process group until stop is called, and hangs the group up (SIGHUP) when
// the client's connection goes: a command whose session was cut (a lock,
// a dropped network) must not run on as an orphan of the demo host.
func forwardSignals(s gliderssh.Session, cmd *exec.Cmd) (stop func()) {
	ch := make(chan gliderssh.Signal, 4)
	s.Signals(ch)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-ch:
				if n, ok := signals[sig]; ok {
					syscall.Kill(-cmd.Process.Pid, n)
				}
			case <-s.Context().Done():
				syscall.Kill(-cmd.Process.Pid, syscall.SIGHUP)
				return
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { s.Signals(nil); close(done) }) }
}

// exitSignal is the "exit-signal" request (RFC 4254 §6.10).
type exitSignal struct {
	Signal     string
	CoreDumped bool
	Message    string
	Lang       string
}

// exit reports how cmd ended: exit-status, or exit-signal when a signal
// killed it; 127 when it could not start.
func (h *handler) exit(s gliderssh.Session, cmd *exec.Cmd, err error) {
	ps := cmd.ProcessState
	if ps == nil {
		fmt.Fprintf(s.Stderr(), "bastion demo host: %v\n", err)
		s.Exit(127)
		return
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		name := strings.TrimPrefix(sigName(ws.Signal()), "SIG")
		s.SendRequest("exit-signal", false, gossh.Marshal(exitSignal{Signal: name, CoreDumped: ws.CoreDump()}))
		s.Close()
		return
	}
	s.Exit(ps.ExitCode())
}

func sigName(sig syscall.Signal) string {
	for k, v := range signals {
		if v == sig {
			return string(k)
		}
	}
	return "KILL"
}

// sftp serves the sftp subsystem: in this process when it runs as the
// account, else in a child process running as the account.
func (h *handler) sftp(s gliderssh.Session) {
	if h.acct.cred == nil {
		srv, err := sftp.NewServer(s, sftp.WithServerWorkingDirectory(h.acct.home))
		if err != nil {
			s.Exit(1)
			return
		}
		err = srv.Serve()
		srv.Close()
		if err != nil && !errors.Is(err, io.EOF) {
			s.Exit(1)
			return
		}
		s.Exit(0)
		return
	}
	cmd := exec.Command(h.exe)
	cmd.Env = append(h.env(s, ""), SFTPChildEnv+"=1")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: h.acct.cred}
	err := h.runPipes(s, cmd)
	h.exit(s, cmd, err)
}

// ServeSFTPChild serves SFTP on stdin and stdout when SFTPChildEnv is set
// and reports whether it did; the bastion binary calls it first thing, so
// the demo host can re-run it as a non-root account.
func ServeSFTPChild() bool {
	if os.Getenv(SFTPChildEnv) != "1" {
		return false
	}
	home := os.Getenv("HOME")
	srv, err := sftp.NewServer(struct {
		io.Reader
		io.WriteCloser
	}{os.Stdin, os.Stdout}, sftp.WithServerWorkingDirectory(home))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bastion demo host sftp:", err)
		return true
	}
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintln(os.Stderr, "bastion demo host sftp:", err)
	}
	return true
}

type ctxMeta struct{ ctx gliderssh.Context }

func (m ctxMeta) User() string          { return m.ctx.User() }
func (m ctxMeta) SessionID() []byte     { return []byte(m.ctx.SessionID()) }
func (m ctxMeta) ClientVersion() []byte { return []byte(m.ctx.ClientVersion()) }
func (m ctxMeta) ServerVersion() []byte { return []byte(m.ctx.ServerVersion()) }
func (m ctxMeta) RemoteAddr() net.Addr  { return m.ctx.RemoteAddr() }
func (m ctxMeta) LocalAddr() net.Addr   { return m.ctx.LocalAddr() }
