package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strings"
)

// Resolver looks up a name's addresses; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Access decision reason codes (audit "reason" of a refused jump).
const (
	ReasonNoRule           = "no_access_rule"
	ReasonHostNotAllowed   = "host_not_allowed"
	ReasonPortNotAllowed   = "port_not_allowed"
	ReasonGuardedAddress   = "guarded_address"
	ReasonResolveFailed    = "resolve_failed"
	ReasonDialFailed       = "dial_failed"
	ReasonAuditUnavailable = "audit_unavailable"
)

// accessError is a refused jump with its reason code.
type accessError struct {
	reason string
	msg    string
}

func (e *accessError) Error() string { return e.msg }

// accessPolicy is the compiled list of access rules.
type accessPolicy struct {
	rules []compiledRule
}

type compiledRule struct {
	principals, groups []string
	hosts              []hostPattern
	ports              []int
	mode               string   // ModeRecord or ModeTunnel (see AccessRule.Mode)
	logins             []string // extra inner logins in record mode
}

func compileAccess(rules []AccessRule) (*accessPolicy, error) {
	p := &accessPolicy{}
	for i, r := range rules {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("gateway: access[%d]: %w", i, err)
		}
		cr := compiledRule{principals: r.Principals, groups: r.Groups, ports: r.Ports, mode: r.effectiveMode(), logins: r.Logins}
		if len(cr.ports) == 0 {
			cr.ports = []int{22}
		}
		for _, h := range r.Hosts {
			hp, _ := parseHostPattern(h)
			cr.hosts = append(cr.hosts, hp)
		}
		p.rules = append(p.rules, cr)
	}
	return p, nil
}

// appliesTo reports whether the rule is about this identity.
func (r compiledRule) appliesTo(id *Identity) bool {
	for _, p := range r.principals {
		if slices.Contains(id.Principals, p) {
			return true
		}
	}
	for _, g := range r.groups {
		if id.HasGroup(g) {
			return true
		}
	}
	return false
}

// allows reports whether the rule lets name (as requested) resolved to
// addr through. A guarded address (see guardOf) must be named by a prefix
// that holds it and is no wider than its narrowest guarded range.
func (r compiledRule) allows(name string, addr netip.Addr) bool {
	addr = addr.Unmap()
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	_, nameIsAddr := netip.ParseAddr(name)
	byName, byAddr, namedGuarded := false, false, false
	guard, isGuarded := guardOf(addr)
	for _, h := range r.hosts {
		if h.prefix.IsValid() {
			if h.prefix.Contains(addr) {
				byAddr = true
				if isGuarded && h.prefix.Bits() >= guard.minBits {
					namedGuarded = true
				}
			}
			continue
		}
		if nameIsAddr == nil {
			continue // an address literal never matches a name pattern
		}
		if ok, _ := path.Match(h.glob, name); ok {
			byName = true
		}
	}
	if isGuarded {
		return namedGuarded
	}
	return byName || byAddr
}

// maxDialAddrs bounds how many of a name's addresses one jump tries.
const maxDialAddrs = 16

// Destination is a decided jump: the name asked for and the addresses the
// gateway may dial, in the resolver's order, each allowed by a rule (no
// second lookup, so no DNS rebinding race).
type Destination struct {
	Host  string
	Port  int
	Addrs []netip.AddrPort
	// Addr is the address finally dialled (set by the jump).
	Addr netip.AddrPort
	// Mode and Logins come from the rule that allowed the first address;
	// further addresses are kept only if a rule of the same mode allows
	// them.
	Mode   string
	Logins []string
}

// decide resolves host once and returns every resolved address that an
// applicable rule allows for port, in the resolver's order, or an
// *accessError when there is none.
func (p *accessPolicy) decide(ctx context.Context, res Resolver, id *Identity, host string, port int) (Destination, error) {
	var applicable []compiledRule
	for _, r := range p.rules {
		if r.appliesTo(id) {
			applicable = append(applicable, r)
		}
	}
	if len(applicable) == 0 {
		return Destination{}, &accessError{ReasonNoRule, fmt.Sprintf("no access rule covers %s; ask an administrator for access", id.User)}
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return Destination{}, &accessError{ReasonHostNotAllowed, fmt.Sprintf("%s: addresses with a zone are not allowed", host)}
		}
		addrs = []netip.Addr{a}
	} else {
		if !validHostname(host) {
			return Destination{}, &accessError{ReasonHostNotAllowed, fmt.Sprintf("%q is not a valid host name", host)}
		}
		var err error
		addrs, err = res.LookupNetIP(ctx, "ip", host)
		if err != nil || len(addrs) == 0 {
			return Destination{}, &accessError{ReasonResolveFailed, fmt.Sprintf("cannot resolve %s: %v", host, err)}
		}
	}
	dest := Destination{Host: host, Port: port}
	hostOK, guarded := false, false
	for _, a := range addrs {
		a = a.Unmap().WithZone("")
		ap := netip.AddrPortFrom(a, uint16(port))
		if slices.Contains(dest.Addrs, ap) {
			continue
		}
		for _, r := range applicable {
			if !r.allows(host, a) {
				if _, g := guardOf(a); g {
					guarded = true
				}
				continue
			}
			hostOK = true
			if slices.Contains(r.ports, port) {
				if len(dest.Addrs) == 0 {
					dest.Mode, dest.Logins = r.mode, r.logins
				} else if r.mode != dest.Mode {
					continue
				}
				dest.Addrs = append(dest.Addrs, ap)
				break
			}
		}
		if len(dest.Addrs) == maxDialAddrs {
			break
		}
	}
	switch {
	case len(dest.Addrs) > 0:
		return dest, nil
	case hostOK:
		return Destination{}, &accessError{ReasonPortNotAllowed, fmt.Sprintf("port %d on %s is not allowed for %s", port, host, id.User)}
	case guarded:
		return Destination{}, &accessError{ReasonGuardedAddress, fmt.Sprintf("%s resolves to a loopback, link-local, unique-local or cloud metadata address (or an IPv6 form of one), which needs a rule naming that address", host)}
	}
	return Destination{}, &accessError{ReasonHostNotAllowed, fmt.Sprintf("%s is not allowed for %s", host, id.User)}
}

// validHostname is a loose RFC 1123 check: it only has to keep junk out of
// the resolver and the audit log.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}
