package ca

import (
	"context"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
)

// BenchmarkSign measures the signing pipeline for ed25519 user
// certificates, including the durable audit record of each one, with many
// concurrent requests (as at a login burst) so the audit store can batch
// their fsyncs.
func BenchmarkSign(b *testing.B) {
	c := newTestCA(b, KeyEd25519, time.Time{}, Policy{})
	key := newKey(b)
	req := Request{Kind: UserCA, Key: key, KeyID: "alice", Principals: []string{"alice"}, Groups: []string{"eng"}}
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.auth.Sign(b.Context(), req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

// discardRecorder accepts every record and keeps none; benchmarks only.
type discardRecorder struct{}

func (discardRecorder) Append(_ context.Context, ev audit.Event) (audit.Event, error) { return ev, nil }

// BenchmarkSignPipelineOnly is BenchmarkSign without the audit write, to
// show what the CPU work costs per core.
func BenchmarkSignPipelineOnly(b *testing.B) {
	c := newTestCA(b, KeyEd25519, time.Time{}, Policy{})
	auth, err := New(Config{Layout: c.layout}, discardRecorder{})
	if err != nil {
		b.Fatal(err)
	}
	req := Request{Kind: UserCA, Key: newKey(b), KeyID: "alice", Principals: []string{"alice"}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := auth.Sign(b.Context(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}
