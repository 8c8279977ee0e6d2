// Package oidc verifies identities from the company's OIDC provider and maps
// them to certificate principals.
//
// The gateway runs the OAuth 2.0 device authorization grant (RFC 8628)
// through [Provider.StartDevice] and [Provider.WaitDevice]; the CLI runs
// authorization code + PKCE with a loopback redirect through
// [Provider.LoginPKCE] and hands the ID token to the gateway, which checks it
// with [Provider.VerifyIDToken]. Every path ends in the same verification
// (algorithm allow-list, signature against the IdP's JWKS, issuer, audience,
// expiry, nonce) and the same claim mapping ([Mapping.Map]).
//
// Every error this package returns is an [*Error] carrying a stable reason
// code for audit records ([ReasonOf]). No error message contains a token,
// a device code or an authorization code. The package never logs.
package oidc
