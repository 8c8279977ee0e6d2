package oidc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// DefaultScopes returns the scopes requested when Config.Scopes is empty.
func DefaultScopes() []string { return []string{"openid", "email", "profile", "groups"} }

// DefaultAllowedAlgs returns the algorithms accepted when Config.AllowedAlgs is empty.
func DefaultAllowedAlgs() []string { return []string{"RS256", "ES256", "EdDSA"} }

// asymmetricAlgs returns the JWS algorithms an ID token may ever be signed
// with here. none and the HS* family are absent on purpose: an HMAC
// "signature" made with the client secret proves nothing about the IdP,
// since every holder of the secret (the gateway itself) could mint it.
func asymmetricAlgs() []string {
	return []string{
		"RS256", "RS384", "RS512",
		"PS256", "PS384", "PS512",
		"ES256", "ES384", "ES512",
		"EdDSA",
	}
}

// Username claims the mapping understands.
const (
	ClaimEmail             = "email"
	ClaimPreferredUsername = "preferred_username"
	ClaimSubject           = "sub"
)

// Config configures a [Provider]. The yaml keys in error messages
// (oidc.issuer, ...) are those of the gateway's configuration file.
type Config struct {
	// Issuer is the IdP's issuer URL; discovery reads
	// Issuer + "/.well-known/openid-configuration". It must be https, or
	// http on a loopback address (for bastion dev).
	Issuer string
	// ClientID is the client registered for bastion at the IdP.
	ClientID string
	// ClientSecret is empty for a public client. The caller reads it from
	// oidc.client_secret_file; it is never logged.
	ClientSecret string
	// Scopes requested; default DefaultScopes(). Must include openid.
	Scopes []string
	// UsernameClaim is "email" (its local part becomes the username),
	// "preferred_username" or "sub"; default "email".
	UsernameClaim string
	// GroupsClaim names the claim holding the user's groups, or a dotted
	// path into nested objects (realm_access.roles); default "groups".
	GroupsClaim string
	// GroupMap, when set, maps IdP group values (Entra ID object ids,
	// Keycloak paths such as /eng/backend) to bastion group names; values
	// it does not list are dropped.
	GroupMap map[string]string
	// AllowedDomains, when set, restricts logins to verified emails in
	// these domains (exact match, case-insensitive).
	AllowedDomains []string
	// AllowedAlgs is the signature allow-list; default DefaultAllowedAlgs().
	// none and HS* are refused by Validate.
	AllowedAlgs []string
	// GroupPrincipals maps an IdP group to extra principals (cert.groups.<g>.principals).
	GroupPrincipals map[string][]string
	// Forbidden is the CA policy's check (ca.Policy.Forbidden); root is
	// refused even when it is nil.
	Forbidden func(string) bool
	// ValidPrincipal is the CA's principal syntax check
	// (ca.ValidateUserPrincipal); a strict built-in check is used when nil.
	ValidPrincipal func(string) error
	// HTTPClient talks to the IdP; default a client with a 30s timeout.
	HTTPClient *http.Client
	// Now is the clock for expiry checks; default time.Now.
	Now func() time.Time

	// RetryMin and RetryMax bound the backoff between attempts to reach an
	// IdP that is down (discovery, key fetch); default 1s and 1m.
	RetryMin, RetryMax time.Duration
	// HealthInterval is how often a reachable IdP is checked again;
	// default 1m.
	HealthInterval time.Duration
	// OutageAfter is how long the IdP must stay unreachable before
	// OnOutage is told; default 2m.
	OutageAfter time.Duration
	// Claim, when set, records a one-time use across a cluster of
	// gateways (cluster.Claim): an ID token accepted here is claimed
	// there too, and refused if another gateway claimed it first. An
	// error refuses the login (fail closed).
	Claim func(ctx context.Context, kind, id string, ttl time.Duration) (first bool, err error)
	// OnOutage, when set, is called (from the background checker of a
	// Provider made by Start) once when an outage has lasted OutageAfter,
	// and once when the IdP answers again after that.
	OnOutage func(Outage)
}

// withDefaults returns c with every zero field that has a default filled in.
func (c Config) withDefaults() Config {
	if len(c.Scopes) == 0 {
		c.Scopes = DefaultScopes()
	}
	if c.UsernameClaim == "" {
		c.UsernameClaim = ClaimEmail
	}
	if c.GroupsClaim == "" {
		c.GroupsClaim = "groups"
	}
	if len(c.AllowedAlgs) == 0 {
		c.AllowedAlgs = DefaultAllowedAlgs()
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RetryMin <= 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax < c.RetryMin {
		c.RetryMax = max(time.Minute, c.RetryMin)
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = time.Minute
	}
	if c.OutageAfter <= 0 {
		c.OutageAfter = 2 * time.Minute
	}
	return c
}

// Validate reports the first problem in c, naming the yaml key and the fix.
// Zero fields that have a default are valid.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := validateIssuer(c.Issuer); err != nil {
		return &Error{Reason: ReasonConfig, Err: err}
	}
	if strings.TrimSpace(c.ClientID) == "" {
		return fail(ReasonConfig, "oidc.client_id is empty: set it to the client id registered for bastion at the IdP")
	}
	if !slices.Contains(c.Scopes, "openid") {
		return fail(ReasonConfig, "oidc.scopes %q lacks openid: without it the IdP returns no id token", c.Scopes)
	}
	switch c.UsernameClaim {
	case ClaimEmail, ClaimPreferredUsername, ClaimSubject:
	default:
		return fail(ReasonConfig, "oidc.username_claim %q is not supported: use email, preferred_username or sub", c.UsernameClaim)
	}
	for _, d := range c.AllowedDomains {
		if d == "" || strings.ContainsAny(d, "@ \t\r\n,") {
			return fail(ReasonConfig, "oidc.allowed_domains entry %q is not a domain: write it like example.com", d)
		}
	}
	for _, a := range c.AllowedAlgs {
		if !slices.Contains(asymmetricAlgs(), a) {
			return fail(ReasonConfig, "oidc.allowed_algs entry %q is not allowed: use asymmetric algorithms only (%s); none and HS* are never accepted",
				a, strings.Join(asymmetricAlgs(), ", "))
		}
	}
	for from, to := range c.GroupMap {
		if from == "" || !validGroup(to) {
			return fail(ReasonConfig, "oidc.group_map %q: %q is not a group name a certificate can carry: use printable ASCII without spaces or commas", from, to)
		}
	}
	m := c.mapping()
	for g, ps := range c.GroupPrincipals {
		for _, p := range ps {
			if m.forbidden(p) {
				return fail(ReasonConfig, "cert.groups.%s.principals lists %q, which the CA never signs: remove it", g, p)
			}
			if err := m.validPrincipal(p); err != nil {
				return fail(ReasonConfig, "cert.groups.%s.principals: %v", g, err)
			}
		}
	}
	return nil
}

// mapping is the claim mapping c describes.
func (c Config) mapping() Mapping {
	return Mapping{
		UsernameClaim:   c.UsernameClaim,
		GroupsClaim:     c.GroupsClaim,
		GroupMap:        c.GroupMap,
		AllowedDomains:  c.AllowedDomains,
		GroupPrincipals: c.GroupPrincipals,
		Forbidden:       c.Forbidden,
		ValidPrincipal:  c.ValidPrincipal,
	}
}

func validateIssuer(issuer string) error {
	if issuer == "" {
		return errors.New("oidc.issuer is empty: set it to the IdP's issuer URL, e.g. https://idp.example.com")
	}
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" {
		return fmt.Errorf("oidc.issuer %q is not an absolute URL: write it like https://idp.example.com", issuer)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("oidc.issuer %q has a query or fragment: an issuer URL has neither", issuer)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopbackHost(u.Hostname()) {
			return fmt.Errorf("oidc.issuer %q uses http: use https (plain http is accepted only on a loopback address, for bastion dev)", issuer)
		}
	default:
		return fmt.Errorf("oidc.issuer %q has scheme %q: use https", issuer, u.Scheme)
	}
	return nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
