package gateway

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/bastion-ssh/bastion/ca"
)

// protectedForms are guarded addresses as a client or a DNS server may
// write them: every cloud's metadata endpoints, and IPv6 forms that embed
// a protected IPv4 address.
var protectedForms = []string{
	"169.254.169.254", "169.254.170.2", "169.254.169.253", "169.254.0.23", "169.254.42.42",
	"168.63.129.16", "192.0.0.192", "100.100.100.200",
	"fd00:ec2::254", "fd00:ec2::253", "fd20:ce::254", "fd00:c1::a9fe:a9fe", "fd00:a9fe:a9fe::1", "fd00:42::42",
	"fe80::a9fe:a9fe", "fd12:3456::1", "255.255.255.255", "0.0.0.0", "::",
	"::ffff:169.254.169.254",               // IPv4-mapped
	"::ffff:0:a9fe:a9fe",                   // IPv4-translated (SIIT)
	"::a9fe:a9fe",                          // IPv4-compatible
	"::127.0.0.1",                          // IPv4-compatible loopback
	"64:ff9b::a9fe:a9fe",                   // NAT64 well-known prefix
	"64:ff9b::127.0.0.1",                   // NAT64 loopback
	"64:ff9b::a83f:8110",                   // NAT64 Azure wireserver
	"64:ff9b:1::a9fe:a9fe",                 // NAT64 local-use, /96 layout
	"64:ff9b:1:a9fe:a9:fe00::",             // NAT64 local-use, /48 layout
	"64:ff9b:1:0:a9:fea9:fe00:0",           // NAT64 local-use, /64 layout
	"2002:a9fe:a9fe::1",                    // 6to4
	"2002:7f00:1::",                        // 6to4 loopback
	"2001:0:a9fe:a9fe::1",                  // Teredo server
	"2001:0:4136:e378:8000:63bf:5601:5601", // Teredo client 169.254.169.254 (obfuscated)
}

// TestJumpRefusesEveryFormOfProtectedAddress: under rules allowing every
// name, every IPv4 and every IPv6 address, each protected address, in
// every form, whether asked for literally or reached through a name, is
// refused with guarded_address; unique-local and metadata addresses pass
// only where a rule names them.
func TestJumpRefusesEveryFormOfProtectedAddress(t *testing.T) {
	names := map[string][]netip.Addr{}
	for i, a := range protectedForms {
		names["h"+strconv.Itoa(i)+".test"] = []netip.Addr{netip.MustParseAddr(a)}
	}
	// The test never lets the gateway dial out: an attempt is recorded
	// and fails, so no packet leaves loopback even on a gateway that would
	// let these through.
	var dialed sync.Map
	noDial := func(_ *Config, d *Deps) {
		d.Dial = func(_ context.Context, _, addr string) (net.Conn, error) {
			dialed.Store(addr, true)
			return nil, errors.New("test: dialing out is not allowed")
		}
	}
	tg := startGateway(t, withoutBans, withResolver(names), noDial, withAccess([]string{"*.test", "0.0.0.0/0", "::/0"}, 22))
	c := tg.client(ca.Request{})
	ctx := t.Context()
	for i, a := range protectedForms {
		for _, host := range []string{a, "h" + strconv.Itoa(i) + ".test"} {
			target := net.JoinHostPort(host, "22")
			res := c.Run(ctx, "ssh", "-o", "LogLevel=INFO", "-W", target, "-p", strconv.Itoa(tg.port), tg.user+"@127.0.0.1")
			if res.ExitCode == 0 || !strings.Contains(res.Stderr, "administratively prohibited") {
				t.Errorf("%s (%s) was not refused: %s", host, a, res)
				continue
			}
			tg.waitEvent(t, "channel.refused", map[string]string{"reason": ReasonGuardedAddress, "target": target})
		}
	}
	dialed.Range(func(k, _ any) bool {
		t.Errorf("the gateway dialled %s", k)
		return true
	})
}

// TestGuardNaming: a rule reaches a guarded address only by naming it (or
// a prefix no wider than its narrowest guarded range), in its own form.
func TestGuardNaming(t *testing.T) {
	tests := []struct {
		rule, addr string
		want       bool
	}{
		{"169.254.169.254", "169.254.169.254", true},
		{"169.254.0.0/16", "169.254.169.254", true},
		{"0.0.0.0/0", "169.254.169.254", false},
		{"::/0", "64:ff9b::a9fe:a9fe", false},
		{"64:ff9b::/96", "64:ff9b::a9fe:a9fe", false},
		{"64:ff9b::a9fe:0/112", "64:ff9b::a9fe:a9fe", true},
		{"64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe", true},
		{"64:ff9b::/96", "64:ff9b::c000:20a", true}, // 192.0.2.10 is not protected
		{"2002::/16", "2002:a9fe:a9fe::1", false},
		{"2002::/16", "2002:c000:20a::1", true},
		{"fd12:3456::/32", "fd12:3456::1", true},
		{"::/0", "fd12:3456::1", false},
		{"fd00::/8", "fd00:ec2::254", false},
		{"fd00:ec2::254", "fd00:ec2::254", true},
		{"fd20::/16", "fd20:ce::254", false},
		{"::/0", "2001:db8::1", true},
		{"10.0.0.0/8", "10.1.2.3", true},
		{"100.64.0.0/10", "100.100.100.200", false},
		{"::/0", "::ffff:127.0.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.rule+" "+tc.addr, func(t *testing.T) {
			hp, err := parseHostPattern(tc.rule)
			if err != nil {
				t.Fatal(err)
			}
			r := compiledRule{hosts: []hostPattern{hp}}
			if got := r.allows(tc.addr, netip.MustParseAddr(tc.addr)); got != tc.want {
				g, _ := guardOf(netip.MustParseAddr(tc.addr))
				t.Errorf("rule %s allows %s = %v, want %v (guard %+v)", tc.rule, tc.addr, got, tc.want, g)
			}
		})
	}
}

// TestJumpFallsBackToNextAddress: a name with an IPv6 and an IPv4 address
// whose service listens on IPv4 only is reached on IPv4 after [::1]
// refuses, as OpenSSH's ssh does; session.start names the address used and
// the one that failed.
func TestJumpFallsBackToNextAddress(t *testing.T) {
	tg := startGateway(t, withResolver(map[string][]netip.Addr{
		"dual.test": {netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.1")},
		"v6.test":   {netip.MustParseAddr("::1")},
	}), func(c *Config, _ *Deps) { c.Access[0].Hosts = append(c.Access[0].Hosts, "::1") })
	c := tg.client(ca.Request{})
	port := strconv.Itoa(tg.target.Port)
	c.TrustHostKey(net.JoinHostPort("dual.test", port), tg.target.HostKeyPub)
	res := c.Run(t.Context(), "ssh", "-J", tg.user+"@"+tg.addr, "-p", port, tg.user+"@dual.test", "echo", "reached")
	if res.ExitCode != 0 || res.Stdout != "reached\n" {
		t.Fatalf("ssh -J to a dual-stack name whose service listens on IPv4 only: %s", res)
	}
	ev := tg.waitEvent(t, "session.start", map[string]string{"target": "dual.test:" + port, "addr": "127.0.0.1:" + port})
	if f := ev.Fields["failed_addrs"]; !strings.HasPrefix(f, "[::1]:"+port+" ") {
		t.Errorf("session.start does not name the address that failed: failed_addrs=%q", f)
	}
	// A name whose only address refuses still fails, naming it.
	res = c.Run(t.Context(), "ssh", "-o", "LogLevel=INFO", "-W", "v6.test:"+port, "-p", strconv.Itoa(tg.port), tg.user+"@127.0.0.1")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "cannot connect to v6.test:"+port+": [::1]:"+port) || !strings.Contains(res.Stderr, "connection refused") {
		t.Fatalf("want an open failure naming [::1], got %s", res)
	}
	tg.waitEvent(t, "channel.refused", map[string]string{"reason": ReasonDialFailed, "target": "v6.test:" + port})
}
