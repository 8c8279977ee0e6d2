package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestLoginTokenRefusals hands the gateway's login service (the PKCE path:
// `ssh login@gateway login-token` with the ID token on stdin) every kind of
// bad token through the real OpenSSH client. Each is refused with the
// right login.failed reason and signs nothing; a good token signs. (A group
// mapped to root cannot even be configured: oidc.New refuses it.)
func TestLoginTokenRefusals(t *testing.T) {
	lg := startLoginGateway(t)
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	claims := func(user string, edit func(map[string]any)) map[string]any {
		c, err := lg.idp.Claims(user)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(c)
		}
		return c
	}
	sign := func(c map[string]any) string {
		raw, err := lg.idp.SignToken(c, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	algNone := func(c map[string]any) string {
		payload, _ := json.Marshal(c)
		return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + base64.RawURLEncoding.EncodeToString(payload) + "."
	}
	tests := []struct {
		name   string
		token  func() string
		reason string // "" = success
	}{
		{"good token", func() string { return sign(claims("eng", nil)) }, ""},
		{"signed by another key", func() string {
			raw, err := lg.idp.SignToken(claims("eng", nil), otherKey, "")
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}, oidc.ReasonBadSignature},
		{"alg none", func() string { return algNone(claims("eng", nil)) }, oidc.ReasonAlgNotAllowed},
		{"wrong audience", func() string { return sign(claims("eng", func(c map[string]any) { c["aud"] = "someone-else" })) }, oidc.ReasonBadAudience},
		{"wrong issuer", func() string {
			return sign(claims("eng", func(c map[string]any) { c["iss"] = "https://evil.example.com" }))
		}, oidc.ReasonBadIssuer},
		{"expired", func() string {
			return sign(claims("eng", func(c map[string]any) {
				c["iat"] = time.Now().Add(-3 * time.Hour).Unix()
				c["exp"] = time.Now().Add(-2 * time.Hour).Unix()
			}))
		}, oidc.ReasonTokenExpired},
		{"unverified email", func() string { return sign(claims("unv", nil)) }, oidc.ReasonEmailUnverified},
		{"username maps to root", func() string { return sign(claims("rooty", nil)) }, oidc.ReasonForbiddenPrincipal},
		{"preferred username root via email local part", func() string {
			return sign(claims("eng", func(c map[string]any) { c["email"] = "ROOT@example.com" }))
		}, oidc.ReasonForbiddenPrincipal},
		{"principal with a comma", func() string {
			return sign(claims("eng", func(c map[string]any) { c["email"] = "alice,root@example.com" }))
		}, oidc.ReasonBadPrincipal},
		{"principal with a newline", func() string {
			return sign(claims("eng", func(c map[string]any) { c["email"] = "alice\nroot@example.com" }))
		}, oidc.ReasonBadPrincipal},
		{"garbage", func() string { return "not-a-jwt" }, oidc.ReasonMalformedToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testbed.NewClient(t)
			c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			issued := len(lg.events("cert.issued"))
			res := c.RunInput(t.Context(), strings.NewReader(tc.token()+"\n\n"), "ssh", lg.gatewayArgs(LoginUser, "login-token")...)
			fp := gossh.FingerprintSHA256(c.PublicKey())
			if tc.reason == "" {
				if res.ExitCode != 0 {
					t.Fatalf("good token refused: %s", res)
				}
				if _, _, _, _, err := gossh.ParseAuthorizedKey([]byte(res.Stdout)); err != nil {
					t.Fatalf("no certificate on stdout: %s", res)
				}
				lg.waitEvent(t, "login.ok", map[string]string{"flow": "pkce", "key_fp": fp})
				return
			}
			if res.ExitCode == 0 || res.Stdout != "" {
				t.Fatalf("bad token accepted: %s", res)
			}
			lg.waitEvent(t, "login.failed", map[string]string{"flow": "pkce", "reason": tc.reason, "key_fp": fp})
			if n := len(lg.events("cert.issued")); n != issued {
				t.Errorf("a refused token signed %d certificate(s)", n-issued)
			}
		})
	}
}
