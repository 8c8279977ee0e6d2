package oidc

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"net"
	"net/url"
	"strings"
	"sync/atomic"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// CodeLogin is one authorization code login (with PKCE, S256) that the
// gateway runs for a CLI: the gateway chooses the state, the nonce and
// the PKCE verifier and keeps them; the CLI only opens AuthURL in a
// browser, receives the code on its loopback redirect URI and hands the
// code back. The code is redeemed by the gateway, with the client secret
// when it has one, so a confidential client works and the code is useless
// to anyone else: it needs this CodeLogin's verifier, and a CodeLogin
// redeems at most one code.
type CodeLogin struct {
	// AuthURL is the authorization request to open in the browser.
	AuthURL string
	// State is the state parameter the redirect must carry back.
	State string

	ep          *endpoints
	redirectURI string
	nonce       string
	verifier    string
	used        atomic.Bool
}

// maxRedirectURI bounds the redirect URI a client may send.
const maxRedirectURI = 512

// StartCode begins a login whose browser redirect goes to redirectURI,
// which must be a loopback http URI (RFC 8252 section 7.3: 127.0.0.1,
// [::1] or localhost, any port); anything else could send the code
// somewhere other than the user's own machine.
func (p *Provider) StartCode(redirectURI string) (*CodeLogin, error) {
	ep, err := p.endpoints()
	if err != nil {
		return nil, err
	}
	if err := checkLoopbackRedirect(redirectURI); err != nil {
		return nil, err
	}
	oc := ep.oauth
	oc.RedirectURL = redirectURI
	cl := &CodeLogin{
		State: rand.Text(), ep: ep, redirectURI: redirectURI,
		nonce: rand.Text(), verifier: oauth2.GenerateVerifier(),
	}
	cl.AuthURL = oc.AuthCodeURL(cl.State, oauth2.S256ChallengeOption(cl.verifier), gooidc.Nonce(cl.nonce))
	return cl, nil
}

func checkLoopbackRedirect(raw string) error {
	if len(raw) > maxRedirectURI {
		return fail(ReasonBadRedirect, "the redirect URI is longer than %d bytes", maxRedirectURI)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.RawQuery != "" || u.Port() == "" {
		return fail(ReasonBadRedirect, "the redirect URI %q is not of the form http://127.0.0.1:PORT/PATH (RFC 8252 loopback redirect)", bound(raw, 128))
	}
	if h := u.Hostname(); h != "localhost" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsLoopback() {
			return fail(ReasonBadRedirect, "the redirect URI %q is not on a loopback address: the browser must return to the machine running bastion login", bound(raw, 128))
		}
	}
	return nil
}

// Finish redeems code (after checking that state is this login's) at the
// IdP's token endpoint with the PKCE verifier, verifies the ID token
// against this login's nonce and the one-time-use record, and maps it.
// It can be called once; a second call fails with code_invalid.
func (p *Provider) Finish(ctx context.Context, cl *CodeLogin, code, state string) (*Identity, error) {
	if subtle.ConstantTimeCompare([]byte(state), []byte(cl.State)) != 1 {
		return nil, fail(ReasonBadState, "the login redirect carried another login's state: it did not come from this login; start again")
	}
	if code == "" || len(code) > 4096 || strings.ContainsAny(code, " \r\n") {
		return nil, fail(ReasonCodeInvalid, "the login redirect carried no usable authorization code")
	}
	if !cl.used.CompareAndSwap(false, true) {
		return nil, fail(ReasonCodeInvalid, "this login already redeemed a code: start a new login")
	}
	oc := cl.ep.oauth
	oc.RedirectURL = cl.redirectURI
	tok, err := oc.Exchange(gooidc.ClientContext(ctx, p.cfg.HTTPClient), code, oauth2.VerifierOption(cl.verifier))
	if err != nil {
		return nil, tokenEndpointError(ctx, "authorization code", ReasonCodeInvalid, err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return nil, fail(ReasonIDPError, "the IdP returned no id_token: check that oidc.scopes includes openid")
	}
	return p.verifyAndMap(ctx, raw, cl.nonce)
}

// Nonce returns a fresh nonce for a login whose ID token the client
// fetches itself and hands over (VerifyIDToken).
func Nonce() string { return rand.Text() }
