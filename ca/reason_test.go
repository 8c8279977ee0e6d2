package ca

import (
	"strings"
	"testing"
)

// TestReasonChecksAndEscapes: CheckReason refuses every control
// character, bidi override, invalid UTF-8 and overlong text; Printable
// leaves plain text alone and escapes the rest so nothing raw remains.
func TestReasonChecksAndEscapes(t *testing.T) {
	for _, ok := range []string{"", "laptop stolen", "départ — Müller", "ticket #42: it's \"compromised\""} {
		if err := CheckReason(ok); err != nil {
			t.Errorf("CheckReason(%q): %v", ok, err)
		}
		if Printable(ok) != ok {
			t.Errorf("Printable(%q) = %q", ok, Printable(ok))
		}
	}
	for _, bad := range []string{"a\nb", "a\rb", "\x1b[2J", "bell\a", "tab\t", "del\x7f", "c1\u0085", "bidi\u202e", "ls\u2028", "bad\xff", strings.Repeat("x", MaxReasonLen+1)} {
		if err := CheckReason(bad); err == nil {
			t.Errorf("CheckReason(%q) accepted", bad)
		}
		if len(bad) > MaxReasonLen {
			continue
		}
		p := Printable(bad)
		if strings.ContainsAny(p, "\n\r\x1b\a\t\x7f\u0085\u202e\u2028") || strings.Contains(p, "\xff") {
			t.Errorf("Printable(%q) = %q still holds a control character", bad, p)
		}
	}
}
