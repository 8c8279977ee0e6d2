package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// storeSession records a terminal session straight into the store, as
// the record-mode proxy would: session.start, the recording, session.end
// with its digest.
func storeSession(t *testing.T, store *audit.Store, session string, output []string) {
	t.Helper()
	ctx := context.Background()
	if _, err := store.Append(ctx, audit.Event{Type: audit.TypeSessionStart, Actor: "alice", Session: session, Fields: map[string]string{"target": "web1:22", "login": "alice"}}); err != nil {
		t.Fatal(err)
	}
	rec, err := store.StartRecording(ctx, session)
	if err != nil {
		t.Fatal(err)
	}
	_ = rec.Write(0, audit.KindResize, 0, []byte("90x20"))
	for i, o := range output {
		if err := rec.Write(0, audit.KindOutput, time.Duration(i)*time.Second, []byte(o)); err != nil {
			t.Fatal(err)
		}
	}
	sum, stored, err := rec.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, audit.Event{Type: audit.TypeSessionEnd, Actor: "alice", Session: session, Fields: map[string]string{
		"target": "web1:22", "duration_ms": "4000", "bytes_up": "12", "bytes_down": "345",
		audit.FieldRecordingSHA256: sum, audit.FieldRecordingBytes: strconv.FormatInt(stored, 10),
	}}); err != nil {
		t.Fatal(err)
	}
}

// lockedBuffer is a bytes.Buffer safe to read while a process writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAuditorSessionsPlayWatch: through the running gateway an auditor
// lists sessions, replays one as asciicast and text, and watches a live
// one until it ends; a user outside the auditor groups is refused.
func TestAuditorSessionsPlayWatch(t *testing.T) {
	tg := startGateway(t, withoutBans, withAuditors)
	ctx := t.Context()
	storeSession(t, tg.store, "0123456789abcdef", []string{"$ ", "uname -a\r\n", "Linux web1\r\n", "\x1b[1mbold\x1b[0m exit\r\n"})
	auditor := tg.client(ca.Request{KeyID: "auditor-laptop", Groups: []string{"auditors"}})
	ssh := func(args ...string) (string, string) {
		t.Helper()
		res := auditor.Run(ctx, "ssh", tg.gatewayArgs(tg.user, args...)...)
		if res.ExitCode != 0 {
			t.Fatalf("ssh %s: %s", strings.Join(args, " "), res)
		}
		return res.Stdout, res.Stderr
	}

	out, _ := ssh("audit", "sessions", "--json", "--user", "alice")
	var sum audit.SessionSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("audit sessions --json: %v\n%s", err, out)
	}
	if sum.Session != "0123456789abcdef" || sum.Kind != "shell" || !sum.Recording || sum.Recorded == 0 || sum.Active || sum.BytesDown == nil || *sum.BytesDown != 345 {
		t.Errorf("audit sessions --json = %+v", sum)
	}
	table, _ := ssh("audit", "sessions")
	if !strings.Contains(table, "0123456789abcdef") || !strings.Contains(table, "web1:22") || !strings.Contains(table, "shell") {
		t.Errorf("audit sessions table lacks the session:\n%s", table)
	}

	cast, _ := ssh("audit", "play", "0123456789abcdef", "--format", "asciicast")
	first, _, _ := strings.Cut(cast, "\n")
	if !strings.HasPrefix(first, `{"version":2,"width":90,"height":20,`) || !strings.Contains(cast, `"Linux web1\r\n"`) {
		t.Errorf("audit play --format asciicast:\n%s", cast)
	}
	text, _ := ssh("audit", "play", "0123456789abcdef", "--format", "text")
	if !strings.Contains(text, "uname -a\nLinux web1\nbold exit\n") {
		t.Errorf("audit play --format text = %q", text)
	}
	term, _ := ssh("audit", "play", "0123456789abcdef", "--speed", "1000")
	if term != "$ uname -a\r\nLinux web1\r\n\x1b[1mbold\x1b[0m exit\r\n" {
		t.Errorf("audit play (terminal) = %q", term)
	}

	// watch: a live recording, followed until it closes.
	rec, err := tg.store.StartRecording(ctx, "feedfacecafebeef")
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Write(0, audit.KindOutput, 0, []byte("before the watch\r\n")); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := auditor.Command(wctx, "ssh", tg.gatewayArgs(tg.user, "audit", "watch", "feedfacecafebeef")...)
	var wout, werr lockedBuffer
	cmd.Stdout, cmd.Stderr = &wout, &werr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(wout.String(), "before the watch") {
		if time.Now().After(deadline) {
			t.Fatalf("watch showed nothing of the stored part in 15s: %q %q", wout.String(), werr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := rec.Write(0, audit.KindOutput, time.Second, []byte("while watched\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rec.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("watch did not end cleanly when the session's recording closed: %v\n%s", err, werr.String())
	}
	if wout.String() != "before the watch\r\nwhile watched\r\n" {
		t.Errorf("watch wrote %q", wout.String())
	}

	// Not an auditor: refused.
	user := tg.client(ca.Request{KeyID: "alice-laptop"})
	res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "audit", "play", "0123456789abcdef")...)
	if res.ExitCode != 126 || strings.Contains(res.Stdout, "uname") {
		t.Errorf("a non-auditor's audit play: %s", res)
	}
	res = auditor.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "audit", "play", "nosuchsession")...)
	if res.ExitCode != 1 || !strings.Contains(res.Stderr, "has no recording") {
		t.Errorf("audit play of an unknown session: %s", res)
	}
}
