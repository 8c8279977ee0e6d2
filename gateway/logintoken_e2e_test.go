package gateway

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// converse runs `ssh login@gateway cmd` with c's key through the real
// OpenSSH client and talks to it: talk reads the session's stdout and
// writes its stdin (closed when talk returns); the rest of stdout and
// all of stderr come back in the result.
func (lg *loginGateway) converse(t *testing.T, c *testbed.Client, cmd string, talk func(out *bufio.Reader, in io.Writer)) testbed.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sc := c.Command(ctx, "ssh", lg.gatewayArgs(LoginUser, cmd)...)
	in, err := sc.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := sc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	sc.Stderr = &stderr
	if err := sc.Start(); err != nil {
		t.Fatal(err)
	}
	out := bufio.NewReader(outPipe)
	talk(out, in)
	in.Close()
	rest, _ := io.ReadAll(out)
	werr := sc.Wait()
	res := testbed.Result{Stdout: string(rest), Stderr: stderr.String()}
	if werr != nil {
		res.ExitCode = sc.ProcessState.ExitCode()
	}
	return res
}

// tokenLogin runs the login-token session: it reads the gateway's nonce
// and sends token(nonce).
func (lg *loginGateway) tokenLogin(t *testing.T, c *testbed.Client, token func(nonce string) string) testbed.Result {
	return lg.converse(t, c, "login-token", func(out *bufio.Reader, in io.Writer) {
		line, err := out.ReadString('\n')
		var msg struct {
			Nonce string `json:"nonce"`
		}
		if err != nil || json.Unmarshal([]byte(line), &msg) != nil || msg.Nonce == "" {
			t.Errorf("the gateway sent no nonce first: %q, %v", line, err)
		}
		io.WriteString(in, token(msg.Nonce)+"\n")
	})
}

// TestLoginTokenRefusals hands the gateway's login service (`ssh
// login@gateway login-token`: the gateway sends a nonce, the client an ID
// token carrying it) every kind of bad token through the real OpenSSH
// client. Each is refused with the right login.failed reason and signs
// nothing; a good token signs. (A group mapped to root cannot even be
// configured: oidc.New refuses it.)
func TestLoginTokenRefusals(t *testing.T) {
	lg := startLoginGateway(t)
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var nonce string // this session's, set before token() is called
	claims := func(user string, edit func(map[string]any)) map[string]any {
		c, err := lg.idp.Claims(user)
		if err != nil {
			t.Fatal(err)
		}
		c["nonce"] = nonce
		c["jti"] = rand.Text() // each token is distinct, as an IdP's are
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
		{"no nonce", func() string { return sign(claims("eng", func(c map[string]any) { delete(c, "nonce") })) }, oidc.ReasonBadNonce},
		{"a nonce the client chose", func() string { return sign(claims("eng", func(c map[string]any) { c["nonce"] = "chosen-by-client" })) }, oidc.ReasonBadNonce},
		{"one audience, azp another client", func() string {
			return sign(claims("eng", func(c map[string]any) { c["azp"] = "another-client" }))
		}, oidc.ReasonBadAudience},
		{"several audiences, no azp", func() string {
			return sign(claims("eng", func(c map[string]any) { c["aud"] = []string{lg.idp.ClientID(), "another-client"}; delete(c, "azp") }))
		}, oidc.ReasonBadAudience},
		{"several audiences, azp another client", func() string {
			return sign(claims("eng", func(c map[string]any) {
				c["aud"] = []string{lg.idp.ClientID(), "another-client"}
				c["azp"] = "another-client"
			}))
		}, oidc.ReasonBadAudience},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testbed.NewClient(t)
			c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			issued := len(lg.events("cert.issued"))
			res := lg.tokenLogin(t, c, func(n string) string { nonce = n; return tc.token() })
			fp := gossh.FingerprintSHA256(c.PublicKey())
			if tc.reason == "" {
				if res.ExitCode != 0 {
					t.Fatalf("good token refused: %s", res)
				}
				if _, _, _, _, err := gossh.ParseAuthorizedKey([]byte(res.Stdout)); err != nil {
					t.Fatalf("no certificate on stdout: %s", res)
				}
				lg.waitEvent(t, "login.ok", map[string]string{"flow": "token", "key_fp": fp})
				return
			}
			if res.ExitCode == 0 || res.Stdout != "" {
				t.Fatalf("bad token accepted: %s", res)
			}
			lg.waitEvent(t, "login.failed", map[string]string{"flow": "token", "reason": tc.reason, "key_fp": fp})
			if n := len(lg.events("cert.issued")); n != issued {
				t.Errorf("a refused token signed %d certificate(s)", n-issued)
			}
		})
	}
}

// TestLoginTokenBound: a good ID token is bound to the session that issued
// its nonce. Handed to a second connection with another key it is
// refused (it cannot carry that session's nonce), and one token yields
// one certificate, for one key.
func TestLoginTokenBound(t *testing.T) {
	lg := startLoginGateway(t)
	var raw string
	issued := len(lg.events("cert.issued"))
	first := testbed.NewClient(t)
	first.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	res := lg.tokenLogin(t, first, func(nonce string) string {
		c, err := lg.idp.Claims("eng")
		if err != nil {
			t.Fatal(err)
		}
		c["nonce"] = nonce
		if raw, err = lg.idp.SignToken(c, nil, ""); err != nil {
			t.Fatal(err)
		}
		return raw
	})
	if res.ExitCode != 0 {
		t.Fatalf("first use refused: %s", res)
	}
	for i := range 2 {
		other := testbed.NewClient(t)
		other.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
		res := lg.tokenLogin(t, other, func(string) string { return raw })
		if res.ExitCode == 0 || res.Stdout != "" {
			t.Fatalf("replay %d through another connection and key signed: %s", i, res)
		}
		lg.waitEvent(t, "login.failed", map[string]string{"flow": "token", "reason": oidc.ReasonBadNonce, "key_fp": gossh.FingerprintSHA256(other.PublicKey())})
	}
	if n := len(lg.events("cert.issued")) - issued; n != 1 {
		t.Errorf("one token produced %d certificates", n)
	}
}
