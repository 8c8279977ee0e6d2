package ca

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// testCA is a CA in a temporary data dir with a real audit store.
type testCA struct {
	layout Layout
	store  *audit.Store
	auth   *Authority
	now    time.Time
}

// newTestCA initialises a CA with keyType whose clock is fixed at now (zero:
// the real clock) and whose policy is policy (zero: the default).
func newTestCA(t testing.TB, keyType KeyType, now time.Time, policy Policy) *testCA {
	t.Helper()
	l := Layout{DataDir: t.TempDir()}
	if _, _, err := Init(l, InitOptions{KeyType: keyType}); err != nil {
		t.Fatal(err)
	}
	store, err := audit.Open(l.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	clock := time.Now
	if !now.IsZero() {
		clock = func() time.Time { return now }
	}
	auth, err := New(Config{Layout: l, Policy: policy, Now: clock}, store)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{layout: l, store: store, auth: auth, now: now}
}

// events returns the audit events of the given type.
func (c *testCA) events(t testing.TB, typ string) []audit.Event {
	t.Helper()
	var out []audit.Event
	err := c.store.Iterate(t.Context(), audit.Filter{Types: []string{typ}}, func(ev audit.Event) error {
		out = append(out, ev)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// newKey returns a fresh ed25519 public key.
func newKey(t testing.TB) ssh.PublicKey {
	return testbed.NewSigner(t).PublicKey()
}

// readKeyFixture parses a public key under testdata.
func readKeyFixture(t testing.TB, name string) ssh.PublicKey {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// requireTool fails (never skips) when an OpenSSH tool is missing: CI
// installs it, so a missing tool is a broken environment.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found: install OpenSSH (apt-get install -y openssh-client openssh-server)", name)
	return ""
}

// writeFile writes data to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func certLine(c *ssh.Certificate) []byte { return ssh.MarshalAuthorizedKey(c) }

func joinLines(lines ...string) string { return strings.Join(lines, "\n") + "\n" }
