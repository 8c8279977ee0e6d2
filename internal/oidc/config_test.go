package oidc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Issuer: "https://idp.example.com", ClientID: "bastion"}
	tests := []struct {
		name string
		edit func(*Config)
		key  string // the yaml key the error must name; "" means valid
	}{
		{name: "defaults", edit: func(*Config) {}},
		{name: "loopback http for bastion dev", edit: func(c *Config) { c.Issuer = "http://127.0.0.1:5556" }},
		{name: "no issuer", edit: func(c *Config) { c.Issuer = "" }, key: "oidc.issuer"},
		{name: "plain http", edit: func(c *Config) { c.Issuer = "http://idp.example.com" }, key: "oidc.issuer"},
		{name: "relative issuer", edit: func(c *Config) { c.Issuer = "idp.example.com" }, key: "oidc.issuer"},
		{name: "issuer with query", edit: func(c *Config) { c.Issuer = "https://idp.example.com/?x=1" }, key: "oidc.issuer"},
		{name: "no client id", edit: func(c *Config) { c.ClientID = " " }, key: "oidc.client_id"},
		{name: "scopes without openid", edit: func(c *Config) { c.Scopes = []string{"email"} }, key: "oidc.scopes"},
		{name: "unknown username claim", edit: func(c *Config) { c.UsernameClaim = "name" }, key: "oidc.username_claim"},
		{name: "domain with @", edit: func(c *Config) { c.AllowedDomains = []string{"@example.com"} }, key: "oidc.allowed_domains"},
		{name: "alg none", edit: func(c *Config) { c.AllowedAlgs = []string{"none"} }, key: "oidc.allowed_algs"},
		{name: "alg HS256", edit: func(c *Config) { c.AllowedAlgs = []string{"RS256", "HS256"} }, key: "oidc.allowed_algs"},
		{name: "group to root", edit: func(c *Config) { c.GroupPrincipals = map[string][]string{"ops": {"root"}} }, key: "cert.groups.ops.principals"},
		{name: "group to policy-forbidden", edit: func(c *Config) {
			c.Forbidden = func(p string) bool { return p == "admin" }
			c.GroupPrincipals = map[string][]string{"ops": {"admin"}}
		}, key: "cert.groups.ops.principals"},
		{name: "group to bad principal", edit: func(c *Config) { c.GroupPrincipals = map[string][]string{"ops": {"a,b"}} }, key: "cert.groups.ops.principals"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			err := c.Validate()
			if tt.key == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("err = %v, want one naming %s", err, tt.key)
			}
			wantReason(t, err, ReasonConfig)
		})
	}
}

// TestNoDeviceEndpoint: an IdP without device flow still gives a Provider
// (for the PKCE login); StartDevice says what to do instead.
func TestNoDeviceEndpoint(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			_ = json.NewEncoder(w).Encode(map[string]any{
				"issuer": srv.URL, "authorization_endpoint": srv.URL + "/authorize",
				"token_endpoint": srv.URL + "/token", "jwks_uri": srv.URL + "/keys",
				"id_token_signing_alg_values_supported": []string{"RS256"},
			})
		case "/keys":
			_, _ = w.Write([]byte(`{"keys":[]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	p, err := New(t.Context(), Config{Issuer: srv.URL, ClientID: "bastion"})
	if err != nil {
		t.Fatal(err)
	}
	if p.SupportsDevice() {
		t.Fatal("SupportsDevice = true without a device endpoint")
	}
	_, err = p.StartDevice(t.Context())
	wantReason(t, err, ReasonDeviceUnsupported)
	if !strings.Contains(err.Error(), "bastion login") {
		t.Errorf("error does not say what to do: %v", err)
	}
}

func TestDiscoveryFailure(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	_, err := New(t.Context(), Config{Issuer: srv.URL, ClientID: "bastion"})
	wantReason(t, err, ReasonIDPError)
	if !strings.Contains(err.Error(), "oidc.issuer") {
		t.Errorf("error does not point at oidc.issuer: %v", err)
	}
}

func TestReasonOf(t *testing.T) {
	if ReasonOf(nil) != "" {
		t.Error("ReasonOf(nil) != \"\"")
	}
	if ReasonOf(http.ErrServerClosed) != "unknown" {
		t.Error("ReasonOf(foreign) != unknown")
	}
}
