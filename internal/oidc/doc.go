// Package oidc verifies identities from the company's OIDC provider and maps
// them to certificate principals.
//
// The gateway runs both logins against the IdP itself, so a confidential
// client's secret never leaves it: the OAuth 2.0 device authorization grant
// (RFC 8628) through [Provider.StartDevice] and [Provider.WaitDevice], and
// the authorization code grant with PKCE and a loopback redirect (RFC 8252)
// through [Provider.StartCode] and [Provider.Finish], where the CLI only
// carries the browser's code back. [Provider.VerifyIDToken] checks a token
// a client fetched itself, bound to a nonce the gateway issued. Every path
// ends in the same verification (algorithm allow-list, signature against
// the IdP's JWKS, issuer, audience and azp, expiry, nonce, one-time use)
// and the same claim mapping ([Mapping.Map]).
//
// [Start] does not need the IdP to be up: it reaches it in the background,
// with backoff, and reports its state ([Provider.Status], Config.OnOutage).
//
// Every error this package returns is an [*Error] carrying a stable reason
// code for audit records ([ReasonOf]). No error message contains a token,
// a device code or an authorization code. The package never logs.
package oidc
