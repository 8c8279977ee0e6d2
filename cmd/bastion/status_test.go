package main

import (
	"encoding/json"
	"errors"
	"fmt"
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

// TestStatusSaysRevokedOrLocked: a certificate within its dates that the
// gateway refuses is NOT VALID in `bastion status`: it asks the gateway of
// the last login (which runs its own certificate check, without counting
// a failed login), and reads the data dir's revocation state when it can.
func TestStatusSaysRevokedOrLocked(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{banAfter: 2})
	newHome(t)
	login := func() *gossh.Certificate {
		t.Helper()
		if _, stderr, err := runLoginCLI(t, e.addr, e.approveDevice(t, "eng")); err != nil {
			t.Fatalf("login: %v\n%s", err, stderr)
		}
		paths, _ := sshclient.DefaultPaths()
		return readCert(t, paths.Certificate())
	}
	noData := t.TempDir()
	cert := login()
	out, _, err := run(t, noData, "status")
	if err != nil || !strings.Contains(out, "[valid for ") || !strings.Contains(out, "Checked:      gateway "+e.addr) {
		t.Fatalf("status of a good certificate: %v\n%s", err, out)
	}

	// Revoked: the gateway says so, and why.
	if err := e.auth.State().Revocations.Revoke(t.Context(), ca.Revocation{Kind: ca.RevokeSerial, Value: fmt.Sprint(cert.Serial), Reason: "laptop stolen", By: "test"}); err != nil {
		t.Fatal(err)
	}
	for range 3 { // more than banAfter: a status check is not a failed login
		out, _, err = run(t, noData, "status")
		if exitCode(err) != 1 || !strings.Contains(out, "NOT VALID: the gateway at "+e.addr+" refuses it (revoked): certificate revoked by serial") ||
			!strings.Contains(out, "laptop stolen") || strings.Contains(out, "[valid for") || !strings.Contains(err.Error(), "bastion login") {
			t.Fatalf("status of a revoked certificate: exit %d %v\n%s", exitCode(err), err, out)
		}
	}
	var s certStatus
	out, _, _ = run(t, noData, "status", "--json")
	if json.Unmarshal([]byte(out), &s) != nil || s.Valid || s.Barred != "revoked" || len(s.Checked) != 1 {
		t.Errorf("--json of a revoked certificate: %s", out)
	}
	if n := len(e.events(audit.TypeAuthFailed)); n != 0 {
		t.Errorf("status checks were recorded as %d failed logins", n)
	}
	// --offline asks nobody, and says that only the dates were checked.
	if out, _, err := run(t, noData, "status", "--offline"); err != nil || !strings.Contains(out, "only its dates were checked") {
		t.Errorf("--offline: %v\n%s", err, out)
	}

	// Locked: a new certificate, then a lock.
	login()
	if err := e.locks.Lock(t.Context(), ca.Lock{Target: e.user, Reason: "incident 9", By: "test"}); err != nil {
		t.Fatal(err)
	}
	out, _, err = run(t, noData, "status")
	if exitCode(err) != 1 || !strings.Contains(out, "refuses it (locked): certificate "+e.user+" is locked: incident 9") || !strings.Contains(err.Error(), "ask an administrator") {
		t.Fatalf("status of a locked user's certificate: exit %d %v\n%s", exitCode(err), err, out)
	}

	// The gateway stopped: its data dir's state says the same, and status
	// says it could not ask the gateway.
	e.stop()
	out, _, err = run(t, e.layout.DataDir, "status")
	if exitCode(err) != 1 || !strings.Contains(out, "the revocation state in "+e.layout.DataDir+" bars it: certificate "+e.user+" is locked: incident 9") ||
		!strings.Contains(out, "Checked:      data dir "+e.layout.DataDir) {
		t.Fatalf("status against the data dir: exit %d %v\n%s", exitCode(err), err, out)
	}
	// Neither reachable: valid by its dates, and status says what it
	// could not check.
	out, _, err = run(t, noData, "status")
	if err != nil || !strings.Contains(out, "Not checked:  gateway "+e.addr) || !strings.Contains(out, "only its dates were checked") {
		t.Fatalf("status with the gateway down: %v\n%s", err, out)
	}
}
