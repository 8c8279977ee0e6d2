package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestServe runs `bastion serve` as an operator would, checks the SSH
// port, /healthz and /metrics, and stops it the way SIGTERM does.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	mustRun(t, data, "ca", "init")
	sshAddr, metricsAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "bastion.yaml")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf("listen: %s\ndata_dir: ./data\nmetrics_listen: %s\naccess:\n  - principals: [alice]\n    hosts: [127.0.0.1]\n", sshAddr, metricsAddr)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// serve paces the collector unless the environment does (gcpace),
	// and gives the GC percentage back when it stops.
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	before := debug.SetGCPercent(123)
	defer debug.SetGCPercent(before)

	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan error, 1)
	profile := filepath.Join(dir, "cpu.pprof")
	go func() {
		cmd := newRootCommand(buildInfo{}, strings.NewReader(""), io.Discard, &syncWriter{w: &stderr})
		cmd.SetArgs([]string{"serve", "--config", cfg, "--cpu-profile", profile})
		done <- cmd.ExecuteContext(ctx)
	}()
	waitHTTP(t, "http://"+metricsAddr+"/healthz")

	// The SSH port speaks SSH and offers publickey only.
	_, err = gossh.Dial("tcp", sshAddr, &gossh.ClientConfig{User: "alice", Auth: []gossh.AuthMethod{gossh.Password("x")}, HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "[none]") {
		t.Errorf("password client: %v, want a refusal with no usable methods", err)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"bastion_connections_active", "bastion_audit_write_seconds", "go_goroutines"} {
		if !bytes.Contains(body, []byte(m)) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	cancel() // what SIGTERM does through signal.NotifyContext
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	// --cpu-profile wrote a pprof profile (gzip-compressed protobuf) when
	// serve stopped.
	if b, err := os.ReadFile(profile); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("--cpu-profile: %v, %d bytes; want a gzip-compressed pprof profile", err, len(b))
	}
	if !strings.Contains(stderr.String(), "garbage collector paced by bastion") {
		t.Errorf("serve did not say it paces the collector:\n%s", stderr.String())
	}
	if p := debug.SetGCPercent(before); p != 123 {
		t.Errorf("after serve stopped, GC percent = %d, want the 123 it started with", p)
	}
	// The audit log records the start and the stop, and verifies.
	out, _ := mustRun(t, data, "audit", "export", "--type", "gateway.*")
	if !strings.Contains(out, `"gateway.start"`) || !strings.Contains(out, `"gateway.stop"`) {
		t.Errorf("audit lacks gateway.start/stop:\n%s", out)
	}
	mustRun(t, data, "audit", "verify")
}

func TestServeRefusesPasswordConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bastion.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: ./data\nauth_methods: [publickey, password]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := run(t, dir, "serve", "--config", cfg)
	if err == nil || !strings.Contains(err.Error(), "never enabled") {
		t.Fatalf("serve with a password config: %v", err)
	}
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// syncWriter serialises writes from the server's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
