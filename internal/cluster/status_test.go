package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/etcdembed"
	"github.com/bastion-ssh/bastion/internal/logattr"
)

// lockedBuffer is a log destination safe for the cluster's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestEtcdLostLogLine: when a real etcd goes away, the gateway's "etcd
// unreachable" log line (through the process's logattr handler) writes
// max_staleness as "30s" and says what failed (the quorum read) without
// Go's "context deadline exceeded".
func TestEtcdLostLogLine(t *testing.T) {
	e, err := etcdembed.Start(t.Context(), t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	var out lockedBuffer
	log := slog.New(logattr.Wrap(slog.NewJSONHandler(&out, nil)))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := Open(ctx, Config{GatewayID: "gw-log", Endpoints: e.Endpoints(), Prefix: "/t/", DialTimeout: 2 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := e.Stop(0); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	for deadline := time.Now().Add(15 * time.Second); line == nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"etcd unreachable\" line 15s after etcd stopped:\n%s", out.String())
		}
		for _, l := range strings.Split(out.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "etcd unreachable" {
				line = m
			}
		}
	}
	if line["max_staleness"] != "30s" {
		t.Errorf("max_staleness = %v, want \"30s\"", line["max_staleness"])
	}
	errText, _ := line["err"].(string)
	if !strings.Contains(errText, "quorum read of etcd") || strings.Contains(errText, "deadline exceeded") {
		t.Errorf("err = %q, want what failed, without \"context deadline exceeded\"", errText)
	}
}

// TestEtcdAdviceByConfiguration: what to check names the TLS files only
// when an endpoint uses https.
func TestEtcdAdviceByConfiguration(t *testing.T) {
	if a := EtcdAdvice([]string{"http://127.0.0.1:2379"}); strings.Contains(a, "ca_file") {
		t.Errorf("plain http, no TLS: %s", a)
	}
	if a := EtcdAdvice([]string{"https://etcd-0:2379"}); !strings.Contains(a, "ca_file, cert_file and key_file") {
		t.Errorf("https: %s", a)
	}
}

// TestStrictStatusLines: a strict gateway's status shows no
// max_staleness (it does not apply) and the same time since etcd was
// last reached in every line, including the refusal.
func TestStrictStatusLines(t *testing.T) {
	e, err := etcdembed.Start(t.Context(), t.TempDir(), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := Open(ctx, Config{GatewayID: "gw-s", Endpoints: e.Endpoints(), Prefix: "/t/", DialTimeout: 2 * time.Second, Consistency: Strict}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := e.Stop(0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); c.Admit() == nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the strict gateway still admits 15s after etcd stopped")
		}
	}
	time.Sleep(1300 * time.Millisecond) // a fractional staleness, not a whole second
	st, _ := c.Status(t.Context())
	var buf bytes.Buffer
	if err := WriteStatus(&buf, st, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	if !strings.Contains(st.EtcdError, "connection refused") {
		t.Errorf("the stopped member's closed port is not named as refused: %q", st.EtcdError)
	}
	if strings.Contains(text, "max_staleness") || !strings.Contains(text, "consistency strict: new sessions refused after 2.5s without a quorum read") {
		t.Errorf("strict status mode line:\n%s", text)
	}
	stale := FormatStaleness(time.Duration(st.StalenessMS) * time.Millisecond)
	for _, want := range []string{"last quorum read " + stale + " ago", "has not reached etcd for " + stale + " ", "(" + stale + " ago)"} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q (one figure everywhere):\n%s", want, text)
		}
	}
}
