package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// memRecordings records into the gateway's real audit store (bbolt
// chunks, digests in session.end) and lets a test inject a storage fault:
// with failAfter > 0, every recording's writes fail after that many
// entries, as a full disk would make them.
type memRecordings struct {
	store *audit.Store

	mu        sync.Mutex
	failAfter int
	// written counts the bytes each session's recording was given.
	written map[string]int
}

type memRecording struct {
	m       *memRecordings
	session string
	inner   Recording
	n       int
	failed  bool
}

func newMemRecordings(store *audit.Store) *memRecordings {
	return &memRecordings{store: store, written: map[string]int{}}
}

func (m *memRecordings) StartRecording(ctx context.Context, session string) (Recording, error) {
	inner, err := StoreRecordings{Store: m.store}.StartRecording(ctx, session)
	if err != nil {
		return nil, err
	}
	return &memRecording{m: m, session: session, inner: inner}, nil
}

func (r *memRecording) Write(ch uint32, kind string, at time.Duration, data []byte) error {
	r.m.mu.Lock()
	if r.m.failAfter > 0 && r.n >= r.m.failAfter {
		r.failed = true
		r.m.mu.Unlock()
		return errors.New("disk full")
	}
	r.n++
	r.m.written[r.session] += len(data)
	r.m.mu.Unlock()
	return r.inner.Write(ch, kind, at, data)
}

// Close fails, as a real recording's does, once a write has failed.
func (r *memRecording) Close(ctx context.Context) (string, int64, error) {
	sum, stored, err := r.inner.Close(ctx)
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	if err == nil && r.failed {
		return "", 0, errors.New("disk full")
	}
	return sum, stored, err
}

// Committed is the inner recording's: what was stored.
func (r *memRecording) Committed() (string, uint64, int64) {
	return r.inner.(committedRecording).Committed()
}

func (r *memRecording) Limited() (bool, int64, int64) {
	if l, ok := r.inner.(recordingLimit); ok {
		return l.Limited()
	}
	return false, 0, 0
}

// text returns what the store holds of session's recording of kind, each
// entry followed by a NUL.
func (m *memRecordings) text(session, kind string) string {
	var b strings.Builder
	_ = m.store.ReadRecording(context.Background(), session, func(e audit.RecordingEntry) error {
		if e.Kind == kind {
			b.Write(e.Data)
			b.WriteString("\x00")
		}
		return nil
	})
	return b.String()
}

// recordBed is a gateway in record mode: its target sshd presents a host
// certificate from bastion's host CA for 127.0.0.1; plain is a second
// sshd with only a plain host key, also reachable in record mode.
type recordBed struct {
	*testGateway
	plain *testbed.SSHD
	recs  *memRecordings
}

// startRecordGateway starts a gateway whose rule for the target is in
// record mode, with recordings in its audit store.
func startRecordGateway(t *testing.T, extraSSHD string, opts ...gatewayOption) *recordBed {
	t.Helper()
	return startRecordGatewayWithCA(t, "", extraSSHD, opts...)
}

// startRecordGatewayWithCA is startRecordGateway with the CA files of the
// data directory caFrom (see startGatewayWithCA).
func startRecordGatewayWithCA(t *testing.T, caFrom, extraSSHD string, opts ...gatewayOption) *recordBed {
	t.Helper()
	var recs *memRecordings
	tg := startGatewayWithCA(t, caFrom, append([]gatewayOption{func(_ *Config, d *Deps) {
		recs = newMemRecordings(d.Audit.(*audit.Store))
		d.Recordings = recs
	}}, opts...)...)
	tg.onlyCA = true
	plain := tg.target
	rt := testbed.NewSSHD(t, testbed.SSHDConfig{
		TrustedUserCAKeys: ca.ExportLines(ca.UserCA, tg.auth.TrustedKeys(ca.UserCA), ""),
		Extra:             extraSSHD,
	})
	cert, err := tg.auth.Sign(t.Context(), ca.Request{Kind: ca.HostCA, Key: rt.HostKeyPub, Principals: []string{"127.0.0.1"}, Requester: "test"})
	if err != nil {
		t.Fatal(err)
	}
	rt.Config.HostCertificate = gossh.MarshalAuthorizedKey(cert)
	rt.Start()
	tg.target = rt
	// Before any connection: the rules now name the two record targets.
	tg.gw.access, err = compileAccess([]AccessRule{
		{Principals: []string{tg.user}, Hosts: []string{"127.0.0.1"}, Ports: []int{rt.Port, plain.Port}, Mode: ModeRecord, Logins: []string{"extra-login"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &recordBed{testGateway: tg, plain: plain, recs: recs}
}

// lastSession is the session id of the newest session.end with keyID.
func (rb *recordBed) sessionOf(t *testing.T, keyID string) audit.Event {
	t.Helper()
	return rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": keyID})
}

func TestRecordModeExec(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-exec"})
	ctx := t.Context()

	res := c.Run(ctx, "ssh", rb.jumpArgs(rb.user, "echo", "hello-from-$(id -un);", "echo", "to-stderr", ">&2")...)
	if res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "hello-from-"+rb.user || strings.TrimSpace(res.Stderr) != "to-stderr" {
		t.Fatalf("ssh -J in record mode: %s\naudit:\n%s", res, rb.dump())
	}
	end := rb.sessionOf(t, "rec-exec")
	if end.Fields["mode"] != ModeRecord || end.Fields["login"] != rb.user || end.Fields["reason"] != "closed" {
		t.Errorf("session.end: %v; want mode record, login %s, reason closed", end.Fields, rb.user)
	}
	if len(end.Fields["recording_sha256"]) != 64 {
		t.Errorf("session.end has no recording digest: %v", end.Fields)
	}
	if out := rb.recs.text(end.Session, "o"); !strings.Contains(out, "hello-from-"+rb.user) {
		t.Errorf("recorded stdout %q lacks the command's output", out)
	}
	if e := rb.recs.text(end.Session, "e"); !strings.Contains(e, "to-stderr") {
		t.Errorf("recorded stderr %q lacks the command's stderr", e)
	}
	if x := rb.recs.text(end.Session, "x"); !strings.Contains(x, "exec echo hello-from") {
		t.Errorf("recording's exec marker %q", x)
	}
	if i := rb.recs.text(end.Session, "i"); i != "" {
		t.Errorf("input was recorded although recording.input is off: %q", i)
	}
	exec := rb.waitEvent(t, audit.TypeSessionExec, map[string]string{"key_id": "rec-exec"})
	if exec.Session != end.Session || !strings.HasPrefix(exec.Fields["command"], "echo hello-from-$(id -un)") || exec.Fields["kind"] != "exec" {
		t.Errorf("session.exec: %v", exec.Fields)
	}
	innerOK := rb.waitEvent(t, audit.TypeAuthOK, map[string]string{"key_id": "rec-exec", "hop": "inner", "login": rb.user})
	// OpenSSH offers the plain key before the certificate: that attempt
	// is folded into the inner hop's auth.ok, not an auth.failed of its own.
	for _, ev := range rb.events(audit.TypeAuthFailed) {
		if ev.Fields["key_id"] == "rec-exec" && ev.Fields["hop"] == "inner" {
			t.Errorf("a session that authenticated wrote an inner auth.failed: %v", ev.Fields)
		}
	}
	if n := innerOK.Fields["attempts_failed"]; n != "" && !strings.Contains(innerOK.Fields["attempts_reasons"], "×") {
		t.Errorf("inner auth.ok: attempts_failed %s without reasons: %v", n, innerOK.Fields)
	}
	t.Logf("inner auth.ok: attempts_failed=%q attempts_reasons=%q", innerOK.Fields["attempts_failed"], innerOK.Fields["attempts_reasons"])
	// The per-session certificate went through the CA's pipeline.
	issued := rb.waitEvent(t, audit.TypeCertIssued, map[string]string{"purpose": "session", "key_id": "bastion-session:" + rb.user + ":" + end.Session})
	if issued.Fields["principals"] != rb.user || issued.Fields["source_address"] != "127.0.0.1" {
		t.Errorf("session certificate: %v; want principal %s and source-address 127.0.0.1", issued.Fields, rb.user)
	}
	after, _ := time.Parse(time.RFC3339, issued.Fields["valid_after"])
	before, _ := time.Parse(time.RFC3339, issued.Fields["valid_before"])
	if d := before.Sub(after); d <= 0 || d > 3*time.Minute {
		t.Errorf("session certificate valid for %s; want about a minute", d)
	}
	rb.waitEvent(t, audit.TypeCertIssued, map[string]string{"purpose": "record-host", "principals": "127.0.0.1"})

	t.Run("exit status", func(t *testing.T) {
		if r := c.Run(ctx, "ssh", rb.jumpArgs(rb.user, "exit", "42")...); r.ExitCode != 42 {
			t.Errorf("exit status through record mode: %s; want 42", r)
		}
		rb.waitEvent(t, audit.TypeSessionExit, map[string]string{"key_id": "rec-exec", "exit_status": "42", "command": "exit 42"})
	})
	t.Run("exit signal", func(t *testing.T) {
		r := c.Run(ctx, "ssh", rb.jumpArgs(rb.user, "kill", "-KILL", "$$")...)
		if r.ExitCode != 255 {
			t.Errorf("a command killed by SIGKILL: %s; want ssh's 255", r)
		}
		rb.waitEvent(t, audit.TypeSessionExit, map[string]string{"key_id": "rec-exec", "exit_signal": "KILL"})
	})
	t.Run("stdin", func(t *testing.T) {
		r := c.RunInput(ctx, strings.NewReader("line one\nline two\n"), "ssh", rb.jumpArgs(rb.user, "wc", "-l")...)
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "2" {
			t.Errorf("stdin through record mode: %s", r)
		}
	})
	t.Run("setup is cheap on the second session", func(t *testing.T) {
		before := len(rb.events(audit.TypeCertIssued))
		if r := c.Run(ctx, "ssh", rb.jumpArgs(rb.user, "true")...); r.ExitCode != 0 {
			t.Fatal(r)
		}
		issued := 0
		for _, ev := range rb.events(audit.TypeCertIssued)[before:] {
			if ev.Fields["purpose"] == "record-host" {
				issued++
			}
		}
		if issued != 0 {
			t.Errorf("a second session to the same target minted %d new host certificates; want the cached one", issued)
		}
	})
}

func TestRecordModePTY(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-pty"})
	script := "stty cols 91 rows 33; echo pty-$((6*7)); exit 3\n"
	r := c.RunInput(t.Context(), strings.NewReader(script), "ssh", append([]string{"-tt"}, rb.jumpArgs(rb.user)...)...)
	if r.ExitCode != 3 || !strings.Contains(r.Stdout, "pty-42") {
		t.Fatalf("ssh -tt with a scripted shell: %s", r)
	}
	end := rb.sessionOf(t, "rec-pty")
	if out := rb.recs.text(end.Session, "o"); !strings.Contains(out, "pty-42") {
		t.Errorf("recorded pty output %q lacks pty-42", out)
	}
	if i := rb.recs.text(end.Session, "i"); i != "" {
		t.Errorf("input typed at a terminal was recorded although recording.input is off: %q", i)
	}
	if rs := rb.recs.text(end.Session, "r"); !regexpMatch(`^\d+x\d+\x00`, rs) {
		t.Errorf("recording has no terminal size: %q", rs)
	}
	if x := rb.recs.text(end.Session, "x"); !strings.Contains(x, "shell") {
		t.Errorf("recording has no shell marker: %q", x)
	}
	rb.waitEvent(t, audit.TypeSessionExec, map[string]string{"key_id": "rec-pty", "kind": "shell"})
	// The recording is in the audit log: the chain, with the digest in
	// session.end, verifies, and the transcript replays the session.
	if _, err := rb.store.VerifyAnchored(t.Context(), nil); err != nil {
		t.Fatalf("audit verify after a recorded session: %v", err)
	}
	var transcript bytes.Buffer
	if err := rb.store.Play(t.Context(), &transcript, end.Session, audit.PlayOptions{Format: audit.PlayText, Channel: audit.AutoChannel}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(transcript.String(), "pty-42") {
		t.Errorf("the transcript lacks the session's output:\n%s", transcript.String())
	}
	rb.waitEvent(t, audit.TypeSessionExit, map[string]string{"key_id": "rec-pty", "exit_status": "3"})
}

// TestRecordModeRecordsPipedInput: commands piped into a shell without a
// terminal are recorded by default and shown by audit play --format text.
func TestRecordModeRecordsPipedInput(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-piped"})
	script := "echo piped-$((6*7))\nrm -f /tmp/bastion-piped-none\n"
	r := c.RunInput(t.Context(), strings.NewReader(script), "ssh", append([]string{"-T"}, rb.jumpArgs(rb.user, "bash")...)...)
	if r.ExitCode != 0 || !strings.Contains(r.Stdout, "piped-42") {
		t.Fatalf("a script piped to bash through record mode: %s", r)
	}
	end := rb.sessionOf(t, "rec-piped")
	if i := rb.recs.text(end.Session, "i"); !strings.Contains(i, "rm -f /tmp/bastion-piped-none") {
		t.Errorf("recorded input %q lacks the piped command", i)
	}
	var transcript bytes.Buffer
	if err := rb.store.Play(t.Context(), &transcript, end.Session, audit.PlayOptions{Format: audit.PlayText, Channel: audit.AutoChannel}); err != nil {
		t.Fatal(err)
	}
	if !regexpMatch(`(?m)^# input \(channel \d+\): rm -f /tmp/bastion-piped-none$`, transcript.String()) {
		t.Errorf("the text transcript does not show the piped command as an input line:\n%s", transcript.String())
	}
}

func TestRecordModeTransferTools(t *testing.T) {
	rb := startRecordGateway(t, "")
	testTransferTools(t, rb.testGateway)
	// Transfers are audited by kind and not stored byte for byte; other
	// commands (cat) are recorded in full.
	for _, kind := range []string{"sftp", "rsync", "git"} {
		rb.waitEvent(t, audit.TypeSessionExec, map[string]string{"kind": kind})
	}
	for _, ev := range rb.events(audit.TypeSessionExec) {
		rb.recs.mu.Lock()
		n := rb.recs.written[ev.Session]
		rb.recs.mu.Unlock()
		switch kind := ev.Fields["kind"]; {
		case kind != "exec" && n > 64<<10:
			t.Errorf("%s session %s recorded %d bytes; file transfers are not stored byte for byte", kind, ev.Session, n)
		case strings.HasPrefix(ev.Fields["command"], "cat /") && n < bigTransfer: // output; "cat > file" is input, off
			t.Errorf("%q recorded only %d bytes", ev.Fields["command"], n)
		}
	}
	// SFTP contents are hashed, not stored: the file scp (over SFTP) put
	// and then got has one digest both ways.
	written, read := map[string]bool{}, map[string]bool{}
	for _, ev := range rb.events(audit.TypeSessionSFTP) {
		if ev.Fields["op"] != "close" {
			continue
		}
		if w := ev.Fields["written_sha256"]; ev.Fields["bytes_written"] == strconv.Itoa(bigTransfer) {
			written[w] = true
		}
		if r := ev.Fields["read_sha256"]; ev.Fields["bytes_read"] == strconv.Itoa(bigTransfer) {
			read[r] = true
		}
	}
	matched := false
	for w := range written {
		matched = matched || (len(w) == 64 && read[w])
	}
	if !matched {
		t.Errorf("SFTP closes of the %d-byte transfers: written digests %v, read digests %v; want one SHA-256 both ways", bigTransfer, written, read)
	}
}

func TestRecordModeRefusals(t *testing.T) {
	rb := startRecordGateway(t, "AcceptEnv LD_* BASTION_*\n")
	ctx := t.Context()

	t.Run("target host key unknown", func(t *testing.T) {
		c := rb.client(ca.Request{KeyID: "rec-unknown-host"})
		// LogLevel INFO (ssh's default) shows the channel's refusal.
		r := c.Run(ctx, "ssh", "-o", "LogLevel=INFO", "-J", rb.user+"@"+rb.addr, "-p", strconv.Itoa(rb.plain.Port), rb.user+"@127.0.0.1", "echo", "reached")
		if r.ExitCode != 255 || strings.Contains(r.Stdout, "reached") || !strings.Contains(r.Stderr, "host key") {
			t.Errorf("a target with an unknown host key: %s; want a refusal naming the host key", r)
		}
		rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-unknown-host", "reason": ReasonTargetHostKeyUnknown})
		// The gateway never authenticated to it.
		if strings.Contains(rb.plain.Log(), "Accepted publickey") {
			t.Errorf("the gateway authenticated to a target whose host key it does not know:\n%s", rb.plain.Log())
		}
	})
	t.Run("root", func(t *testing.T) {
		c := rb.client(ca.Request{KeyID: "rec-root"})
		r := c.Run(ctx, "ssh", "-J", rb.user+"@"+rb.addr, "-p", strconv.Itoa(rb.target.Port), "root@127.0.0.1", "true")
		if r.ExitCode != 255 {
			t.Errorf("root as the inner login: %s", r)
		}
		rb.waitEvent(t, audit.TypeAuthFailed, map[string]string{"key_id": "rec-root", "hop": "inner", "reason": ReasonForbiddenUser})
	})
	t.Run("login not allowed", func(t *testing.T) {
		c := rb.client(ca.Request{KeyID: "rec-login"})
		r := c.Run(ctx, "ssh", "-J", rb.user+"@"+rb.addr, "-p", strconv.Itoa(rb.target.Port), "daemon@127.0.0.1", "true")
		if r.ExitCode != 255 {
			t.Errorf("an inner login outside the certificate: %s", r)
		}
		rb.waitEvent(t, audit.TypeAuthFailed, map[string]string{"key_id": "rec-login", "hop": "inner", "reason": ReasonLoginNotAllowed, "login": "daemon"})
	})
	t.Run("identity mismatch", func(t *testing.T) {
		alice := rb.client(ca.Request{KeyID: "rec-alice"})
		bob := rb.client(ca.Request{KeyID: "rec-bob"})
		outer, err := rb.dialGateway(rb.user, gossh.PublicKeys(certSigner(t, alice, rb.certOf(alice))))
		if err != nil {
			t.Fatal(err)
		}
		defer outer.Close()
		tunnel, err := outer.Dial("tcp", rb.target.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tunnel.Close()
		_, _, _, err = gossh.NewClientConn(tunnel, rb.target.Addr, &gossh.ClientConfig{
			User: rb.user, Auth: []gossh.AuthMethod{gossh.PublicKeys(certSigner(t, bob, rb.certOf(bob)))},
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		})
		if err == nil {
			t.Fatal("the inner hop accepted another user's certificate")
		}
		ev := rb.waitEvent(t, audit.TypeAuthFailed, map[string]string{"key_id": "rec-alice", "hop": "inner", "reason": ReasonIdentityMismatch})
		if ev.Fields["offered_key_id"] != "rec-bob" {
			t.Errorf("the refusal does not name the certificate offered: %v", ev.Fields)
		}
	})
	t.Run("agent forwarding", func(t *testing.T) {
		c := rb.client(ca.Request{KeyID: "rec-agent"})
		sock := testbed.StartSSHAgent(t)
		c.Env = []string{"SSH_AUTH_SOCK=" + sock}
		r := c.Run(ctx, "ssh", append([]string{"-A", "-o", "IdentityAgent=" + sock}, rb.jumpArgs(rb.user, "echo", "agent=${SSH_AUTH_SOCK:-none}")...)...)
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "agent=none" {
			t.Errorf("ssh -A in record mode: %s; want the session to run without an agent", r)
		}
		rb.waitEvent(t, audit.TypeRequestDenied, map[string]string{"key_id": "rec-agent", "request": "auth-agent-req@openssh.com"})
	})
	t.Run("LD_PRELOAD", func(t *testing.T) {
		c := rb.client(ca.Request{KeyID: "rec-env"})
		r := c.Run(ctx, "ssh", append([]string{"-o", "SetEnv=LD_PRELOAD=/nonexistent/evil.so BASTION_OK=yes"},
			rb.jumpArgs(rb.user, "echo", "preload=${LD_PRELOAD:-unset}", "ok=${BASTION_OK:-unset}")...)...)
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "preload=unset ok=yes" {
			t.Errorf("SetEnv LD_PRELOAD through record mode: %s; want LD_PRELOAD dropped and other variables kept", r)
		}
		rb.waitEvent(t, audit.TypeRequestDenied, map[string]string{"key_id": "rec-env", "request": "env LD_PRELOAD", "reason": ReasonEnvForbidden})
	})
	t.Run("tunnel rules unchanged", func(t *testing.T) {
		// A tunnel-mode rule relays bytes: the client then needs the
		// target's own host key.
		var err error
		rb.gw.access, err = compileAccess([]AccessRule{{Principals: []string{rb.user}, Hosts: []string{"127.0.0.1"}, Ports: []int{rb.plain.Port}, Mode: ModeTunnel}})
		if err != nil {
			t.Fatal(err)
		}
		c := rb.client(ca.Request{KeyID: "rec-tunnel"})
		c.TrustHostKey(rb.plain.Addr, rb.plain.HostKeyPub)
		r := c.Run(ctx, "ssh", "-J", rb.user+"@"+rb.addr, "-p", strconv.Itoa(rb.plain.Port), rb.user+"@127.0.0.1", "echo", "tunnelled")
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "tunnelled" {
			t.Errorf("tunnel mode: %s", r)
		}
		start := rb.waitEvent(t, audit.TypeSessionStart, map[string]string{"key_id": "rec-tunnel"})
		if start.Fields["mode"] == ModeRecord {
			t.Errorf("a tunnel rule's session was recorded: %v", start.Fields)
		}
	})
}

// TestRecordModeForwarding: ssh -W and -L open direct-tcpip inside the
// recorded session, to a service only the target reaches.
func TestRecordModeForwarding(t *testing.T) {
	rb := startRecordGateway(t, "")
	echo := startEchoServer(t)
	c := rb.client(ca.Request{KeyID: "rec-fwd"})
	r := c.RunInput(t.Context(), strings.NewReader("ping through the target\n"), "ssh", append([]string{"-W", echo}, rb.jumpArgs(rb.user)...)...)
	if r.ExitCode != 0 || r.Stdout != "ping through the target\n" {
		t.Errorf("ssh -W through a recorded session: %s", r)
	}
	rb.waitEvent(t, audit.TypeSessionForward, map[string]string{"key_id": "rec-fwd", "kind": "local", "forward": echo})
	// Who, to where, bytes each way: once the forwarded connection closes.
	n := strconv.Itoa(len("ping through the target\n"))
	rb.waitEvent(t, audit.TypeSessionForwardEnd, map[string]string{"key_id": "rec-fwd", "login": rb.user, "kind": "local", "forward": echo, "bytes_up": n, "bytes_down": n})

	t.Run("refused without permit-port-forwarding", func(t *testing.T) {
		c := rb.client(ca.Request{KeyID: "rec-nofwd", Options: []string{"no-port-forwarding"}})
		r := c.RunInput(t.Context(), strings.NewReader("x\n"), "ssh", append([]string{"-W", echo}, rb.jumpArgs(rb.user)...)...)
		if r.ExitCode == 0 || r.Stdout != "" {
			t.Errorf("ssh -W with a no-port-forwarding certificate: %s", r)
		}
	})
}

// startEchoServer serves one line echo on loopback and returns its address.
func startEchoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(20 * time.Second))
				buf := make([]byte, 4096)
				var got bytes.Buffer
				for !bytes.Contains(got.Bytes(), []byte("\n")) {
					n, err := conn.Read(buf)
					got.Write(buf[:n])
					if err != nil {
						break
					}
				}
				io.Copy(conn, &got)
			}()
		}
	}()
	return ln.Addr().String()
}

func regexpMatch(re, s string) bool {
	return regexp.MustCompile(re).MatchString(s)
}

// TestRecordModeRecordingFailure: a recording that cannot be written ends
// the session (fail closed), unless recording.on_failure is continue.
func TestRecordModeRecordingFailure(t *testing.T) {
	const script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; sleep 0.05; done"
	t.Run("close", func(t *testing.T) {
		rb := startRecordGateway(t, "")
		rb.recs.mu.Lock()
		rb.recs.failAfter = 3
		rb.recs.mu.Unlock()
		c := rb.client(ca.Request{KeyID: "rec-fail"})
		r := c.Run(t.Context(), "ssh", rb.jumpArgs(rb.user, script)...)
		if r.ExitCode == 0 || strings.Contains(r.Stdout, "line10") || !strings.Contains(r.Stderr, "can no longer be recorded") {
			t.Errorf("a session whose recording fails: %s; want it ended with a message", r)
		}
		rb.waitEvent(t, audit.TypeRecordingFailed, map[string]string{"key_id": "rec-fail", "policy": OnFailureClose})
		end := rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-fail", "reason": ReasonRecordingFailed})
		// The end still carries the digest of what was stored, so the
		// chain covers the cut recording.
		if end.Fields[audit.FieldRecordingSHA256] == "" || end.Fields[audit.FieldRecordingChunks] == "" {
			t.Errorf("recording_failed session.end = %v; want recording_sha256 and recording_chunks of the stored chunks", end.Fields)
		}
		v, err := rb.recs.store.VerifyChain(t.Context())
		if err != nil || v.Recordings != 1 || len(v.Unverified) != 0 {
			t.Errorf("VerifyChain = %+v, %v; want the cut recording verified", v, err)
		}
	})
	t.Run("continue", func(t *testing.T) {
		rb := startRecordGateway(t, "", func(c *Config, _ *Deps) { c.Record.OnFailure = OnFailureContinue })
		rb.recs.mu.Lock()
		rb.recs.failAfter = 3
		rb.recs.mu.Unlock()
		c := rb.client(ca.Request{KeyID: "rec-fail-continue"})
		r := c.Run(t.Context(), "ssh", rb.jumpArgs(rb.user, script)...)
		if r.ExitCode != 0 || !strings.Contains(r.Stdout, "line10") {
			t.Errorf("on_failure continue: %s; want the session to finish", r)
		}
		rb.waitEvent(t, audit.TypeRecordingFailed, map[string]string{"key_id": "rec-fail-continue", "policy": OnFailureContinue})
		rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-fail-continue", "reason": "closed"})
	})
}

// TestRecordModeControlMaster: one recorded connection carries many
// parallel channels (OpenSSH connection sharing).
func TestRecordModeControlMaster(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-mux"})
	sock := c.Dir + "/cm"
	ctx, cancel := context.WithTimeout(t.Context(), testbed.DefaultTimeout)
	defer cancel()
	master := c.Command(ctx, "ssh", append([]string{"-M", "-S", sock, "-N"}, rb.jumpArgs(rb.user)...)...)
	var masterErr bytes.Buffer
	master.Stderr = &masterErr
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Run(t.Context(), "ssh", append([]string{"-S", sock, "-O", "exit"}, rb.jumpArgs(rb.user)...)...)
		master.Wait()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for c.Run(ctx, "ssh", append([]string{"-S", sock, "-O", "check"}, rb.jumpArgs(rb.user)...)...).ExitCode != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the control master did not come up: %s", masterErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	const n = 8
	var wg sync.WaitGroup
	results := make([]testbed.Result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.Run(ctx, "ssh", append([]string{"-S", sock, "-o", "ControlMaster=no"}, rb.jumpArgs(rb.user, "sleep 0.2; echo", "mux-"+strconv.Itoa(i)+"; exit", strconv.Itoa(i))...)...)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.ExitCode != i || strings.TrimSpace(r.Stdout) != "mux-"+strconv.Itoa(i) {
			t.Errorf("channel %d over the shared connection: %s", i, r)
		}
	}
	sessions := map[string]int{}
	for _, ev := range rb.events(audit.TypeSessionExec) {
		if ev.Fields["key_id"] == "rec-mux" {
			sessions[ev.Session]++
		}
	}
	if len(sessions) != 1 {
		t.Errorf("the %d commands were spread over sessions %v; want one recorded session", n, sessions)
	}
	for _, count := range sessions {
		if count != n {
			t.Errorf("%d session.exec records, want %d", count, n)
		}
	}
}

// TestRecordModeVSCodePattern: VS Code Remote-SSH runs `ssh -T -D PORT
// host bash`, feeds a script on stdin and then reaches its server through
// the SOCKS proxy; ssh -R forwards back.
func TestRecordModeVSCodePattern(t *testing.T) {
	testbed.RequireCommand(t, "bash")
	rb := startRecordGateway(t, "")
	echo := startEchoServer(t)
	c := rb.client(ca.Request{KeyID: "rec-vscode"})
	socks := testbed.FreePort(t)
	ctx, cancel := context.WithTimeout(t.Context(), testbed.DefaultTimeout)
	defer cancel()
	cmd := c.Command(ctx, "ssh", append([]string{"-T", "-D", "127.0.0.1:" + strconv.Itoa(socks)}, rb.jumpArgs(rb.user, "bash")...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "echo server-listening-on-$((40000+2))\n")
	line := make([]byte, 64)
	n, _ := io.ReadAtLeast(stdout, line, len("server-listening-on-40002\n"))
	if got := string(line[:n]); got != "server-listening-on-40002\n" {
		t.Fatalf("the script's first line: %q", got)
	}
	// Through the SOCKS proxy, as VS Code reaches its server.
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(socks), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if got := socks5Connect(t, conn, echo); got != nil {
		t.Fatal(got)
	}
	io.WriteString(conn, "over socks\n")
	back := make([]byte, len("over socks\n"))
	if _, err := io.ReadFull(conn, back); err != nil || string(back) != "over socks\n" {
		t.Fatalf("echo through ssh -D: %q, %v", back, err)
	}
	conn.Close() // ssh waits for its forwarded connections to close
	n11 := strconv.Itoa(len("over socks\n"))
	rb.waitEvent(t, audit.TypeSessionForwardEnd, map[string]string{"key_id": "rec-vscode", "kind": "local", "forward": echo, "bytes_up": n11, "bytes_down": n11})
	io.WriteString(stdin, "exit 7\n")
	stdin.Close()
	io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); cmd.ProcessState.ExitCode() != 7 {
		t.Errorf("bash fed on stdin exited %v; want 7", err)
	}

	t.Run("ssh -R", func(t *testing.T) {
		port := testbed.FreePort(t)
		r := c.Run(t.Context(), "ssh", append([]string{"-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:" + strconv.Itoa(port) + ":" + echo},
			rb.jumpArgs(rb.user, "sleep 1; bash -c 'exec 3<>/dev/tcp/127.0.0.1/"+strconv.Itoa(port)+"; echo back-from-R >&3; head -1 <&3'")...)...)
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "back-from-R" {
			t.Errorf("ssh -R through a recorded session: %s", r)
		}
		rb.waitEvent(t, audit.TypeSessionForward, map[string]string{"key_id": "rec-vscode", "kind": "remote"})
		n12 := strconv.Itoa(len("back-from-R\n"))
		rb.waitEvent(t, audit.TypeSessionForwardEnd, map[string]string{"key_id": "rec-vscode", "kind": "remote", "bytes_up": n12, "bytes_down": n12})
	})
}

// socks5Connect asks a SOCKS5 proxy (no authentication) on conn for addr.
func socks5Connect(t *testing.T, conn net.Conn, addr string) error {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	ip := net.ParseIP(host).To4()
	if _, err := conn.Write([]byte{5, 1, 0}); err != nil {
		return err
	}
	reply := make([]byte, 2)
	if _, err := io.ReadFull(conn, reply); err != nil || reply[1] != 0 {
		return fmt.Errorf("socks5 greeting: %v %v", reply, err)
	}
	req := append([]byte{5, 1, 0, 1}, ip...)
	req = append(req, byte(port>>8), byte(port))
	if _, err := conn.Write(req); err != nil {
		return err
	}
	resp := make([]byte, 10)
	if _, err := io.ReadFull(conn, resp); err != nil || resp[1] != 0 {
		return fmt.Errorf("socks5 connect: %v %v", resp, err)
	}
	return nil
}

// TestRecordModeStateChangeEndsLiveSession: a lock or a revocation ends a
// live recorded session — an interactive pty session and a running
// command — within about a second, through the gateway's one certificate
// check (checker.recheck, run by stateChanged), and both the session and
// the connection record why. The target's side of the pty session ends
// too: the gateway's own connection to the target is closed.
func TestRecordModeStateChangeEndsLiveSession(t *testing.T) {
	rb := startRecordGateway(t, "")
	ctx := t.Context()
	for i, tc := range []struct {
		name   string
		req    ca.Request
		pty    bool
		change func() error
		reason string
	}{
		{"lock, interactive pty", ca.Request{KeyID: "rec-locked@example.com sub=9"}, true, func() error {
			return rb.locks.Lock(ctx, ca.Lock{Target: "rec-locked@example.com", By: "test"})
		}, ReasonLocked},
		{"revoke, running command", ca.Request{KeyID: "rec-revoked", Serial: 7373}, false, func() error {
			return rb.revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeSerial, Value: "7373", Reason: "test"})
		}, ReasonRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rb.client(tc.req)
			// A sleep no other test runs, so the target's process can be found.
			nap := fmt.Sprintf("%d.%d", 500+i, time.Now().UnixNano()%100000)
			args := rb.jumpArgs(rb.user, "echo started; exec sleep "+nap)
			if tc.pty {
				args = append([]string{"-tt"}, args...)
			}
			cmd := c.Command(ctx, "ssh", args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			if line, _ := bufio.NewReader(stdout).ReadString('\n'); strings.TrimSpace(line) != "started" {
				t.Fatalf("the recorded session did not start: %q", line)
			}
			rb.waitEvent(t, audit.TypeSessionExec, map[string]string{"key_id": tc.req.KeyID})
			if !targetRuns(t, "sleep "+nap) {
				t.Fatalf("the session's command is not running on the target")
			}
			changed := time.Now()
			if err := tc.change(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
				t.Logf("the recorded session ended %s after the change", time.Since(changed).Round(time.Millisecond))
			case <-time.After(2 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("a recorded session outlived its %s by 2 s", tc.reason)
			}
			// The user is told why, not only "Connection closed".
			if !strings.Contains(stderr.String(), "bastion: your access was ended ("+tc.reason) {
				t.Errorf("ssh's stderr does not say why the session ended:\n%s", stderr.String())
			}
			rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": tc.req.KeyID, "mode": ModeRecord, "reason": tc.reason})
			rb.waitEvent(t, audit.TypeConnectionEnded, map[string]string{"key_id": tc.req.KeyID, "reason": tc.reason})
			if tc.pty {
				// sshd hangs up a pty session whose connection is gone;
				// without a pty the command would outlive it there too.
				deadline := time.Now().Add(3 * time.Second)
				for targetRuns(t, "sleep "+nap) {
					if time.Now().After(deadline) {
						t.Fatal("the target still runs the session's command: the gateway kept its connection to the target open")
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
}

// targetRuns reports whether a process whose command line is exactly
// cmdline runs on this machine (the loopback target's processes).
func targetRuns(t *testing.T, cmdline string) bool {
	t.Helper()
	out, err := exec.Command("pgrep", "-x", "-f", cmdline).Output()
	if err != nil && len(out) == 0 {
		return false
	}
	return strings.TrimSpace(string(out)) != ""
}

// TestRecordModeX11AndEnv: X11 forwarding (ssh -Y) is refused and audited
// in record mode, and loader-changing variables sent with SendEnv or
// SetEnv (LD_PRELOAD, DYLD_INSERT_LIBRARIES, an exported bash function
// BASH_FUNC_x%%) never reach the target's environment, while LANG and
// LC_* still do. The same client straight to the target (no gateway)
// gets all of them, so the target would accept each one.
func TestRecordModeX11AndEnv(t *testing.T) {
	rb := startRecordGateway(t, "AcceptEnv LANG LC_* LD_* DYLD_* BASH_FUNC_*\nX11Forwarding yes\n")
	ctx := t.Context()
	// The certificate permits X11, so only record mode stands in the way.
	c := rb.client(ca.Request{KeyID: "rec-x11-env", Options: []string{"permit-X11-forwarding"}})
	c.Env = []string{"DISPLAY=127.0.0.1:97", "LANG=C.UTF-8", "LC_PAPER=C.UTF-8", "BASH_FUNC_x%%=() {  echo pwned\n}"}
	opts := []string{"-Y", "-o", "ForwardX11Trusted=yes",
		"-o", "SendEnv=LANG LC_PAPER BASH_FUNC_*",
		"-o", "SetEnv=LD_PRELOAD=/nonexistent/evil.so DYLD_INSERT_LIBRARIES=/nonexistent/evil.dylib"}
	// The environment sshd gave the command's shell, one variable a line.
	remote := []string{"tr '\\0' '\\n' </proc/$$/environ"}
	envOf := func(r testbed.Result) map[string]string {
		m := map[string]string{}
		for _, l := range strings.Split(r.Stdout, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				m[k] = v
			}
		}
		return m
	}
	forbidden := []string{"LD_PRELOAD", "DYLD_INSERT_LIBRARIES", "BASH_FUNC_x%%"}

	direct := c.Run(ctx, "ssh", append(append(opts, "-p", strconv.Itoa(rb.target.Port), rb.user+"@127.0.0.1"), remote...)...)
	got := envOf(direct)
	if direct.ExitCode != 0 || got["DISPLAY"] == "" || got["LANG"] != "C.UTF-8" {
		t.Fatalf("straight to the target, X11 and LANG should pass: %s", direct)
	}
	for _, k := range forbidden {
		if _, ok := got[k]; !ok {
			t.Fatalf("straight to the target, %s should reach it (the target accepts it), or this test proves nothing: %s", k, direct)
		}
	}

	r := c.Run(ctx, "ssh", append(append(opts, "-o", "LogLevel=INFO"), rb.jumpArgs(rb.user, remote...)...)...)
	got = envOf(r)
	if r.ExitCode != 0 {
		t.Fatalf("ssh -Y with SendEnv/SetEnv through record mode should still run the command: %s", r)
	}
	if d, ok := got["DISPLAY"]; ok {
		t.Errorf("X11 forwarding reached the target through record mode: DISPLAY=%s", d)
	}
	if !strings.Contains(r.Stderr, "X11 forwarding request failed") {
		t.Errorf("ssh was not told that X11 forwarding was refused: %s", r)
	}
	for _, k := range forbidden {
		if v, ok := got[k]; ok {
			t.Errorf("%s=%q reached the target through record mode", k, v)
		}
	}
	if got["LANG"] != "C.UTF-8" || got["LC_PAPER"] != "C.UTF-8" {
		t.Errorf("LANG and LC_PAPER should reach the target (its AcceptEnv allows them): LANG=%q LC_PAPER=%q", got["LANG"], got["LC_PAPER"])
	}
	// The gateway refuses x11-req itself (the certificate it mints for
	// the target never permits X11 either: a second line of defence).
	rb.waitEvent(t, audit.TypeRequestDenied, map[string]string{"key_id": "rec-x11-env", "request": "x11-req", "reason": "not_supported"})
	for _, k := range forbidden {
		rb.waitEvent(t, audit.TypeRequestDenied, map[string]string{"key_id": "rec-x11-env", "request": "env " + k, "reason": ReasonEnvForbidden})
	}
}

// TestRecordModeRefusalFlood: thousands of refused global requests,
// channel requests, env requests and channel opens on one record-mode
// connection write a bounded number of records, the repeats counted.
func TestRecordModeRefusalFlood(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-flood"})
	signer := certSigner(t, c, rb.certOf(c))
	outer, err := rb.dialGateway(rb.user, gossh.PublicKeys(signer))
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	tunnel, err := outer.Dial("tcp", rb.target.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tunnel.Close()
	cc, chans, reqs, err := gossh.NewClientConn(tunnel, rb.target.Addr, &gossh.ClientConfig{
		User: rb.user, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	inner := gossh.NewClient(cc, chans, reqs)
	const n = 1000
	for i := range n {
		if ok, _, err := inner.SendRequest(fmt.Sprintf("junk-%d@example.com", i), true, nil); err != nil || ok {
			t.Fatalf("global request %d: ok=%v err=%v", i, ok, err)
		}
	}
	ch, _, err := inner.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if ok, err := ch.SendRequest(fmt.Sprintf("junk-%d", i), true, nil); err != nil || ok {
			t.Fatalf("channel request %d: ok=%v err=%v", i, ok, err)
		}
		env := gossh.Marshal(struct{ Name, Value string }{fmt.Sprintf("LD_%d", i), "x"})
		if _, err := ch.SendRequest("env", true, env); err != nil {
			t.Fatalf("env request %d: %v", i, err)
		}
	}
	for i := range 200 {
		if _, _, err := inner.OpenChannel(fmt.Sprintf("junk-chan-%d", i), nil); err == nil {
			t.Fatalf("junk channel %d opened", i)
		}
	}
	ch.Close()
	inner.Close()
	outer.Close()
	rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-flood"})
	count := func() (records, stands int) {
		for _, typ := range []string{audit.TypeRequestDenied, audit.TypeChannelDenied} {
			for _, ev := range rb.events(typ) {
				if ev.Fields["key_id"] != "rec-flood" {
					continue
				}
				records++
				if c, err := strconv.Atoi(ev.Fields["count"]); err == nil {
					stands += c
				} else {
					stands++
				}
			}
		}
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	records, stands := count()
	for stands < 3*n+200 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		records, stands = count()
	}
	t.Logf("%d refusals: %d records", 3*n+200, records)
	if records > 2*maxRefusalKinds+4 {
		t.Errorf("%d refusal records for %d refusals; want them folded to a few", records, 3*n+200)
	}
	if stands != 3*n+200 {
		t.Errorf("the records stand for %d refusals, want %d", stands, 3*n+200)
	}
}

// TestRecordModeRecordingTruncated: a session whose recording reaches
// max_bytes_per_session writes one recording.truncated record.
func TestRecordModeRecordingTruncated(t *testing.T) {
	small, err := audit.Open(filepath.Join(t.TempDir(), "rec.db"), audit.Options{RecordingMaxBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { small.Close() })
	rb := startRecordGateway(t, "", func(_ *Config, d *Deps) { d.Recordings = StoreRecordings{Store: small} })
	c := rb.client(ca.Request{KeyID: "rec-big"})
	r := c.Run(t.Context(), "ssh", rb.jumpArgs(rb.user, "head", "-c", "400000", "/dev/zero", "|", "wc", "-c", ";", "head", "-c", "300000", "/dev/zero")...)
	if r.ExitCode != 0 || len(r.Stdout) < 300000 {
		t.Fatalf("a large output through record mode: exit %d, %d bytes", r.ExitCode, len(r.Stdout))
	}
	end := rb.sessionOf(t, "rec-big")
	ev := rb.waitEvent(t, audit.TypeRecordingTruncated, map[string]string{"key_id": "rec-big", "limit": "65536"})
	if ev.Session != end.Session || ev.Fields["bytes_stored"] == "" || ev.Fields["login"] != rb.user {
		t.Errorf("recording.truncated: %v", ev)
	}
	n := 0
	for _, e := range rb.events(audit.TypeRecordingTruncated) {
		if e.Session == end.Session {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d recording.truncated records for one session; want one", n)
	}
}

// TestRecordModeInnerAttemptsFolded: a client that offers its plain key
// before its certificate on the inner hop (as OpenSSH does) gets one
// auth.ok with the failed attempt folded in, no auth.failed; one that
// never authenticates gets auth.failed records.
func TestRecordModeInnerAttemptsFolded(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-fold"})
	plain, cert := certSigner(t, c, nil), certSigner(t, c, rb.certOf(c))
	inner := func(auth ...gossh.Signer) error {
		outer, err := rb.dialGateway(rb.user, gossh.PublicKeys(cert))
		if err != nil {
			t.Fatal(err)
		}
		defer outer.Close()
		tunnel, err := outer.Dial("tcp", rb.target.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tunnel.Close()
		cc, chans, reqs, err := gossh.NewClientConn(tunnel, rb.target.Addr, &gossh.ClientConfig{
			User: rb.user, Auth: []gossh.AuthMethod{gossh.PublicKeys(auth...)},
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		})
		if err != nil {
			return err
		}
		// Run a command, as a client does: the gateway finishes the inner
		// hop (minting the target certificate) before the client leaves.
		client := gossh.NewClient(cc, chans, reqs)
		defer client.Close()
		sess, err := client.NewSession()
		if err != nil {
			return err
		}
		defer sess.Close()
		return sess.Run("true")
	}
	if err := inner(plain, cert); err != nil {
		t.Fatalf("inner hop with the plain key then the certificate: %v", err)
	}
	ok := rb.waitEvent(t, audit.TypeAuthOK, map[string]string{"key_id": "rec-fold", "hop": "inner"})
	if ok.Fields["attempts_failed"] != "1" || ok.Fields["attempts_reasons"] != ReasonNotACertificate+"×1" {
		t.Errorf("inner auth.ok: %v; want attempts_failed 1, attempts_reasons %s×1", ok.Fields, ReasonNotACertificate)
	}
	rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-fold"})
	for _, ev := range rb.events(audit.TypeAuthFailed) {
		if ev.Fields["hop"] == "inner" {
			t.Errorf("an inner hop that authenticated wrote auth.failed: %v", ev.Fields)
		}
	}
	if err := inner(plain); err == nil {
		t.Fatal("the inner hop accepted a plain key")
	}
	rb.waitEvent(t, audit.TypeAuthFailed, map[string]string{"key_id": "rec-fold", "hop": "inner", "reason": ReasonNotACertificate})
}
