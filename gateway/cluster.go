package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/clusterstate"
)

// What a gateway shares with the others of its cluster, beyond the
// revocation state (internal/clusterstate): bans, and the set of CA keys
// it trusts. With no Deps.Cluster none of this runs.

// Cluster refusal reason and alert rules.
const (
	// ReasonClusterStale: a new session was refused because this gateway
	// cannot vouch for the cluster's shared state (cluster.consistency).
	ReasonClusterStale = "cluster_stale"
	// ReasonClusterIDConflict: a new session was refused because another
	// live gateway holds this gateway's cluster.gateway_id.
	ReasonClusterIDConflict = "cluster_id_conflict"
	// AlertClusterUnreachable is raised when the gateway loses etcd.
	AlertClusterUnreachable = "cluster_unreachable"
	// AlertCAMismatch is raised when this gateway's CA key files differ
	// from those another gateway publishes.
	AlertCAMismatch = "ca_mismatch"
	// AlertClusterIDConflict is raised when another live gateway holds
	// this gateway's cluster.gateway_id.
	AlertClusterIDConflict = "cluster_id_conflict"
)

// clusterOpTimeout bounds the etcd requests the gateway makes itself.
const clusterOpTimeout = 3 * time.Second

// stateReadyTimeout bounds how long New waits for the first full read of
// the shared state; new sessions are refused until it is done.
const stateReadyTimeout = 5 * time.Second

// clusterLink is the gateway's part in a cluster.
type clusterLink struct {
	c      *cluster.Cluster
	state  *clusterstate.Sync
	cancel context.CancelFunc
	done   sync.WaitGroup

	caMismatch prometheus.Gauge

	mu         sync.Mutex
	mismatched string // the gateways whose CA keys differ, "" if none
}

// startCluster links the gateway to its cluster: the shared revocation
// state, bans, CA keys, health alerts and metrics.
func (g *Gateway) startCluster() {
	c := g.deps.Cluster
	l := &clusterLink{c: c}
	l.caMismatch = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bastion_cluster_ca_mismatch", Help: "1 while this gateway's trusted CA keys differ from those another gateway of the cluster publishes.",
	})
	g.cl = l
	l.state = clusterstate.Start(c, g.deps.Authority.State(), g.log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.done.Add(2)
	go func() {
		defer l.done.Done()
		clusterstate.Follow(ctx, c, c.Key("bans")+"/", banTable{g}, g.log, nil, nil)
	}()
	go func() {
		defer l.done.Done()
		clusterstate.Follow(ctx, c, c.Key("ca")+"/", caTable{g}, g.log, nil, nil)
	}()
	c.OnLease(func(ctx context.Context, lease clientv3.LeaseID) { g.publishCA(ctx, lease) })
	g.publishCA(ctx, c.Lease())
	c.OnHealth(func(healthy bool) {
		if !healthy && g.deps.Alerter != nil {
			g.deps.Alerter.Raise(AlertClusterUnreachable, c.GatewayID(), fmt.Sprintf("gateway %s cannot reach etcd: locks and revocations made elsewhere do not reach it; new sessions are refused past cluster.max_staleness (%s mode)", c.GatewayID(), c.Config().Consistency))
		}
	})
	c.OnIDConflict(func(err error) {
		if g.deps.Alerter != nil {
			g.deps.Alerter.Raise(AlertClusterIDConflict, c.GatewayID(), fmt.Sprintf("gateway %s is out of the member list: %v", c.GatewayID(), err))
		}
	})
	if g.deps.Registry != nil {
		g.deps.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "bastion_cluster_healthy", Help: "1 while this gateway admits new sessions under cluster.consistency, 0 while it refuses them."},
				func() float64 {
					if g.admitCluster() != nil {
						return 0
					}
					return 1
				}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "bastion_cluster_id_conflict", Help: "1 while another live gateway holds this gateway's cluster.gateway_id (this one is then out of the member list)."},
				func() float64 {
					if c.IDConflict() != nil {
						return 1
					}
					return 0
				}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "bastion_cluster_staleness_seconds", Help: "Seconds since this gateway last had a quorum answer from etcd."},
				func() float64 { return c.Staleness().Seconds() }),
			l.caMismatch,
		)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), stateReadyTimeout)
	if err := l.state.WaitReady(rctx); err != nil {
		g.log.Error("starting without the cluster's lock and revocation state; new sessions are refused until it is read", "err", err)
	}
	rcancel()
}

// stopCluster stops following etcd (the cluster itself is closed by its
// owner).
func (g *Gateway) stopCluster() {
	if g.cl == nil {
		return
	}
	g.cl.cancel()
	g.cl.done.Wait()
	g.cl.state.Close()
}

// admitCluster says whether a new session may start: always without a
// cluster; with one, only while the shared state is fresh enough
// (cluster.consistency) and has been read once.
func (g *Gateway) admitCluster() error {
	if g.cl == nil {
		return nil
	}
	select {
	case <-g.cl.state.Ready():
	default:
		return fmt.Errorf("%w: this gateway has not read the cluster's locks and revocations from etcd yet; new sessions are refused until it does: check etcd's health", cluster.ErrStale)
	}
	return g.cl.c.Admit()
}

// clusterRefusal is the authentication error of a session refused by
// admitCluster.
func clusterRefusal(err error) *authError {
	if errors.Is(err, cluster.ErrIDInUse) {
		return &authError{reason: ReasonClusterIDConflict, detail: err.Error()}
	}
	return &authError{reason: ReasonClusterStale, detail: strings.TrimPrefix(err.Error(), cluster.ErrStale.Error()+": ")}
}

// MsgClusterStale is the banner a refused client sees.
const MsgClusterStale = "new sessions are refused: this gateway cannot reach the cluster's shared state (etcd); sessions already open keep running. Try again shortly or another gateway."

// MsgClusterIDConflict is the banner a refused client sees while another
// live gateway holds this gateway's cluster id.
const MsgClusterIDConflict = "new sessions are refused: another live gateway holds this gateway's cluster id (cluster.gateway_id), so it cannot vouch for its records; sessions already open keep running. Use another gateway; an operator must give each gateway its own id."

// clusterRefusalMessage is the line a client refused by cluster
// admission is shown: why this gateway admits no new session now.
func (g *Gateway) clusterRefusalMessage() string {
	if g.deps.Cluster != nil && g.deps.Cluster.IDConflict() != nil {
		return MsgClusterIDConflict
	}
	return MsgClusterStale
}

// clusterRefusalReason is the audit reason matching clusterRefusalMessage.
func (g *Gateway) clusterRefusalReason() string {
	if g.deps.Cluster != nil && g.deps.Cluster.IDConflict() != nil {
		return ReasonClusterIDConflict
	}
	return ReasonClusterStale
}

// --- bans ---

// banRecord is the JSON value of <prefix>bans/<source>.
// An unban is written as a tombstone (Unbanned, bound to a short lease)
// rather than a delete, so that every gateway records who lifted the ban
// and where.
type banRecord struct {
	Source  string    `json:"source"`
	Until   time.Time `json:"until"`
	Gateway string    `json:"gateway"`
	// By is who banned (AutoBan for the failure counter) or unbanned.
	By       string `json:"by,omitempty"`
	Unbanned bool   `json:"unbanned,omitempty"`
}

// AutoBan is the "by" of a ban the failure counter set
// (limits.ban_after_failures), in records shared with the cluster.
const AutoBan = "limits.ban_after_failures"

// unbanTombstoneTTL is how long an unban's tombstone stays in etcd: long
// enough for a gateway cut off for a while to read who lifted the ban.
const unbanTombstoneTTL = time.Hour

// banKey is the etcd key of a banned source.
func (g *Gateway) banKey(src netip.Prefix) string {
	return g.deps.Cluster.Key("bans", url.PathEscape(sourceString(src)))
}

// publishBan shares a ban with the cluster, bound to a lease of the ban's
// remaining time so it ends everywhere when it ends here.
func (g *Gateway) publishBan(src netip.Prefix, until time.Time) {
	if g.cl == nil {
		return
	}
	ttl := until.Sub(g.now())
	if ttl <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterOpTimeout)
	defer cancel()
	cli := g.deps.Cluster.Client()
	lease, err := cli.Grant(ctx, int64((ttl+time.Second-1)/time.Second))
	if err == nil {
		data, _ := json.Marshal(banRecord{Source: sourceString(src), Until: until.UTC(), Gateway: g.deps.Cluster.GatewayID(), By: AutoBan})
		_, err = cli.Put(ctx, g.banKey(src), string(data), clientv3.WithLease(lease.ID))
	}
	if err != nil {
		g.log.Warn("could not share a ban with the cluster; it holds on this gateway only", "source", sourceString(src), "err", err)
	}
}

// unpublishBan lifts a ban everywhere: its key becomes a tombstone naming
// who lifted it (by) and this gateway.
func (g *Gateway) unpublishBan(ctx context.Context, src netip.Prefix, by string) error {
	if g.cl == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, clusterOpTimeout)
	defer cancel()
	cli := g.deps.Cluster.Client()
	lease, err := cli.Grant(ctx, int64(unbanTombstoneTTL/time.Second))
	if err == nil {
		data, _ := json.Marshal(banRecord{Source: sourceString(src), Until: g.now().UTC(), Gateway: g.deps.Cluster.GatewayID(), By: boundString(by, 256), Unbanned: true})
		_, err = cli.Put(ctx, g.banKey(src), string(data), clientv3.WithLease(lease.ID))
	}
	if err != nil {
		return fmt.Errorf("the ban is lifted on this gateway but the other gateways could not be told (etcd: %v); run unban again once etcd answers", err)
	}
	return nil
}

// banTable applies the cluster's bans to this gateway's ban list.
type banTable struct{ g *Gateway }

func (t banTable) Reset(ctx context.Context, kvs []*mvccpb.KeyValue) error {
	for _, kv := range kvs {
		t.put(ctx, kv)
	}
	return nil
}

func (t banTable) Event(ctx context.Context, ev *clientv3.Event) error {
	if ev.Type == clientv3.EventTypePut {
		t.put(ctx, ev.Kv)
		return nil
	}
	name, err := url.PathUnescape(strings.TrimPrefix(string(ev.Kv.Key), t.g.deps.Cluster.Key("bans")+"/"))
	if err != nil {
		return nil
	}
	src, err := parseSource(name)
	if err != nil {
		return nil
	}
	if ev.PrevKv != nil {
		var rec banRecord
		if json.Unmarshal(ev.PrevKv.Value, &rec) == nil && (rec.Unbanned || !t.g.now().Before(rec.Until)) {
			return nil // the ban ran out, or an unban's tombstone expired
		}
	}
	// A ban deleted directly in etcd, not through a gateway.
	t.unban(ctx, src, banRecord{By: directUnban, Gateway: directUnban})
	return nil
}

// directUnban is who and where, in state.applied, of a ban deleted
// directly in etcd rather than lifted through a gateway.
const directUnban = "etcd (deleted directly in etcd, not through a gateway)"

// unban applies an unban another gateway took (rec is its tombstone).
func (t banTable) unban(ctx context.Context, src netip.Prefix, rec banRecord) {
	if _, banned := t.g.bans.Banned(src.Addr()); !banned {
		return
	}
	t.g.bans.Unban(src)
	by := rec.By
	if by == "" {
		by = "unknown"
	}
	t.g.record(ctx, audit.Event{Type: audit.TypeStateApplied, Actor: by, Fields: map[string]string{
		"kind": "unban", "target": sourceString(sourceKey(src.Addr())), "by": by, "from_gateway": rec.Gateway, "outcome": "applied",
	}})
}

func (t banTable) put(ctx context.Context, kv *mvccpb.KeyValue) {
	var rec banRecord
	if len(kv.Value) > 1024 || json.Unmarshal(kv.Value, &rec) != nil {
		return
	}
	src, err := parseSource(rec.Source)
	if err != nil {
		return
	}
	if cluster.ValidateGatewayID(rec.Gateway) != nil {
		rec.Gateway = "unknown"
	}
	rec.By = boundString(rec.By, 256)
	if rec.Unbanned {
		if rec.Gateway != t.g.deps.Cluster.GatewayID() {
			t.unban(ctx, src, rec)
		}
		return
	}
	if !t.g.now().Before(rec.Until) {
		return
	}
	if rec.By == "" {
		rec.By = "unknown"
	}
	if !t.g.bans.set(src.Addr(), rec.Until) {
		return // this gateway's own ban, or one it holds already
	}
	t.g.metrics.bans.Inc()
	t.g.record(ctx, audit.Event{Type: audit.TypeStateApplied, Actor: rec.By, Fields: map[string]string{
		"kind": "ban", "target": sourceString(sourceKey(src.Addr())), "until": rec.Until.UTC().Format(time.RFC3339),
		"by": rec.By, "from_gateway": rec.Gateway, "outcome": "applied",
	}})
	t.g.dropBanned(src.Addr())
}

// dropBanned closes the unauthenticated connections of a newly banned
// source (authenticated ones are not affected by a ban, as on one
// gateway).
func (g *Gateway) dropBanned(addr netip.Addr) {
	key := sourceKey(addr)
	g.mu.Lock()
	var doomed []*connState
	for _, cs := range g.handshaking {
		if sourceKey(cs.remote) == key {
			doomed = append(doomed, cs)
		}
	}
	g.mu.Unlock()
	for _, cs := range doomed {
		cs.kill(ReasonBanned)
	}
}

// --- CA keys ---

// caRecord is the JSON value of <prefix>ca/<gateway>: the fingerprints
// of the CA keys a gateway trusts.
type caRecord struct {
	Gateway string   `json:"gateway"`
	User    []string `json:"user"`
	Host    []string `json:"host"`
}

func (g *Gateway) caRecord() caRecord {
	fps := func(keys []gossh.PublicKey) []string {
		out := make([]string, 0, len(keys))
		for _, k := range keys {
			out = append(out, gossh.FingerprintSHA256(k))
		}
		slices.Sort(out)
		return out
	}
	a := g.deps.Authority
	return caRecord{Gateway: g.deps.Cluster.GatewayID(), User: fps(a.TrustedKeys(ca.UserCA)), Host: fps(a.TrustedKeys(ca.HostCA))}
}

// publishCA writes the CA keys this gateway trusts, bound to its lease.
func (g *Gateway) publishCA(ctx context.Context, lease clientv3.LeaseID) {
	if lease == 0 {
		return
	}
	data, _ := json.Marshal(g.caRecord())
	ctx, cancel := context.WithTimeout(ctx, clusterOpTimeout)
	defer cancel()
	c := g.deps.Cluster
	if _, err := c.Client().Put(ctx, c.Key("ca", c.GatewayID()), string(data), clientv3.WithLease(lease)); err != nil {
		g.log.Warn("could not publish this gateway's CA keys", "err", err)
	}
}

// ReloadedCA re-issues the gateway's host certificate if the current host
// CA key did not sign it, publishes the CA keys again after the Authority
// reloaded its files (SIGHUP), and re-checks live connections against them.
func (g *Gateway) ReloadedCA(ctx context.Context) {
	g.renewHostCert(ctx)
	if g.cl != nil {
		g.publishCA(ctx, g.deps.Cluster.Lease())
	}
	g.stateChanged()
}

// caTable compares the CA keys every gateway publishes with this one's.
type caTable struct{ g *Gateway }

func (t caTable) Reset(_ context.Context, kvs []*mvccpb.KeyValue) error {
	t.compare(kvs)
	return nil
}

func (t caTable) Event(ctx context.Context, _ *clientv3.Event) error {
	// Compare against the whole table: a few small keys, one per gateway.
	gctx, cancel := context.WithTimeout(ctx, clusterOpTimeout)
	defer cancel()
	resp, err := t.g.deps.Cluster.Client().Get(gctx, t.g.deps.Cluster.Key("ca")+"/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	t.compare(resp.Kvs)
	return nil
}

func (t caTable) compare(kvs []*mvccpb.KeyValue) {
	g := t.g
	mine := g.caRecord()
	var differ []string
	for _, kv := range kvs {
		var rec caRecord
		if len(kv.Value) > 8192 || json.Unmarshal(kv.Value, &rec) != nil || rec.Gateway == mine.Gateway {
			continue
		}
		if cluster.ValidateGatewayID(rec.Gateway) != nil {
			rec.Gateway = "unknown"
		}
		if !slices.Equal(rec.User, mine.User) || !slices.Equal(rec.Host, mine.Host) {
			differ = append(differ, rec.Gateway)
		}
	}
	slices.Sort(differ)
	now := strings.Join(differ, ",")
	g.cl.mu.Lock()
	was := g.cl.mismatched
	g.cl.mismatched = now
	g.cl.mu.Unlock()
	if now == "" {
		g.cl.caMismatch.Set(0)
		if was != "" {
			g.log.Info("this gateway's CA keys match the cluster's again")
		}
		return
	}
	g.cl.caMismatch.Set(1)
	if now != was {
		msg := fmt.Sprintf("gateway %s trusts other CA keys than gateway(s) %s: one side has stale CA files (user %v, host %v here); copy the current files to every gateway and send SIGHUP", mine.Gateway, now, mine.User, mine.Host)
		g.log.Error(msg)
		if g.deps.Alerter != nil {
			g.deps.Alerter.Raise(AlertCAMismatch, mine.Gateway, msg)
		}
	}
}

// CAMismatch names the gateways whose published CA keys differ from this
// one's ("" when all agree or without a cluster).
func (g *Gateway) CAMismatch() string {
	if g.cl == nil {
		return ""
	}
	g.cl.mu.Lock()
	defer g.cl.mu.Unlock()
	return g.cl.mismatched
}

// errClusterUnavailable is the login service's refusal while etcd cannot
// record a one-time use.
var errClusterUnavailable = errors.New("the login cannot be recorded as used across the cluster (etcd does not answer), so it is refused; try again shortly")
