package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/sshclient"
)

// issueCert signs a certificate for the bastion key in $HOME (made if
// missing) with a fresh CA whose clock reads now, and saves it where
// bastion login would.
func issueCert(t *testing.T, now time.Time, validity string) *gossh.Certificate {
	t.Helper()
	paths, err := sshclient.DefaultPaths()
	if err != nil {
		t.Fatal(err)
	}
	if err := paths.Ensure(); err != nil {
		t.Fatal(err)
	}
	key, _, err := sshclient.LoadOrCreateKey(paths.Key(), "")
	if err != nil {
		t.Fatal(err)
	}
	layout := ca.Layout{DataDir: t.TempDir()}
	if _, _, err := ca.Init(layout, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	store, err := audit.Open(layout.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	auth, err := ca.New(ca.Config{Layout: layout, Now: func() time.Time { return now }}, store)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ca.ParseValidity(validity)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := auth.Sign(t.Context(), ca.Request{
		Kind: ca.UserCA, Key: key.PublicKey(), KeyID: "alice@example.com sub=s-1",
		Principals: []string{"alice", "postgres-admin"}, Groups: []string{"eng", "dba"}, Validity: v,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sshclient.WriteCertificate(paths.Certificate(), cert); err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestStatus(t *testing.T) {
	t.Run("valid certificate", func(t *testing.T) {
		home := newHome(t)
		cert := issueCert(t, time.Now(), "+2h")
		if err := sshclient.SaveState(filepath.Join(home, ".ssh", "bastion", "state.json"), sshclient.State{Gateway: "gw.example.com:2222"}); err != nil {
			t.Fatal(err)
		}
		out, _, err := run(t, t.TempDir(), "status")
		if err != nil {
			t.Fatalf("status of a valid certificate: %v\n%s", err, out)
		}
		for _, want := range []string{
			"Certificate:  " + filepath.Join(home, ".ssh", "bastion", "id_ed25519-cert.pub"),
			"Identity:     alice@example.com sub=s-1",
			"Principals:   alice, postgres-admin",
			"Groups:       eng, dba",
			"Key:          " + gossh.FingerprintSHA256(cert.Key),
			"[valid for 2h0m0s]",
			"Gateway:      gw.example.com:2222",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		out, _, err = run(t, t.TempDir(), "status", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var s certStatus
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("--json: %v\n%s", err, out)
		}
		if !s.Valid || s.KeyID != cert.KeyId || strings.Join(s.Principals, ",") != "alice,postgres-admin" ||
			strings.Join(s.Groups, ",") != "eng,dba" || s.Serial != cert.Serial || s.Gateway != "gw.example.com:2222" ||
			s.SecondsLeft < 7100 || s.SecondsLeft > 7200 || s.Problem != "" {
			t.Errorf("--json = %+v", s)
		}
	})
	t.Run("expired certificate", func(t *testing.T) {
		newHome(t)
		issueCert(t, time.Now().Add(-48*time.Hour), "+1h")
		out, _, err := run(t, t.TempDir(), "status")
		if err == nil || exitCode(err) != 1 {
			t.Fatalf("status of an expired certificate: err %v (exit %d), want exit 1", err, exitCode(err))
		}
		if !strings.Contains(out, "NOT VALID: the certificate expired 47h") || !strings.Contains(err.Error(), "bastion login") {
			t.Errorf("output %q, error %v", out, err)
		}
		out, _, err = run(t, t.TempDir(), "status", "--json")
		var s certStatus
		if exitCode(err) != 1 || json.Unmarshal([]byte(out), &s) != nil || s.Valid || s.SecondsLeft != 0 || !strings.Contains(s.Problem, "expired") {
			t.Errorf("--json of an expired certificate: %v %+v", err, s)
		}
	})
	t.Run("not valid yet", func(t *testing.T) {
		newHome(t)
		issueCert(t, time.Now().Add(time.Hour), "+1h")
		out, _, err := run(t, t.TempDir(), "status")
		if exitCode(err) != 1 || !strings.Contains(out, "not valid until") {
			t.Errorf("err %v, output %s", err, out)
		}
	})
	t.Run("no certificate", func(t *testing.T) {
		newHome(t)
		_, _, err := run(t, t.TempDir(), "status")
		if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "run `bastion login`") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("certificate for another key", func(t *testing.T) {
		home := newHome(t)
		issueCert(t, time.Now(), "+1h")
		// A new key, with the old certificate left behind.
		key := filepath.Join(home, ".ssh", "bastion", "id_ed25519")
		if err := errors.Join(os.Remove(key), os.Remove(key+".pub")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := sshclient.LoadOrCreateKey(key, ""); err != nil {
			t.Fatal(err)
		}
		out, _, err := run(t, t.TempDir(), "status")
		if exitCode(err) != 1 || !strings.Contains(out, "not for "+key) {
			t.Errorf("err %v, output %s", err, out)
		}
	})
}
