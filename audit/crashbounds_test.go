package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCrashClosedSessionBounds: a session a crash cut is closed at
// restart with what is known, not a made-up end: duration_ms "unknown",
// last_seen = the session's own last event (not another session's, nor
// a record written after the crash, nor the restart), duration_min_ms up
// to it; `audit sessions` shows no end and no duration but those bounds
// (JSON end_after/end_before/duration_min_ms, table "≥3s"), or "unknown"
// when the log shows nothing after the start; an older gateway_crashed
// end with a numeric duration_ms reads as a lower bound too.
func TestCrashClosedSessionBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	t0 := time.Date(2026, 11, 30, 11, 50, 35, 0, time.UTC)
	now := t0
	clock := func() time.Time { return now }
	s, err := Open(path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	at := func(d time.Duration, ev Event) {
		t.Helper()
		now = t0.Add(d)
		mustAppend(t, s, ev)
	}
	at(0, Event{Type: TypeSessionStart, Actor: "alice", Session: "busy", Fields: map[string]string{"target": "web1:22", "mode": "tunnel"}})
	at(time.Second, Event{Type: TypeSessionStart, Actor: "bob", Session: "quiet", Fields: map[string]string{"target": "web2:22", "mode": "tunnel"}})
	at(3*time.Second, Event{Type: TypeSessionForward, Actor: "alice", Session: "busy", Fields: map[string]string{"to": "db:5432"}})
	at(3500*time.Millisecond, Event{Type: TypeAuthOK, Actor: "carol", Session: "other"})
	if err := s.Close(); err != nil { // kill -9
		t.Fatal(err)
	}
	// While the gateway is down an operator writes to the log offline,
	// then the gateway restarts.
	now = t0.Add(20 * time.Second)
	s, err = Open(path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, Event{Type: TypeCertIssued, Actor: "operator:root"})
	now = t0.Add(31 * time.Second)
	if n, err := s.CloseInterrupted(ctx); err != nil || n != 2 {
		t.Fatalf("CloseInterrupted = %d, %v", n, err)
	}
	ends := map[string]Event{}
	if err := s.Iterate(ctx, Filter{Types: []string{TypeSessionEnd}}, func(ev Event) error { ends[ev.Session] = ev; return nil }); err != nil {
		t.Fatal(err)
	}
	busy := ends["busy"].Fields
	if busy["duration_ms"] != "unknown" || busy[FieldDurationMinMS] != "3000" || busy[FieldLastSeen] != t0.Add(3*time.Second).Format(time.RFC3339Nano) {
		t.Errorf("gateway_crashed end of a session last seen 3s in = %v; want duration_ms unknown, duration_min_ms 3000, last_seen its last event", busy)
	}
	if q := ends["quiet"].Fields; q["duration_ms"] != "unknown" || q[FieldDurationMinMS] != "0" {
		t.Errorf("gateway_crashed end of a session with no event after its start = %v", q)
	}
	// An end written by an older gateway: duration_ms was the lower bound.
	now = t0.Add(40 * time.Second)
	mustAppend(t, s, Event{Type: TypeSessionStart, Actor: "dave", Session: "old"})
	now = t0.Add(50 * time.Second)
	mustAppend(t, s, Event{Type: TypeSessionEnd, Actor: "dave", Session: "old", Fields: map[string]string{"reason": ReasonGatewayCrashed, "duration_ms": "5000", "bytes_up": "unknown"}})

	list, err := s.Sessions(ctx, SessionFilter{})
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]SessionSummary{}
	for _, sum := range list {
		by[sum.Session] = sum
	}
	b := by["busy"]
	if b.Duration != nil || !b.End.IsZero() || b.DurationMin == nil || time.Duration(*b.DurationMin) != 3*time.Second ||
		!b.EndAfter.Equal(t0.Add(3*time.Second)) || !b.EndBefore.Equal(t0.Add(31*time.Second)) || b.Active {
		t.Errorf("summary of the crash-cut session = %+v; want no end or duration, at least 3s, ended between 11:50:38 and the restart at 11:51:06", b)
	}
	if o := by["old"]; o.Duration != nil || o.DurationMin == nil || time.Duration(*o.DurationMin) != 5*time.Second {
		t.Errorf("summary of an older gateway_crashed end = %+v; want a lower bound of 5s", o)
	}
	var js bytes.Buffer
	if err := WriteSessions(&js, []SessionSummary{b}, true); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	_, hasEnd := m["end"]
	_, hasDur := m["duration_ms"]
	if hasEnd || hasDur || m["duration_min_ms"] != float64(3000) || m["end_after"] != "2026-11-30T11:50:38Z" || m["end_before"] != "2026-11-30T11:51:06Z" {
		t.Errorf("JSON of the crash-cut session: %s; want no end or duration_ms, duration_min_ms 3000, end_after and end_before", js.String())
	}
	var back SessionSummary
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Duration != nil || back.DurationMin == nil || *back.DurationMin != *b.DurationMin {
		t.Errorf("JSON round trip (audit sessions --cluster) = %+v, %v", back, err)
	}
	var table bytes.Buffer
	if err := WriteSessions(&table, []SessionSummary{b, by["quiet"]}, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], " ≥3s ") || !strings.Contains(lines[2], " unknown ") || strings.Contains(table.String(), " 0s ") {
		t.Errorf("table:\n%s\nwant ≥3s for the session last seen 3s in and unknown for the one with no sign of life after its start", table.String())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
