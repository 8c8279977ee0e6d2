package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// TestClientLeftClassification: a step of the inner hop's setup that
// failed because the client left is the client leaving; a failure of its
// own (the CA refusing, the audit log down) stays one, even if the
// client has left too; nothing is the client leaving while it is there.
func TestClientLeftClassification(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	here := context.Background()
	canceled := fmt.Errorf("ca: the certificate was not issued because its audit record could not be written: %w",
		fmt.Errorf("audit: cert.issued not recorded: %w", context.Canceled))
	deadline := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	refused := errors.New("ca: refused: principal forbidden")
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"minting cancelled by the client leaving", gone, canceled, true},
		{"target login cut short when the client left", gone, deadline, true},
		{"connection closed under the step", gone, fmt.Errorf("write: %w", net.ErrClosed), true},
		{"CA refusal as the client leaves", gone, refused, false},
		{"audit log down as the client leaves", gone, errors.New("audit: disk full"), false},
		{"no error", gone, nil, false},
		{"cancelled error, client still there", here, canceled, false},
		{"target timed out, client still there", here, deadline, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := clientLeft(tc.ctx, tc.err); got != tc.want {
				t.Errorf("clientLeft = %v; want %v", got, tc.want)
			}
		})
	}
}

// TestInnerHandshakeReason: an inner hop that never authenticated ended
// by timeout, by failed attempts, or by the client leaving without one.
func TestInnerHandshakeReason(t *testing.T) {
	for _, tc := range []struct {
		name     string
		err      error
		attempts int
		timedOut bool
		want     string
	}{
		{"killed client, nothing tried", io.EOF, 0, false, ReasonClientDisconnected},
		{"client sent disconnect", errors.New("ssh: disconnect, reason 11: bye"), 0, false, ReasonClientDisconnected},
		{"connection closed", fmt.Errorf("read: %w", net.ErrClosed), 0, false, ReasonClientDisconnected},
		{"left after a refused key", io.EOF, 1, false, ReasonInnerAuthFailed},
		{"too many failures", errors.New("ssh: disconnect, reason 2: too many authentication failures"), 6, false, ReasonInnerAuthFailed},
		{"handshake deadline", io.EOF, 0, true, ReasonInnerHandshakeTimeout},
		{"no common algorithm", errors.New("ssh: no common algorithm for key exchange"), 0, false, ReasonInnerAuthFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := innerHandshakeReason(tc.err, tc.attempts, tc.timedOut); got != tc.want {
				t.Errorf("innerHandshakeReason = %q; want %q", got, tc.want)
			}
		})
	}
}

// holdingRecorder is the CA's audit recorder with a hand on the records
// of session certificates: it fails them with fail, or holds them until
// the caller's context ends (at most a minute), saying so on held.
type holdingRecorder struct {
	ca.Recorder
	fail error
	held chan struct{}
}

func (h *holdingRecorder) Append(ctx context.Context, ev audit.Event) (audit.Event, error) {
	if ev.Type == audit.TypeCertIssued && ev.Fields["purpose"] == "session" {
		if h.fail != nil {
			return audit.Event{}, h.fail
		}
		select {
		case h.held <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return audit.Event{}, fmt.Errorf("audit: %s not recorded: %w", ev.Type, ctx.Err())
		case <-time.After(time.Minute):
		}
	}
	return h.Recorder.Append(ctx, ev)
}

// startHoldingRecordGateway is a record-mode gateway whose CA records
// session certificates through h.
func startHoldingRecordGateway(t *testing.T, h *holdingRecorder) *recordBed {
	t.Helper()
	caDir := t.TempDir()
	if _, _, err := ca.Init(ca.Layout{DataDir: caDir}, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return startRecordGatewayWithCA(t, caDir, "", func(_ *Config, d *Deps) {
		h.Recorder = d.Audit.(*audit.Store)
		auth, err := ca.New(ca.Config{Layout: ca.Layout{DataDir: caDir}, State: d.Authority.State()}, h)
		if err != nil {
			t.Fatal(err)
		}
		d.Authority = auth
	})
}

// TestRecordModeClientKilledWhileMinting: a real OpenSSH client killed
// right after its inner hop authenticated, while the gateway mints the
// target's certificate, ends the session as client_disconnected: no
// session_cert_failed refusal (nothing failed, nothing to alert on).
func TestRecordModeClientKilledWhileMinting(t *testing.T) {
	h := &holdingRecorder{held: make(chan struct{}, 1)}
	rb := startHoldingRecordGateway(t, h)
	c := rb.client(ca.Request{KeyID: "rec-killed"})
	cmd := c.Command(t.Context(), "ssh", rb.jumpArgs(rb.user, "echo", "never")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-h.held:
	case err := <-exited:
		t.Fatalf("ssh exited (%v) before the gateway minted the target's certificate:\n%s", err, rb.dump())
	case <-time.After(20 * time.Second):
		t.Fatalf("the gateway did not start minting the target's certificate within 20s:\n%s", rb.dump())
	}
	// The user's Ctrl-C: the whole client, ssh and its ProxyJump ssh.
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	end := rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-killed"})
	if end.Fields["reason"] != ReasonClientDisconnected {
		t.Errorf("session.end reason %q; want %s:\n%s", end.Fields["reason"], ReasonClientDisconnected, rb.dump())
	}
	rb.waitEvent(t, audit.TypeAuthOK, map[string]string{"key_id": "rec-killed", "hop": "inner"})
	for _, ev := range rb.events(audit.TypeChannelDenied) {
		if ev.Fields["key_id"] == "rec-killed" {
			t.Errorf("a client that left was refused: %v", ev.Fields)
		}
	}
	if dump := rb.dump(); strings.Contains(dump, ReasonSessionCertFailed) {
		t.Errorf("the audit log blames the CA:\n%s", dump)
	}
}

// TestRecordModeSessionCertFailureStays: a CA that cannot issue the
// target's certificate is still session_cert_failed, refused and audited.
func TestRecordModeSessionCertFailureStays(t *testing.T) {
	h := &holdingRecorder{fail: errors.New("audit: disk full")}
	rb := startHoldingRecordGateway(t, h)
	c := rb.client(ca.Request{KeyID: "rec-cafail"})
	if r := c.Run(t.Context(), "ssh", rb.jumpArgs(rb.user, "echo", "never")...); r.ExitCode == 0 {
		t.Fatalf("the session ran without a target certificate: %s", r)
	}
	rb.waitEvent(t, audit.TypeChannelDenied, map[string]string{"key_id": "rec-cafail", "reason": ReasonSessionCertFailed})
	end := rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-cafail"})
	if end.Fields["reason"] != ReasonSessionCertFailed {
		t.Errorf("session.end reason %q; want %s", end.Fields["reason"], ReasonSessionCertFailed)
	}
}

// TestRecordModeInnerHopLeftBeforeAuth: a client that opens the inner
// hop and leaves before trying to authenticate ends the session as
// client_disconnected, not inner_auth_failed.
func TestRecordModeInnerHopLeftBeforeAuth(t *testing.T) {
	rb := startRecordGateway(t, "")
	c := rb.client(ca.Request{KeyID: "rec-noauth"})
	outer, err := rb.dialGateway(rb.user, gossh.PublicKeys(certSigner(t, c, rb.certOf(c))))
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	tunnel, err := outer.Dial("tcp", rb.target.Addr)
	if err != nil {
		t.Fatal(err)
	}
	// Read the gateway's version line, so the inner server runs, then go.
	buf := make([]byte, 64)
	tunnel.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := tunnel.Read(buf); err != nil {
		t.Fatal(err)
	}
	tunnel.Close()
	end := rb.waitEvent(t, audit.TypeSessionEnd, map[string]string{"key_id": "rec-noauth"})
	if end.Fields["reason"] != ReasonClientDisconnected {
		t.Errorf("session.end reason %q; want %s", end.Fields["reason"], ReasonClientDisconnected)
	}
}

// TestJumpClientLeftWhileDialling: a client whose connection ends while
// the gateway dials its target is not refused (no dial_failed record).
func TestJumpClientLeftWhileDialling(t *testing.T) {
	dialling, gaveUp := make(chan struct{}, 1), make(chan struct{}, 1)
	rb := startRecordGateway(t, "", func(_ *Config, d *Deps) {
		d.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialling <- struct{}{}
			select {
			case <-ctx.Done():
				gaveUp <- struct{}{}
				return nil, ctx.Err()
			case <-time.After(time.Minute):
				return nil, errors.New("test dialer: held a minute")
			}
		}
	})
	c := rb.client(ca.Request{KeyID: "rec-dial-left"})
	outer, err := rb.dialGateway(rb.user, gossh.PublicKeys(certSigner(t, c, rb.certOf(c))))
	if err != nil {
		t.Fatal(err)
	}
	go outer.Dial("tcp", rb.target.Addr)
	select {
	case <-dialling:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not dial the target within 10s")
	}
	outer.Close()
	select {
	case <-gaveUp:
	case <-time.After(10 * time.Second):
		t.Fatal("the dial did not end within 10s of the client leaving")
	}
	// The jump is counted as the client leaving, not as a dial failure
	// (which alerts on target outages read), and no refusal is written.
	var reasons map[string]float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if reasons = jumpReasons(t, rb.testGateway); reasons[ReasonClientDisconnected] > 0 || reasons[ReasonDialFailed] > 0 {
			break
		}
	}
	if reasons[ReasonClientDisconnected] != 1 || reasons[ReasonDialFailed] != 0 {
		t.Errorf("refused jumps by reason %v; want %s 1 and no %s", reasons, ReasonClientDisconnected, ReasonDialFailed)
	}
	for _, ev := range rb.events(audit.TypeChannelDenied) {
		if ev.Fields["key_id"] == "rec-dial-left" {
			t.Errorf("a client that left while its target was dialled was refused: %v", ev.Fields)
		}
	}
}

// jumpReasons reads bastion_jumps_total{result="refused"} by reason.
func jumpReasons(t testing.TB, tg *testGateway) map[string]float64 {
	t.Helper()
	mfs, err := tg.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "bastion_jumps_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["result"] == "refused" {
				out[labels["reason"]] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}
