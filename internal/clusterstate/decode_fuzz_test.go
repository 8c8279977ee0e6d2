package clusterstate

import (
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/bastion-ssh/bastion/ca"
)

// FuzzDecodeRecord: a record read from etcd (written by any gateway, or
// by hand with etcdctl) never panics the decoder, and one it accepts has a
// gateway id fit for the audit log and a bounded size.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"op":"lock","lock":{"target":"alice","reason":"x","by":"ops","time":"2026-01-01T00:00:00Z"},"time":"2026-01-01T00:00:00Z","gateway":"gw-1"}`))
	f.Add([]byte(`{"op":"unlock","target":"alice","time":"2026-01-01T00:00:00Z","gateway":"gw-2"}`))
	f.Add([]byte(`{"op":"revoke","revocation":{"kind":"serial","value":"42","time":"2026-01-01T00:00:00Z"},"gateway":"../../etc"}`))
	f.Add([]byte(`{"op":"lock","lock":null}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := decode(&mvccpb.KeyValue{Key: []byte("/bastion/locks/x"), Value: data})
		if err != nil {
			return
		}
		if len(data) > maxRecord {
			t.Fatalf("accepted a %d-byte record", len(data))
		}
		if rec.Gateway != "unknown" && len(rec.Gateway) > 63 {
			t.Fatalf("gateway id %q passed", rec.Gateway)
		}
		_ = rec.Name()
		_ = rec.Op == ca.OpLock
	})
}
