package gateway

import (
	"strings"
	"unicode/utf8"
)

// maxClientString is the most of any client-chosen string (user names,
// key ids, request and channel types, env names, host names) that reaches
// an audit record or a log line.
const maxClientString = 256

// bounded cuts a client-chosen string to maxClientString bytes on a rune
// boundary, marking the cut, and replaces invalid UTF-8, so what a client
// sends can never grow the audit log or a log line without limit.
func bounded(s string) string {
	if len(s) <= maxClientString && utf8.ValidString(s) {
		return s
	}
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= maxClientString {
		return s
	}
	cut := maxClientString
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(truncated)"
}

// boundedList bounds each element and the number of elements.
func boundedList(list []string) []string {
	const maxItems = 32
	out := make([]string, 0, min(len(list), maxItems))
	for i, s := range list {
		if i == maxItems {
			out = append(out, "…(truncated)")
			break
		}
		out = append(out, bounded(s))
	}
	return out
}
