package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// run executes the CLI in-process with args and returns stdout, stderr.
// It passes --data-dir dataDir unless dataDir is "".
func run(t *testing.T, dataDir string, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := newRootCommand(buildInfo{Version: "v-test", Commit: "abc123"}, strings.NewReader(""), &out, &errb)
	if dataDir != "" {
		args = append([]string{"--data-dir", dataDir}, args...)
	}
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func mustRun(t *testing.T, dataDir string, args ...string) (string, string) {
	t.Helper()
	out, errOut, err := run(t, dataDir, args...)
	if err != nil {
		t.Fatalf("bastion %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out, errOut
}

// writeUserKey writes a fresh ed25519 public key and returns its path.
func writeUserKey(t *testing.T, dir, name string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ssh.NewPublicKey(pub)
	p := filepath.Join(dir, name+".pub")
	if err := os.WriteFile(p, ssh.MarshalAuthorizedKey(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHelpListsEverySubcommandWithExamples(t *testing.T) {
	out, _ := mustRun(t, t.TempDir(), "--help")
	for _, sub := range []string{"ca", "audit", "version", "completion"} {
		if !strings.Contains(out, "  "+sub) {
			t.Errorf("--help does not list %s:\n%s", sub, out)
		}
	}
	root := newRootCommand(buildInfo{}, nil, &bytes.Buffer{}, &bytes.Buffer{})
	for _, c := range root.Commands() {
		for _, sub := range append(c.Commands(), c) {
			if sub.Short == "" {
				t.Errorf("%s has no one-line summary", sub.CommandPath())
			}
			if sub.Runnable() && sub.Example == "" && sub.Name() != "help" && c.Name() != "completion" {
				t.Errorf("%s has no example", sub.CommandPath())
			}
		}
	}
}

func TestVersion(t *testing.T) {
	out, _ := mustRun(t, t.TempDir(), "version")
	if out != "bastion v-test (commit abc123)\n" {
		t.Errorf("version printed %q", out)
	}
}

func TestCompletion(t *testing.T) {
	out, _ := mustRun(t, t.TempDir(), "completion", "bash")
	if !strings.Contains(out, "__start_bastion") {
		t.Errorf("bash completion script looks wrong: %.200s", out)
	}
}

// TestOperatorWorkflow runs what an operator does on day one: init, sign a
// user and a host key, inspect, revoke, write a KRL, export, verify.
func TestOperatorWorkflow(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	keys := t.TempDir()
	mustRun(t, data, "ca", "init")
	if _, _, err := run(t, data, "ca", "init"); err == nil {
		t.Error("a second ca init succeeded; it must refuse to overwrite")
	}

	userKey := writeUserKey(t, keys, "id_ed25519")
	_, summary := mustRun(t, data, "ca", "sign", "-I", "alice@example.com", "-n", "alice", "-V", "+1h", "-z", "31337", "--groups", "eng", userKey)
	certPath := filepath.Join(keys, "id_ed25519-cert.pub")
	for _, w := range []string{"alice@example.com", "31337", "alice", "SHA256:"} {
		if !strings.Contains(summary, w) {
			t.Errorf("sign summary lacks %q:\n%s", w, summary)
		}
	}
	inspect, _ := mustRun(t, data, "ca", "inspect", certPath)
	if !strings.Contains(inspect, "Serial: 31337") || !strings.Contains(inspect, "user certificate") {
		t.Errorf("inspect:\n%s", inspect)
	}

	hostKey := writeUserKey(t, keys, "ssh_host_ed25519_key")
	certOut, _ := mustRun(t, data, "ca", "sign", "--host", "-I", "web1", "-n", "web1.internal", "--out", "-", hostKey)
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(certOut))
	if err != nil || hk.(*ssh.Certificate).CertType != ssh.HostCert {
		t.Fatalf("--out - did not print a host certificate: %v %q", err, certOut)
	}

	if _, errOut, err := run(t, data, "ca", "sign", "-n", "root", userKey); err == nil || !strings.Contains(err.Error(), "principal_forbidden") {
		t.Errorf("signing root: %v %s", err, errOut)
	}
	if _, _, err := run(t, data, "ca", "sign", userKey); err == nil || !strings.Contains(err.Error(), "principals") {
		t.Errorf("signing without principals: %v", err)
	}

	if _, _, err := run(t, data, "ca", "sign", "-n", "alice", "testdata/dsa.pub"); err == nil || !strings.Contains(err.Error(), "DSA") {
		t.Errorf("signing a DSA key: %v", err)
	}

	mustRun(t, data, "ca", "revoke", "--serial", "31337", "--reason", "laptop stolen")
	krlPath := filepath.Join(keys, "revoked.krl")
	mustRun(t, data, "ca", "krl", "--out", krlPath)
	if st, err := os.Stat(krlPath); err != nil || st.Size() == 0 {
		t.Fatalf("no KRL written: %v", err)
	}

	userCA, _ := mustRun(t, data, "ca", "export", "--user")
	if !strings.HasPrefix(userCA, "ssh-ed25519 ") {
		t.Errorf("export --user: %q", userCA)
	}
	hostCA, _ := mustRun(t, data, "ca", "export", "--host")
	if !strings.HasPrefix(hostCA, "@cert-authority * ssh-ed25519 ") {
		t.Errorf("export --host: %q", hostCA)
	}

	verify, _ := mustRun(t, data, "audit", "verify")
	if !strings.HasPrefix(verify, "ok: ") {
		t.Errorf("verify: %q", verify)
	}
	jsonl, _ := mustRun(t, data, "audit", "export", "--type", "cert.*")
	var types []string
	for _, line := range strings.Split(strings.TrimSpace(jsonl), "\n") {
		var ev audit.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		types = append(types, ev.Type)
		if strings.Contains(line, "PRIVATE KEY") {
			t.Error("the audit log holds private key material")
		}
	}
	want := "cert.issued cert.issued cert.refused cert.refused cert.revoked"
	if got := strings.Join(types, " "); got != want {
		t.Errorf("exported types %q, want %q", got, want)
	}
	csvOut, _ := mustRun(t, data, "audit", "export", "--format", "csv", "--type", "cert.revoked")
	if !strings.Contains(csvOut, "laptop stolen") {
		t.Errorf("csv export lacks the revocation: %q", csvOut)
	}
}

// TestWritersFailFastWhileGatewayHoldsTheLog: bbolt allows one writer;
// while another holder has audit.db, CLI writers must fail quickly with a
// helpful error and sign nothing.
func TestWritersFailFastWhileGatewayHoldsTheLog(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "ca", "init")
	key := writeUserKey(t, t.TempDir(), "k")
	holder, err := audit.Open(filepath.Join(data, "audit.db"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	start := time.Now()
	_, _, err = run(t, data, "ca", "sign", "-n", "alice", key)
	if !errors.Is(err, audit.ErrInUse) {
		t.Fatalf("sign while held: %v, want ErrInUse", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("sign took %s to fail; it must fail fast", time.Since(start))
	}
	if _, err := os.Stat(strings.TrimSuffix(key, ".pub") + "-cert.pub"); err == nil {
		t.Error("a certificate was written without its audit record")
	}
	if _, _, err := run(t, data, "ca", "revoke", "--serial", "5"); !errors.Is(err, audit.ErrInUse) {
		t.Errorf("revoke while held: %v, want ErrInUse", err)
	}
}

func TestVerifyExitCodeOnTamper(t *testing.T) {
	data := t.TempDir()
	mustRun(t, data, "ca", "init")
	key := writeUserKey(t, t.TempDir(), "k")
	mustRun(t, data, "ca", "sign", "-n", "alice", key)
	mustRun(t, data, "ca", "sign", "-n", "bob", key)
	// Tamper: rewrite one record's actor with bbolt directly.
	tamperFirstEvent(t, filepath.Join(data, "audit.db"))
	_, _, err := run(t, data, "audit", "verify")
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "NOT intact") {
		t.Errorf("verify on a tampered log: %v (exit %d)", err, exitCode(err))
	}
}

// tamperFirstEvent edits the first stored event in place, as an attacker
// with write access to the file would.
func tamperFirstEvent(t *testing.T, path string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("events"))
		k, v := b.Cursor().First()
		edited := bytes.Replace(v, []byte(`"operator:`), []byte(`"operator:mallory-`), 1)
		if bytes.Equal(edited, v) {
			return errors.New("nothing to tamper with")
		}
		return b.Put(k, edited)
	})
	if err != nil {
		t.Fatal(err)
	}
}
