package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/devidp"
)

// TestServeWithIdPDown: `bastion serve` starts while its IdP is down
// (before, it exited with "oidc: discovery ... connection refused", and a
// restart during an outage cut off everyone). /healthz stays 200 and says
// the IdP is down, bastion_idp_up is 0, the outage is recorded as idp.down
// once it lasts oidc.outage_alert_after; when the IdP comes up, the
// gateway reaches it in the background and says so.
func TestServeWithIdPDown(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	mustRun(t, data, "ca", "init")
	sshAddr, metricsAddr, idpAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "bastion.yaml")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
data_dir: ./data
metrics_listen: %s
access:
  - principals: [alice]
    hosts: [127.0.0.1]
oidc:
  issuer: http://%s
  client_id: bastion
  outage_alert_after: 1s
`, sshAddr, metricsAddr, idpAddr)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		cmd := newRootCommand(buildInfo{}, strings.NewReader(""), io.Discard, &syncWriter{w: &stderr})
		cmd.SetArgs([]string{"serve", "--config", cfg})
		done <- cmd.ExecuteContext(ctx)
	}()
	waitHTTP(t, "http://"+metricsAddr+"/healthz")
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != http.StatusOK || !strings.Contains(body, "idp: down since") {
		t.Fatalf("/healthz with the IdP down: %d %q", code, body)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "\nbastion_idp_up 0\n") {
		t.Errorf("/metrics lacks bastion_idp_up 0")
	}
	time.Sleep(2500 * time.Millisecond) // past outage_alert_after

	idp, err := devidp.Start(t.Context(), devidp.Config{Issuer: "http://" + idpAddr, Users: devidp.DemoUsers()})
	if err != nil {
		t.Fatal(err)
	}
	defer idp.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := get("/healthz")
		if strings.Contains(body, "idp: up since") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz never said the IdP is up: %q", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, body := get("/metrics"); !strings.Contains(body, "\nbastion_idp_up 1\n") {
		t.Errorf("/metrics lacks bastion_idp_up 1")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	out, _ := mustRun(t, data, "audit", "export", "--type", "idp.*")
	if !strings.Contains(out, `"idp.down"`) || !strings.Contains(out, `"idp.up"`) || !strings.Contains(out, "connection refused") {
		t.Errorf("audit lacks idp.down (with the error) and idp.up:\n%s", out)
	}
}
