package oidc

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
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
	if status != http.StatusOK || !strings.Contains(body, "Approved at the identity provider as alice") {
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
	_, err = da.ep.oauth.DeviceAccessToken(ctx, da.resp)
	if err == nil {
		t.Fatal("the IdP issued tokens for a used device code")
	}
	e := tokenEndpointError(ctx, "device token", ReasonDeviceCodeInvalid, err)
	wantReason(t, e, ReasonDeviceCodeInvalid)
	if strings.Contains(e.Error(), da.resp.DeviceCode) {
		t.Errorf("error shows the device code: %v", e)
	}
}

// loopback is the CLI's redirect listener: it hands the query of the
// first request to the test.
func loopback(t *testing.T) (string, <-chan url.Values) {
	t.Helper()
	got := make(chan url.Values, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- r.URL.Query():
		default:
		}
		fmt.Fprint(w, "Login complete")
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/callback", got
}

// TestCodeLogin: the gateway's authorization code login. The browser (an
// http.Client) follows the authorization URL the provider built, logs in
// and is redirected to the loopback listener; the provider redeems the
// code with its own verifier and checks its own nonce. For a public and
// for confidential clients with either authentication method.
func TestCodeLogin(t *testing.T) {
	for _, tc := range []struct{ name, secret, method string }{
		{"public", "", ""},
		{"client_secret_basic", "s3cret", "client_secret_basic"},
		{"client_secret_post", "s3cret", "client_secret_post"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idp, users := startIDP(t, devidp.Config{ClientSecret: tc.secret, ClientAuthMethod: tc.method})
			p := newProvider(t, idp, func(c *Config) { c.ClientSecret = tc.secret })
			redirect, got := loopback(t)
			cl, err := p.StartCode(redirect)
			if err != nil {
				t.Fatal(err)
			}
			for _, param := range []string{"code_challenge_method=S256", "code_challenge=", "nonce=", "state=" + cl.State, "redirect_uri=" + url.QueryEscape(redirect)} {
				if !strings.Contains(cl.AuthURL, param) {
					t.Errorf("authorization URL lacks %s: %s", param, cl.AuthURL)
				}
			}
			status, body := newBrowser(t).submit(cl.AuthURL, map[string]string{"username": "alice", "password": password(t, users, "alice"), "action": "approve"})
			if status != http.StatusOK || !strings.Contains(body, "Login complete") {
				t.Fatalf("browser: status %d: %s", status, body)
			}
			q := <-got
			// Another login's state is refused before the IdP is asked.
			other, _ := p.StartCode(redirect)
			_, err = p.Finish(waitCtx(t), other, q.Get("code"), q.Get("state"))
			wantReason(t, err, ReasonBadState)
			id, err := p.Finish(waitCtx(t), cl, q.Get("code"), q.Get("state"))
			if err != nil {
				t.Fatal(err)
			}
			if id.Username != "alice" || !slices.Equal(id.Groups, []string{"eng"}) {
				t.Fatalf("identity = %+v", id)
			}
			_, err = p.Finish(waitCtx(t), cl, q.Get("code"), q.Get("state"))
			wantReason(t, err, ReasonCodeInvalid)
			// The code, replayed into another login with that login's
			// state: the IdP refuses it (used, and the verifier differs).
			_, err = p.Finish(waitCtx(t), other, q.Get("code"), other.State)
			wantReason(t, err, ReasonCodeInvalid)
		})
	}
}

// TestCodeLoginWrongSecret: a confidential client whose secret is wrong
// (or missing) is told so, naming the settings to check.
func TestCodeLoginWrongSecret(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{ClientSecret: "s3cret"})
	for _, secret := range []string{"", "wrong"} {
		p := newProvider(t, idp, func(c *Config) { c.ClientSecret = secret })
		_, err := p.StartDevice(waitCtx(t))
		wantReason(t, err, ReasonIDPError)
		if !strings.Contains(err.Error(), "oidc.client_secret_file") {
			t.Errorf("secret %q: error does not name the setting: %v", secret, err)
		}
	}
}

// TestStartCodeRedirect: only loopback http redirect URIs (any port).
func TestStartCodeRedirect(t *testing.T) {
	idp, _ := startIDP(t, devidp.Config{})
	p := newProvider(t, idp, nil)
	for _, ok := range []string{"http://127.0.0.1:5555/callback", "http://[::1]:1/cb", "http://localhost:80/"} {
		if _, err := p.StartCode(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"https://evil.example/callback", "http://evil.example:80/", "http://127.0.0.1/callback",
		"http://127.0.0.1.evil.example:80/", "http://user@127.0.0.1:80/", "http://127.0.0.1:80/#x", "javascript:alert(1)",
		"http://127.0.0.1:80/?a=b", "http://10.0.0.1:80/", "http://127.0.0.1:80/" + strings.Repeat("a", 600)} {
		_, err := p.StartCode(bad)
		wantReason(t, err, ReasonBadRedirect)
	}
}

// TestStartWithIdPDown: a provider made with Start while the IdP is down
// refuses logins with idp_error saying so, reports the outage once it has
// lasted OutageAfter, and works once the IdP answers, reporting the end.
func TestStartWithIdPDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	outages := make(chan Outage, 4)
	p, err := Start(t.Context(), Config{
		Issuer: "http://" + addr, ClientID: "bastion",
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, HealthInterval: 200 * time.Millisecond,
		OutageAfter: 300 * time.Millisecond, OnOutage: func(o Outage) { outages <- o },
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.Up || st.Discovered || st.LastError == "" {
		t.Fatalf("status with the IdP down: %+v", st)
	}
	_, err = p.StartDevice(t.Context())
	wantReason(t, err, ReasonIDPError)
	if !strings.Contains(err.Error(), "has not answered since") {
		t.Errorf("error does not say the IdP is down: %v", err)
	}
	_, err = p.StartCode("http://127.0.0.1:5555/callback")
	wantReason(t, err, ReasonIDPError)
	select {
	case o := <-outages:
		if !o.Down || o.LastError == "" {
			t.Fatalf("first outage report: %+v", o)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no outage report")
	}
	idp, users := startIDP(t, devidp.Config{Issuer: "http://" + addr})
	select {
	case o := <-outages:
		if o.Down {
			t.Fatalf("second report: %+v", o)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no report of the IdP's return")
	}
	if st := p.Status(); !st.Up || !st.Discovered {
		t.Fatalf("status with the IdP up: %+v", st)
	}
	da, err := p.StartDevice(waitCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := idp.ApproveDevice(da.UserCode, "alice"); err != nil {
		t.Fatal(err)
	}
	id, err := p.WaitDevice(waitCtx(t), da)
	if err != nil || id.Username != "alice" {
		t.Fatalf("login after the IdP came back: %+v, %v", id, err)
	}
	_ = users
	// Down again: the health check notices.
	idp.Close()
	deadline := time.Now().Add(10 * time.Second)
	for p.Status().Up {
		if time.Now().After(deadline) {
			t.Fatal("the provider did not notice the IdP going down")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
