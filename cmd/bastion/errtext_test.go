package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUserErrorDropsInternalPrefixes: what main prints carries no package
// prefix, wherever the wrapping put it, and keeps the rest.
func TestUserErrorDropsInternalPrefixes(t *testing.T) {
	for in, want := range map[string]string{
		"sshclient: no host patterns: give --hosts":           "no host patterns: give --hosts",
		"--hosts: sshclient: host pattern \"a b\": use names": "--hosts: host pattern \"a b\": use names",
		"login: devidp: no user: ca: bad":                     "login: no user: bad",
		"audit: audit: closed":                                "closed",
		"read the ca: file":                                   "read the ca: file",
		"the audit log is closed":                             "the audit log is closed",
	} {
		if got := userError(errors.New(in)); got != want {
			t.Errorf("userError(%q) = %q, want %q", in, got, want)
		}
	}
	// A real one, from a wrapped chain.
	err := fmt.Errorf("--hosts: %w", errors.New("sshclient: host pattern \"x y\": use names"))
	if strings.Contains(userError(err), "sshclient") {
		t.Errorf("userError kept the prefix: %s", userError(err))
	}
}

// TestServeConfigErrorsNameTheProblem: a port out of range is called
// invalid (not "in use"), and an OIDC client secret file is not called a
// passphrase.
func TestServeConfigErrorsNameTheProblem(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, filepath.Join(dir, "data"), "ca", "init")
	for _, tc := range []struct{ name, yaml, want, notWant string }{
		{"port 99999", "listen: 127.0.0.1:99999\n", `invalid port "99999": use 1-65535`, "another process"},
		{"metrics port", "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:70000\n", "metrics_listen", "another process"},
		{"not host:port", "listen: 2222\n", "is not HOST:PORT", ""},
		{"secret file", "listen: 127.0.0.1:0\noidc:\n  issuer: http://127.0.0.1:1\n  client_id: bastion\n  client_secret_file: " + filepath.Join(dir, "missing") + "\n", "oidc.client_secret_file: read secret file", "passphrase"},
	} {
		cfg := filepath.Join(dir, "bastion.yaml")
		if err := os.WriteFile(cfg, []byte("data_dir: ./data\naccess:\n  - principals: [alice]\n    hosts: [127.0.0.1]\n"+tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := run(t, dir, "serve", "--config", cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.notWant != "" && strings.Contains(err.Error(), tc.notWant)) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
}

// TestLibraryLoggerQuietsPolling: the dev IdP's authorization_pending
// poll (logged by zitadel/oidc at Info through slog's default) is not
// printed; its warnings are.
func TestLibraryLoggerQuietsPolling(t *testing.T) {
	var b strings.Builder
	l := libraryLogger(&b)
	l.Log(t.Context(), slog.LevelInfo, "request error", "oidc_error.type", "authorization_pending")
	if b.Len() != 0 {
		t.Errorf("printed %q", b.String())
	}
	l.Warn("request error", "oidc_error.type", "access_denied")
	if !strings.Contains(b.String(), "access_denied") {
		t.Errorf("a warning was not printed: %q", b.String())
	}
}

// TestServeWarnsWithoutAccessRules: serve with no access: rules says that
// nobody can jump, instead of starting silently.
func TestServeWarnsWithoutAccessRules(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, filepath.Join(dir, "data"), "ca", "init")
	// Not named bastion.yaml: the warning names the file there is.
	cfg := filepath.Join(dir, "gw-eu1.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: ./data\nlisten: 127.0.0.1:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var outBuf, errBuf bytes.Buffer
	stderr := &lockedText{w: &errBuf}
	cmd := newRootCommand(buildInfo{Version: "v-test"}, strings.NewReader(""), &lockedText{w: &outBuf}, stderr)
	cmd.SetArgs([]string{"serve", "--config", cfg, "--new-audit-log"})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	for !strings.Contains(stderr.String(), "nobody can jump") {
		select {
		case err := <-done:
			t.Fatalf("serve ended without the warning: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	cancel()
	<-done
	if !strings.Contains(stderr.String(), "warning: "+cfg+" has no access: rules") || strings.Contains(stderr.String(), "bastion.yaml") {
		t.Errorf("the warning does not name %s:\n%s", cfg, stderr.String())
	}
}
