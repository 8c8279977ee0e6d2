package oidc

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/bastion-ssh/bastion/internal/textbound"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// Provider is the relying party for one IdP: it holds the discovered
// endpoints, the IdP's key set (fetched and cached by go-oidc), the claim
// mapping and the record of ID tokens already used. It is safe for
// concurrent use.
type Provider struct {
	cfg     Config
	mapping Mapping
	used    *usedTokens

	// ep is nil until discovery has succeeded.
	ep atomic.Pointer[endpoints]

	mu     sync.Mutex
	status Status
}

// endpoints is what discovery yields.
type endpoints struct {
	oauth    oauth2.Config
	jwksURI  string
	verifier *gooidc.IDTokenVerifier
	// sigOnly checks only the signature and algorithm. It runs after a
	// failed full verification to tell a bad signature from a bad claim,
	// so that the claims of an unauthenticated token never decide the
	// reason.
	sigOnly *gooidc.IDTokenVerifier
	// authStyle is how the client authenticates (RFC 6749 section 2.3).
	authStyle oauth2.AuthStyle
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

// New discovers the IdP at cfg.Issuer and returns a Provider, or fails if
// the IdP cannot be reached now. An IdP without a device authorization
// endpoint is accepted (only the browser login works then; see
// SupportsDevice). A gateway uses Start instead, which does not need the
// IdP to be up.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := newProviderOf(cfg)
	ep, err := p.discover(ctx)
	if err != nil {
		return nil, err
	}
	p.ep.Store(ep)
	p.status = Status{Up: true, Since: p.cfg.Now(), Checked: p.cfg.Now()}
	return p, nil
}

func newProviderOf(cfg Config) *Provider {
	cfg = cfg.withDefaults()
	return &Provider{cfg: cfg, mapping: cfg.mapping(), used: newUsedTokens(cfg.Now)}
}

// discover reads the discovery document and builds the endpoints.
func (p *Provider) discover(ctx context.Context) (*endpoints, error) {
	cfg := p.cfg
	ctx = gooidc.ClientContext(ctx, cfg.HTTPClient)
	disc, err := gooidc.NewProvider(ctx, cfg.Issuer)
	if err != nil {
		return nil, fail(ReasonIDPError, "discovery at %s/.well-known/openid-configuration failed: %s; check oidc.issuer and that the IdP is reachable", cfg.Issuer, sanitize(err))
	}
	var meta struct {
		JWKSURI     string   `json:"jwks_uri"`
		AuthMethods []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := disc.Claims(&meta); err != nil || meta.JWKSURI == "" {
		return nil, fail(ReasonIDPError, "the discovery document of %s has no jwks_uri: the IdP cannot be used to verify id tokens", cfg.Issuer)
	}
	// The key set outlives this call: keep ctx's values (the HTTP client)
	// but not its cancellation.
	keys := gooidc.NewRemoteKeySet(context.WithoutCancel(ctx), meta.JWKSURI)
	ep := &endpoints{
		oauth: oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			Endpoint:     disc.Endpoint(),
			Scopes:       cfg.Scopes,
		},
		jwksURI: meta.JWKSURI,
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
	ep.authStyle = authStyle(cfg.ClientSecret, meta.AuthMethods)
	ep.oauth.Endpoint.AuthStyle = ep.authStyle
	return ep, nil
}

// authStyle picks the client authentication of RFC 6749 section 2.3 that
// the discovery document advertises: client_secret_basic when listed (or
// when the list is absent, the default of OpenID Connect Discovery),
// else client_secret_post. A public client sends client_id in the body:
// a Basic header with an empty password would read as a confidential
// client to some IdPs.
func authStyle(secret string, supported []string) oauth2.AuthStyle {
	switch {
	case secret == "":
		return oauth2.AuthStyleInParams
	case len(supported) == 0 || slices.Contains(supported, "client_secret_basic"):
		return oauth2.AuthStyleInHeader
	case slices.Contains(supported, "client_secret_post"):
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleInHeader
}

// endpoints returns the discovered endpoints, or an idp_error saying the
// IdP has not been reached yet.
func (p *Provider) endpoints() (*endpoints, error) {
	if ep := p.ep.Load(); ep != nil {
		return ep, nil
	}
	st := p.Status()
	return nil, fail(ReasonIDPError, "the identity provider %s has not answered since %s (%s): logins work again once it does; certificates already issued keep working",
		p.cfg.Issuer, st.Since.UTC().Format(time.RFC3339), st.LastError)
}

// SupportsDevice reports whether the IdP advertises a device authorization
// endpoint (RFC 8628). Without one, users log in with `bastion login`,
// which runs the PKCE flow.
func (p *Provider) SupportsDevice() bool {
	ep := p.ep.Load()
	return ep != nil && ep.oauth.Endpoint.DeviceAuthURL != ""
}

// Issuer returns the configured issuer URL.
func (p *Provider) Issuer() string { return p.cfg.Issuer }

// VerifyIDToken verifies a raw ID token that a client hands over, bound to
// the nonce the caller issued for this login, and maps its claims. The
// checks, each with its own reason code: algorithm allow-list, signature
// against the IdP's JWKS, issuer, audience and azp (OpenID Connect Core
// 3.1.3.7), expiry and nbf with the configured clock, the nonce (required:
// an empty nonce is refused), one-time use (a token, or another encoding
// of the same signed content, is accepted once until it expires), then the
// claim mapping.
func (p *Provider) VerifyIDToken(ctx context.Context, raw, nonce string) (*Identity, error) {
	if nonce == "" {
		return nil, fail(ReasonBadNonce, "no nonce to bind the id token to: the gateway issues one per login")
	}
	return p.verifyAndMap(ctx, raw, nonce)
}

// verifyAndMap runs every check of VerifyIDToken; an empty nonce skips
// only the nonce check (for tokens the gateway fetched itself from the
// token endpoint).
func (p *Provider) verifyAndMap(ctx context.Context, raw, nonce string) (*Identity, error) {
	ep, err := p.endpoints()
	if err != nil {
		return nil, err
	}
	tok, err := p.verify(ctx, ep, raw, nonce)
	if err != nil {
		return nil, err
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, fail(ReasonMalformedToken, "the id token's claims are not a JSON object")
	}
	if !p.used.claim(raw, tok.Expiry) {
		return nil, &Error{Reason: ReasonTokenReplayed, Claims: claimSummary(claims, p.mapping),
			Err: errors.New("this id token was already used for a login: each login needs a fresh one; log in again")}
	}
	if p.cfg.Claim != nil {
		key := tokenKey(raw)
		first, err := p.cfg.Claim(ctx, "id_token", string(key[:]), time.Until(tok.Expiry)+5*time.Minute)
		if err != nil {
			return nil, &Error{Reason: ReasonClusterUnavailable, Claims: claimSummary(claims, p.mapping),
				Err: errors.New("the login cannot be recorded as used across the gateways (etcd does not answer), so it is refused: try again shortly")}
		}
		if !first {
			return nil, &Error{Reason: ReasonTokenReplayed, Claims: claimSummary(claims, p.mapping),
				Err: errors.New("this id token was already used for a login on another gateway: each login needs a fresh one; log in again")}
		}
	}
	username, groups, principals, err := p.mapping.Map(claims)
	if err != nil {
		if e, ok := errors.AsType[*Error](err); ok {
			e.Claims = claimSummary(claims, p.mapping)
		}
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

// claimSummary returns the claims that say who a refused identity is,
// each cut to a bounded length: they come from a verified token, but
// their content is the IdP user's to choose.
func claimSummary(claims map[string]any, m Mapping) map[string]string {
	out := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			out[k] = bound(v, 256)
		}
	}
	str := func(k string) string { s, _ := claims[k].(string); return s }
	put("subject", str("sub"))
	put("email", str("email"))
	if _, ok := claims["email_verified"]; ok {
		put("email_verified", fmt.Sprint(truthy(claims["email_verified"])))
	}
	put("preferred_username", str("preferred_username"))
	groupsClaim := cmp.Or(m.GroupsClaim, "groups")
	if v, ok := lookupClaim(claims, groupsClaim); ok {
		put("claim_groups", strings.Join(groupList(v), ","))
	}
	return out
}

// bound cuts s to n bytes (at a rune boundary) and replaces control
// characters, so that a claim cannot forge lines in a log or a report.
func bound(s string, n int) string {
	s = textbound.Cut(s, n)
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// verify runs every token check but neither the one-time-use record nor
// the mapping.
func (p *Provider) verify(ctx context.Context, ep *endpoints, raw, nonce string) (*gooidc.IDToken, error) {
	alg, err := headerAlg(raw)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(p.cfg.AllowedAlgs, alg) {
		return nil, fail(ReasonAlgNotAllowed, "the id token is signed with %q, which oidc.allowed_algs %q does not allow", alg, p.cfg.AllowedAlgs)
	}
	ctx = gooidc.ClientContext(ctx, p.cfg.HTTPClient)
	tok, err := ep.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, p.classify(ctx, ep, raw, err)
	}
	// OpenID Connect Core 3.1.3.7, items 4 and 5: with several audiences
	// azp must be present, and when present it must be this client.
	var c struct {
		AZP *string `json:"azp"`
	}
	if err := tok.Claims(&c); err != nil {
		return nil, fail(ReasonMalformedToken, "the id token's claims are not a JSON object")
	}
	switch {
	case c.AZP != nil && *c.AZP != p.cfg.ClientID:
		return nil, fail(ReasonBadAudience, "the id token was issued to %q (azp), not to oidc.client_id %q", bound(*c.AZP, 128), p.cfg.ClientID)
	case c.AZP == nil && len(tok.Audience) > 1:
		return nil, fail(ReasonBadAudience, "the id token has %d audiences and no azp claim saying which one it was issued to: it is refused (OpenID Connect Core 3.1.3.7)", len(tok.Audience))
	}
	if nonce != "" && subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(nonce)) != 1 {
		return nil, fail(ReasonBadNonce, "the id token's nonce is not the one this login issued: it belongs to another login attempt; log in again")
	}
	return tok, nil
}

// classify turns a failed go-oidc verification into a reason. The
// signature is checked first, as go-oidc does: only a token the IdP really
// signed has claims worth reporting on.
func (p *Provider) classify(ctx context.Context, ep *endpoints, raw string, verr error) *Error {
	signed, err := ep.sigOnly.Verify(ctx, raw)
	if err != nil {
		if ctx.Err() != nil {
			return fail(ReasonCanceled, "verification was canceled while fetching the IdP's keys: %v", ctx.Err())
		}
		if strings.Contains(err.Error(), "fetching keys") {
			return fail(ReasonIDPError, "the IdP's signing keys could not be fetched from %s (%s): try again once the IdP answers", ep.jwksURI, sanitize(err))
		}
		return fail(ReasonBadSignature, "the id token's signature does not verify against the IdP's published keys (%s): it was not issued by %s", sanitize(err), p.cfg.Issuer)
	}
	if signed.Issuer != p.cfg.Issuer {
		return fail(ReasonBadIssuer, "the id token was issued by %q, not by oidc.issuer %q", bound(signed.Issuer, 256), p.cfg.Issuer)
	}
	if !slices.Contains(signed.Audience, p.cfg.ClientID) {
		return fail(ReasonBadAudience, "the id token is for audience %q, not for oidc.client_id %q", bound(strings.Join(signed.Audience, " "), 256), p.cfg.ClientID)
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
