package textbound

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCutKeepsHeadAndTail: a long path keeps the file at its end.
func TestCutKeepsHeadAndTail(t *testing.T) {
	s := strings.Repeat("/.", 600) + "/etc/passwd"
	got := Cut(s, 480)
	if len(got) > 480 {
		t.Fatalf("Cut: %d bytes, want at most 480", len(got))
	}
	if !strings.HasPrefix(got, "/./") || !strings.HasSuffix(got, "/etc/passwd") || !strings.Contains(got, " bytes cut]") {
		t.Fatalf("Cut lost an end: %q", got)
	}
	if Cut("short", 480) != "short" {
		t.Error("Cut changed a short string")
	}
}

// TestCutIsValidUTF8AndBounded over many lengths and bounds.
func TestCutIsValidUTF8AndBounded(t *testing.T) {
	for _, unit := range []string{"a", "é", "€", "😀"} {
		for n := 0; n < 200; n += 7 {
			s := strings.Repeat(unit, n)
			for max := 0; max < 120; max += 3 {
				got := Cut(s, max)
				if len(got) > max && len(s) > max {
					t.Fatalf("Cut(%d×%q, %d) = %d bytes", n, unit, max, len(got))
				}
				if !utf8.ValidString(got) {
					t.Fatalf("Cut(%d×%q, %d) is not valid UTF-8", n, unit, max)
				}
			}
		}
	}
}

func FuzzCut(f *testing.F) {
	f.Add("/./././etc/passwd", 10)
	f.Add(strings.Repeat("é", 100), 33)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		got := Cut(s, max)
		if len(s) <= max && got != s {
			t.Fatal("changed a string within the bound")
		}
		if len(s) > max && len(got) > max {
			t.Fatalf("%d bytes over bound %d", len(got), max)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatal("cut valid UTF-8 into invalid")
		}
	})
}
