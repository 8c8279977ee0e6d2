package ca

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

func TestSignUserCertificate(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	c := newTestCA(t, KeyEd25519, now, Policy{})
	key := newKey(t)
	cert, err := c.auth.Sign(t.Context(), Request{
		Kind: UserCA, Key: key, KeyID: "alice@example.com", Principals: []string{"alice", "alice"},
		Groups: []string{"eng", "dba"}, Requester: "operator:test", Via: "cli",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cert.CertType != ssh.UserCert {
		t.Errorf("cert type %d, want user", cert.CertType)
	}
	if got := strings.Join(cert.ValidPrincipals, ","); got != "alice" {
		t.Errorf("principals %q, want deduplicated alice", got)
	}
	if cert.Serial == 0 {
		t.Error("serial is 0; want a random non-zero serial")
	}
	wantAfter := now.Add(-DefaultClockSkew).Unix()
	wantBefore := now.Add(DefaultUserValidity).Unix()
	if int64(cert.ValidAfter) != wantAfter || int64(cert.ValidBefore) != wantBefore {
		t.Errorf("validity %d..%d, want %d..%d (backdated by clock skew, default length)", cert.ValidAfter, cert.ValidBefore, wantAfter, wantBefore)
	}
	for _, e := range []string{"permit-pty", "permit-port-forwarding", "permit-agent-forwarding"} {
		if _, ok := cert.Extensions[e]; !ok {
			t.Errorf("missing default extension %s", e)
		}
	}
	for _, e := range []string{"permit-X11-forwarding", "permit-user-rc"} {
		if _, ok := cert.Extensions[e]; ok {
			t.Errorf("extension %s is on by default; it must be off", e)
		}
	}
	if g := cert.Extensions[GroupsExtension]; g != "eng,dba" {
		t.Errorf("groups extension %q, want eng,dba", g)
	}
	if !c.auth.IsTrusted(UserCA, cert.SignatureKey) || c.auth.IsTrusted(HostCA, cert.SignatureKey) {
		t.Error("user cert must be signed by the user CA, not the host CA")
	}
	// The certificate verifies with x/crypto's checker as a user cert.
	checker := ssh.CertChecker{
		IsUserAuthority: func(k ssh.PublicKey) bool { return c.auth.IsTrusted(UserCA, k) },
		Clock:           func() time.Time { return now },
	}
	if err := checker.CheckCert("alice", cert); err != nil {
		t.Errorf("CheckCert: %v", err)
	}
	evs := c.events(t, audit.TypeCertIssued)
	if len(evs) != 1 {
		t.Fatalf("%d cert.issued events, want 1", len(evs))
	}
	f := evs[0].Fields
	if f["key_id"] != "alice@example.com" || f["principals"] != "alice" || f["key_fp"] != ssh.FingerprintSHA256(key) || evs[0].Actor != "operator:test" {
		t.Errorf("audit record %+v does not describe the certificate", evs[0])
	}
}

func TestSignHostCertificate(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	cert, err := c.auth.Sign(t.Context(), Request{Kind: HostCA, Key: newKey(t), Principals: []string{"web1.internal", "10.0.0.5", "::1"}})
	if err != nil {
		t.Fatal(err)
	}
	if cert.CertType != ssh.HostCert || !c.auth.IsTrusted(HostCA, cert.SignatureKey) || c.auth.IsTrusted(UserCA, cert.SignatureKey) {
		t.Fatal("host cert must be a host cert signed by the host CA only")
	}
	if len(cert.Extensions) != 0 || len(cert.CriticalOptions) != 0 {
		t.Errorf("host cert carries options %v %v", cert.Extensions, cert.CriticalOptions)
	}
	if d := time.Duration(cert.ValidBefore-cert.ValidAfter) * time.Second; d != DefaultHostValidity+DefaultClockSkew {
		t.Errorf("host validity %s, want %s", d, DefaultHostValidity+DefaultClockSkew)
	}
	// A host certificate is not a user certificate: x/crypto's
	// Authenticate path (the gateway's) refuses it.
	checker := ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool { return c.auth.IsTrusted(HostCA, k) }}
	if _, err := checker.Authenticate(fakeConnMeta{user: "web1.internal"}, cert); err == nil {
		t.Error("a host certificate authenticated as a user")
	}
}

// fakeConnMeta is the minimum ssh.ConnMetadata CertChecker needs.
type fakeConnMeta struct {
	ssh.ConnMetadata
	user string
}

func (f fakeConnMeta) User() string { return f.user }

func TestSignOptions(t *testing.T) {
	policy := DefaultPolicy()
	policy.ForceCommand = "/usr/bin/policy-cmd"
	policy.SourceAddress = "10.0.0.0/8"
	c := newTestCA(t, KeyEd25519, time.Time{}, policy)
	cert, err := c.auth.Sign(t.Context(), Request{Kind: UserCA, Key: newKey(t), Principals: []string{"deploy"},
		Options: []string{"force-command=/bin/sh", "source-address=0.0.0.0/0", "no-pty", "no-agent-forwarding", "permit-X11-forwarding"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := cert.CriticalOptions["force-command"]; got != policy.ForceCommand {
		t.Errorf("force-command %q: a request overrode the policy's %q", got, policy.ForceCommand)
	}
	if got := cert.CriticalOptions["source-address"]; got != policy.SourceAddress {
		t.Errorf("source-address %q: a request overrode the policy's %q", got, policy.SourceAddress)
	}
	if _, ok := cert.Extensions["permit-pty"]; ok {
		t.Error("no-pty did not remove permit-pty")
	}
	if _, ok := cert.Extensions["permit-agent-forwarding"]; ok {
		t.Error("no-agent-forwarding did not remove permit-agent-forwarding")
	}
	if _, ok := cert.Extensions["permit-X11-forwarding"]; !ok {
		t.Error("permit-X11-forwarding was not applied")
	}
}

func TestSignRefusals(t *testing.T) {
	policy := DefaultPolicy()
	policy.ForbiddenPrincipals = []string{"admin", "postgres"}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	c := newTestCA(t, KeyEd25519, now, policy)
	k := newKey(t)
	long := func(s string) Validity { return mustValidity(t, s) }
	tests := []struct {
		name string
		req  Request
		rule string
	}{
		{"root", Request{Kind: UserCA, Key: k, Principals: []string{"root"}}, RulePrincipalForbidden},
		{"root among others", Request{Kind: UserCA, Key: k, Principals: []string{"alice", "root"}}, RulePrincipalForbidden},
		{"ROOT upper case", Request{Kind: UserCA, Key: k, Principals: []string{"ROOT"}}, RulePrincipalForbidden},
		{"configured forbidden", Request{Kind: UserCA, Key: k, Principals: []string{"postgres"}}, RulePrincipalForbidden},
		{"root as host principal", Request{Kind: HostCA, Key: k, Principals: []string{"root"}}, RulePrincipalForbidden},
		{"no principals", Request{Kind: UserCA, Key: k}, RulePrincipalsEmpty},
		{"empty principal", Request{Kind: UserCA, Key: k, Principals: []string{""}}, RulePrincipalSyntax},
		{"comma", Request{Kind: UserCA, Key: k, Principals: []string{"alice,root"}}, RulePrincipalSyntax},
		{"newline", Request{Kind: UserCA, Key: k, Principals: []string{"alice\nroot"}}, RulePrincipalSyntax},
		{"space", Request{Kind: UserCA, Key: k, Principals: []string{"alice bob"}}, RulePrincipalSyntax},
		{"leading dash", Request{Kind: UserCA, Key: k, Principals: []string{"-oProxyCommand"}}, RulePrincipalSyntax},
		{"33 chars", Request{Kind: UserCA, Key: k, Principals: []string{strings.Repeat("a", 33)}}, RulePrincipalSyntax},
		{"host wildcard", Request{Kind: HostCA, Key: k, Principals: []string{"*.example.com"}}, RulePrincipalSyntax},
		{"host underscore", Request{Kind: HostCA, Key: k, Principals: []string{"web_1"}}, RulePrincipalSyntax},
		{"user validity over 24h", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Validity: long("25h")}, RuleValidityTooLong},
		{"user validity over 24h via start:end", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Validity: long("-1h:+1d1h")}, RuleValidityTooLong},
		{"host validity over 1y", Request{Kind: HostCA, Key: k, Principals: []string{"web1"}, Validity: long("+53w")}, RuleValidityTooLong},
		{"validity in the past", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Validity: long("-2h:-1h")}, RuleValidity},
		{"validity ends before start", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Validity: long("+2h:+1h")}, RuleValidity},
		{"DSA key", Request{Kind: UserCA, Key: dsaKey{}, Principals: []string{"alice"}}, RuleKeyWeak},
		{"RSA 1024", Request{Kind: UserCA, Key: readKeyFixture(t, "rsa1024.pub"), Principals: []string{"alice"}}, RuleKeyWeak},
		{"no key", Request{Kind: UserCA, Principals: []string{"alice"}}, RuleKeyType},
		{"host cert with user options", Request{Kind: HostCA, Key: k, Principals: []string{"web1"}, Options: []string{"force-command=/bin/true"}}, RuleOption},
		{"host cert with groups", Request{Kind: HostCA, Key: k, Principals: []string{"web1"}, Groups: []string{"eng"}}, RuleGroup},
		{"unknown option", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Options: []string{"verify-required"}}, RuleOption},
		{"bad source-address", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Options: []string{"source-address=example.com"}}, RuleOption},
		{"empty force-command", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Options: []string{"force-command="}}, RuleOption},
		{"group with comma", Request{Kind: UserCA, Key: k, Principals: []string{"alice"}, Groups: []string{"eng,admin"}}, RuleGroup},
		{"key id with newline", Request{Kind: UserCA, Key: k, KeyID: "alice\nforged", Principals: []string{"alice"}}, RuleKeyID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(c.events(t, audit.TypeCertRefused))
			issued := len(c.events(t, audit.TypeCertIssued))
			tc.req.Via = "test"
			cert, err := c.auth.Sign(t.Context(), tc.req)
			var re *RefusedError
			if !errors.As(err, &re) {
				t.Fatalf("Sign = %v, %v; want a refusal by rule %s", cert, err, tc.rule)
			}
			if re.Rule != tc.rule {
				t.Errorf("refused by rule %s (%v), want %s", re.Rule, err, tc.rule)
			}
			if !strings.Contains(err.Error(), tc.rule) {
				t.Errorf("error %q does not name the rule", err)
			}
			refused := c.events(t, audit.TypeCertRefused)
			if len(refused) != before+1 || refused[len(refused)-1].Fields["rule"] != tc.rule {
				t.Errorf("no cert.refused record with rule %s", tc.rule)
			}
			if n := len(c.events(t, audit.TypeCertIssued)); n != issued {
				t.Errorf("a refused request left a cert.issued record")
			}
		})
	}
}

// failingRecorder refuses every write, like a full disk.
type failingRecorder struct{}

func (failingRecorder) Append(_ context.Context, _ audit.Event) (audit.Event, error) {
	return audit.Event{}, errors.New("disk full")
}

func TestSignFailsClosedWithoutAudit(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	state, err := LoadState(c.store, nil)
	must(t, err)
	auth, err := New(Config{Layout: c.layout, State: state}, failingRecorder{})
	must(t, err)
	cert, err := auth.Sign(t.Context(), Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}})
	if err == nil || cert != nil {
		t.Fatalf("Sign = %v, %v; want no certificate when the audit record cannot be written", cert, err)
	}
	if _, err := New(Config{Layout: c.layout}, nil); err == nil {
		t.Error("New accepted a nil recorder")
	}
}

func TestExplicitSerial(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	cert, err := c.auth.Sign(t.Context(), Request{Kind: UserCA, Key: newKey(t), Principals: []string{"alice"}, Serial: 4242})
	must(t, err)
	if cert.Serial != 4242 {
		t.Errorf("serial %d, want 4242", cert.Serial)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dsaKey stands in for a DSA key: x/crypto can no longer parse one, but the
// policy must refuse it should a parser ever hand one over.
type dsaKey struct{ ssh.PublicKey }

func (dsaKey) Type() string    { return ssh.InsecureKeyAlgoDSA }
func (dsaKey) Marshal() []byte { return []byte("ssh-dss-fake") }
