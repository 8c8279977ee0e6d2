package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// jumpHost is one side of the comparison.
type jumpHost struct {
	name string
	addr string
	// port is the target's port to jump to: bastion's rules serve one in
	// tunnel mode and the other in record mode.
	port int
	// pid is bastion's process, or OpenSSH's listening sshd, whose
	// descendants serve the connections.
	pid func() int
}

// cpuMeter follows the CPU time of a jump host's processes over one
// measurement. The processes of OpenSSH's jump host that do the work (one
// per connection after authentication) exit without being waited for by
// their parent, so their time never reaches the listener's cutime: the
// meter samples every process of the tree every 20 ms instead, and keeps
// the last value seen. It undercounts by at most one interval of CPU per
// process that exits, a few per cent of a bulk transfer; bastion is one
// process and is measured exactly.
type cpuMeter struct {
	root int
	base map[int]time.Duration // own CPU at start, for processes already running
	last map[int]time.Duration
	// baseCalls and lastCalls are the read and write system calls
	// (/proc/PID/io syscr + syscw), sampled alike: unlike CPU time, they
	// hardly depend on what else the machine is doing.
	baseCalls, lastCalls map[int]int64
	stop                 chan struct{}
	done                 chan struct{}
}

func startCPUMeter(root int) *cpuMeter {
	m := &cpuMeter{root: root, base: map[int]time.Duration{}, last: map[int]time.Duration{},
		baseCalls: map[int]int64{}, lastCalls: map[int]int64{}, stop: make(chan struct{}), done: make(chan struct{})}
	m.sample()
	for pid, t := range m.last {
		m.base[pid] = t
	}
	for pid, n := range m.lastCalls {
		m.baseCalls[pid] = n
	}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-tick.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *cpuMeter) sample() {
	for _, pid := range append(descendants(m.root), m.root) {
		if t, err := ownCPU(pid); err == nil {
			m.last[pid] = t
		}
		if n, err := ioCalls(pid); err == nil {
			m.lastCalls[pid] = n
		}
	}
}

// finish waits (bounded) until the tree has no processes left besides the
// root, takes a last sample and returns the CPU time used since start and
// the read and write system calls made.
func (m *cpuMeter) finish() (time.Duration, int64) {
	for deadline := time.Now().Add(5 * time.Second); len(descendants(m.root)) > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	close(m.stop)
	<-m.done
	m.sample()
	var total time.Duration
	for pid, t := range m.last {
		total += t - m.base[pid]
	}
	var calls int64
	for pid, n := range m.lastCalls {
		calls += n - m.baseCalls[pid]
	}
	return total, calls
}

// ioCalls is a process's read and write system calls so far.
func ioCalls(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	var total int64
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ": ")
		if ok && (k == "syscr" || k == "syscw") {
			n, _ := strconv.ParseInt(v, 10, 64)
			total += n
		}
	}
	return total, nil
}

// runSSH runs ssh with args, stdin from in (nil: none), and returns its
// stdout and how long it took. It is killed, with the ProxyJump ssh it
// started, if ctx ends or timeout passes.
func runSSH(ctx context.Context, timeout time.Duration, in *os.File, args ...string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.Command("ssh", args...)
	cmd.Stdin = in
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return "", 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	took := time.Since(start)
	stop()
	if ctx.Err() != nil {
		return "", took, fmt.Errorf("ssh %s: %w", strings.Join(args, " "), ctx.Err())
	}
	if err != nil {
		return "", took, fmt.Errorf("ssh %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), took, nil
}

// throughput sends size zero bytes through the jump host to `wc -c` on
// the target, checks they all arrived, and returns MB/s (10^6 bytes).
// It also returns the jump host's CPU time and read and write system
// calls for the transfer.
func (e *env) throughput(ctx context.Context, cfg string, j jumpHost, size int64) (float64, time.Duration, int64, error) {
	head := exec.CommandContext(ctx, "head", "-c", strconv.FormatInt(size, 10), "/dev/zero")
	pipe, err := head.StdoutPipe()
	if err != nil {
		return 0, 0, 0, err
	}
	if err := head.Start(); err != nil {
		return 0, 0, 0, err
	}
	defer func() { _ = head.Wait() }()
	f, ok := pipe.(*os.File) // passed to ssh as its stdin, with no copying in between
	if !ok {
		return 0, 0, 0, fmt.Errorf("head's stdout is a %T, not a pipe", pipe)
	}
	meter := startCPUMeter(j.pid())
	out, took, err := runSSH(ctx, 10*time.Minute, f, e.sshArgs(cfg, j.addr, j.port, "wc", "-c")...)
	pipe.Close()
	cpu, calls := meter.finish()
	if err != nil {
		return 0, 0, 0, err
	}
	if got := strings.TrimSpace(out); got != strconv.FormatInt(size, 10) {
		return 0, 0, 0, fmt.Errorf("%s: the target counted %q bytes, want %d", j.name, got, size)
	}
	return float64(size) / took.Seconds() / 1e6, cpu, calls, nil
}

// setup times `ssh -J jump target true`.
func (e *env) setup(ctx context.Context, j jumpHost) (time.Duration, error) {
	_, took, err := runSSH(ctx, 30*time.Second, nil, e.sshArgs(e.cfgDefault, j.addr, j.port, "true")...)
	return took, err
}

var cipherLine = regexp.MustCompile(`kex: server->client cipher: (\S+)`)

// ciphers reports the ciphers negotiated on the jump hop and on the inner
// hop to the target, from ssh -v (which the ProxyJump ssh inherits).
func (e *env) ciphers(ctx context.Context, cfg string, j jumpHost) string {
	args := append([]string{"-v", "-o", "LogLevel=DEBUG1"}, e.sshArgs(cfg, j.addr, j.port, "true")...)
	cmd := exec.CommandContext(ctx, "ssh", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "?"
	}
	var seen []string
	for _, m := range cipherLine.FindAllStringSubmatch(string(out), -1) {
		seen = append(seen, strings.TrimSuffix(m[1], "@openssh.com"))
	}
	// The jump hop negotiates first.
	return strings.Join(seen, " / ")
}

// heldSessions is a set of idle jumped sessions opened by the Go client:
// an SSH connection to the jump host, a direct-tcpip channel through it,
// and an authenticated SSH connection to the target inside that channel,
// which is what `ssh -J` leaves behind while nobody types.
type heldSessions struct {
	mu    sync.Mutex
	outer []*ssh.Client
	inner []*ssh.Client
}

func (h *heldSessions) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.inner {
		_ = c.Close()
	}
	for _, c := range h.outer {
		_ = c.Close()
	}
	h.inner, h.outer = nil, nil
}

// openSSHClientAlgorithms is OpenSSH 9.2's client default order, so the Go
// client negotiates what ssh would with each jump host (chacha20 with
// sshd, aes128-gcm with bastion, which offers only AES-GCM).
var openSSHClientAlgorithms = ssh.Config{
	KeyExchanges: []string{ssh.KeyExchangeCurve25519, "curve25519-sha256@libssh.org"},
	Ciphers: []string{ssh.CipherChaCha20Poly1305, ssh.CipherAES128CTR, ssh.CipherAES192CTR, ssh.CipherAES256CTR,
		ssh.CipherAES128GCM, ssh.CipherAES256GCM},
}

func (e *env) clientConfig(hostKey ssh.PublicKey) *ssh.ClientConfig {
	return &ssh.ClientConfig{
		Config:            openSSHClientAlgorithms,
		User:              e.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(e.signer)},
		HostKeyCallback:   ssh.FixedHostKey(hostKey),
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519},
		Timeout:           30 * time.Second,
	}
}

// innerConfig is the client config for the inner hop to the target's
// port: the target's own key, or in record mode (recordPort) a host
// certificate from bastion's host CA, which the gateway presents.
func (e *env) innerConfig(port int) *ssh.ClientConfig {
	c := e.clientConfig(e.target.hostKey)
	if port == e.recordPort {
		checker := &ssh.CertChecker{IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
			return bytes.Equal(auth.Marshal(), e.hostCA.Marshal())
		}}
		c.HostKeyCallback = checker.CheckHostKey
		c.HostKeyAlgorithms = []string{ssh.CertAlgoED25519v01}
	}
	return c
}

// open adds n idle jumped sessions through jump to the target's port,
// concurrency at a time.
func (e *env) open(ctx context.Context, h *heldSessions, jumpAddr string, jumpKey ssh.PublicKey, port, n, concurrency int) error {
	targetAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	outerCfg, innerCfg := e.clientConfig(jumpKey), e.innerConfig(port)
	work := make(chan struct{})
	errs := make(chan error, concurrency)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				outer, err := ssh.Dial("tcp", jumpAddr, outerCfg)
				if err != nil {
					errs <- fmt.Errorf("connect to the jump host %s: %w", jumpAddr, err)
					return
				}
				nc, err := outer.Dial("tcp", targetAddr)
				if err != nil {
					_ = outer.Close()
					errs <- fmt.Errorf("direct-tcpip through %s: %w", jumpAddr, err)
					return
				}
				c, chans, reqs, err := ssh.NewClientConn(nc, targetAddr, innerCfg)
				if err != nil {
					_ = outer.Close()
					errs <- fmt.Errorf("log in to the target through %s: %w", jumpAddr, err)
					return
				}
				h.mu.Lock()
				h.outer = append(h.outer, outer)
				h.inner = append(h.inner, ssh.NewClient(c, chans, reqs))
				h.mu.Unlock()
			}
		}()
	}
	var err error
feed:
	for range n {
		select {
		case work <- struct{}{}:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// idleMemory opens n sessions through the jump host and returns the growth
// of the memory of the processes pids() lists, per session, in KiB.
// whileHeld, if not nil, runs while the sessions are held.
func (e *env) idleMemory(ctx context.Context, jumpAddr string, jumpKey ssh.PublicKey, port int, pids func() []int, n, concurrency int, whileHeld func()) (perSession memory, before, after memory, err error) {
	h := &heldSessions{}
	defer h.close()
	// Warm up: code paths and allocations that the first session pays.
	if err := e.open(ctx, h, jumpAddr, jumpKey, port, 1, 1); err != nil {
		return perSession, before, after, err
	}
	h.close()
	before = memoryOf(pids())
	if err := e.open(ctx, h, jumpAddr, jumpKey, port, n, concurrency); err != nil {
		return perSession, before, after, err
	}
	// Every session has finished its handshakes; give daemons a moment to
	// settle, then take the larger of two readings.
	after = memoryOf(pids())
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return perSession, before, after, ctx.Err()
	}
	if again := memoryOf(pids()); again.RSS > after.RSS {
		after = again
	}
	if whileHeld != nil {
		whileHeld()
	}
	perSession = memory{
		RSS:   (after.RSS - before.RSS) * 1024 / int64(n), // in bytes for now
		PSS:   (after.PSS - before.PSS) * 1024 / int64(n),
		Procs: after.Procs - before.Procs,
	}
	return perSession, before, after, nil
}

// goMetrics reads a few Go runtime gauges from the gateway's /metrics.
func goMetrics(ctx context.Context, addr string) map[string]float64 {
	out := map[string]float64{}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_sys_bytes":
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianF(fs []float64) float64 {
	s := slices.Clone(fs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
