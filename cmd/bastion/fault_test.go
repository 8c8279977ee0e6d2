package main

// The fault suite: a real `bastion` binary, run as a subprocess, killed
// with SIGKILL under load, starved of disk, and handed damaged audit
// files. Each test bounds its own time; together they take well under two
// minutes.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/gateway"
)

// faultBinary is the bastion binary the fault tests run, built once per
// test process.
var faultBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "bastion-fault-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "bastion")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// faultEnv is a data directory, a config and a client identity for a
// bastion binary.
type faultEnv struct {
	t                    *testing.T
	bin, dir, data, cfg  string
	sshAddr, metricsAddr string
	target               string // a TCP service jumps may reach
	signer               gossh.Signer
	hook                 *hook
}

// newFaultEnv initializes a CA in data (created if needed), signs a
// certificate for alice and writes a config with an access rule for a
// local TCP target and an alert webhook.
func newFaultEnv(t *testing.T, data string) *faultEnv {
	t.Helper()
	bin, err := faultBinary()
	if err != nil {
		t.Fatal(err)
	}
	e := &faultEnv{t: t, bin: bin, dir: t.TempDir(), data: data, sshAddr: freeAddr(t), metricsAddr: freeAddr(t), hook: newHook(t, http.StatusOK)}
	e.runOK("ca", "init")
	id := writeUserIdentity(t, e.dir)
	e.runOK("ca", "sign", "-I", "alice", "-n", "alice", "-V", "+1h", "--out", id+"-cert.pub", id+".pub")
	key, err := gossh.ParsePrivateKey(mustRead(t, id))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey(mustRead(t, id+"-cert.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if e.signer, err = gossh.NewCertSigner(pub.(*gossh.Certificate), key); err != nil {
		t.Fatal(err)
	}
	// The target accepts and holds connections: a jump to it stays open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	e.target = ln.Addr().String()
	_, port, _ := net.SplitHostPort(e.target)
	e.cfg = filepath.Join(e.dir, "bastion.yaml")
	conf := fmt.Sprintf(`listen: %s
data_dir: %s
metrics_listen: %s
host_names: [127.0.0.1]
shutdown_grace: 2s
access:
  - principals: [alice]
    hosts: [127.0.0.1]
    ports: [%s]
alerts:
  webhooks:
    - url: %s/hook
      format: json
`, e.sshAddr, data, e.metricsAddr, port, e.hook.URL)
	if err := os.WriteFile(e.cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs the binary with --data-dir and returns stdout, stderr and the
// exit code.
func (e *faultEnv) run(args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.bin, append([]string{"--data-dir", e.data}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.t.Errorf("bastion %s died of %s\nstderr: %s", strings.Join(args, " "), ws.Signal(), errb.String())
			code = -1
		}
	} else if err != nil {
		e.t.Fatalf("bastion %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

func (e *faultEnv) runOK(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("bastion %s: exit %d\nstderr: %s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// server is a running `bastion serve`.
type server struct {
	cmd    *exec.Cmd
	stderr *syncWriter
	buf    *bytes.Buffer
	exited chan struct{}
}

// serve starts the binary and waits until /livez answers.
func (e *faultEnv) serve() *server {
	e.t.Helper()
	buf := &bytes.Buffer{}
	s := &server{buf: buf, stderr: &syncWriter{w: buf}, exited: make(chan struct{})}
	s.cmd = exec.Command(e.bin, "serve", "--config", e.cfg)
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	e.t.Cleanup(func() { _ = s.cmd.Process.Kill(); <-s.exited })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + e.metricsAddr + "/livez"); err == nil {
			resp.Body.Close()
			return s
		}
		select {
		case <-s.exited:
			e.t.Fatalf("bastion serve exited at start:\n%s", s.log())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("bastion serve did not come up:\n%s", s.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) log() string {
	s.stderr.mu.Lock()
	defer s.stderr.mu.Unlock()
	return s.buf.String()
}

// stop sends sig and waits for the process to end.
func (s *server) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("bastion serve did not end on %s:\n%s", sig, s.log())
	}
}

// dial connects to the gateway as alice.
func (e *faultEnv) dial() (*gossh.Client, error) {
	return gossh.Dial("tcp", e.sshAddr, &gossh.ClientConfig{
		User: "alice", Auth: []gossh.AuthMethod{gossh.PublicKeys(e.signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second,
	})
}

// acks collects the actions clients saw succeed.
type acks struct {
	mu    sync.Mutex
	nonce []string
}

func (a *acks) add(n string) {
	a.mu.Lock()
	a.nonce = append(a.nonce, n)
	a.mu.Unlock()
}

func (a *acks) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.nonce...)
}

// load runs `info NONCE` from workers connections until ctx ends, noting
// each command that exited 0 (its gateway.command record is written
// before the exit status is sent). refusals counts commands refused with
// the audit-unavailable line.
func (e *faultEnv) load(ctx context.Context, workers int, tag string, ok *acks, refusals *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for ctx.Err() == nil {
				c, err := e.dial()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				for ctx.Err() == nil {
					sess, err := c.NewSession()
					if err != nil {
						if refusals != nil && strings.Contains(err.Error(), gateway.MsgAuditUnavailable) {
							refusals.Add(1)
						}
						break
					}
					n++
					nonce := fmt.Sprintf("%s-%d-%d", tag, w, n)
					var stderr bytes.Buffer
					sess.Stderr = &stderr
					err = sess.Run("info " + nonce)
					sess.Close()
					if err == nil {
						ok.add(nonce)
					} else if refusals != nil && strings.Contains(stderr.String(), "bastion: "+gateway.MsgAuditUnavailable) {
						refusals.Add(1)
						time.Sleep(10 * time.Millisecond)
					} else if _, exit := err.(*gossh.ExitError); !exit {
						break // connection gone
					}
				}
				c.Close()
			}
		}()
	}
	return &wg
}

// events exports the log with the binary and decodes it.
func (e *faultEnv) events(types string) []audit.Event {
	e.t.Helper()
	out := e.runOK("audit", "export", "--type", types)
	var evs []audit.Event
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev audit.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			e.t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// commandNonces is the set of nonces in gateway.command records.
func (e *faultEnv) commandNonces() map[string]bool {
	got := map[string]bool{}
	for _, ev := range e.events("gateway.command") {
		if f := strings.Fields(ev.Fields["command"]); len(f) == 2 && ev.Fields["exit_status"] == "0" {
			got[f[1]] = true
		}
	}
	return got
}

// openJumps opens n jumps to the target and holds them; close ends them.
func (e *faultEnv) openJumps(t *testing.T, n int) (closeAll func()) {
	t.Helper()
	c, err := e.dial()
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range n {
		conn, err := c.Dial("tcp", e.target)
		if err != nil {
			t.Fatalf("jump: %v", err)
		}
		conns = append(conns, conn)
	}
	return func() {
		for _, conn := range conns {
			conn.Close()
		}
		c.Close()
	}
}

// TestFaultKill9UnderLoad: `kill -9` of `bastion serve` in the middle of
// concurrent load, several times. Every command a client saw succeed is
// in the log, the log verifies after each kill, and the jumps each kill
// cut are closed as gateway_crashed on the next start.
func TestFaultKill9UnderLoad(t *testing.T) {
	e := newFaultEnv(t, filepath.Join(t.TempDir(), "data"))
	const cycles, workers, jumps = 3, 12, 3
	var acked, found, sessionsCut int
	for cycle := range cycles {
		srv := e.serve()
		closeJumps := e.openJumps(t, jumps)
		sessionsCut += jumps
		ctx, cancel := context.WithCancel(context.Background())
		ok := &acks{}
		wg := e.load(ctx, workers, fmt.Sprintf("c%d", cycle), ok, nil)
		time.Sleep(1500 * time.Millisecond)
		srv.stop(t, syscall.SIGKILL) // mid-load
		cancel()
		wg.Wait()
		closeJumps()

		if out := e.runOK("audit", "verify"); !strings.HasPrefix(out, "ok: ") {
			t.Fatalf("cycle %d: verify after kill -9: %s", cycle, out)
		}
		got := e.commandNonces()
		missing := 0
		for _, n := range ok.list() {
			if !got[n] {
				missing++
			}
		}
		acked += len(ok.list())
		found += len(ok.list()) - missing
		if missing > 0 {
			t.Errorf("cycle %d: %d of %d acknowledged commands are not in the log", cycle, missing, len(ok.list()))
		}
		if len(ok.list()) == 0 {
			t.Fatalf("cycle %d: no command succeeded before the kill; the load did not run:\n%s", cycle, srv.log())
		}
	}
	// A last start closes the sessions the last kill cut; a clean stop
	// ends it.
	srv := e.serve()
	srv.stop(t, syscall.SIGTERM)
	ends := map[string]audit.Event{}
	for _, ev := range e.events("session.end") {
		ends[ev.Session] = ev
	}
	starts := e.events("session.start")
	crashed := 0
	for _, s := range starts {
		end, ok := ends[s.Session]
		if !ok {
			t.Errorf("session %s (started %s) has no session.end after restart", s.Session, s.Time)
			continue
		}
		if end.Fields["reason"] == audit.ReasonGatewayCrashed {
			crashed++
			if end.Fields["target"] != s.Fields["target"] || end.Actor != s.Actor {
				t.Errorf("gateway_crashed end %+v does not carry its start's actor and target", end.Fields)
			}
		}
	}
	if crashed != sessionsCut {
		t.Errorf("%d sessions closed as gateway_crashed, want the %d the kills cut", crashed, sessionsCut)
	}
	out := e.runOK("audit", "verify")
	if strings.Contains(out, "sessions without session.end") {
		t.Errorf("verify still reports open sessions after restart:\n%s", out)
	}
	t.Logf("kill -9 under load: %d runs x %d workers: %d commands acknowledged, %d found in the log after restart; %d jumps cut, %d closed as %s",
		cycles, workers, acked, found, sessionsCut, crashed, audit.ReasonGatewayCrashed)
}

// mountTmpfs mounts a small tmpfs at dir, or skips saying why.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("SKIPPED: cannot mount a tmpfs to fill (needs root and mount(8)): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s", dir, err, out)
		}
	})
}

// fill writes a file in dir until the file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	// Small writes too, down to the last block.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	return p
}

// metric reads one metric's value from /metrics (-1 if absent).
func (e *faultEnv) metric(name string) float64 {
	resp, err := http.Get("http://" + e.metricsAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var v float64
		if line := sc.Text(); strings.HasPrefix(line, name+" ") {
			if _, err := fmt.Sscanf(line[len(name)+1:], "%g", &v); err == nil {
				return v
			}
		}
	}
	return -1
}

func (e *faultEnv) healthz() int {
	resp, err := http.Get("http://" + e.metricsAddr + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFaultDiskFull: the data directory's file system fills up under
// load. Commands and new sessions are refused with one line, /healthz and
// bastion_audit_available say so, an alert reaches the webhook, the
// session ends meanwhile wait in memory, and once space returns they are
// written, the log verifies, and every command a client saw succeed is in
// it.
func TestFaultDiskFull(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	mountTmpfs(t, data, "6m")
	e := newFaultEnv(t, data)
	srv := e.serve()
	closeJumps := e.openJumps(t, 4)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ok := &acks{}
	var refusals atomic.Int64
	wg := e.load(ctx, 6, "df", ok, &refusals)
	time.Sleep(500 * time.Millisecond)

	filler := fill(t, data)
	full := time.Now()
	var alertAt time.Time
	waitFor(t, 20*time.Second, "the audit_unavailable alert", func() bool {
		bodies, _ := e.hook.got()
		for _, b := range bodies {
			if bytes.Contains(b, []byte(gateway.AlertAuditUnavailable)) {
				alertAt = time.Now()
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "/healthz 503", func() bool { return e.healthz() == http.StatusServiceUnavailable })
	if v := e.metric("bastion_audit_available"); v != 0 {
		t.Errorf("bastion_audit_available = %v during the outage, want 0", v)
	}
	waitFor(t, 10*time.Second, "a command refused with the audit-unavailable line", func() bool { return refusals.Load() > 0 })
	// A new user is told why, not just disconnected: the session is
	// refused, or (when its login record landed on a page bbolt could
	// reuse) the command is.
	c, err := e.dial()
	if err != nil {
		t.Fatalf("dial during the outage: %v", err)
	}
	told := ""
	if sess, err := c.NewSession(); err != nil {
		told = err.Error()
	} else {
		var stderr bytes.Buffer
		sess.Stderr = &stderr
		_ = sess.Run("info")
		told = stderr.String()
	}
	c.Close()
	if !strings.Contains(told, gateway.MsgAuditUnavailable) {
		t.Errorf("a new user during the outage was told %q, want %q", told, gateway.MsgAuditUnavailable)
	}
	// Sessions that end now: their session.end must not be lost.
	closeJumps()
	var queued float64
	for range 25 {
		queued = max(queued, e.metric("bastion_audit_queued"))
		time.Sleep(20 * time.Millisecond)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	waitFor(t, 20*time.Second, "/healthz ok once space returns", func() bool { return e.healthz() == http.StatusOK })
	recovered := time.Since(freed)
	cancel()
	wg.Wait()
	srv.stop(t, syscall.SIGTERM)

	if out := e.runOK("audit", "verify"); !strings.HasPrefix(out, "ok: ") || strings.Contains(out, "without session.end") {
		t.Fatalf("verify after the outage:\n%s", out)
	}
	got := e.commandNonces()
	missing := 0
	for _, n := range ok.list() {
		if !got[n] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d acknowledged commands are not in the log", missing, len(ok.list()))
	}
	ends := 0
	for _, ev := range e.events("session.end") {
		if ev.Fields["reason"] != audit.ReasonGatewayCrashed {
			ends++
		}
	}
	if ends < 4 {
		t.Errorf("%d session.end records, want the 4 jumps that ended during the outage", ends)
	}
	outages := e.events(gateway.TypeAuditOutage)
	late, dropped := 0, 0
	for _, ev := range outages {
		var n, d int
		fmt.Sscan(ev.Fields["written_late"], &n)
		fmt.Sscan(ev.Fields["dropped"], &d)
		late, dropped = late+n, dropped+d
	}
	if len(outages) == 0 || late == 0 || dropped != 0 {
		t.Errorf("audit.outage records %+v: want at least one, with the queued records written late and none dropped", outages)
	}
	t.Logf("disk full: alert %s after the disk filled; %d commands refused with the one-line reason; %.0f records queued in memory at the peak sample, %d written late over %d outage episode(s), %d dropped; healthz ok %s after space returned; %d acknowledged commands, all in the log",
		alertAt.Sub(full).Round(time.Millisecond), refusals.Load(), queued, late, len(outages), dropped, recovered.Round(time.Millisecond), len(ok.list()))
}

// TestFaultDamagedAuditDB: each way audit.db can be damaged is refused by
// every command that would read or write it, with one error naming the
// file and the fix, exit 1, no crash (SIGBUS, panic), and never a new
// chain; --new-audit-log and audit salvage are the ways out.
func TestFaultDamagedAuditDB(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string
	}{
		{"zero length", func(t *testing.T, p string) {
			if err := os.Truncate(p, 0); err != nil {
				t.Fatal(err)
			}
		}, "empty (0 bytes)"},
		{"missing", func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}, "does not exist"},
		{"truncated", func(t *testing.T, p string) {
			// Keep the two meta pages and two more: the data runs far past.
			if err := os.Truncate(p, int64(4*os.Getpagesize())); err != nil {
				t.Fatal(err)
			}
		}, "cut short"},
		{"random bytes over data pages", func(t *testing.T, p string) {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			ps := os.Getpagesize()
			junk := bytes.Repeat([]byte{0xA5, 0x3C, 0x91, 0x07}, ps/4)
			for off := 2 * ps; off+ps <= len(b); off += 3 * ps {
				copy(b[off:off+ps], junk)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "damaged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFaultEnv(t, filepath.Join(t.TempDir(), "data"))
			// Enough events for a few pages of records.
			s, err := audit.Open(filepath.Join(e.data, "audit.db"), audit.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for w := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 40 {
						_, _ = s.Append(context.Background(), audit.Event{Type: audit.TypeAuthFailed, Actor: fmt.Sprintf("user%d-%d", w, i), Fields: map[string]string{"reason": "cert_expired", "pad": strings.Repeat("x", 200)}})
					}
				}()
			}
			wg.Wait()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(e.data, "audit.db")
			tc.damage(t, path)
			before, _ := os.ReadFile(path)

			key := writeUserKey(t, e.dir, "bob")
			for _, args := range [][]string{
				{"audit", "verify"},
				{"audit", "export"},
				{"ca", "sign", "-I", "bob", "-n", "bob", "--out", filepath.Join(e.dir, "bob-cert.pub"), key},
				{"serve", "--config", e.cfg},
			} {
				_, errOut, code := e.run(args...)
				if code != 1 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "audit.db") {
					t.Errorf("bastion %s: exit %d, stderr %q; want exit 1 naming audit.db and %q", args[0]+" "+args[1], code, errOut, tc.want)
				}
				if tc.name != "missing" && !strings.Contains(errOut, "backup") {
					t.Errorf("bastion %s: the error does not say how to recover: %q", args[0]+" "+args[1], errOut)
				}
			}
			if _, err := os.Stat(filepath.Join(e.dir, "bob-cert.pub")); err == nil {
				t.Error("ca sign wrote a certificate although its audit record could not be written")
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(before, after) {
				t.Error("a refused command changed the damaged file")
			}
			if tc.name == "random bytes over data pages" {
				out, errOut, code := e.run("audit", "salvage", "--out", filepath.Join(e.dir, "salvaged.db"))
				if code == -1 || !strings.Contains(out, "salvaged ") {
					t.Fatalf("salvage: exit %d\n%s\n%s", code, out, errOut)
				}
				t.Logf("salvage of a log with every third data page overwritten: %s", strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
				return
			}
			// The way out: a new log, which says how it began.
			e.runOK("--new-audit-log", "ca", "sign", "-I", "bob", "-n", "bob", "--out", filepath.Join(e.dir, "bob-cert.pub"), key)
			evs := e.events("audit.*")
			if len(evs) == 0 || evs[0].Type != audit.TypeAuditNewLog {
				t.Errorf("the new log does not start with %s: %+v", audit.TypeAuditNewLog, evs)
			}
			if tc.name != "missing" {
				if m, _ := filepath.Glob(path + ".damaged-*"); len(m) != 1 {
					t.Errorf("the damaged file was not kept beside the new log: %v", m)
				}
			}
		})
	}
}

// TestFaultOutOfFileDescriptors: `bastion serve` under an open-file limit
// of 64, flooded with connections. Running out of descriptors is logged,
// counted in bastion_fd_exhausted_total and alerted, not silent.
func TestFaultOutOfFileDescriptors(t *testing.T) {
	e := newFaultEnv(t, filepath.Join(t.TempDir(), "data"))
	buf := &bytes.Buffer{}
	s := &server{buf: buf, stderr: &syncWriter{w: buf}, exited: make(chan struct{})}
	// ulimit -n sets the soft and the hard limit, so the Go runtime cannot
	// raise it again.
	s.cmd = exec.Command("sh", "-c", `ulimit -n 64 && exec "$0" serve --config "$1"`, e.bin, e.cfg)
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() { _ = s.cmd.Process.Kill(); <-s.exited })
	waitFor(t, 30*time.Second, "serve to listen", func() bool {
		c, err := net.Dial("tcp", e.sshAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	var conns []net.Conn
	for range 100 {
		c, err := net.DialTimeout("tcp", e.sshAddr, time.Second)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	waitFor(t, 10*time.Second, "the out-of-descriptors log line", func() bool {
		return strings.Contains(s.log(), "out of file descriptors")
	})
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, 15*time.Second, "bastion_fd_exhausted_total{op=\"accept\"} > 0", func() bool {
		return e.metric(`bastion_fd_exhausted_total{op="accept"}`) > 0
	})
	waitFor(t, 15*time.Second, "the fd_exhausted alert", func() bool {
		bodies, _ := e.hook.got()
		for _, b := range bodies {
			if bytes.Contains(b, []byte(gateway.AlertFDExhausted)) {
				return true
			}
		}
		return false
	})
	if n := strings.Count(s.log(), "out of file descriptors"); n > 3 {
		t.Errorf("the out-of-descriptors line was logged %d times in a few seconds; it must be rate-limited", n)
	}
	s.stop(t, syscall.SIGTERM)
}

// TestFaultKill9CASignOut: `ca sign --out` killed with SIGKILL at random
// moments, over a certificate it already wrote, never leaves a cut or
// empty certificate: the file is the old certificate or the new one.
func TestFaultKill9CASignOut(t *testing.T) {
	e := newFaultEnv(t, filepath.Join(t.TempDir(), "data"))
	key := writeUserKey(t, e.dir, "carol")
	out := filepath.Join(e.dir, "carol-cert.pub")
	e.runOK("ca", "sign", "-I", "carol", "-n", "carol", "--out", out, key)
	const runs = 60
	killed := 0
	for i := range runs {
		cmd := exec.Command(e.bin, "--data-dir", e.data, "ca", "sign", "-I", "carol", "-n", "carol", "--out", out, key)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(i%30) * 2 * time.Millisecond)
		if cmd.Process.Signal(syscall.SIGKILL) == nil {
			killed++
		}
		_ = cmd.Wait()
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("run %d: the certificate is gone: %v", i, err)
		}
		pub, _, _, _, err := gossh.ParseAuthorizedKey(b)
		if err != nil {
			t.Fatalf("run %d: the certificate file is cut or empty (%d bytes): %v", i, len(b), err)
		}
		if _, ok := pub.(*gossh.Certificate); !ok {
			t.Fatalf("run %d: %s holds no certificate", i, out)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(e.dir, ".carol-cert.pub.tmp-*")); len(m) > runs/2 {
		t.Errorf("%d temporary files left by killed runs", len(m))
	}
	t.Logf("ca sign --out killed %d times at 0-58ms: the certificate was whole after every run", killed)
}
