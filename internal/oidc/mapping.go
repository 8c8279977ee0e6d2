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
	// A name that is not a top-level claim is read as a dotted path into
	// nested objects, so "realm_access.roles" reads Keycloak's realm roles
	// and "https://example.com/groups" (a namespaced claim) still works.
	GroupsClaim string
	// GroupMap, when non-empty, maps the IdP's group values to bastion
	// group names; values it does not list are dropped, so opaque ids
	// (Entra ID) and paths (Keycloak) never reach policy unmapped.
	GroupMap map[string]string
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
// domain_not_allowed, forbidden_principal, bad_principal or groups_overage
// (the IdP left the groups out because there are too many: a login
// without them would silently lose access, so it is refused). Map never
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

	if groups, err = m.groups(claims, groupsClaim); err != nil {
		return "", nil, nil, err
	}
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

// maxGroups is the most groups one login may carry: the certificate's
// groups extension and every policy check scale with it.
const maxGroups = 256

// groups reads, maps and checks the groups claim.
func (m Mapping) groups(claims map[string]any, claim string) ([]string, error) {
	if overage(claims, claim) {
		return nil, fail(ReasonGroupsOverage,
			"the IdP left the groups out of the token (%s is an overage marker: the user is in too many groups): have the IdP send only the groups assigned to bastion's application (Entra ID: Token configuration, \"Groups assigned to the application\"), or use app roles with oidc.groups_claim: roles", claim)
	}
	v, _ := lookupClaim(claims, claim)
	raw := groupList(v)
	if len(m.GroupMap) > 0 {
		var mapped []string
		for _, g := range raw {
			if to, ok := m.GroupMap[g]; ok && validGroup(to) && !slices.Contains(mapped, to) {
				mapped = append(mapped, to)
			}
		}
		raw = mapped
	}
	if len(raw) > maxGroups {
		return nil, fail(ReasonGroupsOverage, "the token carries %d groups, more than the %d a certificate may: list the groups that matter in oidc.group_map, or have the IdP send only the application's groups", len(raw), maxGroups)
	}
	return raw, nil
}

// overage reports the markers IdPs send instead of a groups list that is
// too long: Entra ID's hasgroups (implicit flow) and the distributed-claims
// _claim_names entry for the groups claim (OIDC Core 5.6.2).
func overage(claims map[string]any, claim string) bool {
	if truthy(claims["hasgroups"]) {
		return true
	}
	names, ok := claims["_claim_names"].(map[string]any)
	if !ok {
		return false
	}
	top, _, _ := strings.Cut(claim, ".")
	for _, n := range []string{claim, top, "groups"} {
		if _, ok := names[n]; ok {
			return true
		}
	}
	return false
}

// lookupClaim finds a claim by its name, or else by a dotted path
// through nested JSON objects.
func lookupClaim(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	var cur any = claims
	for _, part := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
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
