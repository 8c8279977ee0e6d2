package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

func TestAppendIterateRoundTrip(t *testing.T) {
	s, _ := newStore(t, Options{})
	in := []Event{
		{Type: TypeAuthFailed, Actor: "alice", Session: "s1", Fields: map[string]string{"reason": "cert_expired", "remote": "203.0.113.7:51234"}},
		{Type: TypeCertIssued, Actor: "bob", Fields: map[string]string{"serial": "18446744073709551615", "password_auth": "no"}},
		{Type: TypeSessionStart, Actor: "<script>&", Session: "s2", Fields: map[string]string{}},
		{Type: "session.channel_open", Time: testEpoch.Add(time.Hour).In(time.FixedZone("CET", 3600)), Fields: map[string]string{"x": "line\nbreak \"quoted\" \u2603"}},
	}
	var out []Event
	for _, ev := range in {
		out = append(out, mustAppend(t, s, ev))
	}
	for i, got := range out {
		if _, err := ulid.ParseStrict(got.ID); err != nil {
			t.Errorf("event %d: id %q: %v", i, got.ID, err)
		}
		if got.Time.IsZero() || got.Time.Location() != time.UTC {
			t.Errorf("event %d: time %v, want set and UTC", i, got.Time)
		}
		if i > 0 && (got.PrevHash != out[i-1].Hash || got.ID <= out[i-1].ID) {
			t.Errorf("event %d does not follow event %d", i, i-1)
		}
	}
	if out[0].PrevHash != "" {
		t.Errorf("first prev_hash = %q, want empty", out[0].PrevHash)
	}
	if !out[3].Time.Equal(in[3].Time) {
		t.Errorf("caller's time %v not kept: %v", in[3].Time, out[3].Time)
	}
	if out[2].Fields != nil {
		t.Errorf("empty fields not normalized to nil: %#v", out[2].Fields)
	}
	if got := all(t, s, Filter{}); !reflect.DeepEqual(got, out) {
		t.Errorf("Iterate = %+v\nwant %+v", got, out)
	}
	h, err := s.Head()
	if err != nil || h.Count != 4 || h.ID != out[3].ID || h.Hash != out[3].Hash {
		t.Errorf("Head = %+v, %v; want count 4 ending at %s", h, err, out[3].ID)
	}
}

func TestAppendNormalizesClientStrings(t *testing.T) {
	s, _ := newStore(t, Options{})
	got := mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: "ro\xffot", Fields: map[string]string{"user": "a\xfe"}})
	if got.Actor != "ro\uFFFDot" || got.Fields["user"] != "a\uFFFD" {
		t.Errorf("invalid UTF-8 not replaced: %q %q", got.Actor, got.Fields["user"])
	}
	if stored := all(t, s, Filter{}); !reflect.DeepEqual(stored[0], got) {
		t.Errorf("stored %+v differs from returned %+v", stored[0], got)
	}
}

func TestAppendRejects(t *testing.T) {
	s, _ := newStore(t, Options{})
	for _, tc := range []struct {
		name string
		ev   Event
		want string
	}{
		{"empty type", Event{}, "type is empty"},
		{"one word", Event{Type: "auth"}, "dotted lower-case"},
		{"upper case", Event{Type: "Auth.ok"}, "dotted lower-case"},
		{"digit", Event{Type: "auth.ok2"}, "dotted lower-case"},
		{"underscore in first word", Event{Type: "a_b.ok"}, "dotted lower-case"},
		{"trailing dot", Event{Type: "auth."}, "dotted lower-case"},
		{"field key upper", Event{Type: TypeAuthOK, Fields: map[string]string{"Remote": "x"}}, "a-z, 0-9 and _"},
		{"field key dash", Event{Type: TypeAuthOK, Fields: map[string]string{"key-id": "x"}}, "a-z, 0-9 and _"},
		{"field key empty", Event{Type: TypeAuthOK, Fields: map[string]string{"": "x"}}, "a-z, 0-9 and _"},
		{"password", Event{Type: TypeAuthFailed, Fields: map[string]string{"password": "hunter2"}}, "looks like a secret"},
		{"private_key", Event{Type: TypeCAInit, Fields: map[string]string{"private_key": "x"}}, "looks like a secret"},
		{"ca_private_key", Event{Type: TypeCAInit, Fields: map[string]string{"ca_private_key": "x"}}, "looks like a secret"},
		{"token", Event{Type: TypeCertIssued, Fields: map[string]string{"token": "x"}}, "looks like a secret"},
		{"id_token", Event{Type: TypeCertIssued, Fields: map[string]string{"id_token": "x"}}, "looks like a secret"},
		{"access_token", Event{Type: TypeCertIssued, Fields: map[string]string{"access_token": "x"}}, "looks like a secret"},
		{"secret", Event{Type: TypeCertIssued, Fields: map[string]string{"client_secret": "x"}}, "looks like a secret"},
		{"passphrase", Event{Type: TypeCAInit, Fields: map[string]string{"passphrase": "x"}}, "looks like a secret"},
		{"time before 1970", Event{Type: TypeAuthOK, Time: time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC)}, "outside 1970..9999"},
		{"time after 9999", Event{Type: TypeAuthOK, Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, "outside 1970..9999"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Append(context.Background(), tc.ev)
			if !errors.Is(err, ErrInvalidEvent) || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "audit: ") {
				t.Fatalf("Append = %v, want ErrInvalidEvent saying %q", err, tc.want)
			}
		})
	}
	if h, _ := s.Head(); h.Count != 0 {
		t.Errorf("refused events were stored: count %d", h.Count)
	}
	// Names that describe a secret without holding one pass.
	mustAppend(t, s, Event{Type: "scan.finding", Fields: map[string]string{"password_auth": "yes", "token_expiry": "1h", "key_id": "k", "tokens": "2"}})
}

func TestFilters(t *testing.T) {
	s, _ := newStore(t, Options{})
	at := func(min int) time.Time { return testEpoch.Add(time.Duration(min) * time.Minute) }
	for _, ev := range []Event{
		{Type: TypeAuthFailed, Actor: "alice", Session: "s1", Time: at(0)},
		{Type: TypeAuthOK, Actor: "alice", Session: "s1", Time: at(1)},
		{Type: TypeSessionStart, Actor: "alice", Session: "s1", Time: at(2)},
		{Type: TypeAuthFailed, Actor: "bob", Session: "s2", Time: at(3)},
		{Type: TypeSessionEnd, Actor: "alice", Session: "s1", Time: at(4)},
		{Type: TypeCertIssued, Actor: "bob", Time: at(5)},
		// Dated earlier than the event before it, as a concurrent
		// producer's event can be: ids still increase.
		{Type: TypeAuthFailed, Actor: "carol", Time: at(3).Add(30 * time.Second)},
	} {
		mustAppend(t, s, ev)
	}
	for _, tc := range []struct {
		name string
		f    Filter
		want string // actor:type of the matches, in order
	}{
		{"none", Filter{}, "alice:auth.failed alice:auth.ok alice:session.start bob:auth.failed alice:session.end bob:cert.issued carol:auth.failed"},
		{"since inclusive", Filter{Since: at(4)}, "alice:session.end bob:cert.issued"},
		{"until exclusive", Filter{Until: at(2)}, "alice:auth.failed alice:auth.ok"},
		{"window", Filter{Since: at(3), Until: at(4)}, "bob:auth.failed carol:auth.failed"},
		{"since sub-millisecond", Filter{Since: at(5).Add(time.Nanosecond)}, ""},
		{"type exact", Filter{Types: []string{TypeAuthFailed}}, "alice:auth.failed bob:auth.failed carol:auth.failed"},
		{"type wildcard", Filter{Types: []string{"auth.*"}}, "alice:auth.failed alice:auth.ok bob:auth.failed carol:auth.failed"},
		{"type several", Filter{Types: []string{"session.*", TypeCertIssued}}, "alice:session.start alice:session.end bob:cert.issued"},
		{"type prefix is not a wildcard", Filter{Types: []string{"auth.o"}}, ""},
		{"actor", Filter{Actor: "bob"}, "bob:auth.failed bob:cert.issued"},
		{"session", Filter{Session: "s1"}, "alice:auth.failed alice:auth.ok alice:session.start alice:session.end"},
		{"all at once", Filter{Since: at(1), Until: at(5), Types: []string{"auth.*"}, Actor: "alice", Session: "s1"}, "alice:auth.ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, ev := range all(t, s, tc.f) {
				got = append(got, ev.Actor+":"+ev.Type)
			}
			if g := strings.Join(got, " "); g != tc.want {
				t.Errorf("got  %s\nwant %s", g, tc.want)
			}
		})
	}
	for _, bad := range []Filter{
		{Types: []string{"auth*"}},
		{Types: []string{"*"}},
		{Types: []string{""}},
		{Since: at(2), Until: at(1)},
	} {
		if err := s.Iterate(context.Background(), bad, func(Event) error { return nil }); err == nil {
			t.Errorf("Iterate(%+v) accepted a malformed filter", bad)
		}
	}
}

func TestIterateSnapshotAndPaging(t *testing.T) {
	s, _ := newStore(t, Options{Now: stepClock(time.Microsecond)})
	n := 2*scanPage + 17
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 32 {
				mustAppend(t, s, Event{Type: TypeAuthOK})
			}
		}()
	}
	wg.Wait()
	var seen int
	var last string
	err := s.Iterate(context.Background(), Filter{}, func(ev Event) error {
		if ev.ID <= last {
			return fmt.Errorf("event %d out of order: %s after %s", seen, ev.ID, last)
		}
		last = ev.ID
		seen++
		if seen%scanPage == 1 {
			// Appending from fn neither deadlocks nor shows up in this
			// pass, on any page.
			_, err := s.Append(context.Background(), Event{Type: TypeAuthFailed})
			return err
		}
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("Iterate saw %d events, err %v; want %d", seen, err, n)
	}
	if h, _ := s.Head(); h.Count != uint64(n+3) {
		t.Errorf("count %d, want %d", h.Count, n+3)
	}
	stop := errors.New("stop")
	seen = 0
	if err := s.Iterate(context.Background(), Filter{}, func(Event) error { seen++; return stop }); err != stop || seen != 1 {
		t.Errorf("Iterate did not stop at fn's error: %v after %d", err, seen)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Iterate(ctx, Filter{}, func(Event) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Iterate with a canceled ctx = %v", err)
	}
}

func TestReopenContinuesChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	var want []Event
	for round := 0; round < 3; round++ {
		s, err := Open(path, Options{Now: func() time.Time { return testEpoch }}) // a stuck clock: ids must still increase
		if err != nil {
			t.Fatal(err)
		}
		if got := all(t, s, Filter{}); !reflect.DeepEqual(got, want) {
			t.Fatalf("round %d: reopened log = %+v, want %+v", round, got, want)
		}
		for i := 0; i < 3; i++ {
			want = append(want, mustAppend(t, s, Event{Type: TypeAuthOK, Actor: fmt.Sprint(round)}))
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := os.Stat(path + ".owner"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("owner file left after Close: %v", err)
		}
	}
	s, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n, err := s.Verify(context.Background())
	if err != nil || n != len(want) {
		t.Fatalf("Verify = %d, %v; want %d, nil", n, err, len(want))
	}
	for i := 1; i < len(want); i++ {
		if want[i].PrevHash != want[i-1].Hash || want[i].ID <= want[i-1].ID {
			t.Fatalf("chain broken across reopen at %d", i)
		}
	}
	if _, err := s.Append(context.Background(), Event{Type: TypeAuthOK}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Append on a read-only store = %v, want ErrReadOnly", err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.db"), Options{ReadOnly: true}); err == nil || !strings.Contains(err.Error(), "check the path") {
		t.Errorf("read-only Open of a missing file = %v", err)
	}
	if _, err := Open(filepath.Join(dir, "no", "such", "dir.db"), Options{}); err == nil || !strings.HasPrefix(err.Error(), "audit: open ") {
		t.Errorf("Open in a missing dir = %v", err)
	}
	s, _ := newStore(t, Options{})
	_ = s.Close()
	if _, err := s.Append(context.Background(), Event{Type: TypeAuthOK}); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close = %v, want ErrClosed", err)
	}
	if _, err := s.AppendWith(context.Background(), Event{Type: TypeAuthOK}, func(*bbolt.Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("AppendWith after Close = %v, want ErrClosed", err)
	}
	if err := s.Iterate(context.Background(), Filter{}, func(Event) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Iterate after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Verify(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Verify after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Head(); !errors.Is(err, ErrClosed) {
		t.Errorf("Head after Close = %v, want ErrClosed", err)
	}
}

func TestErrInUseInProcess(t *testing.T) {
	s, path := newStore(t, Options{})
	mustAppend(t, s, Event{Type: TypeAuthOK})
	for _, ro := range []bool{false, true} {
		t.Run(fmt.Sprintf("readonly=%v", ro), func(t *testing.T) {
			_, err := Open(path, Options{Timeout: 100 * time.Millisecond, ReadOnly: ro})
			if !errors.Is(err, ErrInUse) || !errors.Is(err, berrors.ErrTimeout) {
				t.Fatalf("second Open = %v, want ErrInUse", err)
			}
			for _, want := range []string{fmt.Sprintf("pid %d", os.Getpid()), "stop `bastion serve` or run the command through the running gateway", path} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
	// The writer is unaffected by the failed opens.
	mustAppend(t, s, Event{Type: TypeAuthOK})
}

func TestReadersShareAndBlockWriter(t *testing.T) {
	s, path := newStore(t, Options{})
	mustAppend(t, s, Event{Type: TypeAuthOK})
	_ = s.Close()
	r1, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := Open(path, Options{ReadOnly: true, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	defer r2.Close()
	_, err = Open(path, Options{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "read-only export or verify") {
		t.Fatalf("writer Open while readers hold the file = %v", err)
	}
}

// TestErrInUseOtherProcess runs a child process holding the log, the way a
// running `bastion serve` does, and checks that a second opener fails fast,
// is told who holds it, and gets in once it is released.
func TestErrInUseOtherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			t.Fatalf("helper said %q; stderr: %s", line, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("helper process did not open the log")
	}

	for _, ro := range []bool{false, true} {
		start := time.Now()
		_, err := Open(path, Options{Timeout: 200 * time.Millisecond, ReadOnly: ro})
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("readonly=%v: Open took %v, want a fast failure", ro, took)
		}
		if !errors.Is(err, ErrInUse) {
			t.Fatalf("readonly=%v: Open while another process holds the log = %v, want ErrInUse", ro, err)
		}
		if want := fmt.Sprintf("pid %d", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name the holder (%s)", err, want)
		}
	}

	_ = stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v; stderr: %s", err, stderr.String())
	}
	s, err := Open(path, Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("Open after the holder exited: %v", err)
	}
	_ = s.Close()
}

func TestAppendWith(t *testing.T) {
	s, _ := newStore(t, Options{})
	first := mustAppend(t, s, Event{Type: TypeAuthOK})
	locks := []byte("locks")
	errState := errors.New("state refused")

	_, err := s.AppendWith(context.Background(), Event{Type: TypeUserLocked, Actor: "operator", Fields: map[string]string{"user": "mallory"}}, func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(locks)
		if err != nil {
			return err
		}
		if err := b.Put([]byte("mallory"), []byte("locked")); err != nil {
			return err
		}
		return errState
	})
	if !errors.Is(err, errState) || !strings.HasPrefix(err.Error(), "audit: user.locked not recorded") {
		t.Fatalf("AppendWith with a failing fn = %v, want it wrapping %v", err, errState)
	}
	if h, _ := s.Head(); h.Count != 1 || h.Hash != first.Hash {
		t.Fatalf("failed AppendWith changed the chain: %+v", h)
	}
	_ = s.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(locks) != nil {
			t.Error("failed AppendWith left its state behind")
		}
		return nil
	})

	calls := 0
	ev, err := s.AppendWith(context.Background(), Event{Type: TypeUserLocked, Actor: "operator", Fields: map[string]string{"user": "mallory"}}, func(tx *bbolt.Tx) error {
		calls++
		b, err := tx.CreateBucketIfNotExists(locks)
		if err != nil {
			return err
		}
		return b.Put([]byte("mallory"), []byte("locked"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Errorf("AppendWith ran fn %d times, want once", calls)
	}
	if ev.PrevHash != first.Hash {
		t.Errorf("AppendWith event does not chain to the previous one")
	}
	_ = s.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(locks); b == nil || string(b.Get([]byte("mallory"))) != "locked" {
			t.Error("AppendWith state missing")
		}
		return nil
	})
	if got := all(t, s, Filter{Types: []string{TypeUserLocked}}); len(got) != 1 || got[0].Hash != ev.Hash {
		t.Errorf("AppendWith event missing: %+v", got)
	}

	// A refused event runs no state change.
	ran := false
	if _, err := s.AppendWith(context.Background(), Event{Type: "bad"}, func(*bbolt.Tx) error { ran = true; return nil }); !errors.Is(err, ErrInvalidEvent) || ran {
		t.Errorf("AppendWith(invalid) = %v, fn ran %v", err, ran)
	}
}

func TestAppendContext(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, Event{Type: TypeAuthOK}); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with a canceled ctx = %v", err)
	}

	// Hold the writer lock with an AppendWith whose fn blocks, queue an
	// Append behind it, and cancel that Append while it waits.
	inTx, release := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := s.AppendWith(context.Background(), Event{Type: TypeUserLocked}, func(*bbolt.Tx) error {
			close(inTx)
			<-release
			return nil
		})
		if err != nil {
			t.Errorf("blocking AppendWith: %v", err)
		}
	}()
	<-inTx
	ctx, cancel = context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, Event{Type: TypeAuthFailed})
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("queued Append after cancel = %v, want context.Canceled", err)
	}
	close(release)
	wg.Wait()
	// A later append flushes the abandoned one's batch, if any is left.
	mustAppend(t, s, Event{Type: TypeAuthOK})
	var types []string
	for _, ev := range all(t, s, Filter{}) {
		types = append(types, ev.Type)
	}
	if got := strings.Join(types, " "); got != "user.locked auth.ok" {
		t.Errorf("log = %s; the abandoned append must not be written", got)
	}
}

func TestConcurrentAppends(t *testing.T) {
	s, path := newStore(t, Options{Now: time.Now})
	const writers, each = 64, 40
	var (
		mu       sync.Mutex
		returned = map[string]Event{}
		wg       sync.WaitGroup
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ev, err := s.Append(context.Background(), Event{Type: TypeAuthFailed, Actor: fmt.Sprint(w), Fields: map[string]string{"i": fmt.Sprint(i)}})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				returned[ev.ID] = ev
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopen: what Append returned is what is on disk.
	s, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := all(t, s, Filter{})
	if len(got) != writers*each || len(returned) != writers*each {
		t.Fatalf("%d events stored, %d returned; want %d", len(got), len(returned), writers*each)
	}
	for i, ev := range got {
		if i > 0 && ev.ID <= got[i-1].ID {
			t.Fatalf("ids not strictly increasing at %d", i)
		}
		if !reflect.DeepEqual(returned[ev.ID], ev) {
			t.Fatalf("stored %+v, Append returned %+v", ev, returned[ev.ID])
		}
	}
	if n, err := s.Verify(context.Background()); err != nil || n != writers*each {
		t.Fatalf("Verify = %d, %v", n, err)
	}
}

func TestNextID(t *testing.T) {
	t0 := time.UnixMilli(1_700_000_000_000)
	last := ulid.MustNew(ulid.Timestamp(t0), strings.NewReader(strings.Repeat("\xff", 9)+"\xfe"))
	max := ulid.MustNew(ulid.Timestamp(t0), strings.NewReader(strings.Repeat("\xff", 10)))
	for _, tc := range []struct {
		name   string
		m      chainMeta
		t      time.Time
		wantMS uint64
	}{
		{"empty log", chainMeta{}, t0, ulid.Timestamp(t0)},
		{"later ms", chainMeta{hasLast: true, lastID: last}, t0.Add(time.Millisecond), ulid.Timestamp(t0) + 1},
		{"same ms", chainMeta{hasLast: true, lastID: last}, t0, ulid.Timestamp(t0)},
		{"earlier time", chainMeta{hasLast: true, lastID: last}, t0.Add(-time.Hour), ulid.Timestamp(t0)},
		{"entropy exhausted", chainMeta{hasLast: true, lastID: max}, t0, ulid.Timestamp(t0) + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := nextID(tc.m, tc.t)
			if id.Time() != tc.wantMS {
				t.Errorf("id time %d, want %d", id.Time(), tc.wantMS)
			}
			if tc.m.hasLast && id.Compare(tc.m.lastID) <= 0 {
				t.Errorf("id %s not after %s", id, tc.m.lastID)
			}
		})
	}
}

// TestWriterRefusesADamagedRecord: bytes changed inside a record pass
// bbolt's page check; a writer must still refuse the file (nothing is
// appended to a chain that cannot be proven), while a read-only open lets
// verify say where the chain breaks.
func TestWriterRefusesADamagedRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		mustAppend(t, s, Event{Type: TypeAuthOK, Actor: fmt.Sprintf("marker-%02d-zzzzzzzz", i)})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every copy: bbolt may keep stale copies of a page on free pages,
	// and only the live one matters. Same length: bbolt's structure is
	// intact.
	if !bytes.Contains(data, []byte("marker-07-zzzzzzzz")) {
		t.Fatal("marker not found in the file")
	}
	data = bytes.ReplaceAll(data, []byte("marker-07-zzzzzzzz"), []byte("marker-07-ZZZZZZZZ"))
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if w, err := Open(path, Options{}); err == nil {
		w.Close()
		t.Fatal("a writer opened a log whose record was edited")
	} else if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "salvage") {
		t.Fatalf("writer open = %v, want ErrDamaged naming salvage", err)
	}
	r, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open of the damaged log: %v", err)
	}
	defer r.Close()
	if _, err := r.VerifyAnchored(t.Context(), nil); err == nil {
		t.Fatal("verify passed a log whose record was edited")
	}
}

// TestLogCutShortUnderAWriter: a log file truncated while the store has
// it open never kills the process with SIGBUS: an append that reads a lost
// page fails with an error (the gateway then reports the log down), and
// otherwise the damage is refused when the log is opened again.
func TestLogCutShortUnderAWriter(t *testing.T) {
	s, path := newStore(t, Options{})
	for i := range 200 {
		mustAppend(t, s, Event{Type: TypeAuthOK, Actor: fmt.Sprint("user", i), Fields: map[string]string{"pad": strings.Repeat("x", 512)}})
	}
	if err := os.Truncate(path, 8192); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 50 && err == nil; i++ {
		_, err = s.Append(t.Context(), Event{Type: TypeAuthOK, Actor: "after-truncate"})
	}
	if err != nil {
		t.Logf("append after the cut: %v", err)
		return
	}
	// bbolt may have written new pages past the cut without reading the
	// lost ones; then the damage is found when the log is opened again.
	if err := s.Close(); err != nil {
		t.Logf("close after the cut: %v", err)
	}
	if again, err := Open(path, Options{}); err == nil {
		again.Close()
		t.Fatal("a log cut short under its writer was neither refused at the next append nor when opened again")
	} else if !errors.Is(err, ErrDamaged) {
		t.Fatalf("reopening the cut log: %v, want ErrDamaged", err)
	}
}
