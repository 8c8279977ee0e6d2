package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestSessionsSummariseWhatHappened checks the summary of record-mode
// sessions: the inner login from the events after the start, no false
// zero byte counts for live sessions, the recorded size of a recording
// that was never closed, and a kind from what the session did.
func TestSessionsSummariseWhatHappened(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	app := func(typ, session string, f map[string]string) {
		t.Helper()
		f["mode"] = "record"
		if _, err := s.Append(ctx, Event{Type: typ, Actor: "alice", Session: session, Fields: f}); err != nil {
			t.Fatal(err)
		}
	}
	// A shell session, ended, login only on its later events.
	app(TypeSessionStart, "s-shell", map[string]string{"target": "web1:22"})
	app(TypeSessionExec, "s-shell", map[string]string{"login": "deploy", "kind": "shell", "request": "shell"})
	app(TypeSessionForward, "s-shell", map[string]string{"login": "deploy", "kind": "local", "forward": "db:5432"})
	app(TypeSessionEnd, "s-shell", map[string]string{"login": "deploy", "bytes_up": "10", "bytes_down": "20"})
	// Bare session channels, no request: nothing ran.
	app(TypeSessionStart, "s-bare", map[string]string{"target": "web1:22"})
	rec, err := s.StartRecording(ctx, "s-bare")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rec.Close(ctx); err != nil {
		t.Fatal(err)
	}
	app(TypeSessionEnd, "s-bare", map[string]string{"login": "deploy", "bytes_up": "10", "bytes_down": "20"})
	// Forwards only.
	app(TypeSessionStart, "s-fwd", map[string]string{"target": "web1:22"})
	app(TypeSessionForward, "s-fwd", map[string]string{"login": "deploy", "kind": "remote", "listen": ":8080"})
	app(TypeSessionEnd, "s-fwd", map[string]string{"bytes_up": "1", "bytes_down": "2"})
	// A recording whose Close never happened (disk full): its end has no
	// recording_bytes, but chunks are stored.
	app(TypeSessionStart, "s-full", map[string]string{"target": "web1:22"})
	rec, err = s.StartRecording(ctx, "s-full")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for i := 0; i < 4; i++ {
		rand.Read(buf)
		if err := rec.Write(0, KindOutput, time.Duration(i)*time.Millisecond, buf); err != nil {
			t.Fatal(err)
		}
	}
	app(TypeSessionEnd, "s-full", map[string]string{"bytes_up": "1", "bytes_down": "2", "recording_error": "no space left on device"})
	// Still open.
	app(TypeSessionStart, "s-live", map[string]string{"target": "web1:22"})
	app(TypeSessionExec, "s-live", map[string]string{"login": "ops", "kind": "exec", "command": "top"})

	list, err := s.Sessions(ctx, SessionFilter{})
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]SessionSummary{}
	for _, l := range list {
		by[l.Session] = l
	}
	if got := by["s-shell"]; got.Login != "deploy" || got.Kind != "shell" || got.BytesUp == nil || *got.BytesUp != 10 {
		t.Errorf("shell session: %+v; want login deploy, kind shell, 10 bytes up", got)
	}
	if got := by["s-bare"]; got.Kind != "none" {
		t.Errorf("session without any request: kind %q, want none", got.Kind)
	}
	if got := by["s-fwd"]; got.Kind != "forward" {
		t.Errorf("forward-only session: kind %q, want forward", got.Kind)
	}
	if got := by["s-full"]; !got.Recording || got.Recorded < 3*(64<<10) {
		t.Errorf("never-closed recording of 256 KiB incompressible output: recorded %d bytes, want its stored chunks' size", got.Recorded)
	}
	live := by["s-live"]
	if !live.Active || live.Login != "ops" || live.BytesUp != nil || live.BytesDown != nil {
		t.Errorf("live session: %+v; want active, login ops, no byte counts", live)
	}
	var out bytes.Buffer
	if err := WriteSessions(&out, list, false); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "s-live") && (!strings.Contains(line, "- (live)") || strings.Contains(line, "0B/0B") || !strings.Contains(line, " ops ")) {
			t.Errorf("live row: %q", line)
		}
		if strings.HasPrefix(line, "s-shell") && !strings.Contains(line, " deploy ") {
			t.Errorf("shell row lacks the login: %q", line)
		}
	}
	out.Reset()
	if err := WriteSessions(&out, []SessionSummary{by["s-shell"]}, true); err != nil {
		t.Fatal(err)
	}
	var js map[string]any
	if err := json.Unmarshal(out.Bytes(), &js); err != nil || js["login"] != "deploy" {
		t.Errorf("JSON %s: want login deploy (%v)", out.String(), err)
	}
}

// TestSessionSummaryJSONRoundTrip: a session summary written with
// --json and read back (as `audit sessions --cluster` reads each
// gateway's list) is the same summary: every column, the duration too.
func TestSessionSummaryJSONRoundTrip(t *testing.T) {
	up, down := int64(1200), int64(34000)
	start := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	in := SessionSummary{
		Session: "3f9a0c1d2e4b5a69", User: "alice", Login: "deploy", Target: "web1:22", Remote: "192.0.2.7:5555",
		Start: start, End: start.Add(95 * time.Second), Duration: millisPtr(95*time.Second + 250*time.Millisecond),
		Kind: "shell", Commands: []string{"ls"}, BytesUp: &up, BytesDown: &down, Recorded: 4096,
		Recording: true, Reason: "client_closed", Gateway: "gw-2",
	}
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out SessionSummary
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip changed the summary:\n in  %+v\n out %+v", in, out)
	}
	var a, b strings.Builder
	if err := WriteSessions(&a, []SessionSummary{in}, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteSessions(&b, []SessionSummary{out}, false); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() || !strings.Contains(b.String(), "1m35s") {
		t.Errorf("the table differs after the round trip:\n%s\n%s", a.String(), b.String())
	}
	if err := json.Unmarshal([]byte(`{"duration_ms":"x"}`), &out); err == nil {
		t.Error("a duration_ms that is not a number was accepted")
	}
}
