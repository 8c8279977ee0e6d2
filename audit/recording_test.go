package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// The gateway's record-mode proxy declares the interface it writes through
// (gateway.Recording); *Recording must keep these signatures.
var _ interface {
	Write(ch uint32, kind string, at time.Duration, data []byte) error
	Close(ctx context.Context) (sha256 string, stored int64, err error)
} = (*Recording)(nil)

// written is one Write call, as a test made it.
type written struct {
	ch   uint32
	kind string
	at   time.Duration
	data string
}

// record writes entries to a new recording of session and closes it,
// returning the digest and stored size.
func record(t *testing.T, s *Store, session string, entries []written) (string, int64) {
	t.Helper()
	ctx := context.Background()
	rec, err := s.StartRecording(ctx, session)
	if err != nil {
		t.Fatalf("StartRecording: %v", err)
	}
	for _, w := range entries {
		if err := rec.Write(w.ch, w.kind, w.at, []byte(w.data)); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	sum, stored, err := rec.Close(ctx)
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
	return sum, stored
}

// readAll reads session's recording back.
func readAll(t *testing.T, s *Store, session string) []RecordingEntry {
	t.Helper()
	var out []RecordingEntry
	err := s.ReadRecording(context.Background(), session, func(e RecordingEntry) error {
		e.Data = bytes.Clone(e.Data)
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatalf("ReadRecording: %v", err)
	}
	return out
}

// recordedSession appends session.start, records entries and appends
// session.end carrying the digest, as the gateway does.
func recordedSession(t *testing.T, s *Store, session string, entries []written) string {
	t.Helper()
	mustAppend(t, s, Event{Type: TypeSessionStart, Actor: "alice", Session: session, Fields: map[string]string{"target": "web1:22", "login": "alice"}})
	sum, stored := record(t, s, session, entries)
	mustAppend(t, s, Event{Type: TypeSessionEnd, Actor: "alice", Session: session, Fields: map[string]string{
		"target": "web1:22", "duration_ms": "3000", "bytes_up": "10", "bytes_down": "200",
		FieldRecordingSHA256: sum, FieldRecordingBytes: fmt.Sprint(stored),
	}})
	return sum
}

// bigSession is a terminal session of several chunks: 200 KiB of output
// that does not compress to nothing.
func bigSession() []written {
	ws := []written{{0, KindExec, 0, "shell"}, {0, KindResize, 0, "100x30"}}
	for i := 0; i < 400; i++ {
		ws = append(ws, written{0, KindOutput, time.Duration(i) * 10 * time.Millisecond, fmt.Sprintf("line %d %x\r\n", i, bytes.Repeat([]byte{byte(i)}, 240))})
	}
	return ws
}

func TestRecordingRoundTrip(t *testing.T) {
	s, _ := newStore(t, Options{})
	big := make([]byte, 100<<10) // longer than a chunk: split into entries
	rand.Read(big)
	in := []written{
		{0, KindExec, 0, "shell"},
		{0, KindResize, 0, "120x40"},
		{0, KindOutput, time.Millisecond, "$ "},
		{0, KindInput, 500 * time.Millisecond, "l"},
		{0, KindInput, 600 * time.Millisecond, "s\r"},
		{1, KindExec, time.Second, "exec: cat /etc/hostname"},
		{1, KindStderr, 1100 * time.Millisecond, "cat: warning\n"},
		{1, KindOutput, 1200 * time.Millisecond, "web1\n"},
		{0, KindOutput, 2 * time.Second, string(big)},
		{0, KindResize, 3 * time.Second, "80x24"},
	}
	sum, stored := record(t, s, "sess-1", in)
	if stored <= 0 {
		t.Errorf("stored = %d, want > 0", stored)
	}
	got := readAll(t, s, "sess-1")
	// Merge the pieces of the long write back.
	var merged []written
	for _, e := range got {
		w := written{e.Channel, e.Kind, e.At, string(e.Data)}
		if n := len(merged); n > 0 && merged[n-1].kind == w.kind && merged[n-1].ch == w.ch && merged[n-1].at == w.at && len(merged[n-1].data) >= entryDataMax {
			merged[n-1].data += w.data
			continue
		}
		merged = append(merged, w)
	}
	if len(merged) != len(in) {
		t.Fatalf("read %d entries (merged %d), wrote %d", len(got), len(merged), len(in))
	}
	for i := range in {
		if merged[i] != in[i] {
			t.Errorf("entry %d: read %v/%q/%v (%d bytes), wrote %v/%q/%v (%d bytes)", i, merged[i].ch, merged[i].kind, merged[i].at, len(merged[i].data), in[i].ch, in[i].kind, in[i].at, len(in[i].data))
		}
	}
	d, err := s.RecordingDigest(context.Background(), "sess-1")
	if err != nil || d != sum {
		t.Errorf("RecordingDigest = %s, %v; Close returned %s", d, err, sum)
	}
	info, err := s.RecordingInfo("sess-1")
	if err != nil {
		t.Fatal(err)
	}
	if info.SHA256 != sum || info.Stored != stored || info.Active || info.End.IsZero() || info.Chunks < 2 {
		t.Errorf("info = %+v; want digest %s, stored %d, closed, >= 2 chunks", info, sum, stored)
	}
	if _, err := s.RecordingInfo("nope"); !errors.Is(err, ErrNoRecording) {
		t.Errorf("RecordingInfo(unknown) = %v, want ErrNoRecording", err)
	}
	if _, err := s.StartRecording(context.Background(), "sess-1"); err == nil {
		t.Error("a second recording of the same session was accepted; it must never overwrite one")
	}
}

func TestRecordingWriteAfterCloseFails(t *testing.T) {
	s, _ := newStore(t, Options{})
	rec, err := s.StartRecording(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Write(0, "z", 0, nil); err == nil {
		t.Error("unknown kind accepted")
	}
	if _, _, err := rec.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := rec.Write(0, KindOutput, 0, []byte("x")); !errors.Is(err, ErrRecordingClosed) {
		t.Errorf("Write after Close = %v, want ErrRecordingClosed", err)
	}
}

// TestRecordingTimedFlush: a keystroke is committed within the flush
// interval without a Close, and a follower sees it live.
func TestRecordingTimedFlush(t *testing.T) {
	s, _ := newStore(t, Options{RecordingFlushEvery: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err := s.StartRecording(ctx, "live")
	if err != nil {
		t.Fatal(err)
	}
	followed := make(chan string, 16)
	followErr := make(chan error, 1)
	go func() {
		followErr <- s.FollowRecording(ctx, "live", func(e RecordingEntry) error {
			followed <- string(e.Data)
			return nil
		})
	}()
	if err := rec.Write(0, KindOutput, 0, []byte("first")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(readAllQuiet(s, "live")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a buffered entry was not committed within 5s of a 20ms flush interval")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case got := <-followed:
		if got != "first" {
			t.Errorf("follower got %q, want first", got)
		}
	case <-ctx.Done():
		t.Fatal("follower saw nothing before the deadline")
	}
	if err := rec.Write(0, KindOutput, time.Second, []byte("second")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := rec.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-followed:
		if got != "second" {
			t.Errorf("follower got %q, want second", got)
		}
	case <-ctx.Done():
		t.Fatal("follower missed the entry committed by Close")
	}
	select {
	case err := <-followErr:
		if err != nil {
			t.Errorf("FollowRecording ended with %v, want nil at the recording's close", err)
		}
	case <-ctx.Done():
		t.Fatal("FollowRecording did not end when the recording closed")
	}
}

func readAllQuiet(s *Store, session string) []RecordingEntry {
	var out []RecordingEntry
	_ = s.ReadRecording(context.Background(), session, func(e RecordingEntry) error {
		out = append(out, e)
		return nil
	})
	return out
}

// TestRecordingMaxBytes: storage stops at the limit with a marker, later
// writes are counted and not stored, and Close's digest still verifies.
func TestRecordingMaxBytes(t *testing.T) {
	s, _ := newStore(t, Options{RecordingMaxBytes: 10 << 10})
	ctx := context.Background()
	rec, err := s.StartRecording(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	line := bytes.Repeat([]byte("x"), 1000)
	for i := 0; i < 30; i++ {
		if err := rec.Write(0, KindOutput, time.Duration(i)*time.Second, line); err != nil {
			t.Fatalf("write %d: %v (past the limit a write must still succeed)", i, err)
		}
	}
	sum, _, err := rec.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, s, "big")
	var outBytes int
	var markers []string
	for _, e := range got {
		switch e.Kind {
		case KindOutput:
			outBytes += len(e.Data)
		case KindMarker:
			markers = append(markers, string(e.Data))
		}
	}
	if outBytes == 0 || outBytes > 10<<10 {
		t.Errorf("stored %d output bytes, want some and at most the 10 KiB limit", outBytes)
	}
	if len(markers) != 2 || !strings.Contains(markers[0], "max_bytes_per_session") || !strings.Contains(markers[1], fmt.Sprintf("%d bytes", 30000-outBytes)) {
		t.Errorf("markers = %q; want where storage stopped, then the %d bytes not stored", markers, 30000-outBytes)
	}
	info, _ := s.RecordingInfo("big")
	if info.Dropped != int64(30000-outBytes) {
		t.Errorf("info.Dropped = %d, want %d", info.Dropped, 30000-outBytes)
	}
	if d, err := s.RecordingDigest(ctx, "big"); err != nil || d != sum {
		t.Errorf("digest of the stored part = %s, %v; Close returned %s", d, err, sum)
	}
}

// TestRecordingCommitFailureFailsWrite: a chunk whose commit fails makes
// Write (and every later call) fail, and nothing already stored is lost.
func TestRecordingCommitFailureFailsWrite(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	rec, err := s.StartRecording(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("a"), chunkMax)
	if err := rec.Write(0, KindOutput, 0, chunk); err != nil {
		t.Fatal(err)
	}
	before := readAll(t, s, "f")
	if len(before) == 0 {
		t.Fatal("a full chunk was not committed by the Write that filled it")
	}
	diskFull := fmt.Errorf("write audit.db: %w", syscall.ENOSPC)
	s.recs.fault = func() error { return diskFull }
	err = rec.Write(0, KindOutput, time.Second, chunk)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Write whose chunk cannot be committed = %v, want the commit's error", err)
	}
	s.recs.fault = nil
	if err := rec.Write(0, KindOutput, 2*time.Second, []byte("more")); err == nil {
		t.Error("a Write after a failed commit succeeded; the recording must stay dead")
	}
	if _, _, err := rec.Close(ctx); err == nil {
		t.Error("Close after a failed commit succeeded")
	}
	after := readAll(t, s, "f")
	if len(after) != len(before) || !bytes.Equal(after[0].Data, before[0].Data) {
		t.Errorf("stored entries changed after the failure: %d before, %d after", len(before), len(after))
	}
	// The store itself goes on.
	mustAppend(t, s, Event{Type: TypeSessionEnd, Session: "f"})
}

// TestRecordingFullDisk fills a real (tmpfs) file system: Write fails with
// the disk error and the chunks committed before stay readable.
func TestRecordingFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", dir).Run() })
	s, err := Open(filepath.Join(dir, "audit.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	rec, err := s.StartRecording(ctx, "disk")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<10)
	var werr error
	written := 0
	for i := 0; i < 200 && werr == nil; i++ {
		rand.Read(buf) // incompressible
		werr = rec.Write(0, KindOutput, time.Duration(i)*time.Millisecond, buf)
		if werr == nil {
			written++
		}
	}
	if werr == nil {
		t.Fatal("200 x 16 KiB of incompressible output fit on a 1 MiB disk; want a failed Write")
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Logf("Write failed with %v (not ENOSPC, but it failed, as required)", werr)
	}
	got := readAll(t, s, "disk")
	var n int
	for _, e := range got {
		n += len(e.Data)
	}
	if n == 0 || n%len(buf) != 0 {
		t.Errorf("read back %d bytes after the failure; want whole writes from the chunks committed before it", n)
	}
	t.Logf("%d writes accepted, %d bytes readable after the disk filled", written, n)
}

// tamperRec edits a closed log's recording buckets with bbolt directly.
func tamperRec(t *testing.T, path, session string, fn func(b *bbolt.Bucket) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error {
		return fn(tx.Bucket([]byte(bucketRecordings)).Bucket([]byte(session)))
	}); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsRecordingTampering(t *testing.T) {
	mk := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "audit.db")
		s, err := Open(path, Options{Now: stepClock(time.Millisecond)})
		if err != nil {
			t.Fatal(err)
		}
		recordedSession(t, s, "other", []written{{0, KindOutput, 0, "hello"}})
		recordedSession(t, s, "sess", bigSession())
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	verify := func(t *testing.T, path string) (Verification, error) {
		s, err := Open(path, Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		return s.VerifyChain(context.Background())
	}
	t.Run("intact", func(t *testing.T) {
		v, err := verify(t, mk(t))
		if err != nil || v.Recordings != 2 {
			t.Fatalf("VerifyChain = %+v, %v; want 2 recordings checked, no error", v, err)
		}
	})
	edits := map[string]func(t *testing.T, b *bbolt.Bucket) error{
		"edited": func(t *testing.T, b *bbolt.Bucket) error {
			s, _ := Open(filepath.Join(t.TempDir(), "x.db"), Options{})
			defer s.Close()
			enc, _, _ := s.recs.codec()
			// A well-formed chunk with other content.
			fake := appendEntry(nil, 0, KindOutput, 0, []byte("nothing to see here\r\n"))
			return b.Put(chunkKey(1), enc.EncodeAll(fake, nil))
		},
		"corrupted": func(t *testing.T, b *bbolt.Bucket) error {
			v := bytes.Clone(b.Get(chunkKey(1)))
			v[len(v)/2] ^= 0xff
			return b.Put(chunkKey(1), v)
		},
		"removed": func(t *testing.T, b *bbolt.Bucket) error {
			return b.Delete(chunkKey(1))
		},
		"swapped": func(t *testing.T, b *bbolt.Bucket) error {
			a, c := bytes.Clone(b.Get(chunkKey(0))), bytes.Clone(b.Get(chunkKey(1)))
			if err := b.Put(chunkKey(0), c); err != nil {
				return err
			}
			return b.Put(chunkKey(1), a)
		},
		"added": func(t *testing.T, b *bbolt.Bucket) error {
			return b.Put(chunkKey(99), b.Get(chunkKey(0)))
		},
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			path := mk(t)
			tamperRec(t, path, "sess", func(b *bbolt.Bucket) error {
				if b.Get(chunkKey(1)) == nil {
					t.Fatal("the fixture has fewer than 2 chunks")
				}
				return edit(t, b)
			})
			_, err := verify(t, path)
			var re *RecordingsError
			if !errors.As(err, &re) || len(re.Failed) != 1 || re.Failed[0].Session != "sess" {
				t.Fatalf("VerifyChain after a chunk was %s = %v; want a RecordingsError naming session sess", name, err)
			}
		})
	}
	t.Run("bucket deleted", func(t *testing.T) {
		path := mk(t)
		db, err := bbolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte(bucketRecordings)).DeleteBucket([]byte("sess")) })
		db.Close()
		var re *RecordingsError
		if _, err := verify(t, path); !errors.As(err, &re) || len(re.Failed) != 1 || !strings.Contains(re.Failed[0].Reason, "recording missing") {
			t.Fatalf("VerifyChain after the recording was deleted = %v; want a RecordingsError saying the recording is missing", err)
		}
	})
}

// TestRetentionPrunesRecordings: pruning a session's end event prunes its
// recording; a session whose end is kept keeps its recording.
func TestRetentionPrunesRecordings(t *testing.T) {
	var now time.Time = testEpoch
	s, _ := newStore(t, Options{Now: func() time.Time { return now }})
	recordedSession(t, s, "old", []written{{0, KindOutput, 0, "old output"}})
	now = now.Add(48 * time.Hour)
	recordedSession(t, s, "new", []written{{0, KindOutput, 0, "new output"}})
	now = now.Add(time.Hour)
	mustAppend(t, s, Event{Type: TypeAuthOK, Actor: "bob"})

	if _, err := s.Prune(context.Background(), testEpoch.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordingInfo("old"); !errors.Is(err, ErrNoRecording) {
		t.Errorf("recording of a pruned session: %v, want ErrNoRecording", err)
	}
	if got := readAll(t, s, "new"); len(got) != 1 || string(got[0].Data) != "new output" {
		t.Errorf("recording of a kept session = %v", got)
	}
	if v, err := s.VerifyChain(context.Background()); err != nil || v.Recordings != 1 {
		t.Errorf("VerifyChain after pruning = %+v, %v; want 1 recording, intact", v, err)
	}
}

// TestRetentionPrunesOrphanRecordings: a recording with no session.end
// (the gateway stopped first) is pruned once well past the cutoff; a
// recent one and an open one are kept.
func TestRetentionPrunesOrphanRecordings(t *testing.T) {
	now := testEpoch
	s, _ := newStore(t, Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	if _, err := s.StartRecording(ctx, "crashed"); err != nil { // never closed
		t.Fatal(err)
	}
	s.recs.mu.Lock()
	delete(s.recs.active, "crashed") // as after a restart
	s.recs.mu.Unlock()
	open, err := s.StartRecording(ctx, "long-open")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(ctx)
	now = now.Add(10 * 24 * time.Hour)
	record(t, s, "recent", []written{{0, KindOutput, 0, "x"}})
	mustAppend(t, s, Event{Type: TypeAuthOK})
	if _, err := s.Prune(ctx, now.Add(-2*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordingInfo("crashed"); !errors.Is(err, ErrNoRecording) {
		t.Errorf("orphan recording 10 days old with a 2-day cutoff: %v, want pruned", err)
	}
	for _, keep := range []string{"recent", "long-open"} {
		if _, err := s.RecordingInfo(keep); err != nil {
			t.Errorf("%s: %v, want kept", keep, err)
		}
	}
}

func TestRecordingsListsActive(t *testing.T) {
	s, _ := newStore(t, Options{})
	record(t, s, "done", []written{{0, KindOutput, 0, "x"}})
	rec, err := s.StartRecording(context.Background(), "open")
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close(context.Background())
	got := map[string]bool{}
	if err := s.Recordings(func(ri RecordingInfo) error { got[ri.Session] = ri.Active; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["done"] || !got["open"] {
		t.Errorf("Recordings active flags = %v; want done closed, open active", got)
	}
}

func FuzzDecodeChunk(f *testing.F) {
	var seed []byte
	for _, w := range bigSession()[:5] {
		seed = appendEntry(seed, w.ch, w.kind, w.at, []byte(w.data))
	}
	f.Add(seed)
	f.Add([]byte{0, 'o', 0, 5, 'a'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 'o'})
	f.Fuzz(func(t *testing.T, b []byte) {
		var re []byte
		err := decodeChunk(b, func(e RecordingEntry) error {
			if len(e.Data) > len(b) {
				t.Fatalf("entry of %d bytes from %d input bytes", len(e.Data), len(b))
			}
			re = appendEntry(re, e.Channel, e.Kind, e.At, e.Data)
			return nil
		})
		if err == nil && len(re) > len(b) {
			t.Fatalf("re-encoding %d bytes gave %d", len(b), len(re))
		}
	})
}
