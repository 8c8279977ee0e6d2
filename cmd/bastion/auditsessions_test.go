package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/bastion-ssh/bastion/audit"
)

// fillSessions writes, through the store's API, a recorded shell session,
// an exec session with stderr, and a session still open.
func fillSessions(t *testing.T, path string) {
	t.Helper()
	s, err := audit.Open(path, audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	app := func(ev audit.Event) {
		if _, err := s.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	recorded := func(session, user, target string, write func(*audit.Recording), extra map[string]string) {
		app(audit.Event{Type: audit.TypeSessionStart, Actor: user, Session: session, Fields: map[string]string{"target": target, "login": user}})
		rec, err := s.StartRecording(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		write(rec)
		sum, stored, err := rec.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f := map[string]string{"target": target, "duration_ms": "65000", "bytes_up": "100", "bytes_down": "2048",
			audit.FieldRecordingSHA256: sum, audit.FieldRecordingBytes: strconv.FormatInt(stored, 10)}
		for k, v := range extra {
			f[k] = v
		}
		app(audit.Event{Type: audit.TypeSessionEnd, Actor: user, Session: session, Fields: f})
	}
	recorded("aaaa000000000001", "alice", "web1:22", func(r *audit.Recording) {
		_ = r.Write(0, audit.KindResize, 0, []byte("80x24"))
		_ = r.Write(0, audit.KindOutput, 0, []byte("\x1b[32malice@web1\x1b[0m:~$ "))
		_ = r.Write(0, audit.KindInput, time.Second, []byte("cat /etc/passwd\r"))
		_ = r.Write(0, audit.KindOutput, time.Second, []byte("cat /etc/passwd\r\nroot:x:0:0:root:/root:/bin/bash\r\n"))
		_ = r.Write(0, audit.KindOutput, 40*time.Second, []byte("logout\r\n"))
	}, nil)
	app(audit.Event{Type: audit.TypeSessionStart, Actor: "bob", Session: "bbbb000000000002", Fields: map[string]string{"target": "db1:22", "login": "postgres"}})
	app(audit.Event{Type: "session.exec", Actor: "bob", Session: "bbbb000000000002", Fields: map[string]string{"command": "pg_dump app"}})
	rec, err := s.StartRecording(ctx, "bbbb000000000002")
	if err != nil {
		t.Fatal(err)
	}
	_ = rec.Write(0, audit.KindExec, 0, []byte("exec: pg_dump app"))
	_ = rec.Write(0, audit.KindOutput, 0, []byte("-- dump\n"))
	_ = rec.Write(0, audit.KindStderr, 0, []byte("pg_dump: warning: slow\n"))
	sum, stored, err := rec.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	app(audit.Event{Type: audit.TypeSessionEnd, Actor: "bob", Session: "bbbb000000000002", Fields: map[string]string{"target": "db1:22", "duration_ms": "1500",
		audit.FieldRecordingSHA256: sum, audit.FieldRecordingBytes: strconv.FormatInt(stored, 10)}})
	app(audit.Event{Type: audit.TypeSessionStart, Actor: "carol", Session: "cccc000000000003", Fields: map[string]string{"target": "web2:22"}})
}

func TestAuditSessionsAndPlayOffline(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "ca", "init")
	fillSessions(t, filepath.Join(data, "audit.db"))

	table, _ := mustRun(t, data, "audit", "sessions")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "SESSION") {
		t.Fatalf("audit sessions: want a header and 3 sessions:\n%s", table)
	}
	for i, want := range [][]string{
		{"aaaa000000000001", "alice", "web1:22", "1m5s", "shell", "100B/2.0KiB"},
		{"bbbb000000000002", "bob", "postgres", "db1:22", "exec"},
		{"cccc000000000003", "carol", "active", "forward", " -"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("row %d lacks %q: %s", i+1, w, lines[i+1])
			}
		}
	}
	js, _ := mustRun(t, data, "audit", "sessions", "--json", "--active")
	var open audit.SessionSummary
	if err := json.Unmarshal([]byte(js), &open); err != nil || open.Session != "cccc000000000003" || !open.Active || strings.Count(js, "\n") != 1 {
		t.Errorf("audit sessions --json --active = %q (%v)", js, err)
	}
	if out, _ := mustRun(t, data, "audit", "sessions", "--user", "bob", "--target", "db1"); !strings.Contains(out, "bbbb000000000002") || strings.Contains(out, "alice") {
		t.Errorf("audit sessions --user bob --target db1:\n%s", out)
	}

	text, _ := mustRun(t, data, "audit", "play", "aaaa000000000001", "--format", "text")
	// The recorded input is shown as its own line, then the terminal's echo.
	if !strings.Contains(text, "alice@web1:~$ \n# input (channel 0): cat /etc/passwd\ncat /etc/passwd\nroot:x:0:0:root:/root:/bin/bash\nlogout\n") || strings.Contains(text, "\x1b") {
		t.Errorf("audit play --format text = %q", text)
	}
	out, errOut := mustRun(t, data, "audit", "play", "bbbb000000000002", "--format", "text")
	if !strings.Contains(out, "-- dump\n") || strings.Contains(out, "warning") || errOut != "pg_dump: warning: slow\n" {
		t.Errorf("exec session: stdout %q, stderr %q; want them apart", out, errOut)
	}
	cast, _ := mustRun(t, data, "audit", "play", "aaaa000000000001", "--format", "asciicast", "--idle-limit", "2s")
	if !strings.HasPrefix(cast, `{"version":2,"width":80,"height":24,`) || !strings.Contains(cast, `"idle_time_limit":2`) || !strings.Contains(cast, `[3.000000,"o","logout\r\n"]`) {
		t.Errorf("audit play --format asciicast:\n%s", cast)
	}
	start := time.Now()
	term, _ := mustRun(t, data, "audit", "play", "aaaa000000000001", "--speed", "10", "--idle-limit", "1s")
	if !strings.HasSuffix(term, "logout\r\n") || time.Since(start) > 5*time.Second {
		t.Errorf("terminal replay took %s and wrote %q", time.Since(start), term)
	}
	if _, _, err := run(t, data, "audit", "play", "dddd000000000004"); err == nil || !strings.Contains(err.Error(), "no recording") {
		t.Errorf("play of an unknown session: %v", err)
	}
	if _, _, err := run(t, data, "audit", "play", "../../etc"); err == nil || !strings.Contains(err.Error(), "session id") {
		t.Errorf("play of a malformed id: %v", err)
	}

	ok, _ := mustRun(t, data, "audit", "verify")
	if !strings.Contains(ok, "2 session recordings match") {
		t.Errorf("audit verify = %q", ok)
	}
	// Corrupt the first chunk of both recordings: verify fails with exit
	// status 1, says the chain itself is intact and names each session
	// with its reason.
	db, err := bbolt.Open(filepath.Join(data, "audit.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, sess := range []string{"aaaa000000000001", "bbbb000000000002"} {
		_ = db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte("recordings")).Bucket([]byte(sess))
			k, v := b.Cursor().First()
			v = append([]byte(nil), v...)
			v[len(v)-1] ^= 1
			return b.Put(k, v)
		})
	}
	db.Close()
	out, _, err = run(t, data, "audit", "verify")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "recordings are NOT intact") || !strings.Contains(out, "hash chain ok, recordings NOT intact: ") ||
		!strings.Contains(out, "FAILED session aaaa000000000001: chunk 0 does not decompress") || !strings.Contains(out, "FAILED session bbbb000000000002: chunk 0 does not decompress") {
		t.Errorf("audit verify after a chunk of each recording was edited: %v\n%s", err, out)
	}
}
