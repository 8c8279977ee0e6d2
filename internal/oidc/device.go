package oidc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// DeviceAuth is a started device authorization (RFC 8628 section 3.2):
// what to show the user, and the device code (kept unexported, and out of
// String, so it is not printed by accident).
type DeviceAuth struct {
	// VerificationURI is where the user goes to approve.
	VerificationURI string
	// VerificationURIComplete has the user code filled in (may be empty).
	VerificationURIComplete string
	// UserCode is what the user types at VerificationURI.
	UserCode string
	// Interval is the polling interval the IdP asked for.
	Interval time.Duration
	// Expiry is when the device code stops working.
	Expiry time.Time

	resp     *oauth2.DeviceAuthResponse
	ep       *endpoints
	redeemed atomic.Bool
}

// String shows what the user sees, never the device code.
func (d *DeviceAuth) String() string {
	return fmt.Sprintf("device login: open %s and enter %s (expires %s)",
		d.VerificationURI, d.UserCode, d.Expiry.UTC().Format(time.RFC3339))
}

// StartDevice asks the IdP for a device code and a user code.
func (p *Provider) StartDevice(ctx context.Context) (*DeviceAuth, error) {
	ep, err := p.endpoints()
	if err != nil {
		return nil, err
	}
	if ep.oauth.Endpoint.DeviceAuthURL == "" {
		return nil, fail(ReasonDeviceUnsupported, "%s has no device authorization endpoint: log in with `bastion login`, which uses the browser (PKCE)", p.cfg.Issuer)
	}
	// golang.org/x/oauth2 sends only client_id to the device authorization
	// endpoint; a confidential client must authenticate there too (RFC
	// 8628 section 3.1), the same way as at the token endpoint.
	client, opts := p.cfg.HTTPClient, []oauth2.AuthCodeOption(nil)
	if p.cfg.ClientSecret != "" {
		if ep.authStyle == oauth2.AuthStyleInHeader {
			client = basicAuthClient(client, ep.oauth.Endpoint.DeviceAuthURL, p.cfg.ClientID, p.cfg.ClientSecret)
		} else {
			opts = append(opts, oauth2.SetAuthURLParam("client_secret", p.cfg.ClientSecret))
		}
	}
	resp, err := ep.oauth.DeviceAuth(gooidc.ClientContext(ctx, client), opts...)
	if err != nil {
		return nil, tokenEndpointError(ctx, "device authorization", ReasonDeviceCodeInvalid, err)
	}
	interval := time.Duration(resp.Interval) * time.Second
	if resp.Interval <= 0 {
		interval = 5 * time.Second // RFC 8628 section 3.2's default, which oauth2 then uses too
	}
	return &DeviceAuth{
		VerificationURI:         resp.VerificationURI,
		VerificationURIComplete: resp.VerificationURIComplete,
		UserCode:                resp.UserCode,
		Interval:                interval,
		Expiry:                  resp.Expiry,
		resp:                    resp,
		ep:                      ep,
	}, nil
}

// WaitDevice polls the IdP until the user approves or denies, or the code
// expires, honouring the IdP's interval and slow_down (golang.org/x/oauth2
// does the polling), then verifies the ID token and maps it. A DeviceAuth
// is good for one identity: waiting on it again fails with
// device_code_invalid without asking the IdP, and an IdP that sees the code
// again answers invalid_grant, reported the same way.
func (p *Provider) WaitDevice(ctx context.Context, da *DeviceAuth) (*Identity, error) {
	if da == nil || da.resp == nil {
		return nil, fail(ReasonDeviceCodeInvalid, "no device authorization to wait for: call StartDevice first")
	}
	if da.redeemed.Load() {
		return nil, fail(ReasonDeviceCodeInvalid, "this device code was already used: start a new login")
	}
	tok, err := da.ep.oauth.DeviceAccessToken(gooidc.ClientContext(ctx, p.cfg.HTTPClient), da.resp)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// oauth2 bounds the polling by the device code's expiry.
			return nil, fail(ReasonDeviceCodeExpired, "the login was not approved before the code expired at %s: start a new login",
				da.Expiry.UTC().Format(time.RFC3339))
		}
		return nil, tokenEndpointError(ctx, "device token", ReasonDeviceCodeInvalid, err)
	}
	if !da.redeemed.CompareAndSwap(false, true) {
		return nil, fail(ReasonDeviceCodeInvalid, "this device code was already used: start a new login")
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return nil, fail(ReasonIDPError, "the IdP returned no id_token: check that oidc.scopes includes openid and that the client may use it")
	}
	return p.verifyAndMap(ctx, raw, "")
}

// basicAuthClient returns a client that adds HTTP Basic client
// authentication (RFC 6749 section 2.3.1: both parts form-encoded first)
// to requests for endpoint, and to nothing else.
func basicAuthClient(base *http.Client, endpoint, id, secret string) *http.Client {
	c := *base
	next := c.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	c.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.String() == endpoint {
			r = r.Clone(r.Context())
			r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
		}
		return next.RoundTrip(r)
	})
	return &c
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// tokenEndpointError maps an error from golang.org/x/oauth2 to a reason;
// invalid_grant (a code already used, revoked or for another client) maps
// to invalidGrant. It quotes only the RFC 6749 error code and description,
// never the response body.
func tokenEndpointError(ctx context.Context, what, invalidGrant string, err error) *Error {
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		desc := re.ErrorDescription
		if len(desc) > 200 {
			desc = desc[:200] + "..."
		}
		switch re.ErrorCode {
		case "access_denied":
			return fail(ReasonAccessDenied, "the login was denied at the IdP (access_denied): approve it, or ask the IdP admin for access")
		case "expired_token":
			return fail(ReasonDeviceCodeExpired, "the device code expired before the login was approved (expired_token): start a new login")
		case "invalid_grant":
			return fail(invalidGrant, "the IdP refused the code (invalid_grant: %q): it was already used, revoked or issued to another client; start a new login", desc)
		case "unauthorized_client":
			return fail(ReasonIDPError, "the IdP does not let bastion's client use the %s grant (unauthorized_client: %q): turn the grant on for the client at the IdP (see docs/idp/), or log in with `bastion login --pkce`", what, desc)
		case "invalid_client":
			return fail(ReasonIDPError, "the IdP does not accept bastion's client credentials at the %s endpoint (%s: %q): check oidc.client_id and oidc.client_secret_file against the client registered at the IdP", what, re.ErrorCode, desc)
		case "":
			status := "no response"
			if re.Response != nil {
				status = re.Response.Status
			}
			return fail(ReasonIDPError, "%s request failed with HTTP status %s", what, status)
		default:
			return fail(ReasonIDPError, "%s request refused by the IdP: %s: %q", what, re.ErrorCode, desc)
		}
	}
	if ctx.Err() != nil {
		return fail(ReasonCanceled, "%s request canceled: %v", what, ctx.Err())
	}
	return fail(ReasonIDPError, "%s request failed: %s", what, sanitize(err))
}
