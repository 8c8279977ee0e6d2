package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Status is what `bastion cluster status` shows: the members, and how
// the gateway (or CLI) that asked sees etcd. While etcd is unreachable a
// gateway still answers with its own view: its staleness, whether it
// admits new sessions, the last member list it read (MembersCached, and
// how old: MembersAsOf) and its own live sessions.
type Status struct {
	// Gateway is the id of the gateway that answered ("" from the CLI).
	Gateway string `json:"gateway,omitempty"`
	// Healthy, LastContact and Staleness are the answerer's view of etcd.
	Healthy     bool      `json:"etcd_healthy"`
	LastContact time.Time `json:"etcd_last_contact"`
	// StalenessMS is how long ago LastContact was, in milliseconds.
	StalenessMS int64 `json:"etcd_staleness_ms"`
	// Endpoints are the etcd client URLs the answerer uses (no userinfo).
	Endpoints []string `json:"etcd_endpoints,omitempty"`
	// EtcdError says why etcd could not be read for this status ("" when
	// it was).
	EtcdError string `json:"etcd_error,omitempty"`
	// Consistency and MaxStaleness are the answerer's configured mode.
	Consistency  string `json:"consistency"`
	MaxStaleness string `json:"max_staleness"`
	Admit        string `json:"admit"` // "ok", or why new sessions are refused
	// Admitting is whether the answerer admits new sessions now;
	// AdmitLimitMS is how stale its state may grow before it stops.
	Admitting    bool     `json:"admitting"`
	AdmitLimitMS int64    `json:"admit_limit_ms"`
	Members      []Member `json:"members"`
	// MembersAsOf is when Members and Down were read from etcd; with
	// MembersCached they are the last list read before etcd became
	// unreachable, and may be out of date.
	MembersAsOf   time.Time `json:"members_as_of,omitzero"`
	MembersCached bool      `json:"members_cached,omitempty"`
	// Down are the gateways that joined once and are not members now:
	// stopped, crashed, or cut off from etcd. Their audit logs cannot be
	// read until they run again (or are forgotten when retired).
	Down []Known `json:"down,omitempty"`
	// OwnSessions are the answering gateway's own live sessions, known
	// without etcd.
	OwnSessions []Session `json:"own_sessions,omitempty"`
}

// memberView is the last member list (and known gateways) a gateway read
// from etcd, for a status while etcd is unreachable.
type memberView struct {
	mu          sync.Mutex
	members     []Member
	at          time.Time
	known       []Known
	haveMembers bool
}

func (v *memberView) remember(ms []Member, at time.Time) {
	v.mu.Lock()
	v.members, v.at, v.haveMembers = append([]Member(nil), ms...), at, true
	v.mu.Unlock()
}

func (v *memberView) rememberKnown(ks []Known) {
	v.mu.Lock()
	v.known = append([]Known(nil), ks...)
	v.mu.Unlock()
}

// last is the remembered members (ok false when none were ever read),
// and the known gateways that are not among them.
func (v *memberView) last() (ms []Member, at time.Time, down []Known, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]Member(nil), v.members...), v.at, downOf(v.members, v.known), v.haveMembers
}

// downOf is the known gateways that are not members.
func downOf(ms []Member, known []Known) []Known {
	live := map[string]bool{}
	for _, m := range ms {
		live[m.ID] = true
	}
	var down []Known
	for _, k := range known {
		if !live[k.ID] {
			down = append(down, k)
		}
	}
	return down
}

// OwnSessions is this gateway's own live sessions, oldest first: known
// without etcd.
func (c *Cluster) OwnSessions() []Session {
	c.reg.mu.Lock()
	out := make([]Session, 0, len(c.reg.own))
	for id, s := range c.reg.own {
		s.ID = id
		out = append(out, s)
	}
	c.reg.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// admitLimit is how stale the state may be before Admit refuses.
func (c *Cluster) admitLimit() time.Duration {
	if c.cfg.Consistency == Strict {
		return StrictStaleness
	}
	return c.cfg.MaxStaleness
}

// unhealthyReadTimeout bounds the etcd reads of a status while the
// gateway already knows etcd is unreachable: the operator gets the
// gateway's own view at once instead of waiting on etcd.
const unhealthyReadTimeout = time.Second

// FormatStaleness writes how long a gateway has been without a quorum
// read, the same way wherever it is shown (the status lines and the
// refusal share one figure): tenths of a second under a minute, whole
// seconds above.
func FormatStaleness(d time.Duration) string {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// EtcdAdvice is what to check when etcd cannot be reached from here,
// by what is configured: the TLS files are named only when an endpoint
// uses https (plain http on loopback has none to check).
func EtcdAdvice(endpoints []string) string {
	advice := fmt.Sprintf("check that a quorum of the etcd members runs (etcdctl endpoint health --cluster), that this host reaches cluster.etcd.endpoints (%s)",
		strings.Join(redact(endpoints), ", "))
	if usesTLS(endpoints) {
		return advice + ", and the TLS files cluster.etcd.ca_file, cert_file and key_file"
	}
	return advice
}

// usesTLS reports whether any endpoint is https.
func usesTLS(endpoints []string) bool {
	for _, ep := range endpoints {
		if u, err := url.Parse(ep); err == nil && u.Scheme == "https" {
			return true
		}
	}
	return false
}

// refused reports at once, before any etcd request waits out its
// deadline, that no endpoint accepts a connection: every one refused it
// or has a host name that does not resolve. It returns nil when any
// endpoint accepts (or cannot be told apart from a slow one within
// timeout): the quorum read then says what it finds.
func refused(ctx context.Context, endpoints []string, timeout time.Duration) error {
	why := refusedWhy(ctx, endpoints, timeout)
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("etcd cannot be reached: %s; %s", strings.Join(why, "; "), EtcdAdvice(endpoints))
}

// refusedWhy says, per endpoint, why none accepts a connection (see
// refused); nil when any does or the answer is not clear.
func refusedWhy(ctx context.Context, endpoints []string, timeout time.Duration) []string {
	var why []string
	d := net.Dialer{Timeout: min(timeout, 2*time.Second)}
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return nil
		}
		conn, err := d.DialContext(ctx, "tcp", u.Host)
		if err == nil {
			conn.Close()
			return nil
		}
		var dnsErr *net.DNSError
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			why = append(why, redact([]string{ep})[0]+": connection refused (nothing listens there)")
		case errors.As(err, &dnsErr):
			why = append(why, redact([]string{ep})[0]+": the host name does not resolve")
		default:
			return nil
		}
	}
	return why
}

// openError is Open's error when its first quorum read fails.
func openError(endpoints []string, within time.Duration, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("etcd at %s did not answer within %s: %s", strings.Join(redact(endpoints), ", "), within, EtcdAdvice(endpoints))
	}
	return fmt.Errorf("etcd at %s refused the first read (%v): %s", strings.Join(redact(endpoints), ", "), err, EtcdAdvice(endpoints))
}

// Known is a gateway that joined the cluster at least once. Its record,
// <prefix>gateways/<id>, is not bound to a lease: it outlives the
// gateway, so cluster-wide audit reads know a gateway is missing rather
// than silently reading one log fewer.
type Known struct {
	ID      string    `json:"id"`
	SSHAddr string    `json:"ssh_addr"`
	Joined  time.Time `json:"joined"`
}

// Remember records this gateway as a known member (see Known); call it
// with the member record after Join.
func (c *Cluster) Remember(ctx context.Context, m Member) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	data, err := json.Marshal(Known{ID: c.cfg.GatewayID, SSHAddr: m.SSHAddr, Joined: c.now().UTC()})
	if err != nil {
		return err
	}
	if _, err := c.client.Put(ctx, c.Key("gateways", c.cfg.GatewayID), string(data)); err != nil {
		return fmt.Errorf("record this gateway among the cluster's known gateways: %w", err)
	}
	return nil
}

// KnownGateways lists every gateway that joined and was not forgotten,
// sorted by id.
func (c *Cluster) KnownGateways(ctx context.Context) ([]Known, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Get(ctx, c.Key("gateways")+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list the cluster's known gateways: %w", err)
	}
	out := make([]Known, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var k Known
		if json.Unmarshal(kv.Value, &k) == nil && k.ID != "" {
			out = append(out, k)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Forget removes a retired gateway from the known gateways; false when
// it was not known. A member that runs is remembered again at its next
// start.
func (c *Cluster) Forget(ctx context.Context, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Delete(ctx, c.Key("gateways", id))
	if err != nil {
		return false, fmt.Errorf("forget gateway %s: %w", id, err)
	}
	_, _ = c.client.Delete(ctx, c.Key("left", id))
	return resp.Deleted > 0, nil
}

// Status reads the member list and reports this gateway's view of etcd.
// When etcd cannot be read it still returns the gateway's own view, with
// the last member list it read (MembersCached) and EtcdError set, and
// the error.
func (c *Cluster) Status(ctx context.Context) (Status, error) {
	st := Status{Gateway: c.cfg.GatewayID, Consistency: c.cfg.Consistency, MaxStaleness: c.cfg.MaxStaleness.String(),
		Admit: "ok", Admitting: true, AdmitLimitMS: c.admitLimit().Milliseconds(), Endpoints: redact(c.cfg.Endpoints)}
	timeout := opTimeout
	if !c.Healthy() {
		timeout = unhealthyReadTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ms, err := c.Members(rctx)
	var known []Known
	if err == nil {
		known, err = c.KnownGateways(rctx)
	}
	if err == nil {
		c.view.rememberKnown(known)
		st.Members, st.Down, st.MembersAsOf = ms, downOf(ms, known), c.now().UTC()
	} else {
		st.EtcdError = fmt.Sprintf("etcd could not be read (%v)", err)
		if why := refusedWhy(ctx, c.cfg.Endpoints, timeout); len(why) > 0 {
			st.EtcdError = strings.Join(why, "; ")
		} else if rctx.Err() != nil {
			st.EtcdError = fmt.Sprintf("etcd did not answer within %s", timeout)
		}
		if last, at, down, ok := c.view.last(); ok {
			st.Members, st.MembersAsOf, st.Down = last, at.UTC(), down
		}
		st.MembersCached = true
	}
	// One reading of the last contact for every figure of the status.
	last := c.LastContact()
	stale := c.now().Sub(last)
	st.Healthy, st.LastContact, st.StalenessMS = c.Healthy() && err == nil, last.UTC(), stale.Milliseconds()
	if aerr := c.admitAt(stale); aerr != nil {
		st.Admit, st.Admitting = aerr.Error(), false
	}
	st.OwnSessions = c.OwnSessions()
	return st, err
}

// WriteStatus writes st as a table for people, or as one JSON object.
// While etcd is unreachable the table says so first, with what to check,
// and marks the member list as the last one known and how old it is.
func WriteStatus(w io.Writer, st Status, asJSON bool, now time.Time) error {
	if asJSON {
		if st.Members == nil {
			st.Members = []Member{}
		}
		return json.NewEncoder(w).Encode(st)
	}
	who := "this CLI"
	if st.Gateway != "" {
		who = "gateway " + st.Gateway
	}
	health := "reachable"
	if !st.Healthy {
		health = "UNREACHABLE"
	}
	staleFor := time.Duration(st.StalenessMS) * time.Millisecond
	stale := FormatStaleness(staleFor)
	mode := "consistency " + st.Consistency
	if st.Consistency == Strict {
		mode += fmt.Sprintf(": new sessions refused after %s without a quorum read", time.Duration(st.AdmitLimitMS)*time.Millisecond)
	} else if st.MaxStaleness != "" {
		mode += ", max_staleness " + st.MaxStaleness
	}
	fmt.Fprintf(w, "etcd as seen by %s: %s, last quorum read %s ago (%s); new sessions: %s\n",
		who, health, stale, mode, st.Admit)
	if !st.Healthy || st.EtcdError != "" {
		why := st.EtcdError
		if why == "" {
			why = "its quorum reads fail"
		}
		fmt.Fprintf(w, "WARNING: etcd is unreachable from %s: %s; last contact %s (%s ago)\n", who, why, st.LastContact.UTC().Format(time.RFC3339), stale)
		if st.Gateway != "" {
			limit := time.Duration(st.AdmitLimitMS) * time.Millisecond
			if st.Admitting {
				fmt.Fprintf(w, "  new sessions: still admitted on the last state seen, for at most %s more (consistency %s allows %s without etcd); locks and revocations made elsewhere meanwhile do not reach this gateway until etcd answers\n",
					FormatStaleness(limit-staleFor), st.Consistency, limit)
			} else {
				fmt.Fprintf(w, "  new sessions: REFUSED on this gateway until it reaches etcd (consistency %s allows %s without etcd); live sessions go on\n", st.Consistency, limit)
			}
		}
		if st.MembersCached {
			if st.MembersAsOf.IsZero() {
				fmt.Fprintln(w, "  members: unknown (no member list was read from etcd since this started)")
			} else {
				fmt.Fprintf(w, "  members: the last list read from etcd, %s ago (%s); their state now is unknown\n", now.Sub(st.MembersAsOf).Round(time.Second), st.MembersAsOf.UTC().Format(time.RFC3339))
			}
		}
		fmt.Fprintf(w, "  what to check: %s\n", EtcdAdvice(st.Endpoints))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tSSH ADDRESS\tVERSION\tSTARTED\tLIVE SESSIONS\tUPDATED")
	for _, m := range st.Members {
		v := m.Version
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s ago\n", m.ID, m.SSHAddr, v, m.Started.UTC().Format(time.RFC3339), m.LiveSessions, now.Sub(m.Updated).Round(time.Second))
	}
	for _, k := range st.Down {
		fmt.Fprintf(tw, "%s\t%s\tDOWN\tjoined %s\t-\tnot in the member list (stopped, crashed or cut off from etcd; retired: bastion cluster forget %s)\n", k.ID, k.SSHAddr, k.Joined.UTC().Format(time.RFC3339), k.ID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if st.Gateway != "" {
		fmt.Fprintf(w, "%s's own live sessions: %d (cluster sessions lists them)\n", who, len(st.OwnSessions))
	}
	asOf := ""
	if st.MembersCached {
		asOf = " (last known)"
	}
	_, err := fmt.Fprintf(w, "%d member(s) up, %d down%s\n", len(st.Members), len(st.Down), asOf)
	return err
}
