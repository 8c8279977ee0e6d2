package oidc

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/devidp"
)

// TestDeviceFlowApprovedInBrowser is the login a user does: the gateway
// starts the device flow, the user opens the verification URL, logs in on
// the HTML page and approves, and the gateway gets alice's identity.
func TestDeviceFlowApprovedInBrowser(t *testing.T) {
	idp, users := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	if !p.SupportsDevice() {
		t.Fatal("devidp advertises no device endpoint")
	}
	ctx := waitCtx(t)
	da, err := p.StartDevice(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if da.UserCode == "" || !strings.HasPrefix(da.VerificationURI, idp.Issuer()) || !strings.Contains(da.VerificationURIComplete, "user_code=") {
		t.Fatalf("device auth = %v / %q", da, da.VerificationURIComplete)
	}
	if da.Interval != time.Second {
		t.Errorf("interval = %s, want the IdP's 1s", da.Interval)
	}
	if s := da.String(); strings.Contains(s, da.resp.DeviceCode) {
		t.Errorf("String() shows the device code: %s", s)
	}

	type result struct {
		id  *Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		id, err := p.WaitDevice(ctx, da)
		done <- result{id, err}
	}()

	b := newBrowser(t)
	status, body := b.submit(da.VerificationURIComplete, map[string]string{
		"username": "alice", "password": "wrong", "action": "approve",
	})
	if status != http.StatusUnauthorized {
		t.Fatalf("wrong password: status %d: %s", status, body)
	}
	status, body = b.submit(da.VerificationURIComplete, map[string]string{
		"username": "alice", "password": password(t, users, "alice"), "action": "approve",
	})
	if status != http.StatusOK || !strings.Contains(body, "logged in as alice") {
		t.Fatalf("approve: status %d: %s", status, body)
	}

	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := Identity{
		Subject: "demo-alice", Issuer: idp.Issuer(), Email: "alice@example.com", EmailVerified: true,
		Username: "alice", Groups: []string{"eng"}, Principals: []string{"alice"},
	}
	got := *r.id
	if got.Expiry.IsZero() {
		t.Error("identity has no expiry")
	}
	got.Expiry = time.Time{}
	if !equalIdentity(got, want) {
		t.Fatalf("identity = %+v, want %+v", got, want)
	}
}

func equalIdentity(a, b Identity) bool {
	return a.Subject == b.Subject && a.Issuer == b.Issuer && a.Email == b.Email &&
		a.EmailVerified == b.EmailVerified && a.Username == b.Username &&
		slices.Equal(a.Groups, b.Groups) && slices.Equal(a.Principals, b.Principals) && a.Expiry.Equal(b.Expiry)
}

// TestDeviceFlowKeyTypes runs the device flow with each kind of IdP key
// in the default allow-list, and maps bob's dba group to an extra principal.
func TestDeviceFlowKeyTypes(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"RS256": rsaKey, "ES256": ecKey, "EdDSA": edKey} {
		t.Run(name, func(t *testing.T) {
			idp, _ := startIDP(t, devidp.Config{SigningKey: key})
			p := newProvider(t, idp, func(c *Config) {
				c.GroupPrincipals = map[string][]string{"dba": {"postgres-admin"}}
			})
			ctx := waitCtx(t)
			da, err := p.StartDevice(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := idp.ApproveDevice(da.UserCode, "bob"); err != nil {
				t.Fatal(err)
			}
			id, err := p.WaitDevice(ctx, da)
			if err != nil {
				t.Fatal(err)
			}
			if id.Username != "bob" || !slices.Equal(id.Groups, []string{"dba"}) || !slices.Equal(id.Principals, []string{"bob", "postgres-admin"}) {
				t.Fatalf("identity = %+v", id)
			}
		})
	}
}

func TestDeviceFlowDenied(t *testing.T) {
	for _, via := range []string{"page", "hook"} {
		t.Run(via, func(t *testing.T) {
			idp, _ := startIDP(t, devidp.Config{})
			p := newProvider(t, idp, nil)
			ctx := waitCtx(t)
			da, err := p.StartDevice(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if via == "page" {
				status, body := newBrowser(t).submit(da.VerificationURIComplete, map[string]string{"action": "deny"})
				if status != http.StatusOK || !strings.Contains(body, "Denied") {
					t.Fatalf("deny: status %d: %s", status, body)
				}
			} else if err := idp.DenyDevice(da.UserCode); err != nil {
				t.Fatal(err)
			}
			_, err = p.WaitDevice(ctx, da)
			wantReason(t, err, ReasonAccessDenied)
			if err := idp.ApproveDevice(da.UserCode, "alice"); err == nil {
				t.Error("a denied code could be approved afterwards")
			}
		})
	}
}

// TestDeviceFlowExpired expires the code on the IdP's clock: no wall-clock
// wait, and the IdP itself answers expired_token.
func TestDeviceFlowExpired(t *testing.T) {
	clk := &clock{t: time.Now()}
	idp, _ := startIDP(t, devidp.Config{Now: clk.Now, DeviceLifetime: time.Minute})
	p := newProvider(t, idp, nil)
	ctx := waitCtx(t)
	da, err := p.StartDevice(ctx)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute + time.Second)
	if err := idp.ApproveDevice(da.UserCode, "alice"); err == nil {
		t.Fatal("an expired code was approved")
	}
	_, err = p.WaitDevice(ctx, da)
	wantReason(t, err, ReasonDeviceCodeExpired)
}

// TestDeviceCodeUsedTwice: once a device code has produced an identity,
// neither this Provider nor the IdP accepts it again.
func TestDeviceCodeUsedTwice(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	ctx := waitCtx(t)
	da, err := p.StartDevice(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := idp.ApproveDevice(da.UserCode, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitDevice(ctx, da); err != nil {
		t.Fatal(err)
	}
	_, err = p.WaitDevice(ctx, da)
	wantReason(t, err, ReasonDeviceCodeInvalid)

	// A replay straight at the IdP's token endpoint, as a thief holding the
	// device code would do it: the IdP says invalid_grant.
	_, err = p.oauth.DeviceAccessToken(ctx, da.resp)
	if err == nil {
		t.Fatal("the IdP issued tokens for a used device code")
	}
	e := tokenEndpointError(ctx, "device token", ReasonDeviceCodeInvalid, err)
	wantReason(t, e, ReasonDeviceCodeInvalid)
	if strings.Contains(e.Error(), da.resp.DeviceCode) {
		t.Errorf("error shows the device code: %v", e)
	}
}

// TestPKCELogin is `bastion login` against an IdP: the browser (an
// http.Client) follows the authorization URL to the login page, submits
// it, and is redirected to the CLI's loopback listener.
func TestPKCELogin(t *testing.T) {
	idp, users := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	b := newBrowser(t)
	var authURL string
	openURL := func(u string) error {
		authURL = u
		status, body := b.submit(u, map[string]string{"username": "alice", "password": password(t, users, "alice"), "action": "approve"})
		if status != http.StatusOK || !strings.Contains(body, "Login complete") {
			t.Errorf("login: status %d: %s", status, body)
		}
		return nil
	}
	raw, nonce, err := p.LoginPKCE(waitCtx(t), openURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, param := range []string{"code_challenge_method=S256", "code_challenge=", "nonce=", "state=", "redirect_uri=http%3A%2F%2F127.0.0.1%3A"} {
		if !strings.Contains(authURL, param) {
			t.Errorf("authorization URL lacks %s: %s", param, authURL)
		}
	}
	id, err := p.VerifyIDToken(waitCtx(t), raw, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if id.Username != "alice" || !slices.Equal(id.Groups, []string{"eng"}) {
		t.Fatalf("identity = %+v", id)
	}
	_, err = p.VerifyIDToken(waitCtx(t), raw, "another-login")
	wantReason(t, err, ReasonBadNonce)
}

func TestPKCELoginDenied(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	b := newBrowser(t)
	_, _, err := p.LoginPKCE(waitCtx(t), func(u string) error {
		b.submit(u, map[string]string{"action": "deny"})
		return nil
	})
	wantReason(t, err, ReasonAccessDenied)
}

// TestPKCEForgedRedirect: a redirect to the loopback listener that does
// not carry this login's state is refused.
func TestPKCEForgedRedirect(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	_, _, err := p.LoginPKCE(waitCtx(t), func(u string) error {
		i := strings.Index(u, "redirect_uri=")
		redirect := u[i+len("redirect_uri="):]
		redirect, _, _ = strings.Cut(redirect, "&")
		redirect = strings.NewReplacer("%3A", ":", "%2F", "/").Replace(redirect)
		resp, err := http.Get(redirect + "?code=stolen&state=forged")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	wantReason(t, err, ReasonBadState)
}

func TestPKCECanceled(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	ctx, cancel := contextWithCancel(t)
	_, _, err := p.LoginPKCE(ctx, func(string) error { cancel(); return nil })
	wantReason(t, err, ReasonCanceled)
}
