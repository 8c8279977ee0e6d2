package oidc

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// strictPrincipalRE is the test's own idea of a safe principal, stricter
// than the CA's: the fuzzer checks Map against it.
var strictPrincipalRE = regexp.MustCompile(`^[a-z0-9._][a-z0-9._-]{0,31}$`)

func strictValidator(p string) error {
	if !strictPrincipalRE.MatchString(p) {
		return errors.New("not [a-z0-9._-]{1,32} or starts with '-'")
	}
	return nil
}

func TestMap(t *testing.T) {
	alice := func() map[string]any {
		return map[string]any{
			"sub": "u-1", "email": "Alice@Example.com", "email_verified": true,
			"preferred_username": "Alice", "groups": []any{"eng", "dba", "eng", "Domain Users", 42, "a,b"},
		}
	}
	tests := []struct {
		name       string
		m          Mapping
		edit       func(map[string]any)
		username   string
		groups     []string
		principals []string
		reason     string
	}{
		{name: "email local part, lower-cased", username: "alice", groups: []string{"eng", "dba"}, principals: []string{"alice"}},
		{name: "preferred_username", m: Mapping{UsernameClaim: ClaimPreferredUsername}, username: "alice", groups: []string{"eng", "dba"}, principals: []string{"alice"}},
		{name: "sub kept as is", m: Mapping{UsernameClaim: ClaimSubject}, username: "u-1", groups: []string{"eng", "dba"}, principals: []string{"u-1"}},
		{name: "group principals, deduplicated", m: Mapping{GroupPrincipals: map[string][]string{"dba": {"postgres-admin", "alice"}, "eng": {"deploy"}}},
			username: "alice", groups: []string{"eng", "dba"}, principals: []string{"alice", "deploy", "postgres-admin"}},
		{name: "custom groups claim as a single string", m: Mapping{GroupsClaim: "roles"}, edit: func(c map[string]any) { c["roles"] = "ops" },
			username: "alice", groups: []string{"ops"}, principals: []string{"alice"}},
		{name: "no groups", edit: func(c map[string]any) { delete(c, "groups") }, username: "alice", principals: []string{"alice"}},
		{name: "allowed domain, any case", m: Mapping{AllowedDomains: []string{"example.COM"}}, username: "alice", groups: []string{"eng", "dba"}, principals: []string{"alice"}},
		{name: "email_verified as string", edit: func(c map[string]any) { c["email_verified"] = "true" }, username: "alice", groups: []string{"eng", "dba"}, principals: []string{"alice"}},
		{name: "email missing", edit: func(c map[string]any) { delete(c, "email") }, reason: ReasonMissingClaim},
		{name: "email not a string", edit: func(c map[string]any) { c["email"] = 7 }, reason: ReasonMissingClaim},
		{name: "email without domain", edit: func(c map[string]any) { c["email"] = "alice@" }, reason: ReasonBadPrincipal},
		{name: "unverified", edit: func(c map[string]any) { c["email_verified"] = false }, reason: ReasonEmailUnverified},
		{name: "domain not allowed", m: Mapping{AllowedDomains: []string{"corp.example"}}, reason: ReasonDomainNotAllowed},
		{name: "root", edit: func(c map[string]any) { c["email"] = "root@example.com" }, reason: ReasonForbiddenPrincipal},
		{name: "group maps to root", m: Mapping{GroupPrincipals: map[string][]string{"dba": {"root"}}}, reason: ReasonForbiddenPrincipal},
		{name: "group maps to a forbidden name", m: Mapping{Forbidden: func(p string) bool { return p == "postgres" }, GroupPrincipals: map[string][]string{"dba": {"postgres"}}}, reason: ReasonForbiddenPrincipal},
		{name: "group maps to a bad name", m: Mapping{GroupPrincipals: map[string][]string{"eng": {"a b"}}}, reason: ReasonBadPrincipal},
		{name: "comma", m: Mapping{UsernameClaim: ClaimPreferredUsername}, edit: func(c map[string]any) { c["preferred_username"] = "alice,root" }, reason: ReasonBadPrincipal},
		{name: "newline", m: Mapping{UsernameClaim: ClaimPreferredUsername}, edit: func(c map[string]any) { c["preferred_username"] = "alice\n" }, reason: ReasonBadPrincipal},
		{name: "leading dash", m: Mapping{UsernameClaim: ClaimPreferredUsername}, edit: func(c map[string]any) { c["preferred_username"] = "-oProxyCommand" }, reason: ReasonBadPrincipal},
		{name: "too long", m: Mapping{UsernameClaim: ClaimSubject}, edit: func(c map[string]any) { c["sub"] = strings.Repeat("a", 33) }, reason: ReasonBadPrincipal},
		{name: "nested groups claim (Keycloak realm roles)", m: Mapping{GroupsClaim: "realm_access.roles"},
			edit:     func(c map[string]any) { c["realm_access"] = map[string]any{"roles": []any{"ops", "offline_access"}} },
			username: "alice", groups: []string{"ops", "offline_access"}, principals: []string{"alice"}},
		{name: "nested client roles", m: Mapping{GroupsClaim: "resource_access.bastion.roles"},
			edit: func(c map[string]any) {
				c["resource_access"] = map[string]any{"bastion": map[string]any{"roles": []any{"dba"}}, "other": map[string]any{"roles": []any{"x"}}}
			},
			username: "alice", groups: []string{"dba"}, principals: []string{"alice"}},
		{name: "namespaced claim with dots is a name first", m: Mapping{GroupsClaim: "https://example.com/groups"},
			edit:     func(c map[string]any) { c["https://example.com/groups"] = []any{"eng"} },
			username: "alice", groups: []string{"eng"}, principals: []string{"alice"}},
		{name: "path through a non-object", m: Mapping{GroupsClaim: "groups.x"}, username: "alice", principals: []string{"alice"}},
		{name: "group map: Entra object ids and Keycloak paths, unmapped dropped",
			m: Mapping{GroupMap: map[string]string{"5f3c-guid": "eng", "/eng/backend": "backend", "/eng/frontend": "eng"},
				GroupPrincipals: map[string][]string{"backend": {"deploy"}}},
			edit: func(c map[string]any) {
				c["groups"] = []any{"/eng/backend", "5f3c-guid", "/eng/frontend", "other-guid"}
			},
			username: "alice", groups: []string{"backend", "eng"}, principals: []string{"alice", "deploy"}},
		{name: "group map keys are IdP values: a mapped-to name sent by the IdP is dropped",
			m:    Mapping{GroupMap: map[string]string{"guid-admins": "admins"}},
			edit: func(c map[string]any) { c["groups"] = []any{"admins"} }, username: "alice", principals: []string{"alice"}},
		{name: "Entra overage: _claim_names", edit: func(c map[string]any) {
			delete(c, "groups")
			c["_claim_names"] = map[string]any{"groups": "src1"}
			c["_claim_sources"] = map[string]any{"src1": map[string]any{"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}
		}, reason: ReasonGroupsOverage},
		{name: "Entra overage: hasgroups", edit: func(c map[string]any) { delete(c, "groups"); c["hasgroups"] = true }, reason: ReasonGroupsOverage},
		{name: "overage of a custom claim", m: Mapping{GroupsClaim: "roles"}, edit: func(c map[string]any) { c["_claim_names"] = map[string]any{"roles": "src1"} }, reason: ReasonGroupsOverage},
		{name: "too many groups", edit: func(c map[string]any) {
			var gs []any
			for i := range maxGroups + 1 {
				gs = append(gs, fmt.Sprintf("g%d", i))
			}
			c["groups"] = gs
		}, reason: ReasonGroupsOverage},
		{name: "caller's validator", m: Mapping{ValidPrincipal: func(string) error { return errors.New("no") }}, reason: ReasonBadPrincipal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := alice()
			if tt.edit != nil {
				tt.edit(c)
			}
			u, g, p, err := tt.m.Map(c)
			if tt.reason != "" {
				wantReason(t, err, tt.reason)
				if u != "" || g != nil || p != nil {
					t.Errorf("results alongside an error: %q %q %q", u, g, p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u != tt.username || !slices.Equal(g, tt.groups) || !slices.Equal(p, tt.principals) {
				t.Fatalf("Map = %q %q %q, want %q %q %q", u, g, p, tt.username, tt.groups, tt.principals)
			}
		})
	}
}

// FuzzMap: whatever the IdP sends and however the mapping is configured,
// Map does not panic, never returns root or a forbidden principal, never
// returns a principal the validator rejects, and always explains a refusal
// with a known reason.
func FuzzMap(f *testing.F) {
	f.Add([]byte(`{"email":"alice@example.com","email_verified":true,"groups":["eng"]}`), uint8(0), "", "eng", "deploy")
	f.Add([]byte(`{"email":"root@example.com","email_verified":true}`), uint8(0), "example.com", "", "")
	f.Add([]byte(`{"email":"ROOT@example.com","email_verified":"true"}`), uint8(0), "", "", "")
	f.Add([]byte(`{"preferred_username":"alice,root","groups":"dba"}`), uint8(1), "", "dba", "root")
	f.Add([]byte(`{"preferred_username":"al\nice"}`), uint8(1), "", "", "")
	f.Add([]byte(`{"sub":"admin","groups":["a","a","b c",1,null]}`), uint8(2), "", "a", "Admin")
	f.Add([]byte(`{"email":"a@b@c","email_verified":true,"groups":["x"]}`), uint8(0), "c", "x", "-x")
	f.Add([]byte(`{"email":"\"x y\"@example.com","email_verified":true}`), uint8(0), "example.com", "", "")
	f.Add([]byte(`{"sub":"ok","groups":["g"]}`), uint8(2), "", "g", "ok2")
	f.Add([]byte(`[]`), uint8(3), "", "", "")
	// Groups as real IdPs send them: Entra object ids and overage
	// markers, Keycloak paths and nested roles (which&4 picks the nested
	// claim, which&8 a group map from the group argument to "mapped").
	f.Add([]byte(`{"email":"a@example.com","email_verified":true,"groups":["5f3c0e4b-1a2b-4c3d-9e8f-0123456789ab"]}`), uint8(8), "", "mapped", "deploy")
	f.Add([]byte(`{"email":"a@example.com","email_verified":true,"_claim_names":{"groups":"src1"},"_claim_sources":{"src1":{"endpoint":"https://graph.microsoft.com/"}}}`), uint8(0), "", "", "")
	f.Add([]byte(`{"email":"a@example.com","email_verified":true,"hasgroups":"true"}`), uint8(0), "", "", "")
	f.Add([]byte(`{"email":"a@example.com","email_verified":true,"groups":["/eng/backend","/eng"]}`), uint8(8), "", "/eng/backend", "root")
	f.Add([]byte(`{"sub":"u1","realm_access":{"roles":["ops","offline_access"]}}`), uint8(6), "", "ops", "ops-admin")
	f.Add([]byte(`{"sub":"u1","realm_access":{"roles":"ops"},"_claim_names":{"realm_access":"x"}}`), uint8(6), "", "", "")
	f.Add([]byte(`{"sub":"u1","realm_access":["ops"]}`), uint8(14), "", "ops", "")

	reasons := []string{ReasonMissingClaim, ReasonEmailUnverified, ReasonDomainNotAllowed, ReasonForbiddenPrincipal, ReasonBadPrincipal, ReasonGroupsOverage}
	forbidden := func(p string) bool { return strings.EqualFold(p, "admin") || p == "toor" }
	f.Fuzz(func(t *testing.T, claimsJSON []byte, which uint8, domain, group, principal string) {
		var claims map[string]any
		if json.Unmarshal(claimsJSON, &claims) != nil {
			return
		}
		m := Mapping{
			UsernameClaim:  []string{ClaimEmail, ClaimPreferredUsername, ClaimSubject, ""}[which%4],
			Forbidden:      forbidden,
			ValidPrincipal: strictValidator,
		}
		if which&4 != 0 {
			m.GroupsClaim = "realm_access.roles"
		}
		if domain != "" {
			m.AllowedDomains = []string{domain}
		}
		if group != "" {
			m.GroupPrincipals = map[string][]string{group: {principal}}
		}
		if which&8 != 0 {
			m.GroupMap = map[string]string{group: "mapped"}
			m.GroupPrincipals = map[string][]string{"mapped": {principal}}
		}
		u, groups, principals, err := m.Map(claims)
		if err != nil {
			if !slices.Contains(reasons, ReasonOf(err)) {
				t.Fatalf("unknown reason %q: %v", ReasonOf(err), err)
			}
			return
		}
		if len(principals) == 0 || principals[0] != u {
			t.Fatalf("principals %q do not start with the username %q", principals, u)
		}
		for _, p := range principals {
			if strings.EqualFold(p, "root") || forbidden(p) {
				t.Fatalf("forbidden principal %q returned", p)
			}
			if err := strictValidator(p); err != nil {
				t.Fatalf("invalid principal %q returned: %v", p, err)
			}
		}
		for _, g := range groups {
			if !validGroup(g) {
				t.Fatalf("group %q cannot go in a certificate", g)
			}
			if m.GroupMap != nil && g != "mapped" {
				t.Fatalf("unmapped group %q passed a group map", g)
			}
		}
		if len(groups) > maxGroups {
			t.Fatalf("%d groups returned", len(groups))
		}
		if truthy(claims["hasgroups"]) {
			t.Fatal("an overage marker (hasgroups) was accepted as no groups")
		}
		if names, ok := claims["_claim_names"].(map[string]any); ok && names["groups"] != nil {
			t.Fatal("an overage marker (_claim_names.groups) was accepted as no groups")
		}
		if len(m.AllowedDomains) > 0 {
			email, _ := claims["email"].(string)
			if !strings.HasSuffix(strings.ToLower(email), "@"+strings.ToLower(domain)) {
				t.Fatalf("email %q accepted outside %q", email, domain)
			}
		}
	})
}
