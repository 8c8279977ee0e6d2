package oidc

import (
	"errors"
	"fmt"
)

// Reason codes carried by [Error]. They are stable, machine-readable and
// end up in login.failed audit records, so they are never renamed.
const (
	// ReasonTokenExpired: the ID token's exp is in the past.
	ReasonTokenExpired = "token_expired"
	// ReasonTokenNotYetValid: the ID token's nbf is in the future.
	ReasonTokenNotYetValid = "token_not_yet_valid"
	// ReasonBadAudience: the ID token was not issued to this client.
	ReasonBadAudience = "bad_audience"
	// ReasonBadIssuer: the ID token was issued by another provider.
	ReasonBadIssuer = "bad_issuer"
	// ReasonBadSignature: the signature does not verify against the IdP's JWKS.
	ReasonBadSignature = "bad_signature"
	// ReasonAlgNotAllowed: the token's alg is not in the allow-list (none and HS* never are).
	ReasonAlgNotAllowed = "alg_not_allowed"
	// ReasonMalformedToken: the token is not a compact JWS at all.
	ReasonMalformedToken = "malformed_token"
	// ReasonBadNonce: the token's nonce is not the one the login sent.
	ReasonBadNonce = "bad_nonce"
	// ReasonEmailUnverified: the email is used but the IdP does not vouch for it.
	ReasonEmailUnverified = "email_unverified"
	// ReasonDomainNotAllowed: the email domain is not in oidc.allowed_domains.
	ReasonDomainNotAllowed = "domain_not_allowed"
	// ReasonMissingClaim: a claim the mapping needs is absent or not a string.
	ReasonMissingClaim = "missing_claim"
	// ReasonForbiddenPrincipal: the username or a group principal is root or another forbidden name.
	ReasonForbiddenPrincipal = "forbidden_principal"
	// ReasonBadPrincipal: a principal fails the syntax check (comma, newline, space, ...).
	ReasonBadPrincipal = "bad_principal"
	// ReasonDeviceCodeExpired: the user did not approve before the device code expired.
	ReasonDeviceCodeExpired = "device_code_expired"
	// ReasonDeviceCodeInvalid: the IdP refused the device code (invalid_grant), e.g. it was already used.
	ReasonDeviceCodeInvalid = "device_code_invalid"
	// ReasonDeviceUnsupported: the IdP has no device authorization endpoint; use the PKCE login.
	ReasonDeviceUnsupported = "device_unsupported"
	// ReasonAccessDenied: the user (or the IdP) refused consent.
	ReasonAccessDenied = "access_denied"
	// ReasonBadState: the PKCE redirect carried the wrong state (a forged or stale redirect).
	ReasonBadState = "bad_state"
	// ReasonCanceled: the caller gave up (context canceled) before the login finished.
	ReasonCanceled = "canceled"
	// ReasonIDPError: the IdP failed or answered something unexpected.
	ReasonIDPError = "idp_error"
	// ReasonConfig: the configuration is invalid.
	ReasonConfig = "config_invalid"
	// ReasonTokenReplayed: the ID token (or one with the same signed
	// content) was already used for a login.
	ReasonTokenReplayed = "token_replayed"
	// ReasonClusterUnavailable: the one-time use of a token or code could
	// not be recorded across the cluster (etcd did not answer); the
	// login is refused rather than risk a replay on another gateway.
	ReasonClusterUnavailable = "cluster_unavailable"
	// ReasonGroupsOverage: the IdP left the groups out of the token (an
	// overage marker) or sent more than a certificate can carry.
	ReasonGroupsOverage = "groups_overage"
	// ReasonBadRedirect: the login's redirect URI is not a loopback URI (RFC 8252 section 7.3).
	ReasonBadRedirect = "bad_redirect"
	// ReasonCodeInvalid: the authorization code was missing, already used,
	// or refused by the IdP (invalid_grant).
	ReasonCodeInvalid = "code_invalid"
	// ReasonLoginExpired: the login did not finish within its window.
	ReasonLoginExpired = "login_expired"
)

// Error is the error type of this package: a reason code for the audit
// record and the underlying error for people. Err's message never contains
// a token or a code.
type Error struct {
	Reason string
	Err    error
	// Claims are verified claims of a refused identity (subject, email,
	// email_verified, username, groups), each bounded, for the audit
	// record: who was refused. Nil when the token itself was refused (its
	// claims are then not worth recording). Never a token.
	Claims map[string]string
}

// Error returns the message for people, prefixed "oidc: ".
func (e *Error) Error() string {
	if e.Err == nil {
		return "oidc: " + e.Reason
	}
	return "oidc: " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the reason code of err: "" for nil, the Reason of an
// [*Error] anywhere in the chain, and "unknown" otherwise.
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return "unknown"
}

// fail builds an *Error whose message is formatted like fmt.Errorf.
func fail(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, args...)}
}
