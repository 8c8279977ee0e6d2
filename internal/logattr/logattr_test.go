package logattr

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestWrap: through a wrapped JSON handler, an operator's lock
// name holding U+202E is escaped as the terminal output escapes it, a
// 5000-byte string is bounded, a duration reads "30s" and a deadline
// error says "timed out".
func TestWrap(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(Wrap(slog.NewJSONHandler(&buf, nil)))
	log.Info("applied", "name", "evil\u202etxt.exe", "long", strings.Repeat("x", 5000), "ctl", strings.Repeat("\x01", 5000),
		"max_staleness", 30*time.Second, "err", fmt.Errorf("publish the lock of x: %w", context.DeadlineExceeded),
		slog.Group("g", "inner", "a\x1b[31mred"), "endpoints", []string{"http://x\u202e"}, "dur", time.Duration(1500)*time.Millisecond)
	line := buf.String()
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatal(err)
	}
	if got := rec["name"]; got != `evil\u202etxt.exe` {
		t.Errorf("name = %q, want the U+202E escaped", got)
	}
	if strings.ContainsRune(line, '\u202e') {
		t.Errorf("a raw U+202E reached the log: %s", line)
	}
	if n := len(rec["long"].(string)); n > MaxString {
		t.Errorf("a 5000-byte string logged as %d bytes, want at most %d", n, MaxString)
	}
	if n := len(rec["ctl"].(string)); n > MaxString {
		t.Errorf("5000 control bytes logged as %d bytes once escaped, want at most %d", n, MaxString)
	}
	if got := rec["max_staleness"]; got != "30s" {
		t.Errorf("max_staleness = %v, want \"30s\"", got)
	}
	if got := rec["err"]; got != "publish the lock of x: timed out" {
		t.Errorf("err = %v", got)
	}
	if got := rec["dur"]; got != "1.5s" {
		t.Errorf("dur = %v, want \"1.5s\"", got)
	}
	if g, _ := rec["g"].(map[string]any); g == nil || g["inner"] != `a\x1b[31mred` {
		t.Errorf("group attr = %v, want the escape escaped", rec["g"])
	}
}
