package oidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/bastion-ssh/bastion/internal/devidp"
)

// TestVerifyRefusals: every way an ID token can be wrong is refused with
// its own reason code, and no error message repeats the token.
func TestVerifyRefusals(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	const secret = "client-secret-that-an-attacker-would-use-for-hs256"
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()

	signed := func(edit func(map[string]any)) func(t *testing.T) string {
		return func(t *testing.T) string {
			c, err := idp.Claims("alice")
			if err != nil {
				t.Fatal(err)
			}
			c["nonce"] = "n"
			if edit != nil {
				edit(c)
			}
			raw, err := idp.SignToken(c, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}
	}
	claimsJSON := func(t *testing.T) []byte {
		c, err := idp.Claims("alice")
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	tests := []struct {
		name   string
		cfg    func(*Config)
		token  func(t *testing.T) string
		nonce  string
		reason string
	}{
		{name: "valid", token: signed(nil), reason: ""},
		{name: "another key, same kid", token: func(t *testing.T) string {
			c, _ := idp.Claims("alice")
			raw, err := idp.SignToken(c, otherKey, "")
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}, reason: ReasonBadSignature},
		{name: "another key, unknown kid", token: func(t *testing.T) string {
			c, _ := idp.Claims("alice")
			raw, err := idp.SignToken(c, otherKey, "attacker-key")
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}, reason: ReasonBadSignature},
		{name: "payload swapped under a valid signature", token: func(t *testing.T) string {
			good := signed(nil)(t)
			evil := signed(func(c map[string]any) { c["email"] = "bob@example.com" })(t)
			g, e := strings.Split(good, "."), strings.Split(evil, ".")
			return g[0] + "." + e[1] + "." + g[2]
		}, reason: ReasonBadSignature},
		{name: "alg none", token: func(t *testing.T) string {
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
			return h + "." + base64.RawURLEncoding.EncodeToString(claimsJSON(t)) + "."
		}, reason: ReasonAlgNotAllowed},
		{name: "HS256 with the client secret", cfg: func(c *Config) { c.ClientSecret = secret }, token: func(t *testing.T) string {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(secret)}, (&jose.SignerOptions{}).WithType("JWT"))
			if err != nil {
				t.Fatal(err)
			}
			jws, err := s.Sign(claimsJSON(t))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := jws.CompactSerialize()
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}, reason: ReasonAlgNotAllowed},
		{name: "alg outside the configured list", cfg: func(c *Config) { c.AllowedAlgs = []string{"RS256"} }, token: signed(nil), reason: ReasonAlgNotAllowed},
		{name: "not a JWS", token: func(*testing.T) string { return "not-a-token" }, reason: ReasonMalformedToken},
		{name: "wrong audience", token: signed(func(c map[string]any) { c["aud"] = []string{"another-app"}; c["azp"] = "another-app" }), reason: ReasonBadAudience},
		{name: "several audiences, azp another client", token: signed(func(c map[string]any) { c["aud"] = []string{"bastion", "another-app"}; c["azp"] = "another-app" }), reason: ReasonBadAudience},
		{name: "several audiences, no azp", token: signed(func(c map[string]any) { c["aud"] = []string{"bastion", "another-app"}; delete(c, "azp") }), reason: ReasonBadAudience},
		{name: "one audience, azp another client", token: signed(func(c map[string]any) { c["aud"] = []string{"bastion"}; c["azp"] = "another-app" }), reason: ReasonBadAudience},
		{name: "one audience as a string, azp another client", token: signed(func(c map[string]any) { c["aud"] = "bastion"; c["azp"] = "another-app" }), reason: ReasonBadAudience},
		{name: "several audiences, azp this client", token: signed(func(c map[string]any) { c["aud"] = []string{"bastion", "another-app"}; c["azp"] = "bastion" }), reason: ""},
		{name: "one audience, no azp", token: signed(func(c map[string]any) { delete(c, "azp") }), reason: ""},
		{name: "no nonce issued", token: signed(nil), nonce: "none", reason: ReasonBadNonce},
		{name: "wrong issuer", token: signed(func(c map[string]any) { c["iss"] = "https://evil.example.com" }), reason: ReasonBadIssuer},
		{name: "expired", token: signed(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() }), reason: ReasonTokenExpired},
		{name: "expired on the gateway's clock", cfg: func(c *Config) { c.Now = func() time.Time { return now.Add(2 * time.Hour) } }, token: signed(nil), reason: ReasonTokenExpired},
		{name: "not yet valid", token: signed(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() }), reason: ReasonTokenNotYetValid},
		{name: "email unverified", token: signed(func(c map[string]any) { c["email_verified"] = false }), reason: ReasonEmailUnverified},
		{name: "email_verified as the string false", token: signed(func(c map[string]any) { c["email_verified"] = "false" }), reason: ReasonEmailUnverified},
		{name: "email_verified missing", token: signed(func(c map[string]any) { delete(c, "email_verified") }), reason: ReasonEmailUnverified},
		{name: "domain not allowed", cfg: func(c *Config) { c.AllowedDomains = []string{"example.com"} },
			token: signed(func(c map[string]any) { c["email"] = "alice@example.com.evil.test" }), reason: ReasonDomainNotAllowed},
		{name: "domain hidden before a second @", cfg: func(c *Config) { c.AllowedDomains = []string{"example.com"} },
			token: signed(func(c map[string]any) { c["email"] = "alice@example.com@evil.test" }), reason: ReasonDomainNotAllowed},
		{name: "domain check needs a verified email", cfg: func(c *Config) { c.AllowedDomains = []string{"example.com"}; c.UsernameClaim = ClaimPreferredUsername },
			token: signed(func(c map[string]any) { c["email_verified"] = false }), reason: ReasonEmailUnverified},
		{name: "username root", token: signed(func(c map[string]any) { c["email"] = "root@example.com" }), reason: ReasonForbiddenPrincipal},
		{name: "username Root", token: signed(func(c map[string]any) { c["email"] = "Root@example.com" }), reason: ReasonForbiddenPrincipal},
		{name: "username forbidden by policy", cfg: func(c *Config) { c.Forbidden = func(p string) bool { return p == "admin" } },
			token: signed(func(c map[string]any) { c["email"] = "admin@example.com" }), reason: ReasonForbiddenPrincipal},
		{name: "username root from sub", cfg: func(c *Config) { c.UsernameClaim = ClaimSubject },
			token: signed(func(c map[string]any) { c["sub"] = "ROOT" }), reason: ReasonForbiddenPrincipal},
		{name: "principal with a comma", cfg: func(c *Config) { c.UsernameClaim = ClaimPreferredUsername },
			token: signed(func(c map[string]any) { c["preferred_username"] = "alice,root" }), reason: ReasonBadPrincipal},
		{name: "principal with a newline", cfg: func(c *Config) { c.UsernameClaim = ClaimPreferredUsername },
			token: signed(func(c map[string]any) { c["preferred_username"] = "alice\nbob" }), reason: ReasonBadPrincipal},
		{name: "principal with a space", token: signed(func(c map[string]any) { c["email"] = `"alice bob"@example.com` }), reason: ReasonBadPrincipal},
		{name: "username claim missing", cfg: func(c *Config) { c.UsernameClaim = ClaimPreferredUsername },
			token: signed(func(c map[string]any) { delete(c, "preferred_username") }), reason: ReasonMissingClaim},
		{name: "bad nonce", token: signed(func(c map[string]any) { c["nonce"] = "login-1" }), nonce: "login-2", reason: ReasonBadNonce},
		{name: "nonce expected, none in token", token: signed(nil), nonce: "login-2", reason: ReasonBadNonce},
		{name: "nonce matches", token: signed(func(c map[string]any) { c["nonce"] = "login-1" }), nonce: "login-1", reason: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProvider(t, idp, tt.cfg)
			raw := tt.token(t)
			nonce := tt.nonce
			switch nonce {
			case "":
				nonce = "n"
			case "none":
				nonce = ""
			}
			id, err := p.VerifyIDToken(t.Context(), raw, nonce)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("refused a good token: %v", err)
				}
				if id.Username != "alice" {
					t.Fatalf("identity = %+v", id)
				}
				return
			}
			if id != nil {
				t.Errorf("an identity came back with the error: %+v", id)
			}
			wantReason(t, err, tt.reason)
			parts := strings.Split(raw, ".")
			for _, part := range parts {
				if len(part) > 8 && strings.Contains(err.Error(), part) {
					t.Errorf("error message repeats the token: %v", err)
				}
			}
		})
	}
}

// TestVerifyGroupMappedToRoot: even if a group mapping to root got past
// configuration (a policy that changed since), the login is refused.
func TestVerifyGroupMappedToRoot(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	if _, err := New(t.Context(), Config{Issuer: idp.Issuer(), ClientID: idp.ClientID(), GroupPrincipals: map[string][]string{"eng": {"root"}}}); ReasonOf(err) != ReasonConfig {
		t.Fatalf("New accepted a group mapped to root: %v", err)
	}
	forbidden := false
	p := newProvider(t, idp, func(c *Config) {
		c.GroupPrincipals = map[string][]string{"eng": {"toor"}}
		c.Forbidden = func(s string) bool { return forbidden && s == "toor" }
	})
	token := func(nonce string) string {
		c, _ := idp.Claims("alice")
		c["nonce"] = nonce
		raw, err := idp.SignToken(c, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	if _, err := p.VerifyIDToken(t.Context(), token("n1"), "n1"); err != nil {
		t.Fatal(err)
	}
	forbidden = true // the CA policy now forbids toor
	_, err := p.VerifyIDToken(t.Context(), token("n2"), "n2")
	wantReason(t, err, ReasonForbiddenPrincipal)
}

// TestVerifyOneTimeUse: a token is good for one login. The same signed
// content in another encoding is the same token: the ECDSA twin signature
// (r, n-s), which verifies just as well, is refused too. A refusal by the
// mapping carries the verified claims that say who was refused.
func TestVerifyOneTimeUse(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, func(c *Config) { c.AllowedDomains = []string{"corp.example"} })
	q := newProvider(t, idp, nil)
	c, _ := idp.Claims("alice")
	c["nonce"] = "n"
	raw, err := idp.SignToken(c, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.VerifyIDToken(t.Context(), raw, "n")
	wantReason(t, err, ReasonDomainNotAllowed)
	e, _ := errors.AsType[*Error](err)
	if e.Claims["subject"] != "demo-alice" || e.Claims["email"] != "alice@example.com" || e.Claims["claim_groups"] != "eng" {
		t.Errorf("refusal claims = %v, want who was refused", e.Claims)
	}
	_, err = p.VerifyIDToken(t.Context(), raw, "n")
	wantReason(t, err, ReasonTokenReplayed)

	if _, err := q.VerifyIDToken(t.Context(), raw, "n"); err != nil {
		t.Fatalf("first use at another provider: %v", err)
	}
	parts := strings.Split(raw, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("ES256 signature: %d bytes, %v", len(sig), err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	twin := append(slices.Clone(sig[:32]), s.FillBytes(make([]byte, 32))...)
	twinRaw := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(twin)
	if twinRaw == raw {
		t.Fatal("the twin is the same token")
	}
	_, err = q.VerifyIDToken(t.Context(), twinRaw, "n")
	wantReason(t, err, ReasonTokenReplayed)
}
