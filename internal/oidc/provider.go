package oidc

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// Provider is the relying party for one IdP: it holds the discovered
// endpoints, the IdP's key set (fetched and cached by go-oidc) and the
// claim mapping. It is safe for concurrent use.
type Provider struct {
	cfg      Config
	mapping  Mapping
	oauth    oauth2.Config
	verifier *gooidc.IDTokenVerifier
	// sigOnly checks only the signature and algorithm. It runs after a
	// failed full verification to tell a bad signature from a bad claim,
	// so that the claims of an unauthenticated token never decide the
	// reason.
	sigOnly *gooidc.IDTokenVerifier
}

// Identity is who the IdP says logged in, after verification and mapping.
type Identity struct {
	// Subject and Issuer identify the user at the IdP (the key id records them).
	Subject, Issuer string
	// Email is the email claim and EmailVerified its email_verified claim.
	Email         string
	EmailVerified bool
	// Username is the login principal derived from oidc.username_claim.
	Username string
	// Groups are the user's groups, as the certificate's groups extension carries them.
	Groups []string
	// Principals are Username followed by the group-derived principals.
	Principals []string
	// Expiry is the ID token's exp; a certificate should not outlive the
	// login by much more than its own validity.
	Expiry time.Time
}

// New discovers the IdP at cfg.Issuer and returns a Provider. An IdP
// without a device authorization endpoint is accepted (only the PKCE login
// works then; see SupportsDevice).
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ctx = gooidc.ClientContext(ctx, cfg.HTTPClient)
	disc, err := gooidc.NewProvider(ctx, cfg.Issuer)
	if err != nil {
		return nil, fail(ReasonIDPError, "discovery at %s/.well-known/openid-configuration failed: %v; check oidc.issuer and that the IdP is reachable", cfg.Issuer, err)
	}
	var meta struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := disc.Claims(&meta); err != nil || meta.JWKSURI == "" {
		return nil, fail(ReasonIDPError, "the discovery document of %s has no jwks_uri: the IdP cannot be used to verify id tokens", cfg.Issuer)
	}
	// The key set outlives this call: keep ctx's values (the HTTP client)
	// but not its cancellation.
	keys := gooidc.NewRemoteKeySet(context.WithoutCancel(ctx), meta.JWKSURI)
	p := &Provider{
		cfg:     cfg,
		mapping: cfg.mapping(),
		oauth: oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			Endpoint:     disc.Endpoint(),
			Scopes:       cfg.Scopes,
		},
		verifier: gooidc.NewVerifier(cfg.Issuer, keys, &gooidc.Config{
			ClientID:             cfg.ClientID,
			SupportedSigningAlgs: cfg.AllowedAlgs,
			Now:                  cfg.Now,
		}),
		sigOnly: gooidc.NewVerifier(cfg.Issuer, keys, &gooidc.Config{
			SupportedSigningAlgs: cfg.AllowedAlgs,
			SkipClientIDCheck:    true,
			SkipExpiryCheck:      true,
			SkipIssuerCheck:      true,
		}),
	}
	if cfg.ClientSecret == "" {
		// A public client authenticates with client_id in the body; a
		// Basic header with an empty password would read as a confidential
		// client to some IdPs.
		p.oauth.Endpoint.AuthStyle = oauth2.AuthStyleInParams
	}
	return p, nil
}

// SupportsDevice reports whether the IdP advertises a device authorization
// endpoint (RFC 8628). Without one, users log in with `bastion login`,
// which runs the PKCE flow.
func (p *Provider) SupportsDevice() bool { return p.oauth.Endpoint.DeviceAuthURL != "" }

// Issuer returns the configured issuer URL.
func (p *Provider) Issuer() string { return p.cfg.Issuer }

// VerifyIDToken verifies a raw ID token and maps its claims. The checks,
// each with its own reason code: algorithm allow-list, signature against
// the IdP's JWKS, issuer, audience (and azp when there are several
// audiences), expiry and nbf with the configured clock, the nonce when
// nonce is not empty, then the claim mapping.
func (p *Provider) VerifyIDToken(ctx context.Context, raw, nonce string) (*Identity, error) {
	tok, err := p.verify(ctx, raw, nonce)
	if err != nil {
		return nil, err
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, fail(ReasonMalformedToken, "the id token's claims are not a JSON object")
	}
	username, groups, principals, err := p.mapping.Map(claims)
	if err != nil {
		return nil, err
	}
	email, _ := claims["email"].(string)
	return &Identity{
		Subject:       tok.Subject,
		Issuer:        tok.Issuer,
		Email:         email,
		EmailVerified: truthy(claims["email_verified"]),
		Username:      username,
		Groups:        groups,
		Principals:    principals,
		Expiry:        tok.Expiry,
	}, nil
}

// verify runs every token check but not the mapping.
func (p *Provider) verify(ctx context.Context, raw, nonce string) (*gooidc.IDToken, error) {
	alg, err := headerAlg(raw)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(p.cfg.AllowedAlgs, alg) {
		return nil, fail(ReasonAlgNotAllowed, "the id token is signed with %q, which oidc.allowed_algs %q does not allow", alg, p.cfg.AllowedAlgs)
	}
	ctx = gooidc.ClientContext(ctx, p.cfg.HTTPClient)
	tok, err := p.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, p.classify(ctx, raw, err)
	}
	if len(tok.Audience) > 1 {
		var c struct {
			AZP string `json:"azp"`
		}
		if err := tok.Claims(&c); err == nil && c.AZP != "" && c.AZP != p.cfg.ClientID {
			return nil, fail(ReasonBadAudience, "the id token was issued to %q (azp), not to oidc.client_id %q", c.AZP, p.cfg.ClientID)
		}
	}
	if nonce != "" && subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(nonce)) != 1 {
		return nil, fail(ReasonBadNonce, "the id token's nonce does not match this login's: it belongs to another login attempt; log in again")
	}
	return tok, nil
}

// classify turns a failed go-oidc verification into a reason. The
// signature is checked first, as go-oidc does: only a token the IdP really
// signed has claims worth reporting on.
func (p *Provider) classify(ctx context.Context, raw string, verr error) *Error {
	signed, err := p.sigOnly.Verify(ctx, raw)
	if err != nil {
		if ctx.Err() != nil {
			return fail(ReasonCanceled, "verification was canceled while fetching the IdP's keys: %v", ctx.Err())
		}
		return fail(ReasonBadSignature, "the id token's signature does not verify against the IdP's published keys (%s): it was not issued by %s", sanitize(err), p.cfg.Issuer)
	}
	if signed.Issuer != p.cfg.Issuer {
		return fail(ReasonBadIssuer, "the id token was issued by %q, not by oidc.issuer %q", signed.Issuer, p.cfg.Issuer)
	}
	if !slices.Contains(signed.Audience, p.cfg.ClientID) {
		return fail(ReasonBadAudience, "the id token is for audience %q, not for oidc.client_id %q", signed.Audience, p.cfg.ClientID)
	}
	if te, ok := errors.AsType[*gooidc.TokenExpiredError](verr); ok {
		return fail(ReasonTokenExpired, "the id token expired at %s (now %s): log in again", te.Expiry.UTC().Format(time.RFC3339), p.cfg.Now().UTC().Format(time.RFC3339))
	}
	var c struct {
		NBF *float64 `json:"nbf"`
	}
	if err := signed.Claims(&c); err == nil && c.NBF != nil && time.Unix(int64(*c.NBF), 0).After(p.cfg.Now()) {
		return fail(ReasonTokenNotYetValid, "the id token is not valid before %s (nbf): check the clocks of the gateway and the IdP",
			time.Unix(int64(*c.NBF), 0).UTC().Format(time.RFC3339))
	}
	return fail(ReasonMalformedToken, "the id token was refused: %s", sanitize(verr))
}

// headerAlg reads the alg of a compact JWS without trusting anything else
// in it.
func headerAlg(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", fail(ReasonMalformedToken, "the id token is not a compact JWS (it has %d parts, want 3)", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return "", fail(ReasonMalformedToken, "the id token's header is not base64url")
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return "", fail(ReasonMalformedToken, "the id token's header is not JSON")
	}
	return h.Alg, nil
}

// sanitize returns err's message cut at its first line and at 200 bytes:
// library errors sometimes quote response bodies, and nothing long or
// multi-line belongs in an audit reason.
func sanitize(err error) string {
	s := err.Error()
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
