package oidc

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Mapping turns the claims of a verified ID token into a username, the
// user's groups and the certificate principals to sign. It is a pure
// function of its fields and the claims, so the gateway, the tests and the
// fuzzer all exercise the same code.
type Mapping struct {
	// UsernameClaim is "email" (default: the lower-cased local part of a
	// verified email), "preferred_username" (lower-cased) or "sub" (as is).
	UsernameClaim string
	// GroupsClaim names the claim holding the groups; default "groups".
	GroupsClaim string
	// AllowedDomains, when set, requires a verified email in one of these
	// domains whatever UsernameClaim says.
	AllowedDomains []string
	// GroupPrincipals maps a group to extra principals.
	GroupPrincipals map[string][]string
	// Forbidden reports principals the CA never signs; root is always
	// forbidden, even when Forbidden is nil.
	Forbidden func(string) bool
	// ValidPrincipal checks principal syntax; when nil a strict check is
	// used: 1–32 of [A-Za-z0-9._-], not starting with '-'.
	ValidPrincipal func(string) error
}

// Map returns the username, the groups (in claim order, without
// duplicates, and without names the certificate's groups extension cannot
// carry: leaving a group out can only narrow access) and the principals
// (the username first, then each group's extra principals).
//
// The error is an [*Error] with reason missing_claim, email_unverified,
// domain_not_allowed, forbidden_principal or bad_principal. Map never
// returns a principal that is forbidden or that ValidPrincipal rejects.
func (m Mapping) Map(claims map[string]any) (username string, groups []string, principals []string, err error) {
	usernameClaim := cmp.Or(m.UsernameClaim, ClaimEmail)
	groupsClaim := cmp.Or(m.GroupsClaim, "groups")

	var local string
	if usernameClaim == ClaimEmail || len(m.AllowedDomains) > 0 {
		var domain string
		if local, domain, err = verifiedEmail(claims); err != nil {
			return "", nil, nil, err
		}
		if len(m.AllowedDomains) > 0 && !slices.ContainsFunc(m.AllowedDomains, func(d string) bool { return strings.EqualFold(d, domain) }) {
			return "", nil, nil, fail(ReasonDomainNotAllowed,
				"email domain %q is not in oidc.allowed_domains %q: log in with a company account", domain, m.AllowedDomains)
		}
	}

	switch usernameClaim {
	case ClaimEmail:
		username = strings.ToLower(local)
	default:
		s, ok := claims[usernameClaim].(string)
		if !ok || s == "" {
			return "", nil, nil, fail(ReasonMissingClaim,
				"the id token has no %s claim (oidc.username_claim): ask the IdP admin to release it, or pick another username_claim", usernameClaim)
		}
		username = s
		if usernameClaim == ClaimPreferredUsername {
			username = strings.ToLower(s)
		}
	}
	if err := m.check(username); err != nil {
		return "", nil, nil, &Error{Reason: err.Reason, Err: fmt.Errorf("username from claim %s: %w", usernameClaim, err.Err)}
	}

	groups = groupList(claims[groupsClaim])
	principals = []string{username}
	for _, g := range groups {
		for _, p := range m.GroupPrincipals[g] {
			if err := m.check(p); err != nil {
				return "", nil, nil, &Error{Reason: err.Reason, Err: fmt.Errorf("group %q maps to a principal that cannot be signed (fix cert.groups.%s.principals): %w", g, g, err.Err)}
			}
			if !slices.Contains(principals, p) {
				principals = append(principals, p)
			}
		}
	}
	return username, groups, principals, nil
}

// verifiedEmail splits the email claim at its last '@' (so that
// "a@example.com@evil.test" belongs to evil.test) after checking that the
// IdP vouches for it.
func verifiedEmail(claims map[string]any) (local, domain string, err error) {
	email, ok := claims["email"].(string)
	if !ok || email == "" {
		return "", "", fail(ReasonMissingClaim, "the id token has no email claim: request the email scope (oidc.scopes) or ask the IdP admin to release it")
	}
	if !truthy(claims["email_verified"]) {
		return "", "", fail(ReasonEmailUnverified,
			"the IdP does not mark email %q as verified (email_verified): verify the address at the IdP, or use another oidc.username_claim", email)
	}
	at := strings.LastIndexByte(email, '@')
	if at <= 0 || at == len(email)-1 {
		return "", "", fail(ReasonBadPrincipal, "email %q is not an address of the form user@domain", email)
	}
	return email[:at], email[at+1:], nil
}

// truthy accepts JSON true and the string "true", which some IdPs (AWS
// Cognito) send for email_verified.
func truthy(v any) bool {
	switch v := v.(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "true")
	}
	return false
}

// groupList reads a groups claim: an array of strings, or a single string
// from IdPs that flatten one-element arrays. Other element types are ignored.
func groupList(v any) []string {
	var raw []string
	switch v := v.(type) {
	case string:
		raw = []string{v}
	case []string:
		raw = v
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok {
				raw = append(raw, s)
			}
		}
	}
	var out []string
	for _, g := range raw {
		if validGroup(g) && !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}

// validGroup mirrors the rule of the certificate's groups extension:
// printable ASCII without spaces or commas (the separator), 1–128 bytes.
func validGroup(g string) bool {
	if g == "" || len(g) > 128 {
		return false
	}
	for i := 0; i < len(g); i++ {
		if c := g[i]; c <= ' ' || c == ',' || c >= 0x7f {
			return false
		}
	}
	return true
}

// check refuses forbidden principals first (so "root" is reported as
// forbidden, not as a syntax problem) and then bad syntax.
func (m Mapping) check(p string) *Error {
	if m.forbidden(p) {
		return fail(ReasonForbiddenPrincipal, "principal %q is forbidden by the CA policy and is never signed", p)
	}
	if err := m.validPrincipal(p); err != nil {
		return fail(ReasonBadPrincipal, "principal %q is not a valid login name: %v", p, err)
	}
	return nil
}

func (m Mapping) forbidden(p string) bool {
	return strings.EqualFold(p, "root") || (m.Forbidden != nil && m.Forbidden(p))
}

func (m Mapping) validPrincipal(p string) error {
	if m.ValidPrincipal != nil {
		return m.ValidPrincipal(p)
	}
	return strictPrincipal(p)
}

// strictPrincipal is the fallback syntax check: what every POSIX system
// accepts as a login name, and nothing sshd or a shell would split on.
func strictPrincipal(p string) error {
	if p == "" || len(p) > 32 {
		return errors.New("login names are 1 to 32 characters")
	}
	if p[0] == '-' {
		return errors.New("login names do not start with '-'")
	}
	if p == "." || p == ".." {
		return errors.New(`login names are not "." or ".."`)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("login names use only letters, digits, '.', '_' and '-', not %q", string(rune(c)))
		}
	}
	return nil
}
