package oidc

import (
	"context"
	"errors"
	"fmt"
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
	redeemed atomic.Bool
}

// String shows what the user sees, never the device code.
func (d *DeviceAuth) String() string {
	return fmt.Sprintf("device login: open %s and enter %s (expires %s)",
		d.VerificationURI, d.UserCode, d.Expiry.UTC().Format(time.RFC3339))
}

// StartDevice asks the IdP for a device code and a user code.
func (p *Provider) StartDevice(ctx context.Context) (*DeviceAuth, error) {
	if !p.SupportsDevice() {
		return nil, fail(ReasonDeviceUnsupported, "%s has no device authorization endpoint: log in with `bastion login`, which uses the browser (PKCE)", p.cfg.Issuer)
	}
	resp, err := p.oauth.DeviceAuth(gooidc.ClientContext(ctx, p.cfg.HTTPClient))
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
	tok, err := p.oauth.DeviceAccessToken(gooidc.ClientContext(ctx, p.cfg.HTTPClient), da.resp)
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
	return p.VerifyIDToken(ctx, raw, "")
}

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
