package gateway

import (
	"errors"
	"strings"
	"testing"
)

// TestLoginFailureNamesTheReasonOnce: a denied login says access_denied
// once and shows no package prefix.
func TestLoginFailureNamesTheReasonOnce(t *testing.T) {
	got := loginFailure("access_denied", errors.New("oidc: the login was denied at the IdP (access_denied): approve it, or ask the IdP admin for access"))
	if strings.Count(got, "access_denied") != 1 || strings.Contains(got, "oidc:") {
		t.Errorf("got %q", got)
	}
	got = loginFailure("login_rate_limited", errors.New("too many logins from 1.2.3.4; wait a minute"))
	if got != "login failed (login_rate_limited): too many logins from 1.2.3.4; wait a minute" {
		t.Errorf("got %q", got)
	}
}
