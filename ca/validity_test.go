package ca

import (
	"strings"
	"testing"
	"time"
)

func TestParseValidity(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.Local)
	tests := []struct {
		in       string
		from, to time.Time
	}{
		{"8h", now, now.Add(8 * time.Hour)},
		{"90m", now, now.Add(90 * time.Minute)},
		{"+8h", now, now.Add(8 * time.Hour)},
		{"+1d", now, now.Add(24 * time.Hour)},
		{"+1w2d", now, now.Add(9 * 24 * time.Hour)},
		{"+3600", now, now.Add(time.Hour)},
		{"20261128", now, time.Date(2026, 11, 28, 0, 0, 0, 0, time.Local)},
		{"-5m:+8h", now.Add(-5 * time.Minute), now.Add(8 * time.Hour)},
		{"20261127:20261128", time.Date(2026, 11, 27, 0, 0, 0, 0, time.Local), time.Date(2026, 11, 28, 0, 0, 0, 0, time.Local)},
		{"202611271300:+1h", time.Date(2026, 11, 27, 13, 0, 0, 0, time.Local), now.Add(time.Hour)},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			v, err := ParseValidity(tc.in)
			must(t, err)
			from, to := v.window(now)
			if !from.Equal(tc.from) || !to.Equal(tc.to) {
				t.Errorf("window %s..%s, want %s..%s", from, to, tc.from, tc.to)
			}
		})
	}
	for _, bad := range []string{"forever", "always:+1h", "-1h", "+", "8x", "+1y", "abc", "1h:", ":1h", "+9999999999d"} {
		if _, err := ParseValidity(bad); err == nil {
			t.Errorf("ParseValidity(%q) accepted", bad)
		} else if !strings.HasPrefix(err.Error(), "ca: validity") {
			t.Errorf("ParseValidity(%q) error %q does not say what was wrong", bad, err)
		}
	}
	if v, err := ParseValidity(""); err != nil || !v.IsZero() {
		t.Errorf("empty validity = %v, %v; want zero (policy default)", v, err)
	}
}

func TestValidatePrincipals(t *testing.T) {
	goodUser := []string{"alice", "a", "alice.smith", "svc_deploy", "user-1", "machine$", strings.Repeat("a", 32), "Alice"}
	badUser := []string{"", "-alice", "alice bob", "alice,bob", "alice\n", "al\x00ice", "ali\tce", strings.Repeat("a", 33), "$", "alice@example.com", "ali/ce", "é", ".", ".."}
	for _, p := range goodUser {
		if err := ValidateUserPrincipal(p); err != nil {
			t.Errorf("user principal %q refused: %v", p, err)
		}
	}
	for _, p := range badUser {
		if err := ValidateUserPrincipal(p); err == nil {
			t.Errorf("user principal %q accepted", p)
		}
	}
	goodHost := []string{"web1", "web1.internal", "WEB-1.example.com", "10.0.0.5", "::1", "2001:db8::1", "example.com."}
	badHost := []string{"", "*.example.com", "web_1", "-web", "web-", "a..b", "fe80::1%eth0", strings.Repeat("a", 64) + ".com", "web 1", "web1,web2"}
	for _, p := range goodHost {
		if err := ValidateHostPrincipal(p); err != nil {
			t.Errorf("host principal %q refused: %v", p, err)
		}
	}
	for _, p := range badHost {
		if err := ValidateHostPrincipal(p); err == nil {
			t.Errorf("host principal %q accepted", p)
		}
	}
}

// FuzzValidateUserPrincipal checks that whatever passes is safe to put in a
// certificate, an sshd principals list and a shell word.
func FuzzValidateUserPrincipal(f *testing.F) {
	for _, s := range []string{"alice", "root", "a,b", "a b", "-x", "machine$", "a\n", strings.Repeat("z", 40), "ä"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if ValidateUserPrincipal(p) != nil {
			return
		}
		if p == "" || len(p) > 32 || p[0] == '-' {
			t.Fatalf("accepted %q", p)
		}
		for _, r := range p {
			if r <= ' ' || r == ',' || r > 0x7e || strings.ContainsRune("\"'`;|&<>()*?/\\@:", r) {
				t.Fatalf("accepted %q with %q", p, r)
			}
		}
	})
}

// FuzzValidateHostPrincipal checks accepted host principals have no
// wildcard, separator or control character.
func FuzzValidateHostPrincipal(f *testing.F) {
	for _, s := range []string{"web1.internal", "10.0.0.1", "::1", "*.x", "a,b", "a..b", "fe80::1%lo"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if ValidateHostPrincipal(p) != nil {
			return
		}
		if p == "" || len(p) > 254 || strings.ContainsAny(p, "*?,% \t\n\r\x00/@") {
			t.Fatalf("accepted %q", p)
		}
	})
}

// FuzzParseValidity checks the parser never panics and that what it
// accepts resolves to a window with a finite end.
func FuzzParseValidity(f *testing.F) {
	for _, s := range []string{"8h", "+1d", "-5m:+8h", "20261127:20261128", "forever", "+1w2d3h", ":", "+99999999999w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseValidity(s)
		if err != nil {
			return
		}
		if strings.Contains(s, "forever") || strings.Contains(s, "always") {
			t.Fatalf("accepted %q", s)
		}
		_, _ = v.window(time.Now())
	})
}
