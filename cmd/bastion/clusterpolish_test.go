package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

// clusterOnlyConfig writes a bastion.yaml holding nothing but a cluster:
// block (no data_dir: a copy on an operator's laptop).
func clusterOnlyConfig(t *testing.T, endpoints ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bastion.yaml")
	body := fmt.Sprintf("cluster:\n  gateway_id: cli\n  etcd:\n    endpoints: [%s]\n    prefix: /t/\n", strings.Join(endpoints, ", "))
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClusterCLIConfigNeedsOnlyEtcd: `cluster status --config` and
// `cluster forget --config` need only the cluster: block (a real etcd),
// not data_dir; forget bounds the id it echoes.
func TestClusterCLIConfigNeedsOnlyEtcd(t *testing.T) {
	e, err := etcdembed.Start(t.Context(), t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cfg := clusterOnlyConfig(t, e.Endpoints()...)
	out, errOut, err := run(t, "", "cluster", "status", "--config", cfg)
	if err != nil || !strings.Contains(out, "0 member(s) up") {
		t.Fatalf("cluster status --config with no data_dir: %v\n%s\n%s", err, out, errOut)
	}
	long := strings.Repeat("g", 5000)
	_, errOut, err = run(t, "", "cluster", "forget", long, "--config", cfg)
	if err == nil {
		t.Fatal("forgetting an unknown 5000-character id succeeded")
	}
	if msg := err.Error(); len(msg) > 600 || strings.Contains(msg, long) || !strings.Contains(msg, "bytes cut") {
		t.Errorf("forget echoes an unbounded id (%d bytes): %.200s", len(msg), msg)
	}
}

// TestClusterCLIRefusedEtcd: an endpoint where nothing listens is named
// as "connection refused" at once (not after the 5 s dial timeout), and a
// plain-http endpoint with no TLS configured is not told to check TLS
// files.
func TestClusterCLIRefusedEtcd(t *testing.T) {
	cfg := clusterOnlyConfig(t, "http://127.0.0.1:1")
	start := time.Now()
	_, _, err := run(t, "", "cluster", "status", "--config", cfg)
	took := time.Since(start)
	if err == nil {
		t.Fatal("cluster status against a closed port succeeded")
	}
	msg := err.Error()
	if !strings.Contains(msg, "connection refused") || !strings.Contains(msg, "http://127.0.0.1:1") {
		t.Errorf("the refusal is not named: %s", msg)
	}
	if took > 2*time.Second {
		t.Errorf("the refusal took %s to report, want at once", took)
	}
	if strings.Contains(msg, "ca_file") || strings.Contains(msg, "TLS") {
		t.Errorf("plain http with no TLS configured, yet told to check TLS files: %s", msg)
	}
}
