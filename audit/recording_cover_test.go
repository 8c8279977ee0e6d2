package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// oneChunk is a Write that fills exactly one chunk.
func oneChunk(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, chunkMax) }

// verifyFile opens path read-only and verifies it.
func verifyFile(t *testing.T, path string) (Verification, error) {
	t.Helper()
	s, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return s.VerifyChain(context.Background())
}

// wantRecordingFailure asserts err is a RecordingsError whose failures
// name exactly sessions, each with a reason containing the given words.
func wantRecordingFailure(t *testing.T, err error, want map[string]string) {
	t.Helper()
	var re *RecordingsError
	if !errors.As(err, &re) {
		t.Fatalf("VerifyChain = %v; want a RecordingsError naming %v", err, want)
	}
	if len(re.Failed) != len(want) {
		t.Fatalf("failed recordings = %+v; want %v", re.Failed, want)
	}
	for _, p := range re.Failed {
		if w, ok := want[p.Session]; !ok || !strings.Contains(p.Reason, w) {
			t.Errorf("failure %+v; want session %s with %q", p, p.Session, w)
		}
	}
}

// TestRecordingFailedEndIsCovered: a recording whose commit failed after
// three chunks still gets a session.end digest of exactly those chunks,
// so deleting one afterwards fails verify, naming the session.
func TestRecordingFailedEndIsCovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mustAppend(t, s, Event{Type: TypeSessionStart, Actor: "alice", Session: "full"})
	rec, err := s.StartRecording(ctx, "full")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := rec.Write(0, KindOutput, time.Duration(i)*time.Second, oneChunk(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.recs.fault = func() error { return fmt.Errorf("write audit.db: %w", syscall.ENOSPC) }
	if err := rec.Write(0, KindOutput, 4*time.Second, oneChunk(3)); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Write on a full disk = %v", err)
	}
	s.recs.fault = nil
	if _, _, err := rec.Close(ctx); err == nil {
		t.Fatal("Close after a failed commit succeeded")
	}
	sum, chunks, stored := rec.Committed()
	if chunks != 3 || stored == 0 || sum == emptyDigest {
		t.Fatalf("Committed = %s, %d chunks, %d bytes; want the 3 chunks stored", sum, chunks, stored)
	}
	mustAppend(t, s, Event{Type: TypeSessionEnd, Actor: "alice", Session: "full", Fields: map[string]string{
		"reason": "recording_failed", FieldRecordingSHA256: sum, FieldRecordingChunks: fmt.Sprint(chunks)}})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if v, err := verifyFile(t, path); err != nil || v.Recordings != 1 || len(v.Unverified) != 0 {
		t.Fatalf("VerifyChain of the intact cut recording = %+v, %v; want 1 recording verified", v, err)
	}
	tamperRec(t, path, "full", func(b *bbolt.Bucket) error { return b.Delete(chunkKey(1)) })
	_, err = verifyFile(t, path)
	wantRecordingFailure(t, err, map[string]string{"full": "chunk 1 missing"})
}

// TestCrashedRecordingIsCovered: a gateway that dies mid-session leaves
// checkpoints in the chain; at restart CloseInterrupted writes the last
// checkpoint's digest, the unverifiable tail and a lower bound of the duration from the
// recording, verify reports the tail, and deleting or corrupting a
// checkpointed chunk fails verify for each session, all reported.
func TestCrashedRecordingIsCovered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	now := testEpoch
	clock := func() time.Time { return now } // frozen: checkpoints by chunk count only
	s, err := Open(path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	total := checkpointChunks + 4
	for _, sess := range []string{"crash-a", "crash-b"} {
		mustAppend(t, s, Event{Type: TypeSessionStart, Actor: "alice", Session: sess, Fields: map[string]string{"target": "web1:22"}})
		rec, err := s.StartRecording(ctx, sess)
		if err != nil {
			t.Fatal(err)
		}
		for i := range total {
			if err := rec.Write(0, KindOutput, time.Duration(i)*250*time.Millisecond, oneChunk(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The crash: the store goes away with both recordings open.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Hour) // restarted much later
	s, err = Open(path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.CloseInterrupted(ctx); err != nil || n != 2 {
		t.Fatalf("CloseInterrupted = %d, %v", n, err)
	}
	var end Event
	if err := s.Iterate(ctx, Filter{}, func(ev Event) error {
		if ev.Type == TypeSessionEnd && ev.Session == "crash-a" {
			end = ev
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f := end.Fields
	if f[FieldRecordingSHA256] == "" || f[FieldRecordingChunks] != fmt.Sprint(checkpointChunks) || f[FieldRecordingUnverified] != "4" {
		t.Errorf("gateway_crashed session.end = %v; want the digest of %d checkpointed chunks and 4 unverified", f, checkpointChunks)
	}
	if want := fmt.Sprint((total - 1) * 250); f[FieldDurationMinMS] != want || f["duration_ms"] != "unknown" {
		t.Errorf("duration_min_ms = %s, duration_ms = %s; want %s (the last stored entry) and unknown", f[FieldDurationMinMS], f["duration_ms"], want)
	}
	v, err := verifyFile(t, path)
	if err != nil || v.Recordings != 2 || len(v.Unverified) != 2 || !strings.Contains(v.Unverified[0].Reason, "unverifiable tail: 4 chunks") {
		t.Fatalf("VerifyChain after the crash = %+v, %v; want 2 recordings verified, each with a 4-chunk unverifiable tail", v, err)
	}
	// Cutting the unverifiable tail after the restart is seen too: the
	// session.end counted it.
	cut := filepath.Join(t.TempDir(), "cut.db")
	copyFile(t, path, cut)
	tamperRec(t, cut, "crash-b", func(b *bbolt.Bucket) error { return b.Delete(chunkKey(uint64(total - 1))) })
	_, err = verifyFile(t, cut)
	wantRecordingFailure(t, err, map[string]string{"crash-b": "3 chunks stored after the last checkpoint, but the session.end written at restart counted 4"})

	tamperRec(t, path, "crash-a", func(b *bbolt.Bucket) error { return b.Delete(chunkKey(3)) })
	tamperRec(t, path, "crash-b", func(b *bbolt.Bucket) error {
		c := bytes.Clone(b.Get(chunkKey(0)))
		c[len(c)/2] ^= 0xff
		return b.Put(chunkKey(0), c)
	})
	_, err = verifyFile(t, path)
	wantRecordingFailure(t, err, map[string]string{"crash-a": "chunk 3 missing", "crash-b": "chunk 0 does not decompress"})
}

// TestVerifyListsRecordingsWithoutDigest: a stored recording no event
// vouches for is listed as unverified, not silently passed.
func TestVerifyListsRecordingsWithoutDigest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	record(t, s, "nodigest", []written{{0, KindOutput, 0, "hello"}})
	mustAppend(t, s, Event{Type: TypeSessionEnd, Session: "nodigest"})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	v, err := verifyFile(t, path)
	if err != nil || len(v.Unverified) != 1 || v.Unverified[0].Session != "nodigest" || !strings.Contains(v.Unverified[0].Reason, "no digest") {
		t.Fatalf("VerifyChain = %+v, %v; want recording nodigest listed as unverified", v, err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
