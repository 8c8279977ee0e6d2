package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/alert"
	"github.com/bastion-ssh/bastion/internal/config"
)

// hook is a webhook receiver on loopback answering status.
type hook struct {
	*httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	heads  []http.Header
}

func newHook(t *testing.T, status int) *hook {
	h := &hook{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.bodies, h.heads = append(h.bodies, b), append(h.heads, r.Header.Clone())
		h.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hook) got() ([][]byte, []http.Header) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([][]byte(nil), h.bodies...), append([]http.Header(nil), h.heads...)
}

func TestAlertsTest(t *testing.T) {
	dir := t.TempDir()
	ok, broken := newHook(t, http.StatusOK), newHook(t, http.StatusInternalServerError)
	if err := os.WriteFile(filepath.Join(dir, "hook.secret"), []byte("0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(yaml string) string {
		p := filepath.Join(dir, "bastion.yaml")
		if err := os.WriteFile(p, []byte("data_dir: ./data\n"+yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Two webhooks on one host are told apart by their paths; a token in
	// the path is cut short, user info and query never shown.
	const token = "XyZ0secretTOKEN0123456789"
	withUser := strings.Replace(ok.URL, "http://", "http://hookuser:hookpass@", 1)
	cfg := write(fmt.Sprintf("alerts:\n  webhooks:\n    - url: %s/services/T0/B0/%s\n    - url: %s/raw?key=querysecret\n      format: json\n      secret_file: hook.secret\n", ok.URL, token, withUser))
	out, _ := mustRun(t, dir, "alerts", "test", "--config", cfg)
	if !strings.Contains(out, "ok    webhooks[0] "+ok.URL+"/services/T0/B0/XyZ0…  HTTP 200") || !strings.Contains(out, "ok    webhooks[1] "+ok.URL+"/raw  HTTP 200") {
		t.Errorf("alerts test output:\n%s", out)
	}
	for _, secret := range []string{token, "secretTOKEN", "hookuser", "hookpass", "querysecret"} {
		if strings.Contains(out, secret) {
			t.Errorf("alerts test shows %q:\n%s", secret, out)
		}
	}
	bodies, heads := ok.got()
	if len(bodies) != 2 {
		t.Fatalf("the receiver got %d requests, want 2", len(bodies))
	}
	var slack map[string]string
	if err := json.Unmarshal(bodies[0], &slack); err != nil || !strings.Contains(slack["text"], "test alert") || len(slack) != 1 {
		t.Errorf("slack body %s", bodies[0])
	}
	var p alert.Payload
	if err := json.Unmarshal(bodies[1], &p); err != nil || p.Rule != "test" {
		t.Errorf("json body %s", bodies[1])
	}
	ts, _ := strconv.ParseInt(heads[1].Get(alert.TimestampHeader), 10, 64)
	if want := alert.Sign([]byte("0123456789abcdef"), time.Unix(ts, 0), bodies[1]); heads[1].Get(alert.SignatureHeader) != want {
		t.Errorf("signature %q, want %q", heads[1].Get(alert.SignatureHeader), want)
	}
	if heads[0].Get(alert.SignatureHeader) != "" {
		t.Error("the webhook without secret_file was signed")
	}

	cfg = write(fmt.Sprintf("alerts:\n  webhooks: [{url: %s}, {url: %s}]\n", ok.URL, broken.URL))
	out, _, err := run(t, dir, "alerts", "test", "--config", cfg)
	if err == nil || exitCode(err) != 1 || !strings.Contains(out, "FAIL  webhooks[1] "+broken.URL) || !strings.Contains(out, "http_500") || !strings.Contains(err.Error(), "1 of 2 webhooks failed") {
		t.Errorf("alerts test with a failing webhook: %v\n%s", err, out)
	}

	cfg = write("")
	if _, _, err := run(t, dir, "alerts", "test", "--config", cfg); err == nil || !strings.Contains(err.Error(), "no alerts: section") {
		t.Errorf("alerts test without alerts: %v", err)
	}
	cfg = write("alerts:\n  webhooks: [{url: https://h/x, secret_file: missing.secret}]\n")
	if _, _, err := run(t, dir, "alerts", "test", "--config", cfg); err == nil || !strings.Contains(err.Error(), "alerts.webhooks[0].secret_file") {
		t.Errorf("alerts test with a missing secret file: %v", err)
	}
}

// writeUserIdentity writes an ed25519 private key in OpenSSH format and
// returns its path (KEY, with KEY.pub beside it).
func writeUserIdentity(t *testing.T, dir string) string {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "id_ed25519")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	k, _ := gossh.NewPublicKey(pub)
	if err := os.WriteFile(path+".pub", gossh.MarshalAuthorizedKey(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServeAlertsAndRemoteAudit runs `bastion serve` with alerts:,
// audit.retention and auditor_groups: an attempt as root reaches the
// webhook; `bastion audit export --gateway` with an auditor's certificate
// writes what the offline export of the same file writes; a
// non-auditor's is refused with the gateway's exit status.
func TestServeAlertsAndRemoteAudit(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	mustRun(t, data, "ca", "init")
	keys := t.TempDir()
	auditor := writeUserIdentity(t, keys)
	mustRun(t, data, "ca", "sign", "-n", "alice", "--groups", "auditors", auditor+".pub")
	other := writeUserIdentity(t, t.TempDir())
	mustRun(t, data, "ca", "sign", "-n", "bob", other+".pub")
	hostCA, _ := mustRun(t, data, "ca", "export", "--host")
	knownHosts := filepath.Join(keys, "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(hostCA), 0o644); err != nil {
		t.Fatal(err)
	}
	rcv := newHook(t, http.StatusOK)
	sshAddr := freeAddr(t)
	cfg := filepath.Join(dir, "bastion.yaml")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
data_dir: ./data
host_names: [127.0.0.1]
auditor_groups: [auditors]
audit:
  retention: 90d
alerts:
  webhooks:
    - url: %s/hook
      format: json
`, sshAddr, rcv.URL)), 0o600)
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
	// An attempt as root, as a bot's tool would make it.
	deadline := time.Now().Add(20 * time.Second)
	signer, _ := gossh.ParsePrivateKey(mustRead(t, other))
	for {
		_, err := gossh.Dial("tcp", sshAddr, &gossh.ClientConfig{User: "root", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)}, HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second})
		if err != nil && strings.Contains(err.Error(), "unable to authenticate") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway did not come up: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		if bodies, _ := rcv.got(); len(bodies) > 0 {
			var p alert.Payload
			if err := json.Unmarshal(bodies[0], &p); err != nil || p.Rule != alert.RuleForbiddenUser || p.Event.Fields["user"] != "root" {
				t.Fatalf("alert %s", bodies[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no alert for an attempt as root\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	time.Sleep(5 * time.Millisecond)
	until := time.Now().UTC().Format(time.RFC3339Nano)
	remote := func(identity string, args ...string) (string, string, error) {
		return run(t, data, append([]string{"audit", "export", "--gateway", sshAddr, "--identity", identity, "--known-hosts", knownHosts, "--until", until}, args...)...)
	}
	jsonl, errOut, err := remote(auditor)
	if err != nil {
		t.Fatalf("remote export: %v\n%s", err, errOut)
	}
	csvOut, errOut, err := remote(auditor, "--format", "csv", "--type", "auth.*,gateway.*")
	if err != nil {
		t.Fatalf("remote csv export: %v\n%s", err, errOut)
	}
	_, errOut, err = remote(other)
	if err == nil || exitCode(err) != 126 || !strings.Contains(errOut, "auditor group") {
		t.Errorf("a non-auditor's remote export: %v (exit %d)\n%s", err, exitCode(err), errOut)
	}

	// audit tail prints the history, follows, and ends cleanly when
	// interrupted.
	tailCtx, stopTail := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	tailDone := make(chan error, 1)
	go func() {
		cmd := newRootCommand(buildInfo{}, strings.NewReader(""), pw, io.Discard)
		cmd.SetArgs([]string{"--data-dir", data, "audit", "tail", "--gateway", sshAddr, "--identity", auditor, "--known-hosts", knownHosts, "--type", "gateway.start", "--history"})
		tailDone <- cmd.ExecuteContext(tailCtx)
		pw.Close()
	}()
	line, err := bufioReadLine(pr)
	if err != nil || !strings.Contains(line, `"type":"gateway.start"`) {
		t.Fatalf("tail: %q, %v", line, err)
	}
	stopTail()
	go io.Copy(io.Discard, pr)
	if err := <-tailDone; err != nil {
		t.Errorf("an interrupted tail returned %v", err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v\n%s", err, stderr.String())
	}
	offline, _ := mustRun(t, data, "audit", "export", "--until", until)
	if jsonl != offline || strings.Count(offline, "\n") < 3 {
		t.Errorf("the export through the gateway (%d bytes) differs from the offline one (%d bytes)", len(jsonl), len(offline))
	}
	offline, _ = mustRun(t, data, "audit", "export", "--until", until, "--format", "csv", "--type", "auth.*,gateway.*")
	if csvOut != offline {
		t.Errorf("the csv export through the gateway differs from the offline one:\n%s\n---\n%s", csvOut, offline)
	}
	// The delivery is on record, and the log verifies.
	sent, _ := mustRun(t, data, "audit", "export", "--type", "alert.sent")
	if !strings.Contains(sent, `"rule":"forbidden_user"`) {
		t.Errorf("no alert.sent record:\n%s", sent)
	}
	if out, _ := mustRun(t, data, "audit", "verify"); !strings.HasPrefix(out, "ok: ") {
		t.Errorf("verify: %s", out)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bufioReadLine reads one line from r.
func bufioReadLine(r io.Reader) (string, error) {
	return bufio.NewReader(r).ReadString('\n')
}

func TestExportProgress(t *testing.T) {
	if p := newProgress(&bytes.Buffer{}, nil, audit.Filter{}, time.Now); p != nil {
		t.Error("progress on a writer that is not a terminal")
	}
	var out bytes.Buffer
	clock := time.Unix(0, 0)
	from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{w: &out, now: func() time.Time { return clock }, from: from, to: from.Add(100 * time.Hour)}
	for i := range 1024 {
		clock = clock.Add(time.Millisecond)
		p.event(audit.Event{Time: from.Add(time.Duration(i) * 3 * time.Minute)})
	}
	p.done()
	if s := out.String(); !strings.Contains(s, "exported 512 events, 26%") || !strings.HasSuffix(strings.TrimRight(s, " \n"), "exported 1024 events") {
		t.Errorf("progress output %q", s)
	}
}

// TestWebhookSecretDropsOneNewline: the secret is the file's content less
// one trailing newline, as the README says.
func TestWebhookSecretDropsOneNewline(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{"k1\n": "k1", "k2\r\n": "k2", "k3\n\n": "k3\n", "k4": "k4"} {
		p := filepath.Join(dir, "secret")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := alertConfig(&config.File{Alerts: &config.Alerts{Webhooks: []config.Webhook{{URL: "https://h/x", SecretFile: p}}}}, nil)
		if err != nil || string(cfg.Webhooks[0].Secret) != want {
			t.Errorf("secret file %q: key %q, %v; want %q", content, cfg.Webhooks[0].Secret, err, want)
		}
	}
}
