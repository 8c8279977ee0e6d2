package ca

import (
	"errors"
	"math"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// TestSignRefusesBarredIdentities: the signing pipeline, which every path
// that signs goes through, refuses a locked identity or a revoked key or
// key id, records the refusal, and signs again once the bar is lifted.
func TestSignRefusesBarredIdentities(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	ctx := t.Context()
	st := c.auth.State()
	key := newKey(t)
	for _, tc := range []struct {
		name string
		bar  func() error
		req  Request
		rule string
	}{
		{"locked principal", func() error { return st.Locks.Lock(ctx, Lock{Target: "alice", By: "test"}) },
			Request{Principals: []string{"alice"}}, RuleLocked},
		{"locked key id", func() error { return st.Locks.Lock(ctx, Lock{Target: "deploy-bot", By: "test"}) },
			Request{Principals: []string{"deploy"}, KeyID: "deploy-bot"}, RuleLocked},
		{"locked login owner", func() error { return st.Locks.Lock(ctx, Lock{Target: "bob@example.com", By: "test"}) },
			Request{Principals: []string{"bob"}, KeyID: "bob@example.com sub=42"}, RuleLocked},
		{"revoked key id", func() error {
			return st.Revocations.Revoke(ctx, Revocation{Kind: RevokeKeyID, Value: "laptop"})
		}, Request{Principals: []string{"carol"}, KeyID: "laptop"}, RuleRevoked},
		{"revoked key", func() error { return st.Revocations.Revoke(ctx, RevokeKeyRequest(key)) },
			Request{Principals: []string{"dave"}, Key: key}, RuleRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			req.Kind = UserCA
			if req.Key == nil {
				req.Key = newKey(t)
			}
			if _, err := c.auth.Sign(ctx, req); err != nil {
				t.Fatalf("before the bar: %v", err)
			}
			if err := tc.bar(); err != nil {
				t.Fatal(err)
			}
			cert, err := c.auth.Sign(ctx, req)
			var re *RefusedError
			if !errors.As(err, &re) || re.Rule != tc.rule || cert != nil {
				t.Fatalf("Sign = %v, %v; want a %s refusal", cert, err, tc.rule)
			}
			found := false
			_ = c.store.Iterate(ctx, audit.Filter{Types: []string{audit.TypeCertRefused}}, func(ev audit.Event) error {
				found = found || ev.Fields["rule"] == tc.rule
				return nil
			})
			if !found {
				t.Error("no cert.refused record names the rule")
			}
		})
	}
}

// TestStateChangeNotifies: every revocation and lock reaches the
// listeners that end live sessions.
func TestStateChangeNotifies(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	st := c.auth.State()
	n := 0
	st.OnChange(func() { n++ })
	if err := st.Locks.Lock(t.Context(), Lock{Target: "x", By: "t"}); err != nil {
		t.Fatal(err)
	}
	if err := st.Revocations.Revoke(t.Context(), Revocation{Kind: RevokeSerial, Value: "9"}); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("%d notifications for a lock and a revocation", n)
	}
}

func TestCertTimeNeverOverflows(t *testing.T) {
	for _, tc := range []struct {
		in   uint64
		want string
	}{
		{0, "1970-01-01T00:00:00Z"},
		{1700000000, "2023-11-14T22:13:20Z"},
		{math.MaxInt64, "9999-12-31T23:59:59Z"},
		{math.MaxInt64 + 1, "9999-12-31T23:59:59Z"},
		{ssh.CertTimeInfinity - 1, "9999-12-31T23:59:59Z"},
	} {
		if got := CertTime(tc.in).Format(time.RFC3339); got != tc.want {
			t.Errorf("CertTime(%d) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if got := FormatCertTime(ssh.CertTimeInfinity); got != "forever" {
		t.Errorf("FormatCertTime(infinity) = %q", got)
	}
}
