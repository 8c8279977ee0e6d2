package oidc

import (
	"context"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/devidp"
)

// fakeClaims stands in for cluster.Claim (etcd) in a unit test: one
// record of one-time values shared by several providers (gateways).
type fakeClaims struct {
	mu    sync.Mutex
	seen  map[string]bool
	calls []string
	ttls  []time.Duration
	err   error
}

func (f *fakeClaims) claim(_ context.Context, kind, id string, ttl time.Duration) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, kind)
	f.ttls = append(f.ttls, ttl)
	if f.err != nil {
		return false, f.err
	}
	key := kind + "\x00" + id
	if f.seen[key] {
		return false, nil
	}
	f.seen[key] = true
	return true, nil
}

// ecdsaTwin is raw with its ES256 signature (r, s) replaced by the
// equally valid (r, n-s): another string for the same signed content.
func ecdsaTwin(t *testing.T, raw string) string {
	t.Helper()
	parts := strings.Split(raw, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("ES256 signature: %d bytes, %v", len(sig), err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	twin := append(slices.Clone(sig[:32]), s.FillBytes(make([]byte, 32))...)
	return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(twin)
}

// TestVerifyClusterClaim: with Config.Claim (the cluster's one-time
// record), an ID token accepted by one provider (gateway) is refused by
// another as token_replayed, also in another encoding of the same signed
// content (the claim is keyed like the local record, on the signing
// input); the claim lasts at least as long as the token; a token that
// fails verification is never claimed (junk cannot fill etcd); and when
// the claim cannot be recorded the login is refused with
// cluster_unavailable, saying etcd does not answer.
func TestVerifyClusterClaim(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	shared := &fakeClaims{seen: map[string]bool{}}
	p := newProvider(t, idp, func(c *Config) { c.Claim = shared.claim })
	q := newProvider(t, idp, func(c *Config) { c.Claim = shared.claim })
	mint := func(nonce string) string {
		c, err := idp.Claims("alice")
		if err != nil {
			t.Fatal(err)
		}
		c["nonce"] = nonce
		raw, err := idp.SignToken(c, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	raw := mint("n")
	if _, err := p.VerifyIDToken(t.Context(), raw, "n"); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if len(shared.calls) != 1 || shared.calls[0] != "id_token" {
		t.Fatalf("claims after one login: %v", shared.calls)
	}
	if exp, ok := claimExpiry(t, raw); ok && shared.ttls[0] < time.Until(exp) {
		t.Errorf("the claim lasts %s, less than the token (%s)", shared.ttls[0], time.Until(exp).Round(time.Second))
	}
	for name, replay := range map[string]string{"same token": raw, "re-encoded token": ecdsaTwin(t, raw)} {
		// A gateway of its own each, so that only the shared claim
		// knows the token.
		other := newProvider(t, idp, func(c *Config) { c.Claim = shared.claim })
		_, err := other.VerifyIDToken(t.Context(), replay, "n")
		wantReason(t, err, ReasonTokenReplayed)
		if err != nil && !strings.Contains(err.Error(), "another gateway") {
			t.Errorf("%s replayed at the other gateway: %v", name, err)
		}
	}

	// A forged token is refused before the claim.
	before := len(shared.calls)
	forged := raw[:strings.LastIndexByte(raw, '.')+1] + base64.RawURLEncoding.EncodeToString(make([]byte, 64))
	if _, err := q.VerifyIDToken(t.Context(), forged, "n"); err == nil {
		t.Fatal("a forged token was accepted")
	}
	if len(shared.calls) != before {
		t.Errorf("a token that failed verification was claimed")
	}

	// etcd does not answer: fail closed.
	shared.err = errors.New("context deadline exceeded")
	_, err := q.VerifyIDToken(t.Context(), mint("m"), "m")
	wantReason(t, err, ReasonClusterUnavailable)
	if err != nil && !strings.Contains(err.Error(), "etcd does not answer") {
		t.Errorf("cluster unavailable: %v", err)
	}
}

// claimExpiry reads exp from raw's payload (unverified; the test signed
// it).
func claimExpiry(t *testing.T, raw string) (time.Time, bool) {
	t.Helper()
	parts := strings.Split(raw, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Exp int64 `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil || c.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(c.Exp, 0), true
}
