package ca

import (
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

func TestRevocations(t *testing.T) {
	c := newTestCA(t, KeyEd25519, time.Time{}, Policy{})
	ctx := t.Context()
	sign := func(id string, serial uint64, key ssh.PublicKey) *ssh.Certificate {
		cert, err := c.auth.Sign(ctx, Request{Kind: UserCA, Key: key, KeyID: id, Principals: []string{"alice"}, Serial: serial})
		must(t, err)
		return cert
	}
	bySerial := sign("a", 1001, newKey(t))
	byID := sign("stolen-laptop", 1002, newKey(t))
	keyA := newKey(t)
	byKey := sign("c", 1003, keyA)
	fine := sign("d", 1004, newKey(t))

	revs, err := LoadRevocations(c.store, nil)
	must(t, err)
	must(t, revs.Revoke(ctx, Revocation{Kind: RevokeSerial, Value: "1001", Reason: "test", By: "operator:test"}))
	must(t, revs.Revoke(ctx, Revocation{Kind: RevokeKeyID, Value: "stolen-laptop"}))
	must(t, revs.Revoke(ctx, RevokeKeyRequest(byKey))) // the key inside the cert
	for _, bad := range []Revocation{{Kind: RevokeSerial, Value: "0"}, {Kind: RevokeSerial, Value: "x"}, {Kind: RevokeKeyID}, {Kind: RevokeKey, Value: "MD5:xx"}, {Kind: "nope", Value: "1"}} {
		if err := revs.Revoke(ctx, bad); err == nil {
			t.Errorf("Revoke(%+v) accepted", bad)
		}
	}
	if n := len(c.events(t, audit.TypeCertRevoked)); n != 3 {
		t.Errorf("%d cert.revoked records, want 3 (invalid requests must not be recorded as revocations)", n)
	}

	// A fresh load (another process, e.g. the gateway) sees them.
	again, err := LoadRevocations(c.store, nil)
	must(t, err)
	for _, r := range []*Revocations{revs, again} {
		for _, tc := range []struct {
			cert *ssh.Certificate
			want bool
		}{{bySerial, true}, {byID, true}, {byKey, true}, {fine, false}} {
			if _, got := r.Check(tc.cert); got != tc.want {
				t.Errorf("Check(serial %d) = %v, want %v", tc.cert.Serial, got, tc.want)
			}
		}
		if _, got := r.Check(keyA); !got {
			t.Error("the plain key of a revoked key is not revoked")
		}
		if len(r.List()) != 3 {
			t.Errorf("List has %d entries, want 3", len(r.List()))
		}
	}
	krl := revs.KRL(c.auth.TrustedKeys(UserCA))
	for _, tc := range []struct {
		cert *ssh.Certificate
		want bool
	}{{bySerial, true}, {byID, true}, {byKey, true}, {fine, false}} {
		if got := krl.IsRevoked(tc.cert); got != tc.want {
			t.Errorf("KRL.IsRevoked(serial %s) = %v, want %v", strconv.FormatUint(tc.cert.Serial, 10), got, tc.want)
		}
	}
}
