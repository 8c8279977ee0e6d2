package ca

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestRealSSHDHonoursOurCertificatesAndKRL starts a real sshd that trusts
// our user CA (TrustedUserCAKeys) and reads our KRL (RevokedKeys), and has
// the real ssh client try each kind of certificate.
func TestRealSSHDHonoursOurCertificatesAndKRL(t *testing.T) {
	testbed.RequireOpenSSH(t)
	ctx := t.Context()
	login := testbed.LoginUser(t)
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})

	// An authority with a clock two days back signs a certificate that is
	// expired today; another CA altogether signs the wrong-CA case.
	past, err := New(Config{Layout: c.layout, Now: func() time.Time { return time.Now().Add(-48 * time.Hour) }}, c.store)
	must(t, err)
	other := newTestCA(t, KeyEd25519, time.Time{}, Policy{})

	revs, err := LoadRevocations(c.store, nil)
	must(t, err)
	must(t, revs.Revoke(ctx, Revocation{Kind: RevokeSerial, Value: "90001", Reason: "test"}))
	must(t, revs.Revoke(ctx, Revocation{Kind: RevokeKeyID, Value: "revoked-by-id"}))
	krl, err := revs.KRL(c.auth.TrustedKeys(UserCA)).Marshal()
	must(t, err)

	d := testbed.StartSSHD(t, testbed.SSHDConfig{
		TrustedUserCAKeys: ExportLines(UserCA, c.auth.TrustedKeys(UserCA), ""),
		RevokedKeys:       krl,
	})

	tests := []struct {
		name    string
		auth    *Authority
		req     Request
		wantIn  bool
		logHint string
	}{
		{"valid user cert", c.auth, Request{Kind: UserCA, KeyID: "ok", Principals: []string{login}}, true, ""},
		{"expired", past, Request{Kind: UserCA, KeyID: "old", Principals: []string{login}, Validity: mustValidity(t, "+1h")}, false, "expired"},
		{"wrong principal", c.auth, Request{Kind: UserCA, KeyID: "wp", Principals: []string{"someone-else"}}, false, "not a listed principal"},
		{"other CA", other.auth, Request{Kind: UserCA, KeyID: "oc", Principals: []string{login}}, false, ""},
		{"revoked serial", c.auth, Request{Kind: UserCA, KeyID: "rs", Principals: []string{login}, Serial: 90001}, false, "revoked by file"},
		{"revoked key id", c.auth, Request{Kind: UserCA, KeyID: "revoked-by-id", Principals: []string{login}}, false, "revoked by file"},
		{"host cert as user cert", c.auth, Request{Kind: HostCA, KeyID: "hc", Principals: []string{"web1"}}, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cl := testbed.NewClient(t)
			cl.TrustHostKey(d.Addr, d.HostKeyPub)
			tc.req.Key = cl.PublicKey()
			cert, err := tc.auth.Sign(ctx, tc.req)
			must(t, err)
			cl.SetCertificate(certLine(cert))
			res := cl.Run(ctx, "ssh", "-p", strconv.Itoa(d.Port), d.Target(), "echo", "in-as-$(id -un)")
			got := res.ExitCode == 0 && strings.Contains(res.Stdout, "in-as-"+login)
			if got != tc.wantIn {
				t.Fatalf("logged in = %v, want %v\n%s\nsshd log:\n%s", got, tc.wantIn, res, d.Log())
			}
			if !tc.wantIn && !strings.Contains(res.Stderr, "Permission denied") {
				t.Errorf("refusal without 'Permission denied': %s", res)
			}
			if tc.logHint != "" && !strings.Contains(strings.ToLower(d.Log()), tc.logHint) {
				t.Errorf("sshd log does not mention %q:\n%s", tc.logHint, d.Log())
			}
		})
	}
}

func mustValidity(t testing.TB, s string) Validity {
	t.Helper()
	v, err := ParseValidity(s)
	must(t, err)
	return v
}
