package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bastion-ssh/bastion/audit"
)

// Reasons a connection is dropped before its handshake (the metrics label
// of bastion_connections_refused_total and the keys of the aggregated
// connections.dropped audit record).
const (
	DropBanned    = ReasonBanned
	DropFull      = "too_many_unauthenticated"
	DropEarly     = "early_drop"
	DropPerSource = "too_many_unauthenticated_per_source"
	DropStopping  = "stopping"
)

// startups admits unauthenticated connections as sshd's MaxStartups
// start:rate:full and PerSourceMaxStartups do: a global cap with random
// early drop past start, and a cap per source (sourceKey). Its per-source
// table holds only sources with a connection in the pool, so it is
// bounded by the pool's size.
type startups struct {
	start, rate, full, perSource int
	// roll returns a number in [0, 100); random by default.
	roll func() int

	mu     sync.Mutex
	total  int
	bySrc  map[netip.Prefix]int
	drops  dropCounts
	bySrcD map[netip.Prefix]int // drops per source since the last report
}

// dropCounts are drops since the last report, by reason.
type dropCounts map[string]int

// maxReportedSources bounds how many sources one drop report names.
const maxReportedSources = 16

// maxCountedDropSources bounds the table of drops per source between two
// reports; sources past it are counted in the totals only.
const maxCountedDropSources = 1024

func newStartups(l Limits) *startups {
	return &startups{
		start: min(l.UnauthenticatedDropStart, l.MaxUnauthenticated), rate: l.UnauthenticatedDropRate,
		full: l.MaxUnauthenticated, perSource: min(l.MaxUnauthenticatedPerSource, l.MaxUnauthenticated),
		roll:  func() int { return rand.IntN(100) },
		bySrc: map[netip.Prefix]int{}, drops: dropCounts{}, bySrcD: map[netip.Prefix]int{},
	}
}

// admit takes a slot for a new connection from addr, or says why not
// ("" when admitted). Each admitted connection is released once.
func (s *startups) admit(addr netip.Addr) string {
	key := sourceKey(addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	reason := ""
	switch {
	case s.total >= s.full:
		reason = DropFull
	case s.bySrc[key] >= s.perSource:
		reason = DropPerSource
	case s.total >= s.start && s.start < s.full:
		// sshd: p = rate + (100-rate) * (n-start) / (full-start).
		p := s.rate + (100-s.rate)*(s.total-s.start)/(s.full-s.start)
		if s.roll() < p {
			reason = DropEarly
		}
	}
	if reason != "" {
		s.countDropLocked(key, reason)
		return reason
	}
	s.total++
	s.bySrc[key]++
	return ""
}

// release frees the slot of a connection from addr.
func (s *startups) release(addr netip.Addr) {
	key := sourceKey(addr)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	if n := s.bySrc[key] - 1; n > 0 {
		s.bySrc[key] = n
	} else {
		delete(s.bySrc, key)
	}
}

// dropped counts a connection refused for another reason (a ban), so
// that it is reported with the others.
func (s *startups) dropped(addr netip.Addr, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.countDropLocked(sourceKey(addr), reason)
}

func (s *startups) countDropLocked(key netip.Prefix, reason string) {
	s.drops[reason]++
	if _, ok := s.bySrcD[key]; ok || len(s.bySrcD) < maxCountedDropSources {
		s.bySrcD[key]++
	}
}

// report takes the drops counted since the last call as the fields of one
// connections.dropped record (nil when there were none): the total, a
// count per reason, and the sources that were dropped most.
func (s *startups) report() map[string]string {
	s.mu.Lock()
	drops, bySrc := s.drops, s.bySrcD
	s.drops, s.bySrcD = dropCounts{}, map[netip.Prefix]int{}
	s.mu.Unlock()
	if len(drops) == 0 {
		return nil
	}
	f := map[string]string{}
	total := 0
	for reason, n := range drops {
		f[reason] = strconv.Itoa(n)
		total += n
	}
	f["total"] = strconv.Itoa(total)
	type src struct {
		p netip.Prefix
		n int
	}
	var srcs []src
	for p, n := range bySrc {
		srcs = append(srcs, src{p, n})
	}
	sort.Slice(srcs, func(i, j int) bool {
		if srcs[i].n != srcs[j].n {
			return srcs[i].n > srcs[j].n
		}
		return srcs[i].p.String() < srcs[j].p.String()
	})
	var top []string
	for i, s := range srcs {
		if i == maxReportedSources {
			break
		}
		top = append(top, fmt.Sprintf("%s=%d", sourceString(s.p), s.n))
	}
	f["sources"] = strings.Join(top, " ")
	f["distinct_sources"] = strconv.Itoa(len(srcs))
	return f
}

// sourceString writes an IPv4 source as its address and an IPv6 one as
// its /64.
func sourceString(p netip.Prefix) string {
	if p.Addr().Is4() && p.Bits() == 32 {
		return p.Addr().String()
	}
	return p.String()
}

// janitor is the gateway's housekeeping goroutine: every ReportInterval
// it writes the aggregated drop report and sweeps the ban list and the
// login limiter. It runs while the gateway serves and stops (after a last
// report) at Shutdown.
type janitor struct {
	once     sync.Once
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// startJanitor starts the housekeeping goroutine once.
func (g *Gateway) startJanitor() {
	g.janitor.once.Do(func() {
		go func() {
			defer close(g.janitor.done)
			t := time.NewTicker(g.cfg.Limits.ReportInterval)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					g.housekeep()
				case <-g.janitor.stop:
					g.housekeep()
					return
				}
			}
		}()
	})
}

// stopJanitor stops the housekeeping goroutine and waits for its last
// report; without a started janitor it just reports.
// It is safe to call more than once (Shutdown may be).
func (g *Gateway) stopJanitor() {
	g.janitor.stopOnce.Do(g.stopJanitorOnce)
}

func (g *Gateway) stopJanitorOnce() {
	started := true
	g.janitor.once.Do(func() { started = false })
	if !started {
		g.housekeep()
		return
	}
	close(g.janitor.stop)
	<-g.janitor.done
}

// housekeep writes the drop report and sweeps the bounded tables.
func (g *Gateway) housekeep() {
	g.bans.sweep()
	g.renewHostCert(context.Background())
	if g.loginLimiter != nil {
		g.loginLimiter.sweep()
	}
	if f := g.startups.report(); f != nil {
		f["period"] = g.cfg.Limits.ReportInterval.String()
		g.record(context.Background(), audit.Event{Type: audit.TypeConnectionsDropped, Actor: "gateway", Fields: f})
	}
}
