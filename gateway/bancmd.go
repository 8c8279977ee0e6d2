package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/bastion-ssh/bastion/audit"
)

// Admin commands over the in-memory ban list:
//
//	ssh -p 2222 carol@bastion bans
//	ssh -p 2222 carol@bastion unban 192.0.2.7

// Bans returns the bans in force, soonest to end first.
func (g *Gateway) Bans() []Ban { return g.bans.List() }

// Unban lifts the ban on source (an address, or an IPv6 address or prefix
// inside the banned /64) and forgets its failures, recording
// source.unbanned by `by` first. It reports the banned source, and false
// when source was not banned (nothing is recorded then).
func (g *Gateway) Unban(ctx context.Context, source, by string) (netip.Prefix, bool, error) {
	p, err := parseSource(source)
	if err != nil {
		return netip.Prefix{}, false, err
	}
	key := sourceKey(p.Addr())
	if _, banned := g.bans.Banned(p.Addr()); !banned {
		g.bans.Unban(p) // forget its failures all the same
		// A ban that never reached this gateway (etcd was away) is still
		// lifted everywhere else.
		return key, false, g.unpublishBan(ctx, key)
	}
	if err := g.record(ctx, audit.Event{Type: audit.TypeSourceUnbanned, Actor: by, Fields: map[string]string{
		"source": sourceString(key), "by": by,
	}}); err != nil {
		return key, false, fmt.Errorf("gateway: unban %s: audit log unavailable: %w", sourceString(key), err)
	}
	g.bans.Unban(p)
	if err := g.unpublishBan(ctx, key); err != nil {
		return key, true, err
	}
	return key, true, nil
}

// parseSource reads an address or a prefix.
func parseSource(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	return netip.Prefix{}, fmt.Errorf("gateway: %q is not an IP address or IPv6 /64 such as 192.0.2.7 or 2001:db8::/64", boundString(s, 64))
}

func (g *Gateway) cmdBans(_ context.Context, s *sessionIO, _ *Identity, args []string) int {
	if len(args) != 0 {
		s.errorf("usage: bans\n")
		return 2
	}
	now := g.now()
	for _, b := range g.Bans() {
		s.printf("%s\t%s\t(%s left)\n", sourceString(b.Source), b.Until.UTC().Format(time.RFC3339), b.Until.Sub(now).Round(time.Second))
	}
	return 0
}

func (g *Gateway) cmdUnban(ctx context.Context, s *sessionIO, id *Identity, args []string) int {
	if len(args) != 1 {
		s.errorf("usage: unban ADDRESS (an IPv4 address, or an IPv6 address or /64)\n")
		return 2
	}
	src, was, err := g.Unban(ctx, args[0], id.User)
	if err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	if !was {
		s.errorf("bastion: %s is not banned (`bans` lists the bans)\n", sourceString(src))
		return 1
	}
	s.printf("unbanned %s\n", sourceString(src))
	return 0
}
