package oidc

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"html"
	"net"
	"net/http"
	"sync"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// LoginPKCE runs the authorization code flow with PKCE (S256) and a
// loopback redirect (RFC 8252): it listens on 127.0.0.1 on a free port,
// calls openURL with the authorization URL (open a browser, or print the
// URL and return nil), waits for the IdP's redirect, checks state, and
// exchanges the code with the verifier. It returns the raw ID token and the
// nonce it was bound to, for the gateway's VerifyIDToken; it has checked
// the token itself (signature, issuer, audience, expiry, nonce) but not the
// claim mapping, which is the gateway's policy.
//
// An error from openURL ends the login. ctx bounds the whole wait.
func (p *Provider) LoginPKCE(ctx context.Context, openURL func(string) error) (rawIDToken string, nonce string, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", fail(ReasonIDPError, "cannot listen on 127.0.0.1 for the login redirect: %v", err)
	}
	oc := p.oauth
	oc.RedirectURL = "http://" + ln.Addr().String() + "/callback"
	state, nonce := rand.Text(), rand.Text()
	verifier := oauth2.GenerateVerifier()
	authURL := oc.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier), gooidc.Nonce(nonce))

	type result struct {
		code string
		err  *Error
	}
	results := make(chan result, 1)
	var once sync.Once
	mux := http.NewServeMux()
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var res result
		switch {
		case subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1:
			res.err = fail(ReasonBadState, "the login redirect carried the wrong state: it did not come from this login; start again")
		case q.Get("error") == "access_denied":
			res.err = fail(ReasonAccessDenied, "the login was denied at the IdP (access_denied)")
		case q.Get("error") != "":
			res.err = fail(ReasonIDPError, "the IdP refused the login: %s: %q", q.Get("error"), q.Get("error_description"))
		case q.Get("code") == "":
			res.err = fail(ReasonIDPError, "the login redirect carried no code")
		default:
			res.code = q.Get("code")
		}
		sent := false
		once.Do(func() { results <- res; sent = true })
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		switch {
		case !sent:
			w.WriteHeader(http.StatusConflict)
			fmt.Fprint(w, page("This login is already finished. Return to the terminal."))
		case res.err != nil:
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, page("Login failed: "+res.err.Error()))
		default:
			fmt.Fprint(w, page("Login complete. You can close this tab and return to the terminal."))
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close()
		}
	}()

	if err := openURL(authURL); err != nil {
		return "", "", fail(ReasonCanceled, "opening the login URL failed: %v", err)
	}
	var res result
	select {
	case <-ctx.Done():
		return "", "", fail(ReasonCanceled, "gave up waiting for the browser login: %v", ctx.Err())
	case res = <-results:
	}
	if res.err != nil {
		return "", "", res.err
	}
	hctx := gooidc.ClientContext(ctx, p.cfg.HTTPClient)
	tok, err := oc.Exchange(hctx, res.code, oauth2.VerifierOption(verifier))
	if err != nil {
		return "", "", tokenEndpointError(ctx, "code exchange", ReasonIDPError, err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return "", "", fail(ReasonIDPError, "the IdP returned no id_token: check that oidc.scopes includes openid")
	}
	if _, err := p.verify(ctx, raw, nonce); err != nil {
		return "", "", err
	}
	return raw, nonce, nil
}

func page(msg string) string {
	return "<!doctype html><meta charset=utf-8><title>bastion login</title><p>" + html.EscapeString(msg) + "</p>\n"
}
