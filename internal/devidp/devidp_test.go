package devidp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"
)

func start(t *testing.T, cfg Config) (*Server, []User) {
	t.Helper()
	if cfg.Users == nil {
		cfg.Users = DemoUsers()
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = time.Second
	}
	s, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, cfg.Users
}

func oauthConfig(t *testing.T, s *Server, redirect string) oauth2.Config {
	t.Helper()
	var d struct {
		Auth   string `json:"authorization_endpoint"`
		Token  string `json:"token_endpoint"`
		Device string `json:"device_authorization_endpoint"`
	}
	getJSON(t, s.Issuer()+"/.well-known/openid-configuration", &d)
	return oauth2.Config{
		ClientID:    s.ClientID(),
		Endpoint:    oauth2.Endpoint{AuthURL: d.Auth, TokenURL: d.Token, DeviceAuthURL: d.Device, AuthStyle: oauth2.AuthStyleInParams},
		RedirectURL: redirect,
		Scopes:      []string{"openid", "email", "profile", "groups"},
	}
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// claimsOf decodes a JWT payload without verifying it (the tests check
// verification in internal/oidc; here they check what the IdP puts in).
func claimsOf(t *testing.T, raw string) map[string]any {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %d parts", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStartRefusesBadConfig(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	users := DemoUsers()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no users", Config{}, "Config.Users"},
		{"user without password", Config{Users: []User{{Subject: "s", Username: "u"}}}, "Password"},
		{"duplicate user", Config{Users: []User{users[0], users[0]}}, "used twice"},
		{"public listen", Config{Users: users, Listen: "0.0.0.0:0"}, "loopback"},
		{"public issuer", Config{Users: users, Issuer: "http://192.0.2.1:8080"}, "loopback"},
		{"issuer with path", Config{Users: users, Issuer: "http://127.0.0.1:8080/idp"}, "path"},
		{"fractional interval", Config{Users: users, PollInterval: 1500 * time.Millisecond}, "PollInterval"},
		{"small RSA key", Config{Users: users, SigningKey: small}, "2048"},
		{"P-224 key", Config{Users: users, SigningKey: p224}, "P-224"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Start(t.Context(), tt.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Start accepted the config")
			}
			if !strings.HasPrefix(err.Error(), "devidp: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want devidp: ... %s", err, tt.want)
			}
		})
	}
}

func TestDiscoveryAndKeys(t *testing.T) {
	s, _ := start(t, Config{})
	var d struct {
		Issuer     string   `json:"issuer"`
		JWKS       string   `json:"jwks_uri"`
		Device     string   `json:"device_authorization_endpoint"`
		PKCE       []string `json:"code_challenge_methods_supported"`
		Scopes     []string `json:"scopes_supported"`
		Claims     []string `json:"claims_supported"`
		GrantTypes []string `json:"grant_types_supported"`
	}
	getJSON(t, s.Issuer()+"/.well-known/openid-configuration", &d)
	if d.Issuer != s.Issuer() || d.Device == "" || !slices.Contains(d.PKCE, "S256") ||
		!slices.Contains(d.Scopes, "groups") || !slices.Contains(d.Claims, "groups") ||
		!slices.Contains(d.GrantTypes, "urn:ietf:params:oauth:grant-type:device_code") {
		t.Fatalf("discovery = %+v", d)
	}
	var jwks jose.JSONWebKeySet
	getJSON(t, d.JWKS, &jwks)
	if len(jwks.Keys) != 1 || jwks.Keys[0].KeyID == "" || !jwks.Keys[0].IsPublic() || jwks.Keys[0].Algorithm != "ES256" {
		t.Fatalf("jwks = %+v", jwks)
	}
}

// TestDeviceTokenClaims: the ID token of the device flow carries what
// bastion maps: email, email_verified, preferred_username, groups.
func TestDeviceTokenClaims(t *testing.T) {
	s, _ := start(t, Config{})
	oc := oauthConfig(t, s, "")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	da, err := oc.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// People type codes in lower case and without the dash.
	typed := strings.ToLower(strings.ReplaceAll(da.UserCode, "-", ""))
	if err := s.ApproveDevice(typed, "bob"); err != nil {
		t.Fatal(err)
	}
	tok, err := oc.DeviceAccessToken(ctx, da)
	if err != nil {
		t.Fatal(err)
	}
	c := claimsOf(t, tok.Extra("id_token").(string))
	if c["iss"] != s.Issuer() || c["sub"] != "demo-bob" || c["email"] != "bob@example.com" ||
		c["email_verified"] != true || c["preferred_username"] != "bob" ||
		!slices.Equal(toStrings(c["groups"]), []string{"dba"}) || !slices.Contains(toStrings(c["aud"]), s.ClientID()) {
		t.Fatalf("id token claims = %v", c)
	}
	// Replay of the redeemed code: invalid_grant, not access_denied.
	_, err = oc.DeviceAccessToken(ctx, da)
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); !ok || re.ErrorCode != "invalid_grant" {
		t.Fatalf("replayed device code: err = %v, want invalid_grant", err)
	}
}

func toStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			s, _ := e.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

func TestApprovalPageRefusals(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	s, users := start(t, Config{Now: clk.Now, DeviceLifetime: time.Minute})
	oc := oauthConfig(t, s, "")
	da, err := oc.DeviceAuth(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	post := func(fields url.Values) (int, string) {
		resp, err := http.PostForm(s.Issuer()+devicePath, fields)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Error("approval page may be framed")
		}
		return resp.StatusCode, string(b)
	}
	pw := users[0].Password
	if st, _ := post(url.Values{"user_code": {da.UserCode}, "username": {"alice"}, "password": {pw + "x"}, "action": {"approve"}}); st != http.StatusUnauthorized {
		t.Errorf("wrong password: status %d", st)
	}
	if st, _ := post(url.Values{"user_code": {"BCDF-GHJK"}, "username": {"alice"}, "password": {pw}, "action": {"approve"}}); st != http.StatusNotFound {
		t.Errorf("unknown code: status %d", st)
	}
	if st, body := post(url.Values{"user_code": {"<script>"}, "username": {"<b>x</b>"}, "password": {"p"}}); strings.Contains(body, "<b>x</b>") || strings.Contains(body, "<script>") || st == http.StatusOK {
		t.Errorf("page reflects input unescaped (status %d): %s", st, body)
	}
	clk.Add(2 * time.Minute)
	if st, _ := post(url.Values{"user_code": {da.UserCode}, "username": {"alice"}, "password": {pw}, "action": {"approve"}}); st != http.StatusGone {
		t.Errorf("expired code: status %d", st)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	formRE  = regexp.MustCompile(`(?s)<form method="post" action="([^"]*)">(.*?)</form>`)
	inputRE = regexp.MustCompile(`<input type="hidden" name="authRequestID" value="([^"]*)">`)
)

// authorize runs the browser part of the code flow up to the redirect back
// to the client, and returns that redirect URL (not followed).
func authorize(t *testing.T, s *Server, users []User, authURL string) *url.URL {
	t.Helper()
	c := &http.Client{CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if r.URL.Host != strings.TrimPrefix(s.Issuer(), "http://") {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := inputRE.FindStringSubmatch(string(b))
	if m == nil || !formRE.Match(b) {
		t.Fatalf("no login form (status %d): %s", resp.StatusCode, b)
	}
	resp, err = c.PostForm(s.Issuer()+loginPath, url.Values{
		"authRequestID": {html.UnescapeString(m[1])}, "username": {"alice"}, "password": {users[0].Password}, "action": {"approve"},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("login: status %s", resp.Status)
	}
	u, err := resp.Location()
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestPKCE checks the code flow rules bastion relies on: any loopback port,
// S256 verified, PKCE required for the public client, codes single-use,
// the nonce echoed.
func TestPKCE(t *testing.T) {
	s, users := start(t, Config{})
	oc := oauthConfig(t, s, "http://127.0.0.1:49152/callback")
	verifier := oauth2.GenerateVerifier()

	back := authorize(t, s, users, oc.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", "n-1")))
	if back.Host != "127.0.0.1:49152" || back.Query().Get("state") != "st" || back.Query().Get("code") == "" {
		t.Fatalf("redirect = %s", back)
	}
	code := back.Query().Get("code")
	if _, err := oc.Exchange(t.Context(), code, oauth2.VerifierOption(oauth2.GenerateVerifier())); err == nil {
		t.Fatal("exchange with the wrong verifier succeeded")
	}
	back = authorize(t, s, users, oc.AuthCodeURL("st", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("nonce", "n-1")))
	code = back.Query().Get("code")
	tok, err := oc.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if c := claimsOf(t, tok.Extra("id_token").(string)); c["nonce"] != "n-1" || !slices.Equal(toStrings(c["groups"]), []string{"eng"}) {
		t.Fatalf("id token claims = %v", c)
	}
	if _, err := oc.Exchange(t.Context(), code, oauth2.VerifierOption(verifier)); err == nil {
		t.Fatal("a code was exchanged twice")
	}

	back = authorize(t, s, users, oc.AuthCodeURL("st"))
	if _, err := oc.Exchange(t.Context(), back.Query().Get("code")); err == nil {
		t.Fatal("the public client got tokens without PKCE")
	}
}

func TestNonLoopbackRedirectRefused(t *testing.T) {
	s, _ := start(t, Config{})
	oc := oauthConfig(t, s, "http://evil.example/callback")
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(oc.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); strings.Contains(loc, "evil.example") || resp.StatusCode == http.StatusFound && !strings.HasPrefix(loc, loginPath) {
		t.Fatalf("authorize redirected to %q (status %s)", loc, resp.Status)
	}
}

func TestCloseOnContextDone(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	s, err := Start(ctx, Config{Users: DemoUsers()})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(s.Issuer() + "/.well-known/openid-configuration")
		if err != nil {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("still serving after the context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestDemoUsers(t *testing.T) {
	a, b := DemoUsers(), DemoUsers()
	if a[0].Username != "alice" || !slices.Equal(a[0].Groups, []string{"eng"}) || a[1].Username != "bob" || !slices.Equal(a[1].Groups, []string{"dba"}) {
		t.Fatalf("demo users = %+v", a)
	}
	if a[0].Password == b[0].Password || len(a[0].Password) < 16 {
		t.Fatal("demo passwords are not fresh and long")
	}
}

// TestLoginPageCSPAllowsLoopbackCallback: the login page's form-action
// lets the browser follow the login's redirect back to the client's
// loopback callback on its own port (a browser enforces form-action on
// every redirect after the POST), and nothing else.
func TestLoginPageCSPAllowsLoopbackCallback(t *testing.T) {
	s, _ := start(t, Config{})
	oc := oauthConfig(t, s, "http://127.0.0.1:49153/callback")
	resp, err := http.Get(oc.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	var formAction string
	for _, d := range strings.Split(csp, ";") {
		if f := strings.Fields(d); len(f) > 0 && f[0] == "form-action" {
			formAction = strings.Join(f[1:], " ")
		}
	}
	if formAction != "'self' http://127.0.0.1:49153" {
		t.Fatalf("form-action = %q (CSP %q), want 'self' and the callback's origin", formAction, csp)
	}
	if !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP lost frame-ancestors: %q", csp)
	}
	// The device page redirects nowhere: its forms stay on the provider.
	resp, err = http.Get(s.Issuer() + devicePath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "form-action 'self';") {
		t.Errorf("device page CSP = %q", csp)
	}
}

// TestConfidentialClient: with a secret, the device authorization and
// token endpoints refuse a client that does not authenticate with the
// registered method, and discovery advertises only that method.
func TestConfidentialClient(t *testing.T) {
	for _, method := range []string{"client_secret_basic", "client_secret_post"} {
		t.Run(method, func(t *testing.T) {
			s, _ := start(t, Config{ClientSecret: "s3cret", ClientAuthMethod: method})
			var d struct {
				Methods []string `json:"token_endpoint_auth_methods_supported"`
			}
			getJSON(t, s.Issuer()+"/.well-known/openid-configuration", &d)
			if !slices.Equal(d.Methods, []string{method}) {
				t.Fatalf("discovery advertises %q, want [%s]", d.Methods, method)
			}
			oc := oauthConfig(t, s, "")
			if _, err := oc.DeviceAuth(t.Context()); err == nil || !strings.Contains(err.Error(), "invalid_client") {
				t.Fatalf("device authorization without the secret: %v", err)
			}
			oc.ClientSecret = "s3cret"
			var opts []oauth2.AuthCodeOption
			if method == "client_secret_post" {
				opts = append(opts, oauth2.SetAuthURLParam("client_secret", "s3cret"))
			} else {
				// x/oauth2 sends no client authentication to the device
				// endpoint: set the header the way bastion's provider does.
				opts = nil
				req, _ := http.NewRequest(http.MethodPost, oc.Endpoint.DeviceAuthURL, strings.NewReader(url.Values{"client_id": {"bastion"}, "scope": {"openid"}}.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				req.SetBasicAuth("bastion", "s3cret")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("device authorization with Basic auth: %s", resp.Status)
				}
				return
			}
			if _, err := oc.DeviceAuth(t.Context(), opts...); err != nil {
				t.Fatalf("device authorization with the secret in the body: %v", err)
			}
		})
	}
}
