package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/cluster"
)

// registerSession keeps the cluster's live-session registry in step with
// the session records this gateway writes: a session.start that is
// durable registers the session, any session.end (written or spooled)
// removes it. The registry is written in the background; the audit
// record stays the one a session waits for.
func (g *Gateway) registerSession(ev audit.Event, err error) {
	cl := g.deps.Cluster
	if cl == nil || ev.Session == "" {
		return
	}
	switch ev.Type {
	case audit.TypeSessionStart:
		if err != nil {
			return
		}
		kind := ev.Fields["mode"]
		if kind == "" {
			kind = ModeTunnel
		}
		start := ev.Time
		if start.IsZero() {
			start = g.now()
		}
		cl.SessionStarted(cluster.Session{ID: ev.Session, User: ev.Actor, Target: ev.Fields["target"], Start: start, Kind: kind})
	case audit.TypeSessionEnd:
		cl.SessionEnded(ev.Session)
	}
}

// fieldDurationMaxMS, in a gateway_lost session.end, is the duration up
// to when the loss was noticed: an upper bound (its duration_ms is
// "unknown").
const fieldDurationMaxMS = "duration_max_ms"

// sessionEnding is, for a session.end in a cluster, the cluster's
// SessionEnding: held while the end is recorded and the registry told,
// so that no session.resumed of the session is recorded after its end.
// nil for every other event.
func (g *Gateway) sessionEnding(ev audit.Event) func() {
	if g.deps.Cluster == nil || ev.Type != audit.TypeSessionEnd || ev.Session == "" {
		return nil
	}
	return g.deps.Cluster.SessionEnding()
}

// endLostSessions writes, in this gateway's log, the session.end of each
// session another gateway held when its lease expired (kill -9, power
// loss, cut off from etcd): reason gateway_lost, the lost gateway in
// "lost_gateway". The cluster hands each such session to one member
// only. The lost gateway's own log closes them too when it restarts
// (reason gateway_crashed).
func (g *Gateway) endLostSessions(ctx context.Context, gw string, sessions []cluster.Session) {
	now := g.now()
	for _, s := range sessions {
		f := map[string]string{
			"reason": cluster.ReasonGatewayLost, "lost_gateway": gw, "user": s.User, "target": s.Target,
			"mode": s.Kind, "start": s.Start.UTC().Format(time.RFC3339Nano), "bytes_up": "unknown", "bytes_down": "unknown",
			// When the session ended is not known here: only that it was
			// before the loss was noticed (at most LeaseTTL after it).
			"duration_ms": "unknown",
		}
		if now.After(s.Start) {
			f[fieldDurationMaxMS] = strconv.FormatInt(now.Sub(s.Start).Milliseconds(), 10)
		}
		if err := g.record(ctx, audit.Event{Type: audit.TypeSessionEnd, Actor: s.User, Session: s.ID, Fields: f}); err != nil {
			g.log.Error("could not record the end of a lost gateway's session", "lost_gateway", gw, "session", s.ID, "err", err)
		}
	}
}

// resumeSessions writes, in this gateway's log, a session.resumed for each
// of its sessions that a peer ended as gateway_lost while this gateway
// was cut off from etcd (frozen, or its network down, past the lease's
// TTL) and that lives on: who ended it (lost_by), how long this gateway
// was cut off (cut_off_ms, from its last keepalive answer to its new
// lease). The session's own session.end, when it comes, is the one that
// counts; `audit sessions` goes by it.
func (g *Gateway) resumeSessions(ctx context.Context, sessions []cluster.ResumedSession) {
	for _, s := range sessions {
		f := map[string]string{
			"lost_by": s.LostBy, "lost_reason": cluster.ReasonGatewayLost, "cut_off_ms": strconv.FormatInt(s.CutOff.Milliseconds(), 10),
			"user": s.User, "target": s.Target, "mode": s.Kind, "start": s.Start.UTC().Format(time.RFC3339Nano),
		}
		if err := g.record(ctx, audit.Event{Type: audit.TypeSessionResumed, Actor: s.User, Session: s.ID, Fields: f}); err != nil {
			g.log.Error("could not record that a session ended as gateway_lost lives on", "session", s.ID, "lost_by", s.LostBy, "err", err)
		}
	}
}

// cmdCluster runs `cluster status [--json]` and `cluster sessions
// [--json]`: the members of the cluster (id, SSH address, version,
// start, live sessions, last update) and this gateway's view of etcd, or
// the cluster's live sessions. Admins and auditors may run it (auditors
// find the members to fan `bastion audit ... --cluster` out to). While
// etcd is unreachable both still answer, with this gateway's own view:
// its staleness, whether it admits new sessions, the last member list it
// read and its own live sessions, and what to check.
func (g *Gateway) cmdCluster(ctx context.Context, s *sessionIO, id *Identity, args []string) int {
	const usage = "usage: cluster status [--json]   the gateways, their live sessions, this gateway's view of etcd\n       cluster sessions [--json] the cluster's live sessions and the gateway holding each\n"
	if !g.isAdmin(id) && !g.isAuditor(id) {
		s.errorf("bastion: cluster needs membership of %s; %s is not a member\n", g.clusterGroups(), bounded(id.User))
		return 126
	}
	if len(args) > 0 && args[0] == "forget" {
		s.errorf("bastion: cluster forget is not served over SSH: it changes etcd directly, from a host with the cluster's bastion.yaml:\n  bastion cluster forget GATEWAY_ID --config /etc/bastion/bastion.yaml\n(the gateway must be stopped; bastion cluster status lists the known gateways)\n")
		return 2
	}
	asJSON := false
	if len(args) == 0 || args[0] != "status" && args[0] != "sessions" {
		s.errorf("%s", usage)
		return 2
	}
	for _, a := range args[1:] {
		if a != "--json" {
			s.errorf("bastion: unknown argument %q\n%s", bounded(a), usage)
			return 2
		}
		asJSON = true
	}
	cl := g.deps.Cluster
	if cl == nil {
		s.errorf("bastion: this gateway is not in a cluster (bastion.yaml has no cluster: block)\n")
		return 1
	}
	out := s.stdout
	if s.crlf {
		out = crlfWriter{s.stdout}
	}
	if args[0] == "sessions" {
		rctx, cancel := context.WithTimeout(ctx, clusterReadTimeout(cl))
		list, err := cl.Sessions(rctx)
		cancel()
		if err != nil {
			// This gateway's own sessions are known without etcd.
			list = cl.OwnSessions()
			st, _ := cl.Status(ctx)
			s.errorf("bastion: WARNING: etcd is unreachable from gateway %s (last contact %s ago): these are only its own %d live session(s); the other gateways' are unknown until etcd answers\n  what to check: %s\n",
				cl.GatewayID(), cluster.FormatStaleness(time.Duration(st.StalenessMS)*time.Millisecond), len(list), cluster.EtcdAdvice(cl.Config().Endpoints))
		}
		if err := writeClusterSessions(out, list, asJSON, g.now()); err != nil {
			return 1
		}
		return 0
	}
	// A status while etcd is unreachable is this gateway's own view (it
	// says so itself), which is what the operator asked for.
	st, _ := cl.Status(ctx)
	if err := cluster.WriteStatus(out, st, asJSON, g.now()); err != nil {
		return 1
	}
	return 0
}

// clusterReadTimeout bounds a read of etcd for an admin command: short
// while this gateway already knows etcd is unreachable, so the answer
// comes at once from what it knows itself.
func clusterReadTimeout(cl *cluster.Cluster) time.Duration {
	if cl.Healthy() {
		return 3 * time.Second
	}
	return time.Second
}

// clusterGroups names the groups that may run `cluster`, as the refusal
// says them.
func (g *Gateway) clusterGroups() string {
	var parts []string
	if len(g.cfg.AdminGroups) > 0 {
		parts = append(parts, "an admin group ("+strings.Join(g.cfg.AdminGroups, ", ")+")")
	}
	if len(g.cfg.AuditorGroups) > 0 {
		parts = append(parts, "an auditor group ("+strings.Join(g.cfg.AuditorGroups, ", ")+")")
	}
	if len(parts) == 0 {
		return "an admin or auditor group (none are configured: set admin_groups or auditor_groups in bastion.yaml)"
	}
	return strings.Join(parts, " or ")
}

// writeClusterSessions writes the registry's live sessions as a table or
// one JSON array.
func writeClusterSessions(w io.Writer, list []cluster.Session, asJSON bool, now time.Time) error {
	if asJSON {
		if list == nil {
			list = []cluster.Session{}
		}
		return json.NewEncoder(w).Encode(list)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tGATEWAY\tUSER\tTARGET\tKIND\tSTARTED")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s (%s ago)\n", s.ID, s.Gateway, bounded(s.User), auditHost(s.Target), s.Kind, s.Start.UTC().Format(time.RFC3339), now.Sub(s.Start).Round(time.Second))
	}
	return tw.Flush()
}

// heldElsewhere says which gateway holds session id when it is live on
// another member of the cluster, with the command to run there; "" when
// it is not (or this gateway is not in a cluster).
func (g *Gateway) heldElsewhere(ctx context.Context, id, sub string) string {
	cl := g.deps.Cluster
	if cl == nil {
		return ""
	}
	s, found, err := cl.LookupSession(ctx, id)
	if err != nil || !found || s.Gateway == cl.GatewayID() {
		return ""
	}
	addr := s.Gateway
	if ms, err := cl.Members(ctx); err == nil {
		for _, m := range ms {
			if m.ID == s.Gateway {
				addr = m.SSHAddr
			}
		}
	}
	return fmt.Sprintf("session %s is live on gateway %s (%s), not on this one (%s); run there: bastion audit %s %s --gateway %s (or with --cluster, which finds it)", id, s.Gateway, addr, cl.GatewayID(), sub, id, addr)
}

// crlfWriter turns \n into \r\n for a pty.
type crlfWriter struct{ w io.Writer }

func (c crlfWriter) Write(p []byte) (int, error) {
	if _, err := c.w.Write(bytes.ReplaceAll(p, []byte("\n"), []byte("\r\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}
