package ca

import (
	"fmt"
	"net/netip"
	"strings"
)

// maxLoginNameLen is the longest user principal we sign. 32 is what
// useradd accepts by default on Linux (LOGIN_NAME_MAX is larger, but
// utmp and many tools truncate at 32).
const maxLoginNameLen = 32

// ValidateUserPrincipal checks that p is a login name every POSIX system
// accepts: 1–32 characters from [A-Za-z0-9._-], optionally ending in '$',
// not starting with '-'. That excludes whitespace, commas (sshd's principal
// list separator), control characters and anything a shell would interpret.
func ValidateUserPrincipal(p string) error {
	if p == "" {
		return fmt.Errorf("empty principal")
	}
	if len(p) > maxLoginNameLen {
		return fmt.Errorf("principal %q is %d characters; login names are at most %d", p, len(p), maxLoginNameLen)
	}
	if p[0] == '-' {
		return fmt.Errorf("principal %q starts with '-', which tools read as an option", p)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		case c == '$' && i == len(p)-1 && i > 0:
		default:
			return fmt.Errorf("principal %q contains %q; login names use only letters, digits, '.', '_' and '-'", p, string(rune(c)))
		}
	}
	if p == "." || p == ".." {
		return fmt.Errorf("principal %q is not a login name", p)
	}
	return nil
}

// ValidateHostPrincipal checks that p is an IP address or a hostname made
// of RFC 1123 labels (letters, digits, '-', not at either end of a label,
// 1–63 characters each, 253 in all). Wildcards are refused: a host
// certificate names the hosts it is for.
func ValidateHostPrincipal(p string) error {
	if p == "" {
		return fmt.Errorf("empty principal")
	}
	if _, err := netip.ParseAddr(p); err == nil {
		if strings.Contains(p, "%") {
			return fmt.Errorf("host principal %q has an IPv6 zone; zones are local to one machine", p)
		}
		return nil
	}
	name := strings.TrimSuffix(p, ".")
	if len(name) > 253 {
		return fmt.Errorf("host principal %q is longer than 253 characters", p)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return fmt.Errorf("host principal %q has an empty label", p)
		}
		if len(label) > 63 {
			return fmt.Errorf("host principal %q has a label longer than 63 characters", p)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host principal %q has a label starting or ending with '-'", p)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host principal %q contains %q; hostnames use letters, digits, '-' and '.'", p, string(rune(c)))
			}
		}
	}
	return nil
}

// ValidateGroup checks a group name carried in the groups extension. Groups
// come from the IdP, so the rule is looser than for login names, but a
// group may not contain the extension's separator (',') or anything
// non-printable.
func ValidateGroup(g string) error {
	if g == "" {
		return fmt.Errorf("empty group name")
	}
	if len(g) > 128 {
		return fmt.Errorf("group %q is longer than 128 characters", g)
	}
	for _, r := range g {
		if r <= ' ' || r == ',' || r == 0x7f || r > 0x7e {
			return fmt.Errorf("group %q contains %q; groups use printable ASCII without spaces or commas", g, r)
		}
	}
	return nil
}
