package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
