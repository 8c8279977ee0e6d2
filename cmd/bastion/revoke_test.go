package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
)

// TestRevokeByUserAndKeyIDReport: `ca revoke --user` revokes every
// unexpired certificate issued to a user (login-style key ids included),
// and `--key-id` says how many issued certificates it matched, warning
// when the key id only resembles real ones.
func TestRevokeByUserAndKeyIDReport(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	keys := t.TempDir()
	var certs []string
	for i, id := range []string{"alice@example.com sub=8d2f", "alice-laptop", "bob"} {
		principal := "alice"
		if id == "bob" {
			principal = "bob"
		}
		key := writeUserKey(t, keys, "k"+string(rune('a'+i)))
		mustRun(t, dir, "ca", "sign", "-I", id, "-n", principal, "-V", "+1h", key)
		certs = append(certs, strings.TrimSuffix(key, ".pub")+"-cert.pub")
	}

	_, errOut, err := run(t, dir, "ca", "revoke", "--key-id", "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "matches 0 unexpired") || !strings.Contains(errOut, "alice@example.com sub=8d2f") || !strings.Contains(errOut, "--user") {
		t.Errorf("a key id that matches nothing is not reported: %s", errOut)
	}

	_, errOut = mustRun(t, dir, "ca", "revoke", "--user", "alice", "--reason", "left")
	if !strings.Contains(errOut, "revoked 2 certificate(s) of alice") {
		t.Fatalf("revoke --user alice: %s", errOut)
	}
	krl := filepath.Join(keys, "revoked.krl")
	mustRun(t, dir, "ca", "krl", "--out", krl)
	for i, c := range certs {
		out, _ := exec.Command("ssh-keygen", "-Q", "-f", krl, c).CombinedOutput()
		revoked := strings.Contains(string(out), "REVOKED")
		if want := i < 2; revoked != want {
			t.Errorf("%s: revoked=%v, want %v (%s)", c, revoked, want, out)
		}
	}
	if _, _, err := run(t, dir, "ca", "revoke", "--user", "nobody"); err == nil || !strings.Contains(err.Error(), "nothing revoked") {
		t.Errorf("revoke --user for a user with no certificates: %v", err)
	}
}

// TestCASignAppliesTheConfiguredPolicy: `ca sign` applies the policy of
// --config, and without it the policy the gateway last ran with.
func TestCASignAppliesTheConfiguredPolicy(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	cfg := filepath.Join(t.TempDir(), "bastion.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: "+dir+"\nlisten: 127.0.0.1:0\nca:\n  forbidden_principals: [admin]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := writeUserKey(t, t.TempDir(), "admin")
	if _, errOut, err := run(t, dir, "ca", "sign", "--config", cfg, "-I", "x", "-n", "admin", key); err == nil || !strings.Contains(err.Error()+errOut, "forbidden") {
		t.Fatalf("ca sign --config signed a forbidden principal: %v %s", err, errOut)
	}
	// --config alone names the data dir (its data_dir), as for serve.
	t.Setenv("BASTION_DATA_DIR", filepath.Join(t.TempDir(), "elsewhere"))
	if _, errOut, err := run(t, "", "ca", "sign", "--config", cfg, "-I", "x", "-n", "admin", key); err == nil || !strings.Contains(err.Error()+errOut, "forbidden") {
		t.Fatalf("ca sign --config without --data-dir: %v %s", err, errOut)
	}
	if _, errOut := mustRun(t, "", "ca", "sign", "--config", cfg, "-I", "x", "-n", "alice", "--out", "-", key); !strings.Contains(errOut, "signed user certificate") {
		t.Errorf("ca sign --config without --data-dir: %s", errOut)
	}
	// An explicit --data-dir wins over the config's.
	other := t.TempDir()
	if _, _, err := run(t, other, "ca", "sign", "--config", cfg, "-I", "x", "-n", "alice", "--out", "-", key); err == nil || !strings.Contains(err.Error(), "no CA in "+other) {
		t.Errorf("--data-dir with --config: %v", err)
	}
	mustRun(t, dir, "ca", "sign", "-I", "x", "-n", "admin", "--out", "-", key) // no policy recorded yet: defaults
	// What serve records when it starts with that configuration.
	policy := ca.DefaultPolicy()
	policy.ForbiddenPrincipals = []string{"admin"}
	if err := ca.SavePolicy(ca.Layout{DataDir: dir}, policy); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := run(t, dir, "ca", "sign", "-I", "x", "-n", "admin", "--out", "-", key); err == nil || !strings.Contains(err.Error()+errOut, "forbidden") {
		t.Fatalf("ca sign ignored the data dir's recorded policy: %v %s", err, errOut)
	}
}

// TestRetireRefusesWhileCertificatesAreValid: `ca retire` right after `ca
// rotate` would lock out every holder of a certificate from the old key;
// it refuses, says until when, and --force overrides.
func TestRetireRefusesWhileCertificatesAreValid(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	mustRun(t, dir, "ca", "sign", "-I", "alice", "-n", "alice", "-V", "+2h", "--out", "-", writeUserKey(t, t.TempDir(), "alice"))
	mustRun(t, dir, "ca", "rotate", "--user")
	_, _, err := run(t, dir, "ca", "retire", "--user")
	if err == nil || !strings.Contains(err.Error(), "valid until") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("retire with a valid certificate outstanding: %v", err)
	}
	// The host CA's previous key signed nothing: retiring it is fine.
	mustRun(t, dir, "ca", "rotate", "--host")
	mustRun(t, dir, "ca", "retire", "--host")
	_, errOut := mustRun(t, dir, "ca", "retire", "--user", "--force")
	if !strings.Contains(errOut, "will be refused") {
		t.Errorf("--force does not warn: %s", errOut)
	}
}

// TestCACommandsReadTheConfiguredKeyDir: with ca.dir in the configuration
// (a cluster's gateways share one CA outside their data dirs), `ca sign
// --config` signs with the keys there, as serve uses them.
func TestCACommandsReadTheConfiguredKeyDir(t *testing.T) {
	shared := t.TempDir()
	mustRun(t, shared, "ca", "init")
	dataDir := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "bastion.yaml")
	if err := os.WriteFile(cfg, []byte("data_dir: "+dataDir+"\nlisten: 127.0.0.1:0\nca:\n  dir: "+filepath.Join(shared, "ca")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := writeUserKey(t, t.TempDir(), "alice")
	out, _ := mustRun(t, "", "ca", "sign", "--config", cfg, "-I", "x", "-n", "alice", "--out", "-", key)
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(out))
	if err != nil {
		t.Fatalf("ca sign printed no certificate: %v\n%s", err, out)
	}
	caPub, err := os.ReadFile(filepath.Join(shared, "ca", "user_ca.pub"))
	if err != nil {
		t.Fatal(err)
	}
	want, _, _, _, err := gossh.ParseAuthorizedKey(caPub)
	if err != nil {
		t.Fatal(err)
	}
	cert, ok := pub.(*gossh.Certificate)
	if !ok || !bytes.Equal(cert.SignatureKey.Marshal(), want.Marshal()) {
		t.Fatalf("ca sign --config with ca.dir did not sign with the user CA in ca.dir")
	}
}

// TestKRLKeepsRevokingAfterRetire: retiring a CA key must not drop the
// revocations of certificates it signed from the KRL — hosts may still
// trust the retired key. Checked with the real `ssh-keygen -Q`.
func TestKRLKeepsRevokingAfterRetire(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	keys := t.TempDir()
	key := writeUserKey(t, keys, "k1")
	mustRun(t, dir, "ca", "sign", "-I", "k1", "-n", "alice", "-V", "+1h", key)
	cert := strings.TrimSuffix(key, ".pub") + "-cert.pub"
	mustRun(t, dir, "ca", "rotate", "--user")
	mustRun(t, dir, "ca", "revoke", "--user", "alice", "--reason", "left")
	check := func(when string) {
		t.Helper()
		krl := filepath.Join(keys, "revoked.krl")
		mustRun(t, dir, "ca", "krl", "--out", krl)
		out, _ := exec.Command("ssh-keygen", "-Q", "-f", krl, cert).CombinedOutput()
		if !strings.Contains(string(out), "REVOKED") {
			t.Errorf("%s: ssh-keygen -Q does not report the revoked certificate: %s", when, out)
		}
	}
	check("before retire")
	mustRun(t, dir, "ca", "retire", "--user", "--force")
	check("after retire")
	// A later rotation and retirement keeps the first retired key too.
	mustRun(t, dir, "ca", "rotate", "--user")
	mustRun(t, dir, "ca", "retire", "--user", "--force")
	check("after a second retire")
}

// TestCAKindFlagsSayWhatToName: rotate, retire and export without (or
// with both of) --user and --host say which flags to pass.
func TestCAKindFlagsSayWhatToName(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "ca", "init")
	for _, args := range [][]string{{"ca", "rotate"}, {"ca", "retire"}, {"ca", "export"}, {"ca", "rotate", "--user", "--host"}} {
		_, _, err := run(t, dir, args...)
		if err == nil || !strings.Contains(err.Error(), "name the CA to "+args[1]+": --user or --host") {
			t.Errorf("%v: %v", args, err)
		}
	}
}
