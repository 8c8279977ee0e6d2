package gateway

import (
	"net/netip"
)

// guardedRange is a range no name pattern or broad prefix may reach: a
// rule must name an address inside it, or a prefix no wider than it.
type guardedRange struct {
	prefix netip.Prefix
	what   string
}

// guardedRanges are the gateway itself (loopback), link-local networks,
// every major cloud's metadata, DNS and host-agent endpoints, unique-local
// IPv6, and addresses that are not a single host. Sources for the cloud
// entries are each provider's instance-metadata documentation:
//
//	AWS EC2        169.254.169.254, fd00:ec2::254 (IMDS); 169.254.169.253, fd00:ec2::253 (DNS); 169.254.169.123, fd00:ec2::123 (NTP)
//	AWS ECS        169.254.170.2 (task metadata and credentials)
//	GCP            169.254.169.254, fd20:ce::254 (metadata.google.internal)
//	Azure          169.254.169.254 (IMDS), 168.63.129.16 (wireserver: DNS, DHCP, health, agent)
//	Oracle (OCI)   169.254.169.254, fd00:c1::a9fe:a9fe, 192.0.0.192 (legacy)
//	Alibaba Cloud  100.100.100.200
//	Tencent Cloud  169.254.0.23
//	Akamai/Linode  169.254.169.254, fd00:a9fe:a9fe::1
//	Scaleway       169.254.42.42, fd00:42::42
//	DigitalOcean, Hetzner, Vultr, IBM Cloud, Exoscale, OpenStack: 169.254.169.254
//	               (OpenStack also fe80::a9fe:a9fe)
//
// Order does not matter: an address gets the narrowest range holding it,
// so naming fd00::/8 in a rule does not reach fd00:ec2::254.
var guardedRanges = []guardedRange{
	{netip.MustParsePrefix("0.0.0.0/8"), "this-network"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local (cloud metadata)"},
	{netip.MustParsePrefix("168.63.129.16/32"), "Azure wireserver"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments (Oracle metadata 192.0.0.192)"},
	{netip.MustParsePrefix("100.100.100.200/32"), "Alibaba Cloud metadata"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved and broadcast"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("fc00::/7"), "unique-local"},
	{netip.MustParsePrefix("fd00:ec2::/32"), "AWS metadata, DNS and NTP"},
	{netip.MustParsePrefix("fd20:ce::254/128"), "GCP metadata"},
	{netip.MustParsePrefix("fd00:c1::a9fe:a9fe/128"), "Oracle Cloud metadata"},
	{netip.MustParsePrefix("fd00:a9fe:a9fe::1/128"), "Akamai/Linode metadata"},
	{netip.MustParsePrefix("fd00:42::42/128"), "Scaleway metadata"},
}

// embedding is an IPv6 form that carries an IPv4 address, and how far
// into the address the IPv4 starts (in bits; -1 when it is not contiguous,
// so only a rule naming the whole address reaches it).
type embedding struct {
	prefix netip.Prefix
	name   string
	// extract returns the IPv4 addresses a carries and their bit offset.
	extract func(a [16]byte) []embedded
}

type embedded struct {
	v4     netip.Addr
	offset int
}

func v4At(b [16]byte, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{b[i], b[i+1], b[i+2], b[i+3]})
}

// embeddings are every IPv6 form that a host may route to an IPv4 address:
// IPv4-mapped and SIIT-translated (RFC 4291, 2765), IPv4-compatible
// (deprecated, RFC 4291), NAT64 well-known and local-use prefixes (RFC
// 6052, 8215; the local-use /48 may hold any RFC 6052 layout, so every
// layout is checked), 6to4 (RFC 3056) and Teredo (RFC 4380, server and
// obfuscated client).
var embeddings = []embedding{
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped", func(b [16]byte) []embedded { return []embedded{{v4At(b, 12), 96}} }},
	{netip.MustParsePrefix("::ffff:0:0:0/96"), "IPv4-translated", func(b [16]byte) []embedded { return []embedded{{v4At(b, 12), 96}} }},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible", func(b [16]byte) []embedded { return []embedded{{v4At(b, 12), 96}} }},
	{netip.MustParsePrefix("64:ff9b::/96"), "NAT64", func(b [16]byte) []embedded { return []embedded{{v4At(b, 12), 96}} }},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "NAT64 local-use", func(b [16]byte) []embedded {
		return []embedded{
			{netip.AddrFrom4([4]byte{b[6], b[7], b[9], b[10]}), -1},  // /48 layout
			{netip.AddrFrom4([4]byte{b[7], b[9], b[10], b[11]}), -1}, // /56
			{v4At(b, 9), -1},  // /64
			{v4At(b, 12), 96}, // /96
		}
	}},
	{netip.MustParsePrefix("2002::/16"), "6to4", func(b [16]byte) []embedded { return []embedded{{v4At(b, 2), 16}} }},
	{netip.MustParsePrefix("2001::/32"), "Teredo", func(b [16]byte) []embedded {
		c := v4At(b, 12).As4()
		for i := range c {
			c[i] ^= 0xff
		}
		return []embedded{{v4At(b, 4), 32}, {netip.AddrFrom4(c), 96}}
	}},
}

// guard is why an address is guarded and how narrowly a rule must name it.
type guard struct {
	what string
	// minBits is the longest prefix length among the guarded ranges that
	// hold the address, in the address's own family: a rule's prefix must
	// contain the address and be at least this long.
	minBits int
}

// guardOf is the one place that decides whether an address is guarded.
// It unmaps IPv4-mapped addresses and looks inside every IPv6 form that
// embeds an IPv4 address, so 64:ff9b::a9fe:a9fe is as guarded as
// 169.254.169.254; of all the ranges that hold the address or an address
// it embeds, the narrowest decides.
func guardOf(a netip.Addr) (guard, bool) {
	a = a.Unmap()
	var g guard
	found := false
	consider := func(what string, bits int) {
		if !found || bits > g.minBits {
			g = guard{what: what, minBits: bits}
		}
		found = true
	}
	for _, r := range guardedRanges {
		if r.prefix.Contains(a) {
			consider(r.what, r.prefix.Bits())
		}
	}
	if a.Is6() {
		b := a.As16()
		for _, e := range embeddings {
			if !e.prefix.Contains(a) {
				continue
			}
			for _, v := range e.extract(b) {
				for _, r := range guardedRanges {
					if !r.prefix.Contains(v.v4) {
						continue
					}
					bits := 128
					if v.offset >= 0 {
						bits = v.offset + r.prefix.Bits()
					}
					consider(r.what+" in "+e.name+" form", bits)
				}
			}
		}
	}
	return g, found
}
