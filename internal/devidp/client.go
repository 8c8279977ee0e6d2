package devidp

import (
	"net/url"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// ScopeGroups is the scope that puts the groups claim in the ID token.
const ScopeGroups = "groups"

// idTokenLifetime is how long ID tokens from this provider are valid.
const idTokenLifetime = time.Hour

// client is the one registered client: native (RFC 8252), public unless
// Config.ClientSecret makes it confidential. Loopback redirect URIs match
// on any port, which op implements for native clients.
type client struct {
	id         string
	secret     string
	authMethod oidc.AuthMethod
}

func (c *client) GetID() string { return c.id }
func (c *client) RedirectURIs() []string {
	return []string{"http://127.0.0.1/callback", "http://[::1]/callback", "http://localhost/callback"}
}
func (c *client) PostLogoutRedirectURIs() []string    { return nil }
func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeNative }
func (c *client) AuthMethod() oidc.AuthMethod         { return c.authMethod }
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeDeviceCode}
}
func (c *client) LoginURL(id string) string {
	return loginPath + "?authRequestID=" + url.QueryEscape(id)
}
func (c *client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeBearer }
func (c *client) IDTokenLifetime() time.Duration       { return idTokenLifetime }
func (c *client) DevMode() bool                        { return false }
func (c *client) IsScopeAllowed(scope string) bool     { return scope == ScopeGroups }
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c *client) ClockSkew() time.Duration             { return 0 }

// RestrictAdditionalIdTokenScopes is named by op.Client.
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string { //nolint:revive // op's method name
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
