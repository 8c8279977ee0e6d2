package ca

import (
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

func TestInitLayoutAndModes(t *testing.T) {
	for _, kt := range []KeyType{KeyEd25519, KeyECDSAP256, KeyRSA4096} {
		t.Run(string(kt), func(t *testing.T) {
			l := Layout{DataDir: t.TempDir()}
			user, host, err := Init(l, InitOptions{KeyType: kt})
			must(t, err)
			if string(user.Marshal()) == string(host.Marshal()) {
				t.Fatal("user and host CA share a key")
			}
			st, err := os.Stat(l.Dir())
			must(t, err)
			if st.Mode().Perm() != 0o700 {
				t.Errorf("ca dir mode %04o, want 0700", st.Mode().Perm())
			}
			for _, k := range []Kind{UserCA, HostCA} {
				st, err := os.Stat(l.PrivateKey(k))
				must(t, err)
				if st.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %04o, want 0600", l.PrivateKey(k), st.Mode().Perm())
				}
				keys, err := l.TrustedKeys(k)
				must(t, err)
				if len(keys) != 1 {
					t.Errorf("%s: %d trusted keys, want 1", k, len(keys))
				}
			}
			if _, _, err := Init(l, InitOptions{KeyType: kt}); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
				t.Errorf("second Init = %v, want a refusal to overwrite", err)
			}
			// The key is the type asked for, and signs.
			store, err := audit.Open(l.AuditDB(), audit.Options{})
			must(t, err)
			defer store.Close()
			auth, err := New(Config{Layout: l}, store)
			must(t, err)
			if got := keyTypeOf(auth.PublicKey(UserCA)); got != kt {
				t.Errorf("key type %s, want %s", got, kt)
			}
			cert, err := auth.Sign(t.Context(), Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}})
			must(t, err)
			if kt == KeyRSA4096 && cert.Signature.Format != ssh.KeyAlgoRSASHA512 {
				t.Errorf("RSA CA signed with %s, want rsa-sha2-512", cert.Signature.Format)
			}
		})
	}
}

func TestLoadRefusesReadableKey(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		must(t, os.Chmod(c.layout.PrivateKey(UserCA), mode))
		_, err := New(Config{Layout: c.layout}, c.store)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: New = %v, want a refusal that says chmod 600", mode, err)
		}
	}
	must(t, os.Chmod(c.layout.PrivateKey(UserCA), 0o600))
	if _, err := New(Config{Layout: c.layout}, c.store); err != nil {
		t.Errorf("mode 0600 refused: %v", err)
	}
}

func TestPassphraseEncryptedCA(t *testing.T) {
	l := Layout{DataDir: t.TempDir()}
	_, _, err := Init(l, InitOptions{Passphrase: []byte("correct horse")})
	must(t, err)
	raw, err := os.ReadFile(l.PrivateKey(UserCA))
	must(t, err)
	if _, err := ssh.ParseRawPrivateKey(raw); err == nil {
		t.Fatal("the private key is readable without the passphrase")
	}
	store, err := audit.Open(l.AuditDB(), audit.Options{})
	must(t, err)
	defer store.Close()
	if _, err := New(Config{Layout: l}, store); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("load without passphrase = %v, want an error asking for it", err)
	}
	if _, err := New(Config{Layout: l, Passphrase: []byte("wrong")}, store); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Errorf("load with wrong passphrase = %v", err)
	}
	auth, err := New(Config{Layout: l, Passphrase: []byte("correct horse")}, store)
	must(t, err)
	if _, err := auth.Sign(t.Context(), Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}}); err != nil {
		t.Error(err)
	}
}

func TestTrustedKeysRefuseCertificate(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	cert, err := c.auth.Sign(t.Context(), Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}})
	must(t, err)
	// Teleport CVE-2025-49825: a certificate smuggled in as a CA key.
	must(t, os.WriteFile(c.layout.PreviousKeys(UserCA), certLine(cert), 0o644))
	if _, err := c.layout.TrustedKeys(UserCA); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("TrustedKeys = %v, want a refusal of a certificate as CA key", err)
	}
	if c.auth.IsTrusted(UserCA, cert) {
		t.Error("IsTrusted accepted a certificate as a CA key")
	}
}

func TestRotateAndRetire(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	ctx := t.Context()
	oldCert, err := c.auth.Sign(ctx, Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}})
	must(t, err)
	hostBefore := c.auth.PublicKey(HostCA)

	oldKey, newKey2, err := c.auth.Rotate(ctx, UserCA, KeyECDSAP256, "operator:test")
	must(t, err)
	if string(oldKey.Marshal()) != string(oldCert.SignatureKey.Marshal()) {
		t.Fatal("Rotate reported a different old key")
	}
	if newKey2.Type() != ssh.KeyAlgoECDSA256 {
		t.Errorf("new key type %s, want ecdsa", newKey2.Type())
	}
	if string(c.auth.PublicKey(HostCA).Marshal()) != string(hostBefore.Marshal()) {
		t.Error("rotating the user CA changed the host CA")
	}
	newCert, err := c.auth.Sign(ctx, Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}})
	must(t, err)
	if string(newCert.SignatureKey.Marshal()) != string(newKey2.Marshal()) {
		t.Error("after rotation, certificates are not signed by the newest key")
	}
	if !c.auth.IsTrusted(UserCA, oldKey) || !c.auth.IsTrusted(UserCA, newKey2) {
		t.Error("both keys must be trusted during the overlap")
	}
	// A fresh load (another process) sees the same state.
	reloaded, err := New(Config{Layout: c.layout}, c.store)
	must(t, err)
	if got := len(reloaded.TrustedKeys(UserCA)); got != 2 {
		t.Errorf("reloaded trusted keys %d, want 2", got)
	}
	exported := ExportLines(UserCA, reloaded.TrustedKeys(UserCA), "")
	if strings.Count(exported, "\n") != 2 {
		t.Errorf("export lists %q, want both keys", exported)
	}
	if len(c.events(t, audit.TypeCARotated)) != 1 {
		t.Error("no ca.rotated audit record")
	}

	if _, err := c.auth.Retire(ctx, UserCA, Fingerprint(newKey2), "operator:test"); err == nil {
		t.Error("retiring the current key succeeded")
	}
	gone, err := c.auth.Retire(ctx, UserCA, "", "operator:test")
	must(t, err)
	if len(gone) != 1 || c.auth.IsTrusted(UserCA, oldKey) || !c.auth.IsTrusted(UserCA, newKey2) {
		t.Error("retire did not remove exactly the old key")
	}
	if _, err := c.auth.Retire(ctx, UserCA, "", "operator:test"); err == nil {
		t.Error("retiring with nothing to retire succeeded")
	}
	if len(c.events(t, audit.TypeCARetired)) != 1 {
		t.Error("no ca.retired audit record")
	}
}

func TestExportLines(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	host := ExportLines(HostCA, c.auth.TrustedKeys(HostCA), "*.internal")
	marker, hosts, key, _, _, err := ssh.ParseKnownHosts([]byte(host))
	must(t, err)
	if marker != "cert-authority" || len(hosts) != 1 || hosts[0] != "*.internal" || !c.auth.IsTrusted(HostCA, key) {
		t.Errorf("host export %q is not a @cert-authority line for the host CA", host)
	}
	user := ExportLines(UserCA, c.auth.TrustedKeys(UserCA), "")
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(user))
	must(t, err)
	if !c.auth.IsTrusted(UserCA, k) {
		t.Error("user export is not the user CA key")
	}
}
