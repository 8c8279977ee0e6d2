package audit

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// putCount rewrites the meta bucket's event count, as a careful attacker
// would after deleting events.
func putCount(meta *bbolt.Bucket, n uint64) error {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return meta.Put([]byte(metaCount), b)
}

// forgeCheckpoint deletes events[0..through] and writes the checkpoint a
// retention run would have written, without the audit.pruned event.
func forgeCheckpoint(events, meta *bbolt.Bucket, evs []Event, through int, held uint64) error {
	for i := 0; i <= through; i++ {
		if err := events.Delete(key(evs[i])); err != nil {
			return err
		}
	}
	pruned := make([]byte, 8)
	binary.BigEndian.PutUint64(pruned, uint64(through+1))
	for k, v := range map[string][]byte{metaPrunedID: key(evs[through]), metaPrunedHash: []byte(evs[through].Hash), metaPrunedCount: pruned} {
		if err := meta.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return putCount(meta, held)
}

// TestVerifyRefusesUnvouchedCheckpoint: the retention checkpoint in the
// meta bucket is believed only when an audit.pruned event in the chain
// names it, so deleting the oldest events and writing a checkpoint by hand
// fails verification, with retention never configured or after it ran.
func TestVerifyRefusesUnvouchedCheckpoint(t *testing.T) {
	t.Run("retention never ran", func(t *testing.T) {
		path, evs := chainFixture(t, 10)
		tamper(t, path, func(events, meta *bbolt.Bucket) error { return forgeCheckpoint(events, meta, evs, 3, 6) })
		assertVerifyReason(t, path, ReasonCheckpoint)
	})
	t.Run("more deleted than retention pruned", func(t *testing.T) {
		clk := newManualClock()
		s, path := newStore(t, Options{Now: clk.Now})
		evs := appendDays(t, s, clk, 10, 1)
		if _, err := s.Prune(context.Background(), testEpoch.Add(3*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Verify(context.Background()); err != nil {
			t.Fatalf("Verify after an honest prune: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// Three events pruned honestly (0-2); delete 3-5 as well and move
		// the checkpoint to match. 7 events held: 6-9 and audit.pruned.
		tamper(t, path, func(events, meta *bbolt.Bucket) error {
			for i := 3; i <= 5; i++ {
				if err := events.Delete(key(evs[i])); err != nil {
					return err
				}
			}
			pruned := make([]byte, 8)
			binary.BigEndian.PutUint64(pruned, 6)
			for k, v := range map[string][]byte{metaPrunedID: key(evs[5]), metaPrunedHash: []byte(evs[5].Hash), metaPrunedCount: pruned} {
				if err := meta.Put([]byte(k), v); err != nil {
					return err
				}
			}
			return putCount(meta, 5)
		})
		assertVerifyReason(t, path, ReasonCheckpoint)
	})
	t.Run("count rewritten", func(t *testing.T) {
		path, _ := chainFixture(t, 5)
		tamper(t, path, func(_, meta *bbolt.Bucket) error { return putCount(meta, 9) })
		assertVerifyReason(t, path, ReasonCount)
	})
}

// TestVerifyAnchored: an anchor published earlier catches what the chain
// alone cannot: events cut from the end with the meta bucket rewritten to
// match, and a log rewritten from scratch.
func TestVerifyAnchored(t *testing.T) {
	path, evs := chainFixture(t, 10)
	s, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	anchor, err := s.Anchor()
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.VerifyAnchored(context.Background(), &anchor)
	if err != nil || v.Head != anchor {
		t.Fatalf("VerifyAnchored on the intact log = %+v, %v", v, err)
	}
	s.Close()
	if want := (Anchor{Seq: 10, ID: evs[9].ID, Hash: evs[9].Hash}); anchor != want {
		t.Fatalf("Anchor() = %+v, want %+v", anchor, want)
	}
	parsed, err := ParseAnchor("# published 2026-11-30\n" + anchor.String() + "\n")
	if err != nil || parsed != anchor {
		t.Fatalf("ParseAnchor(String()) = %+v, %v", parsed, err)
	}

	// Cut the last three events and make the meta bucket agree.
	tamper(t, path, func(events, meta *bbolt.Bucket) error {
		for i := 7; i < 10; i++ {
			if err := events.Delete(key(evs[i])); err != nil {
				return err
			}
		}
		if err := meta.Put([]byte(metaLastID), key(evs[6])); err != nil {
			return err
		}
		if err := meta.Put([]byte(metaLastHash), []byte(evs[6].Hash)); err != nil {
			return err
		}
		return putCount(meta, 7)
	})
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if n, err := ro.Verify(context.Background()); err != nil || n != 7 {
		t.Fatalf("the chain alone: %d, %v; want the cut to pass unanchored (that is why anchors exist)", n, err)
	}
	_, err = ro.VerifyAnchored(context.Background(), &anchor)
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Reason != ReasonTruncated {
		t.Fatalf("VerifyAnchored after cutting the end = %v, want %s", err, ReasonTruncated)
	}
	// An anchor on a held event with another hash: a rewritten log.
	forged := Anchor{Seq: 5, ID: evs[4].ID, Hash: evs[3].Hash}
	if _, err := ro.VerifyAnchored(context.Background(), &forged); !errors.As(err, &ce) || ce.Reason != ReasonAnchor {
		t.Fatalf("VerifyAnchored with another hash = %v, want %s", err, ReasonAnchor)
	}
}

func assertVerifyReason(t *testing.T, path, reason string) {
	t.Helper()
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	n, err := ro.Verify(context.Background())
	var ce *ChainError
	if !errors.As(err, &ce) || ce.Reason != reason {
		t.Fatalf("Verify = %d, %v; want a %s", n, err, reason)
	}
}

// FuzzParseAnchor: ParseAnchor never panics, and what it accepts prints
// back to an anchor it parses the same.
func FuzzParseAnchor(f *testing.F) {
	f.Add("bastion-audit-anchor v1 seq=10 id=01J0000000000000000000000A hash=" + hex64('a'))
	f.Add("# comment\nbastion-audit-anchor v1 seq=1 id=01J0000000000000000000000A hash=" + hex64('0') + "\n")
	f.Add("bastion-audit-anchor v1 seq=0 id=x hash=y")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAnchor(s)
		if err != nil {
			return
		}
		b, err := ParseAnchor(a.String())
		if err != nil || b != a {
			t.Fatalf("round trip of %q: %+v, %v", s, b, err)
		}
		if a.Seq == 0 || !isHash(a.Hash) {
			t.Fatalf("accepted %q as %+v", s, a)
		}
	})
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
