// Package textbound cuts client-supplied strings to a bound for records
// and logs, keeping both ends: the head says what the string was and the
// tail is often the part that matters (the file at the end of a long path,
// the last command of a long command line).
package textbound

import (
	"strconv"
	"unicode/utf8"
)

// Cut returns s unchanged when it has at most max bytes. Otherwise it
// returns the head and the tail of s around a note of how much was cut,
// "head...[N bytes cut]...tail", at most max bytes long and cut on UTF-8
// boundaries. A max too small for the note gets the head alone.
func Cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	if max < 0 {
		max = 0
	}
	// The note is sized for the largest count it can carry, so the result
	// never exceeds max whatever the final count is.
	keep := max - len(note(len(s)))
	if keep < 2 {
		return s[:runeStartAtOrBefore(s, max)]
	}
	head := runeStartAtOrBefore(s, keep/2)
	tail := runeStartAtOrAfter(s, len(s)-(keep-keep/2))
	return s[:head] + note(tail-head) + s[tail:]
}

func note(n int) string {
	return "...[" + strconv.Itoa(n) + " bytes cut]..."
}

func runeStartAtOrBefore(s string, i int) int {
	if i >= len(s) {
		return len(s)
	}
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return i
}

func runeStartAtOrAfter(s string, i int) int {
	if i < 0 {
		i = 0
	}
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return i
}
