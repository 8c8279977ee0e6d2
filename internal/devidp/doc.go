// Package devidp is a development OpenID Connect provider for `bastion dev`
// and for tests: a few configured users, one public client, the device
// authorization grant (RFC 8628) with a small HTML approval page, and the
// authorization code flow with PKCE (S256) for loopback redirects
// (RFC 8252), with discovery and JWKS.
//
// The protocol is github.com/zitadel/oidc/v3/pkg/op, an OpenID-certified
// implementation; this package supplies only in-memory storage, the login
// and approval pages, and test hooks that take the same code paths as the
// pages. It serves plain http on a loopback address and is not meant for
// anything else.
package devidp
