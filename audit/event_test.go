package audit

import (
	"os"
	"regexp"
	"slices"
	"testing"
)

// TestKnownTypesListsEveryType: every Type* constant declared in this
// package is in KnownTypes, so `--type` never refuses a type bastion
// writes (the list is kept by hand; this keeps it whole).
func TestKnownTypesListsEveryType(t *testing.T) {
	src, err := os.ReadFile("event.go")
	if err != nil {
		t.Fatal(err)
	}
	decl := regexp.MustCompile(`(?m)^\s+Type[A-Za-z0-9]+\s*=\s*"([^"]+)"`)
	known := KnownTypes()
	found := 0
	for _, m := range decl.FindAllStringSubmatch(string(src), -1) {
		found++
		if !slices.Contains(known, m[1]) {
			t.Errorf("event type %q is declared but missing from KnownTypes", m[1])
		}
	}
	if found < 30 {
		t.Fatalf("found only %d Type constants in event.go; the pattern no longer matches", found)
	}
}
