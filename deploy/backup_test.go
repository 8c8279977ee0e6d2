package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/catest"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// README.md's backup and restore commands, with DATA and BACKUP standing
// for the data directory and the archive. The test runs exactly these.
const (
	backupCommand  = `tar -C "$DATA" -czpf "$BACKUP" .`
	restoreCommand = `mkdir -p "$DATA" && tar -C "$DATA" -xzpf "$BACKUP"`
)

// TestBackupRestore signs certificates and revokes one, stops (closes the
// audit log), backs the data dir up and restores it elsewhere with
// README.md's commands, and checks that the copy is whole: the audit chain
// verifies (with the library and with `bastion audit verify`), it holds
// every event, the CA keys and their modes survived, and the restored CA
// signs.
func TestBackupRestore(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{backupCommand, restoreCommand} {
		if !strings.Contains(string(readme), cmd) {
			t.Fatalf("README.md does not document %q; keep the tested commands and the README in step", cmd)
		}
	}

	c := catest.NewBastionCA(t)
	ctx := t.Context()
	for _, name := range []string{"alice", "bob", "carol"} {
		sign(t, c, ca.Request{Kind: ca.UserCA, Key: newKey(t), KeyID: name, Principals: []string{name}})
	}
	sign(t, c, ca.Request{Kind: ca.HostCA, Key: newKey(t), KeyID: "web1", Principals: []string{"web1.internal"}})
	revs, err := ca.LoadRevocations(c.Store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := revs.Revoke(ctx, ca.Revocation{Kind: ca.RevokeKeyID, Value: "bob", Reason: "left", By: "test"}); err != nil {
		t.Fatal(err)
	}
	before, err := c.Store.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// "Stop the gateway": nothing may hold the audit log during the copy.
	if err := c.Store.Close(); err != nil {
		t.Fatal(err)
	}

	backup := filepath.Join(t.TempDir(), "bastion-backup.tgz")
	restored := filepath.Join(t.TempDir(), "restored")
	shell(t, backupCommand, "DATA="+c.Layout.DataDir, "BACKUP="+backup)
	shell(t, restoreCommand, "DATA="+restored, "BACKUP="+backup)

	rl := ca.Layout{DataDir: restored}
	store, err := audit.Open(rl.AuditDB(), audit.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	after, err := store.Verify(ctx)
	store.Close()
	if err != nil {
		t.Fatalf("restored audit log does not verify: %v", err)
	}
	if after != before || before < 5 {
		t.Fatalf("restored log holds %d events, the original %d (want the same, at least 5)", after, before)
	}

	bin := buildLikeDockerfile(t, "backup-test", "x")
	if out, err := exec.Command(bin, "audit", "verify", "--data-dir", restored).CombinedOutput(); err != nil {
		t.Fatalf("`bastion audit verify` on the restored copy: %v\n%s", err, out)
	}

	for _, k := range []ca.Kind{ca.UserCA, ca.HostCA} {
		fi, err := os.Stat(rl.PrivateKey(k))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("restored %s has mode %v, want 0600 (tar -p keeps it)", rl.PrivateKey(k), fi.Mode().Perm())
		}
		want, _ := c.Layout.TrustedKeys(k)
		got, err := rl.TrustedKeys(k)
		if err != nil || len(got) != len(want) || string(got[0].Marshal()) != string(want[0].Marshal()) {
			t.Errorf("restored %s CA keys differ: %v", k, err)
		}
	}
	// The restored CA is usable: it signs, and knows the revocation.
	w, err := audit.Open(rl.AuditDB(), audit.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	auth, err := ca.New(ca.Config{Layout: rl}, w)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Sign(ctx, ca.Request{Kind: ca.UserCA, Key: newKey(t), KeyID: "dave", Principals: []string{"dave"}}); err != nil {
		t.Fatalf("restored CA cannot sign: %v", err)
	}
	rrevs, err := ca.LoadRevocations(w, nil)
	if err != nil || len(rrevs.List()) != 1 {
		t.Fatalf("restored revocations: %v %v", rrevs.List(), err)
	}
}

// shell runs script with sh and env added, failing the test on error.
func shell(t *testing.T, script string, env ...string) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// newKey returns a fresh ed25519 public key to certify.
func newKey(t *testing.T) ssh.PublicKey {
	return testbed.NewSigner(t).PublicKey()
}
