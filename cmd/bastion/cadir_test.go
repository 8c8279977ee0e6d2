package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/config"
)

// TestServeSharedCADir: two gateways with their own data dirs serve at
// once from one CA (ca.dir), each with its own audit log made on first
// start and no copy of the keys; the signing policy lands in each data
// dir, not in the shared key dir; once a gateway has served, its wiped
// audit log is an error, not a silently fresh chain; and a ca.dir with no
// keys is an error naming ca.dir.
func TestServeSharedCADir(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	root := t.TempDir()
	shared := ca.Layout{DataDir: filepath.Join(root, "bootstrap")}
	if _, _, err := ca.Init(shared, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	start := func(name, keyDir string) (*gatewayRuntime, error) {
		f := &config.File{Listen: "127.0.0.1:0", DataDir: filepath.Join(root, name), CA: config.CA{Dir: keyDir}}
		if err := f.Validate(); err != nil {
			t.Fatal(err)
		}
		return startRuntime(ctx, f, newLogger(io.Discard, config.Log{Level: "error"}), false, io.Discard)
	}
	var rts []*gatewayRuntime
	for _, name := range []string{"gw-1", "gw-2"} {
		rt, err := start(name, shared.Dir())
		if err != nil {
			t.Fatalf("%s on the shared CA: %v", name, err)
		}
		rts = append(rts, rt)
		if !rt.auth.IsTrusted(ca.UserCA, mustTrusted(t, shared)) {
			t.Errorf("%s does not trust the shared user CA", name)
		}
		for _, p := range []string{"audit.db", "ca/policy.json"} {
			if _, err := os.Stat(filepath.Join(root, name, p)); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
		if _, err := os.Stat(filepath.Join(root, name, "ca", "user_ca")); err == nil {
			t.Errorf("%s has a copy of the CA key", name)
		}
	}
	if _, err := os.Stat(filepath.Join(shared.Dir(), "policy.json")); err == nil {
		t.Error("a gateway wrote its policy into the shared key dir")
	}
	for _, rt := range rts {
		if err := rt.stop(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(root, "gw-1", "audit.db")); err != nil {
		t.Fatal(err)
	}
	if _, err := start("gw-1", shared.Dir()); !errors.Is(err, audit.ErrMissing) {
		t.Errorf("a gateway that served, its audit log wiped, started with %v; want the missing-log error", err)
	}
	if _, err := start("gw-3", filepath.Join(root, "empty")); err == nil || !strings.Contains(err.Error(), "(ca.dir)") {
		t.Errorf("an empty ca.dir: %v, want an error naming ca.dir", err)
	}
}

func mustTrusted(t *testing.T, l ca.Layout) gossh.PublicKey {
	t.Helper()
	keys, err := l.TrustedKeys(ca.UserCA)
	if err != nil {
		t.Fatal(err)
	}
	return keys[0]
}
