package gateway

import (
	"context"
	"encoding/json"
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
		return key, false, g.unpublishBan(ctx, key, by)
	}
	if err := g.record(ctx, audit.Event{Type: audit.TypeSourceUnbanned, Actor: by, Fields: map[string]string{
		"source": sourceString(key), "by": by,
	}}); err != nil {
		return key, false, fmt.Errorf("gateway: unban %s: audit log unavailable: %w", sourceString(key), err)
	}
	g.bans.Unban(p)
	if err := g.unpublishBan(ctx, key, by); err != nil {
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

// BanEntry is one ban as `bans --json` lists it.
type BanEntry struct {
	Source      string    `json:"source"`
	Until       time.Time `json:"until"`
	SecondsLeft int64     `json:"seconds_left"`
}

// listFlag reads the arguments of a list command: none, or --json.
func listFlag(args []string) (asJSON, ok bool) {
	switch {
	case len(args) == 0:
		return false, true
	case len(args) == 1 && args[0] == "--json":
		return true, true
	}
	return false, false
}

// writeList writes a list command's rows: as a JSON array with --json
// (`[]` when empty), else one line per row, and "no WHAT" on stderr when
// there are none, so an empty list says so and stdout stays empty.
func writeList[T any](s *sessionIO, rows []T, asJSON bool, what string, line func(T) string) int {
	if asJSON {
		if rows == nil {
			rows = []T{}
		}
		out, err := json.Marshal(rows)
		if err != nil {
			s.errorf("bastion: %v\n", err)
			return 1
		}
		s.printf("%s\n", out)
		return 0
	}
	if len(rows) == 0 {
		s.errorf("no %s\n", what)
		return 0
	}
	for _, r := range rows {
		s.printf("%s\n", line(r))
	}
	return 0
}

func (g *Gateway) cmdBans(_ context.Context, s *sessionIO, _ *Identity, args []string) int {
	asJSON, ok := listFlag(args)
	if !ok {
		s.errorf("usage: bans [--json]\n")
		return 2
	}
	now := g.now()
	var rows []BanEntry
	for _, b := range g.Bans() {
		rows = append(rows, BanEntry{Source: sourceString(b.Source), Until: b.Until.UTC(), SecondsLeft: int64(b.Until.Sub(now) / time.Second)})
	}
	return writeList(s, rows, asJSON, "bans", func(b BanEntry) string {
		return fmt.Sprintf("%s\t%s\t(%s left)", b.Source, b.Until.Format(time.RFC3339), (time.Duration(b.SecondsLeft) * time.Second).String())
	})
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
	// Like unlock of a user who is not locked: done, with a note.
	if !was {
		s.printf("%s was not banned\n", sourceString(src))
		return 0
	}
	s.printf("unbanned %s\n", sourceString(src))
	return 0
}
