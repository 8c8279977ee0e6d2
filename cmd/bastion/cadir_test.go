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

// TestCACommandsOnGatewayDataDir: on the data dir of a gateway whose CA
// lives in ca.dir, every ca command that needs the CA says the CA is
// elsewhere and to pass --config or --ca-dir, never to run `ca init`
// (which would make a second CA); with --ca-dir or --config they work,
// write to that gateway's log and print next steps that run as printed;
// signing on the shared CA's own directory says its record is in a log
// no gateway serves; serve without ca.dir on such a data dir says the
// same; a directory no gateway ran in still gets the `ca init` advice.
func TestCACommandsOnGatewayDataDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	root := t.TempDir()
	shared := filepath.Join(root, "shared")
	mustRun(t, shared, "ca", "init")
	gw := filepath.Join(root, "gw4")
	f := &config.File{Listen: "127.0.0.1:0", DataDir: gw, CA: config.CA{Dir: filepath.Join(shared, "ca")}}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	rt, err := startRuntime(ctx, f, newLogger(io.Discard, config.Log{Level: "error"}), false, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.stop(); err != nil {
		t.Fatal(err)
	}
	yaml := filepath.Join(root, "bastion.yaml")
	if err := os.WriteFile(yaml, []byte("listen: 127.0.0.1:0\ndata_dir: "+gw+"\nca:\n  dir: "+filepath.Join(shared, "ca")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := writeUserKey(t, root, "alice")
	wrongAdvice := func(t *testing.T, msg string) {
		t.Helper()
		if !strings.Contains(msg, "gateway's data dir") || !strings.Contains(msg, "--config") || !strings.Contains(msg, "--ca-dir") || strings.Contains(msg, "run `bastion ca init") {
			t.Errorf("advice on a gateway data dir without CA keys:\n%s\nwant: the CA is elsewhere, use --config or --ca-dir, not ca init", msg)
		}
	}
	for _, args := range [][]string{
		{"ca", "sign", "-I", "alice", "-n", "alice", "--out", "-", key},
		{"ca", "export", "--user"},
		{"ca", "export", "--host"},
		{"ca", "krl", "--out", filepath.Join(root, "krl")},
		{"ca", "rotate", "--user"},
		{"ca", "retire", "--host"},
	} {
		t.Run(strings.Join(args[:2], " "), func(t *testing.T) {
			_, _, err := run(t, gw, args...)
			if err == nil {
				t.Fatal("succeeded on a data dir without CA keys")
			}
			wrongAdvice(t, err.Error())
		})
	}
	f.CA.Dir = ""
	if _, err := startRuntime(ctx, f, newLogger(io.Discard, config.Log{Level: "error"}), false, io.Discard); err == nil {
		t.Error("serve started on a gateway data dir without CA keys or ca.dir")
	} else {
		wrongAdvice(t, err.Error())
	}
	if _, _, err := run(t, filepath.Join(root, "fresh"), "ca", "export", "--user"); err == nil || !strings.Contains(err.Error(), "run `bastion ca init --data-dir") {
		t.Errorf("a directory no gateway ran in: %v, want the ca init advice", err)
	}

	// With the CA named, signing works, records in gw4's log, and says
	// nothing about an unserved log.
	for _, how := range [][]string{{"--ca-dir", filepath.Join(shared, "ca")}, {"--config", yaml}} {
		_, errOut := mustRun(t, gw, append([]string{"ca", "sign", "-I", "alice", "-n", "alice", "--out", "-", key}, how...)...)
		if strings.Contains(errOut, "no gateway has served") {
			t.Errorf("signing on a gateway's data dir (%s) warned of an unserved log:\n%s", how[0], errOut)
		}
	}
	_, errOut := mustRun(t, gw, "ca", "rotate", "--host", "--ca-dir", filepath.Join(shared, "ca"))
	_, next, ok := strings.Cut(errOut, "next: distribute `")
	next, _, _ = strings.Cut(next, "`")
	if !ok || !strings.Contains(next, "--ca-dir") {
		t.Fatalf("rotate's next step %q does not name the CA directory:\n%s", next, errOut)
	}
	words := strings.Fields(next)[1:] // the printed line, without "bastion"
	if out, _ := mustRun(t, "", words...); !strings.Contains(out, "@cert-authority") {
		t.Errorf("the printed next step %q printed %q", next, out)
	}
	store, err := audit.Open(filepath.Join(gw, "audit.db"), audit.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	issued := 0
	_ = store.Iterate(ctx, audit.Filter{Types: []string{audit.TypeCertIssued}}, func(ev audit.Event) error {
		if ev.Fields["via"] == "cli" {
			issued++
		}
		return nil
	})
	store.Close()
	if issued != 2 {
		t.Errorf("gw4's log holds %d cert.issued records from the CLI, want 2", issued)
	}

	// On the shared CA's own directory: signed, with a note saying where
	// the record is and that no gateway serves it.
	_, errOut = mustRun(t, shared, "ca", "sign", "-I", "alice", "-n", "alice", "--out", "-", key)
	if !strings.Contains(errOut, "no gateway has served") || !strings.Contains(errOut, filepath.Join(shared, "audit.db")) || !strings.Contains(errOut, "audit export --data-dir") {
		t.Errorf("signing on the shared CA's directory:\n%s\nwant a note that its record is in a log no gateway serves", errOut)
	}
}
