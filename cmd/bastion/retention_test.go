package main

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/bastion-ssh/bastion/audit"
)

// TestVerifyAfterRetention: once retention has pruned events, `bastion
// audit verify` still passes and says it started from the checkpoint.
func TestVerifyAfterRetention(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "ca", "init")
	s, err := audit.Open(filepath.Join(data, "audit.db"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := s.Append(context.Background(), audit.Event{Type: audit.TypeAuthFailed, Actor: "mallory"}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Prune(context.Background(), time.Now().Add(time.Hour))
	if err != nil || res.Deleted < 5 {
		t.Fatalf("Prune = %+v, %v", res, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := mustRun(t, data, "audit", "verify")
	want := "ok: 2 events, hash chain intact from the retention checkpoint (" + res.Checkpoint.ID
	if !strings.HasPrefix(out, "ok: 2 events, hash chain intact from the retention checkpoint") || !strings.Contains(out, res.Checkpoint.Hash) || !strings.Contains(out, res.Checkpoint.ID) {
		t.Errorf("verify after pruning: %q, want %q...", out, want)
	}
	pruned, _ := mustRun(t, data, "audit", "export", "--type", "audit.pruned")
	if !strings.Contains(pruned, `"through_hash":"`+res.Checkpoint.Hash+`"`) {
		t.Errorf("no audit.pruned event naming the checkpoint:\n%s", pruned)
	}
}

// TestVerifyAnchor: verify prints an anchor line; verify --anchor with it
// passes while the log only grows, and fails once the end is cut back and
// the meta bucket rewritten to match, which the chain alone cannot see.
func TestVerifyAnchor(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "ca", "init")
	key := writeUserKey(t, t.TempDir(), "alice")
	mustRun(t, data, "ca", "sign", "-I", "alice", "-n", "alice", "--out", "-", key)
	out, _ := mustRun(t, data, "audit", "verify")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	anchorLine := lines[len(lines)-1]
	if !strings.HasPrefix(anchorLine, "bastion-audit-anchor v1 ") {
		t.Fatalf("verify did not end with an anchor line:\n%s", out)
	}
	anchor := filepath.Join(t.TempDir(), "anchor")
	if err := os.WriteFile(anchor, []byte(anchorLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, data, "ca", "sign", "-I", "alice2", "-n", "alice", "--out", "-", key)
	if out, _ := mustRun(t, data, "audit", "verify", "--anchor", anchor); !strings.Contains(out, "is in the chain with the anchored hash") {
		t.Errorf("verify --anchor on a grown log:\n%s", out)
	}
	// Cut the log back to before the anchored event, rewriting the meta
	// bucket as someone with the file would.
	a, err := audit.ParseAnchor(anchorLine)
	if err != nil {
		t.Fatal(err)
	}
	db, err := bbolt.Open(filepath.Join(data, "audit.db"), 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		events, meta := tx.Bucket([]byte("events")), tx.Bucket([]byte("meta"))
		c := events.Cursor()
		var keep []byte
		n := uint64(0)
		for k, v := c.First(); k != nil; k, v = c.Next() {
			ev, err := audit.DecodeEvent(v)
			if err != nil {
				return err
			}
			if ev.ID >= a.ID {
				break
			}
			keep, n = append([]byte(nil), k...), n+1
			if err := meta.Put([]byte("last_hash"), []byte(ev.Hash)); err != nil {
				return err
			}
		}
		for k, _ := c.Seek(successorKey(keep)); k != nil; k, _ = c.Seek(successorKey(keep)) {
			if err := events.Delete(k); err != nil {
				return err
			}
		}
		cnt := make([]byte, 8)
		binary.BigEndian.PutUint64(cnt, n)
		if err := meta.Put([]byte("count"), cnt); err != nil {
			return err
		}
		return meta.Put([]byte("last_id"), keep)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, data, "audit", "verify"); err != nil {
		t.Fatalf("the cut log fails plain verify (%v); the test no longer shows what anchors add", err)
	}
	_, _, err = run(t, data, "audit", "verify", "--anchor", anchor)
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "anchor") {
		t.Fatalf("verify --anchor after cutting the end: %v, want exit 1 naming the anchor", err)
	}
}

// successorKey is the smallest key after k.
func successorKey(k []byte) []byte { return append(append([]byte(nil), k...), 0) }
