package ca

import (
	"fmt"
	"net/netip"
	"strings"
)

// SourceAddress is a parsed source-address critical option: the networks
// a certificate may be used from.
type SourceAddress []netip.Prefix

// ParseSourceAddress parses a source-address list exactly as OpenSSH's
// addr_match_cidr_list (addrmatch.c) validates it, and no more loosely:
// comma-separated, no empty entries, no spaces, at most 49 characters an
// entry, only hex digits, '.', ':' and '/', each an address or a CIDR
// whose host bits are zero (10.0.0.1/8 is an error, as in sshd). An
// IPv4-mapped IPv6 entry (::ffff:10.0.0.0/104) stays IPv6: like sshd, it
// never matches an IPv4 client. OpenSSH accepts some inet_aton forms (010.1)
// that this parser refuses; refusing is the safe direction.
func ParseSourceAddress(list string) (SourceAddress, error) {
	if list == "" {
		return nil, fmt.Errorf("empty address list")
	}
	var out SourceAddress
	for _, entry := range strings.Split(list, ",") {
		p, err := parseSourceEntry(entry)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func parseSourceEntry(e string) (netip.Prefix, error) {
	const validChars = "0123456789abcdefABCDEF.:/"
	switch {
	case e == "":
		return netip.Prefix{}, fmt.Errorf("empty entry in the list (two commas, or a comma at an end)")
	case len(e) > 46+3:
		return netip.Prefix{}, fmt.Errorf("entry %.60q is too long", e)
	case strings.ContainsFunc(e, func(r rune) bool { return !strings.ContainsRune(validChars, r) }):
		return netip.Prefix{}, fmt.Errorf("entry %q has characters other than hex digits, '.', ':' and '/'", e)
	}
	if strings.Contains(e, "/") {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("entry %q is not an address/length CIDR", e)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("entry %q has host bits set (did you mean %s?)", e, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(e)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("entry %q is not an IP address", e)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Allows reports whether a client at addr may use the certificate. addr
// is normalised as sshd normalises a peer: an IPv4-mapped IPv6 address is
// its IPv4 address.
func (s SourceAddress) Allows(addr netip.Addr) bool {
	addr = addr.Unmap().WithZone("")
	for _, p := range s {
		if p.Addr().Is4() == addr.Is4() && p.Contains(addr) {
			return true
		}
	}
	return false
}
