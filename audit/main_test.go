package audit

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// holdEnv makes the test binary a helper process that holds the audit log
// named by its value open until its stdin closes.
const holdEnv = "AUDIT_TEST_HOLD_LOCK"

func TestMain(m *testing.M) {
	if path := os.Getenv(holdEnv); path != "" {
		os.Exit(holdLock(path))
	}
	os.Exit(m.Run())
}

func holdLock(path string) int {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// testEpoch is when every test clock starts.
var testEpoch = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// stepClock returns a clock that advances by step on every reading, safe for
// concurrent use.
func stepClock(step time.Duration) func() time.Time {
	var n atomic.Int64
	return func() time.Time { return testEpoch.Add(time.Duration(n.Add(1)) * step) }
}

// newStore opens a fresh store in a temp dir and closes it at cleanup.
func newStore(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.db")
	if opts.Now == nil {
		opts.Now = stepClock(time.Millisecond)
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// mustAppend appends ev or fails the test.
func mustAppend(t testing.TB, s *Store, ev Event) Event {
	t.Helper()
	got, err := s.Append(context.Background(), ev)
	if err != nil {
		t.Fatalf("Append(%+v): %v", ev, err)
	}
	return got
}

// all returns every event of s in order.
func all(t testing.TB, s *Store, f Filter) []Event {
	t.Helper()
	var evs []Event
	if err := s.Iterate(context.Background(), f, func(ev Event) error {
		evs = append(evs, ev)
		return nil
	}); err != nil {
		t.Fatalf("Iterate: %v", err)
	}
	return evs
}
