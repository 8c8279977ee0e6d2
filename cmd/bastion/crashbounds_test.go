package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestKill9SessionShownWithBounds: a jump cut by `kill -9` of `bastion
// serve` and closed at the next start is listed by `audit sessions` with
// what is known: no end and no duration in the JSON but end_after (at or
// before the kill) and end_before (the restart), and the table's DURATION
// is "unknown" or a lower bound ("≥…"), never the restart's made-up
// figure.
func TestKill9SessionShownWithBounds(t *testing.T) {
	e := newFaultEnv(t, filepath.Join(t.TempDir(), "data"))
	srv := e.serve()
	closeJumps := e.openJumps(t, 1)
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	srv.stop(t, syscall.SIGKILL)
	closeJumps()
	time.Sleep(1500 * time.Millisecond)
	restarted := time.Now()
	e.serve().stop(t, syscall.SIGTERM)

	var got []map[string]any
	dec := json.NewDecoder(strings.NewReader(e.runOK("audit", "sessions", "--json")))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if len(got) != 1 {
		t.Fatalf("audit sessions --json listed %d sessions, want the one jump: %v", len(got), got)
	}
	s := got[0]
	_, hasEnd := s["end"]
	_, hasDur := s["duration_ms"]
	endAfter, _ := time.Parse(time.RFC3339Nano, asString(s["end_after"]))
	endBefore, _ := time.Parse(time.RFC3339Nano, asString(s["end_before"]))
	if s["reason"] != "gateway_crashed" || hasEnd || hasDur || endAfter.IsZero() || endAfter.After(killed) || endBefore.Before(restarted) {
		t.Errorf("the crash-cut session in audit sessions --json: %v\nwant reason gateway_crashed, no end or duration_ms, end_after at or before the kill (%s), end_before after the restart (%s)",
			s, killed.UTC().Format(time.RFC3339Nano), restarted.UTC().Format(time.RFC3339Nano))
	}
	lines := strings.Split(strings.TrimSpace(e.runOK("audit", "sessions")), "\n")
	if len(lines) != 2 {
		t.Fatalf("audit sessions table:\n%s", strings.Join(lines, "\n"))
	}
	cells := strings.Fields(lines[1])
	if dur := cells[5]; dur != "unknown" && !strings.HasPrefix(dur, "≥") {
		t.Errorf("DURATION of the crash-cut session is %q, want unknown or a lower bound:\n%s", dur, strings.Join(lines, "\n"))
	}
}

func asString(v any) string { s, _ := v.(string); return s }
