package gateway

import (
	"context"
	"net/netip"
	"testing"
)

// FuzzDecideGuards feeds client-chosen hosts (and the addresses a DNS
// server could return for them) to the access decision under rules that
// allow every name and every address: whatever the form, a decided
// address is never loopback, link-local or metadata, directly or embedded
// in IPv6 (checked against an oracle independent of guardOf's tables).
func FuzzDecideGuards(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::7f00:1", "fd00:ec2::254", "web1.internal", "64:ff9b:1::a9fe:a9fe", "[::1]", "169.254.169.254%eth0"} {
		f.Add(s, []byte(netip.MustParseAddr("64:ff9b::7f00:1").AsSlice()))
	}
	p, err := compileAccess([]AccessRule{{Principals: []string{"u"}, Hosts: []string{"*", "0.0.0.0/0", "::/0"}, Ports: []int{22}}})
	if err != nil {
		f.Fatal(err)
	}
	id := &Identity{User: "u", Principals: []string{"u"}}
	f.Fuzz(func(t *testing.T, host string, resolved []byte) {
		var addrs []netip.Addr
		if a, ok := netip.AddrFromSlice(resolved); ok {
			addrs = append(addrs, a)
		}
		res := fixedResolver(addrs)
		dest, err := p.decide(context.Background(), res, id, host, 22)
		if err != nil {
			return
		}
		for _, ap := range dest.Addrs {
			if embedsProtected(ap.Addr()) {
				t.Fatalf("host %q resolved to %v: decided %s, a protected address", host, addrs, ap)
			}
		}
	})
}

type fixedResolver []netip.Addr

func (r fixedResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return r, nil
}

// embedsProtected is the oracle: loopback, link-local, unspecified,
// multicast or unique-local, as is or as the IPv4 inside any of the
// well-known IPv6 embeddings.
func embedsProtected(a netip.Addr) bool {
	bad := func(a netip.Addr) bool {
		return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a.IsMulticast() || a.IsPrivate() && a.Is6() ||
			a == netip.MustParseAddr("169.254.169.254") || a == netip.MustParseAddr("100.100.100.200") || a == netip.MustParseAddr("168.63.129.16")
	}
	a = a.Unmap()
	if bad(a) {
		return true
	}
	if !a.Is6() {
		return false
	}
	b := a.As16()
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[i+1], b[i+2], b[i+3]}) }
	for _, e := range []struct {
		prefix string
		at     int
	}{{"64:ff9b::/96", 12}, {"64:ff9b:1::/48", 12}, {"64:ff9b:1::/48", 9}, {"::/96", 12}, {"::ffff:0:0:0/96", 12}, {"2002::/16", 2}, {"2001::/32", 4}} {
		if netip.MustParsePrefix(e.prefix).Contains(a) && bad(v4(e.at)) {
			return true
		}
	}
	return false
}
