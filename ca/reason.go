package ca

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxReasonLen bounds the free-text reason of a lock or revocation, in
// bytes.
const MaxReasonLen = 256

// CheckReason refuses a free-text reason (of a lock or a revocation) that
// holds control characters, is not valid UTF-8 or is longer than
// MaxReasonLen: reasons are printed on other administrators' terminals
// and shown to the users they bar.
func CheckReason(reason string) error {
	if len(reason) > MaxReasonLen {
		return fmt.Errorf("the reason is %d bytes long; keep it to %d", len(reason), MaxReasonLen)
	}
	if !utf8.ValidString(reason) {
		return fmt.Errorf("the reason is not valid UTF-8; use plain text")
	}
	for _, r := range reason {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r) {
			return fmt.Errorf("the reason contains the control character %s; use plain text on one line", strconv.QuoteRune(r))
		}
	}
	return nil
}

// Printable returns s with control characters (and invalid UTF-8) escaped
// as Go escapes, so that a stored reason written before CheckReason
// existed cannot drive the terminal it is printed on.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.QuoteToGraphic(s)
	q = q[1 : len(q)-1]
	// QuoteToGraphic leaves some format characters (bidi controls) as is.
	var b strings.Builder
	for _, r := range q {
		if unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029' {
			fmt.Fprintf(&b, `\u%04x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
