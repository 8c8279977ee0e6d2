package audit

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

func benchEvent() Event {
	return Event{
		Type:    TypeAuthFailed,
		Actor:   "alice@example.com",
		Session: "01HZX3J4K5M6N7P8Q9R0S1T2V3",
		Fields:  map[string]string{"reason": "cert_expired", "remote": "203.0.113.7:51234", "key_id": "alice-laptop"},
	}
}

func openBench(b *testing.B) *Store {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "audit.db"), Options{Now: time.Now})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// txID is the id of the last committed bbolt transaction: commits so far.
func txID(b *testing.B, s *Store) int {
	tx, err := s.db.Begin(false)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	return tx.ID()
}

// reportRate reports durable events per second and how many events shared
// each commit since the commit with id tx0.
func reportRate(b *testing.B, s *Store, tx0 int) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if commits := txID(b, s) - tx0; commits > 0 {
		b.ReportMetric(float64(b.N)/float64(commits), "events/commit")
	}
}

// BenchmarkAuditAppend measures durable appends from many concurrent
// writers, the gateway's load: each Append returns only after its fsync'd
// commit, and commits are shared.
func BenchmarkAuditAppend(b *testing.B) {
	s := openBench(b)
	ev := benchEvent()
	ctx := context.Background()
	b.SetParallelism(64) // 64 × GOMAXPROCS writers
	b.ReportAllocs()
	tx0 := txID(b, s)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Append(ctx, ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, s, tx0)
}

// BenchmarkAuditAppendSerial is one writer, for contrast: every Append pays
// for a whole commit.
func BenchmarkAuditAppendSerial(b *testing.B) {
	s := openBench(b)
	ev := benchEvent()
	ctx := context.Background()
	b.ReportAllocs()
	tx0 := txID(b, s)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Append(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, s, tx0)
}
