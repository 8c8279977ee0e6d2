package ca

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// copyAuthority is another gateway: a new Authority with its own audit
// store over a copy of c's CA key files.
func copyAuthority(t *testing.T, c *testCA) *Authority {
	t.Helper()
	l := Layout{DataDir: t.TempDir()}
	if err := os.Mkdir(l.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(c.layout.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(c.layout.Dir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(l.Dir(), e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	store, err := audit.Open(l.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	a, err := New(Config{Layout: l}, store)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func derived(t *testing.T, a *Authority, name string) string {
	t.Helper()
	s, err := a.DeriveHostKey(name)
	if err != nil {
		t.Fatalf("DeriveHostKey(%q): %v", name, err)
	}
	if s.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("derived key is %s; want ed25519", s.PublicKey().Type())
	}
	return string(s.PublicKey().Marshal())
}

// TestDeriveHostKeyStable: every CA key type derives one key per name,
// the same on another gateway reading the same files, different per
// name, never the CA's own, and another one once the host CA rotates.
func TestDeriveHostKeyStable(t *testing.T) {
	for _, kt := range []KeyType{KeyEd25519, KeyECDSAP256, KeyRSA4096} {
		t.Run(string(kt), func(t *testing.T) {
			c := newTestCA(t, kt, time.Time{}, Policy{})
			other := copyAuthority(t, c)
			web1 := derived(t, c.auth, "web1")
			if derived(t, c.auth, "web1") != web1 {
				t.Error("two derivations of web1 differ")
			}
			if derived(t, other, "web1") != web1 {
				t.Error("another gateway with the same CA files derives another key for web1")
			}
			for _, alias := range []string{"WEB1", "web1."} {
				if derived(t, c.auth, alias) != web1 {
					t.Errorf("%q derives another key than web1", alias)
				}
			}
			if derived(t, c.auth, "0:0::1") != derived(t, c.auth, "::1") {
				t.Error("two spellings of ::1 derive different keys")
			}
			seen := map[string]string{web1: "web1"}
			for _, n := range []string{"web2", "web1x", "web", "10.0.0.1", "::1", "db.example.com"} {
				k := derived(t, c.auth, n)
				if prev, dup := seen[k]; dup {
					t.Errorf("%q and %q derive the same key", n, prev)
				}
				seen[k] = n
			}
			gw, err := c.auth.DeriveGatewayHostKey()
			if err != nil {
				t.Fatal(err)
			}
			gwOther, err := other.DeriveGatewayHostKey()
			if err != nil {
				t.Fatal(err)
			}
			if !gw.Equal(gwOther) {
				t.Error("two gateways of one CA derive different gateway host keys")
			}
			if gwPub, _ := ssh.NewPublicKey(gw.Public()); seen[string(gwPub.Marshal())] != "" {
				t.Errorf("the gateway host key is the record-mode key of %q", seen[string(gwPub.Marshal())])
			}
			for _, kind := range []Kind{HostCA, UserCA} {
				if string(c.auth.PublicKey(kind).Marshal()) == web1 {
					t.Errorf("the derived key is the %s CA key", kind)
				}
			}
			if _, _, err := c.auth.Rotate(t.Context(), UserCA, kt, "test"); err != nil {
				t.Fatal(err)
			}
			if derived(t, c.auth, "web1") != web1 {
				t.Error("rotating the user CA changed a derived host key")
			}
			if _, _, err := c.auth.Rotate(t.Context(), HostCA, kt, "test"); err != nil {
				t.Fatal(err)
			}
			if derived(t, c.auth, "web1") == web1 {
				t.Error("rotating the host CA kept the derived host key")
			}
		})
	}
}

// TestDeriveHostKeyVector pins the derivation: changing it changes the
// key every user has pinned for every target, so it must be deliberate
// (a new version in the domain strings).
func TestDeriveHostKeyVector(t *testing.T) {
	caKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	secret, err := derivationSecret(caKey)
	if err != nil {
		t.Fatal(err)
	}
	// The same computation spelled out with the standard library.
	prk, err := hkdf.Extract(sha256.New, append([]byte("ssh-ed25519\x00"), caKey.Seed()...), []byte("bastion host-key derivation v1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(secret, prk) {
		t.Fatal("the derivation secret is not HKDF-Extract(alg NUL seed, salt)")
	}
	a := &Authority{hostSecret: secret}
	s, err := a.DeriveHostKey("Web1.")
	if err != nil {
		t.Fatal(err)
	}
	got := hex.EncodeToString(s.PublicKey().(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey))
	const want = "fc3f4265e5ef6d291380847868e3974bddea1b8da911f583d4aa8d1e0bfc48db"
	if got != want {
		t.Errorf("derived public key %s; want %s", got, want)
	}
}

// TestDeriveHostKeyRefusals: names out of bounds, and a CA key that
// cannot be derived from, are errors rather than some other key.
func TestDeriveHostKeyRefusals(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	for _, n := range []string{"", ".", string(bytes.Repeat([]byte("a"), 256))} {
		if _, err := c.auth.DeriveHostKey(n); err == nil {
			t.Errorf("DeriveHostKey(%d bytes) succeeded", len(n))
		}
	}
	_, err := derivationSecret(struct{}{})
	a := &Authority{hostSecretErr: err}
	if _, err := a.DeriveHostKey("web1"); err == nil || !errors.Is(err, ErrHostKeyNotDerivable) {
		t.Errorf("DeriveHostKey with an underivable CA key: %v; want ErrHostKeyNotDerivable", err)
	}
}
