package ca

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Validity is a requested validity window. Relative forms are resolved
// against the signing time; a zero Validity means "the policy default".
type Validity struct {
	// From and To are offsets from now (From usually ≤ 0).
	From, To time.Duration
	// AbsFrom and AbsTo, when set, override the offsets.
	AbsFrom, AbsTo time.Time
	// set reports whether the caller asked for anything.
	set bool
}

// IsZero reports whether no validity was requested.
func (v Validity) IsZero() bool { return !v.set }

// window resolves v against now.
func (v Validity) window(now time.Time) (time.Time, time.Time) {
	from, to := now.Add(v.From), now.Add(v.To)
	if !v.AbsFrom.IsZero() {
		from = v.AbsFrom
	}
	if !v.AbsTo.IsZero() {
		to = v.AbsTo
	}
	return from, to
}

// ParseValidity accepts what `ssh-keygen -V` and Go users type:
//
//	8h, 90m, 1h30m        a Go duration: valid from now for that long
//	+8h, +1d, +1w2d       ssh-keygen relative end (units s m h d w)
//	-5m:+8h               start:end, each relative or absolute
//	20261127:20261128     absolute YYYYMMDD[HHMM[SS]] (local time, as ssh-keygen)
//
// "always" and "forever" are refused: a certificate that never expires is
// exactly what short-lived certificates exist to avoid.
func ParseValidity(s string) (Validity, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Validity{}, nil
	}
	if strings.Contains(s, "always") || strings.Contains(s, "forever") {
		return Validity{}, fmt.Errorf("ca: validity %q: certificates without a start or end are never issued; give an end such as +8h", s)
	}
	v := Validity{set: true}
	start, end, hasColon := strings.Cut(s, ":")
	if !hasColon {
		d, err := parseRelative(s)
		if err != nil {
			if t, aerr := parseAbsolute(s); aerr == nil {
				v.AbsTo = t
				return v, nil
			}
			return Validity{}, fmt.Errorf("ca: validity %q: %w", s, err)
		}
		if d <= 0 {
			return Validity{}, fmt.Errorf("ca: validity %q: the end must be in the future", s)
		}
		v.To = d
		return v, nil
	}
	if d, err := parseRelative(start); err == nil {
		v.From = d
	} else if t, aerr := parseAbsolute(start); aerr == nil {
		v.AbsFrom = t
	} else {
		return Validity{}, fmt.Errorf("ca: validity start %q: %w", start, err)
	}
	if d, err := parseRelative(end); err == nil {
		v.To = d
	} else if t, aerr := parseAbsolute(end); aerr == nil {
		v.AbsTo = t
	} else {
		return Validity{}, fmt.Errorf("ca: validity end %q: %w", end, err)
	}
	return v, nil
}

// parseRelative parses a Go duration or ssh-keygen's [+-]N[smhdw]... form.
func parseRelative(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	// As in ssh-keygen, a relative time starts with '+' or '-'; a bare
	// number is an absolute date.
	sign := time.Duration(1)
	switch {
	case strings.HasPrefix(s, "+"):
		s = s[1:]
	case strings.HasPrefix(s, "-"):
		sign, s = -1, s[1:]
	default:
		return 0, fmt.Errorf("want a duration such as 8h, +8h, -5m:+1d")
	}
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	var total time.Duration
	for s != "" {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == 0 || i > 9 {
			return 0, fmt.Errorf("want a duration such as 8h, +8h, -5m:+1d")
		}
		n, _ := strconv.Atoi(s[:i])
		unit := time.Second
		s = s[i:]
		if s != "" {
			switch s[0] {
			case 's', 'S':
			case 'm', 'M':
				unit = time.Minute
			case 'h', 'H':
				unit = time.Hour
			case 'd', 'D':
				unit = 24 * time.Hour
			case 'w', 'W':
				unit = 7 * 24 * time.Hour
			default:
				return 0, fmt.Errorf("unknown unit %q (use s, m, h, d or w)", s[0])
			}
			s = s[1:]
		}
		// Cap at ~100 years so arithmetic cannot overflow.
		const limit = 100 * 366 * 24 * time.Hour
		if time.Duration(n) > limit/unit || total+time.Duration(n)*unit > limit {
			return 0, fmt.Errorf("duration too long")
		}
		total += time.Duration(n) * unit
	}
	return sign * total, nil
}

// parseAbsolute parses ssh-keygen's YYYYMMDD[HHMM[SS]] in local time.
func parseAbsolute(s string) (time.Time, error) {
	for _, layout := range []string{"20060102", "200601021504", "20060102150405"} {
		if len(s) == len(layout) {
			return time.ParseInLocation(layout, s, time.Local)
		}
	}
	return time.Time{}, fmt.Errorf("not YYYYMMDD[HHMM[SS]]")
}
