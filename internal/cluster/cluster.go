package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/bastion-ssh/bastion/internal/textbound"
)

// Consistency modes (Config.Consistency).
const (
	// BestEffort keeps admitting new sessions on the last state seen for
	// up to MaxStaleness while etcd is unreachable, then refuses them.
	BestEffort = "best_effort"
	// Strict refuses new sessions as soon as the last quorum read is
	// older than StrictStaleness.
	Strict = "strict"
)

// Timing of the lease and the health probe.
const (
	// LeaseTTL is the TTL of each gateway's lease: a gateway killed with
	// kill -9 leaves the member list this long after its last keepalive.
	LeaseTTL = 10 * time.Second
	// ProbeInterval is how often a gateway makes a quorum read to learn
	// whether it still reaches etcd.
	ProbeInterval = time.Second
	// StrictStaleness is how old the last successful quorum read may be
	// before a strict gateway refuses new sessions.
	StrictStaleness = 2500 * time.Millisecond
	// opTimeout bounds each etcd request bastion makes on a user's path.
	opTimeout = 3 * time.Second
)

// Config is how a gateway joins the cluster.
type Config struct {
	// GatewayID names this gateway (membership, every audit event).
	GatewayID string
	// Advertise is the HOST:PORT other members and auditors reach this
	// gateway's SSH service at.
	Advertise string
	// Endpoints are etcd client URLs.
	Endpoints []string
	// CAFile, CertFile and KeyFile are the mTLS client files ("" for
	// plain http on loopback).
	CAFile, CertFile, KeyFile string
	// Prefix is the key prefix, starting and ending with "/".
	Prefix string
	// DialTimeout bounds each connection attempt (default 5s).
	DialTimeout time.Duration
	// Consistency is BestEffort or Strict.
	Consistency string
	// MaxStaleness is BestEffort's grace while etcd is unreachable.
	MaxStaleness time.Duration
	// Version is this gateway's build version, shown in the member list.
	Version string
}

var gatewayIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateGatewayID checks that id can name a gateway: 1-63 letters,
// digits, '.', '_' or '-', starting with a letter or digit (it becomes an
// etcd key segment and appears in every audit event).
func ValidateGatewayID(id string) error {
	if !gatewayIDRE.MatchString(id) {
		return fmt.Errorf("%q is not a gateway id: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", textbound.Cut(id, 80))
	}
	return nil
}

// Member is one gateway's membership record.
type Member struct {
	ID           string    `json:"id"`
	SSHAddr      string    `json:"ssh_addr"`
	Version      string    `json:"version,omitempty"`
	Started      time.Time `json:"started"`
	LiveSessions int       `json:"live_sessions"`
	// Updated is when the member last rewrote its record.
	Updated time.Time `json:"updated"`
}

// Cluster is one gateway's connection to the cluster.
type Cluster struct {
	cfg    Config
	client *clientv3.Client
	log    *slog.Logger
	now    func() time.Time

	// lastContact is the UnixNano time of the last successful quorum
	// read or keepalive.
	lastContact atomic.Int64
	// lease is the gateway's current lease (0 while it has none).
	lease atomic.Int64

	mu       sync.Mutex
	member   Member
	onLease  []func(ctx context.Context, lease clientv3.LeaseID)
	onHealth []func(healthy bool)
	healthy  bool

	// runCtx lives until Close; the registry's goroutines run under it.
	runCtx context.Context
	cancel context.CancelFunc
	done   sync.WaitGroup
	// reg is the live-session registry (sessions.go).
	reg registry
	// view is the last member list read from etcd (status.go).
	view memberView
}

// ErrStale is Admit's error while this gateway cannot vouch for the
// shared state.
var ErrStale = errors.New("cluster state is stale")

// Open connects to etcd, checks that it answers within cfg.DialTimeout,
// and starts the gateway's lease and health probe. It does not join the
// member list: call Join once the gateway listens.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*Cluster, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/bastion/"
	}
	if cfg.Consistency == "" {
		cfg.Consistency = BestEffort
	}
	if cfg.MaxStaleness <= 0 {
		cfg.MaxStaleness = 30 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cc := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Logger:      zap.NewNop(),
		// Keepalives on the gRPC connection notice a dead member fast.
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
	}
	if cfg.CertFile != "" || cfg.CAFile != "" {
		tlsInfo := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS files (cluster.etcd.ca_file, cert_file, key_file): %w", err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ", "), err)
	}
	c := &Cluster{cfg: cfg, client: cli, log: log, now: time.Now}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	err = c.probe(pctx)
	cancel()
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd at %s did not answer within %s: %w (check cluster.etcd.endpoints, that a quorum of members runs, and the TLS files)", strings.Join(redact(cfg.Endpoints), ", "), cfg.DialTimeout, err)
	}
	c.healthy = true
	runCtx, stop := context.WithCancel(context.Background())
	c.runCtx, c.cancel = runCtx, stop
	c.reg.init()
	c.onLease = append(c.onLease, c.resumeSessions)
	c.done.Add(4)
	go c.leaseLoop(runCtx)
	go c.probeLoop(runCtx)
	go c.registryLoop(runCtx)
	go c.lostLoop(runCtx)
	return c, nil
}

// redact drops userinfo from endpoint URLs before they are printed.
func redact(eps []string) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		if u, err := url.Parse(ep); err == nil && u.User != nil {
			u.User = nil
			ep = u.String()
		}
		out[i] = ep
	}
	return out
}

// Client is the etcd client, for packages that keep their own subtree.
func (c *Cluster) Client() *clientv3.Client { return c.client }

// GatewayID is this gateway's id.
func (c *Cluster) GatewayID() string { return c.cfg.GatewayID }

// Config is the configuration the cluster was opened with.
func (c *Cluster) Config() Config { return c.cfg }

// Key is the etcd key of parts under the prefix: Key("locks", "alice")
// is "/bastion/locks/alice".
func (c *Cluster) Key(parts ...string) string {
	return c.cfg.Prefix + strings.Join(parts, "/")
}

// Lease is the gateway's current lease, or 0 while it has none (etcd
// unreachable past the lease's TTL). Keys bound to it vanish when the
// gateway dies; OnLease tells when a new one replaces it.
func (c *Cluster) Lease() clientv3.LeaseID { return clientv3.LeaseID(c.lease.Load()) }

// OnLease registers fn to run (in the lease goroutine) each time the
// gateway gets a new lease, so that keys bound to the old one are written
// again. fn must return within opTimeout.
func (c *Cluster) OnLease(fn func(ctx context.Context, lease clientv3.LeaseID)) {
	c.mu.Lock()
	c.onLease = append(c.onLease, fn)
	c.mu.Unlock()
}

// OnHealth registers fn to run whenever the gateway loses or regains
// contact with etcd (quorum reads failing for ProbeInterval*3, or
// succeeding again).
func (c *Cluster) OnHealth(fn func(healthy bool)) {
	c.mu.Lock()
	c.onHealth = append(c.onHealth, fn)
	c.mu.Unlock()
}

// LastContact is when this gateway last had a quorum read or keepalive
// answered.
func (c *Cluster) LastContact() time.Time { return time.Unix(0, c.lastContact.Load()) }

// Staleness is how long ago LastContact was.
func (c *Cluster) Staleness() time.Duration { return c.now().Sub(c.LastContact()) }

// Admit says whether a new session may start under the consistency mode:
// nil, or an error wrapping ErrStale that says how stale the state is and
// what to do.
func (c *Cluster) Admit() error {
	stale := c.Staleness()
	limit := c.cfg.MaxStaleness
	if c.cfg.Consistency == Strict {
		limit = StrictStaleness
	}
	if stale <= limit {
		return nil
	}
	return fmt.Errorf("%w: this gateway has not reached etcd for %s (cluster.consistency %s allows %s); new sessions are refused until it does: check etcd's health and this gateway's network", ErrStale, stale.Round(time.Second), c.cfg.Consistency, limit)
}

func (c *Cluster) touch() { c.lastContact.Store(c.now().UnixNano()) }

// probe makes one quorum (linearizable) read: the member list, kept as
// the last-known members for a status while etcd is unreachable.
func (c *Cluster) probe(ctx context.Context) error {
	resp, err := c.client.Get(ctx, c.Key("members")+"/", clientv3.WithPrefix())
	if err == nil {
		c.touch()
		c.view.remember(c.decodeMembers(resp.Kvs), c.now())
	}
	return err
}

func (c *Cluster) probeLoop(ctx context.Context) {
	defer c.done.Done()
	t := time.NewTicker(ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, ProbeInterval)
		err := c.probe(pctx)
		cancel()
		healthy := err == nil || c.Staleness() < 3*ProbeInterval
		c.setHealthy(healthy, err)
	}
}

func (c *Cluster) setHealthy(healthy bool, err error) {
	c.mu.Lock()
	changed := healthy != c.healthy
	c.healthy = healthy
	fns := append([]func(bool){}, c.onHealth...)
	c.mu.Unlock()
	if !changed {
		return
	}
	if healthy {
		c.log.Info("etcd reachable again", "gateway", c.cfg.GatewayID)
	} else {
		c.log.Error("etcd unreachable", "gateway", c.cfg.GatewayID, "err", err, "consistency", c.cfg.Consistency, "max_staleness", c.cfg.MaxStaleness)
	}
	for _, fn := range fns {
		fn(healthy)
	}
}

// Healthy reports whether the last quorum reads succeeded.
func (c *Cluster) Healthy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.healthy
}

// leaseLoop holds the gateway's lease: it grants one, tells OnLease
// callbacks, keeps it alive, and grants a new one when it is lost.
func (c *Cluster) leaseLoop(ctx context.Context) {
	defer c.done.Done()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := c.client.Grant(gctx, int64(LeaseTTL/time.Second))
		cancel()
		if err != nil {
			c.lease.Store(0)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		c.touch()
		c.lease.Store(int64(resp.ID))
		c.mu.Lock()
		fns := append([]func(context.Context, clientv3.LeaseID){c.putMember}, c.onLease...)
		c.mu.Unlock()
		for _, fn := range fns {
			fctx, cancel := context.WithTimeout(ctx, opTimeout)
			fn(fctx, resp.ID)
			cancel()
		}
		kctx, kcancel := context.WithCancel(ctx)
		ch, err := c.client.KeepAlive(kctx, resp.ID)
		if err == nil {
			for range ch {
				c.touch()
			}
		}
		kcancel()
		if ctx.Err() == nil {
			c.log.Warn("etcd lease lost; granting a new one", "gateway", c.cfg.GatewayID, "lease", fmt.Sprintf("%x", int64(resp.ID)))
		}
	}
}

// Join writes this gateway's membership record (bound to its lease, and
// written again under each new lease).
func (c *Cluster) Join(ctx context.Context, m Member) error {
	m.ID = c.cfg.GatewayID
	if m.Version == "" {
		m.Version = c.cfg.Version
	}
	c.mu.Lock()
	c.member = m
	c.mu.Unlock()
	lease := c.Lease()
	if lease == 0 {
		return fmt.Errorf("join the cluster: no etcd lease yet (etcd unreachable); the gateway will join when it reaches etcd")
	}
	return c.writeMember(ctx, lease)
}

// SetLiveSessions updates the live-session count in the membership
// record.
func (c *Cluster) SetLiveSessions(ctx context.Context, n int) error {
	c.mu.Lock()
	if c.member.ID == "" || c.member.LiveSessions == n {
		c.mu.Unlock()
		return nil
	}
	c.member.LiveSessions = n
	c.mu.Unlock()
	return c.writeMember(ctx, c.Lease())
}

func (c *Cluster) putMember(ctx context.Context, lease clientv3.LeaseID) {
	if err := c.writeMember(ctx, lease); err != nil {
		c.log.Warn("could not write the membership record", "gateway", c.cfg.GatewayID, "err", err)
	}
}

func (c *Cluster) writeMember(ctx context.Context, lease clientv3.LeaseID) error {
	c.mu.Lock()
	m := c.member
	c.mu.Unlock()
	if m.ID == "" || lease == 0 {
		return nil
	}
	m.Updated = c.now().UTC()
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = c.client.Put(ctx, c.Key("members", m.ID), string(data), clientv3.WithLease(lease))
	if err != nil {
		return fmt.Errorf("write membership record: %w", err)
	}
	return nil
}

// Members lists the live members, sorted by id.
func (c *Cluster) Members(ctx context.Context) ([]Member, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Get(ctx, c.Key("members")+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list cluster members: %w", err)
	}
	c.touch()
	out := c.decodeMembers(resp.Kvs)
	c.view.remember(out, c.now())
	return out, nil
}

// decodeMembers parses membership records, sorted by id.
func (c *Cluster) decodeMembers(kvs []*mvccpb.KeyValue) []Member {
	out := make([]Member, 0, len(kvs))
	for _, kv := range kvs {
		var m Member
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			c.log.Warn("ignoring a corrupt membership record", "key", fmt.Sprintf("%.80q", kv.Key), "err", err)
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Claim records (kind, id) as used for ttl and reports whether this call
// was the first to claim it anywhere in the cluster: the one-time-use
// check of login tokens, nonces and codes. id is hashed, so secrets never
// reach etcd. An error means etcd could not say; callers fail closed.
func (c *Cluster) Claim(ctx context.Context, kind, id string, ttl time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	sum := sha256.Sum256([]byte(id))
	key := c.Key("claims", kind, hex.EncodeToString(sum[:]))
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	lease, err := c.client.Grant(ctx, secs)
	if err != nil {
		return false, fmt.Errorf("record one-time use in etcd: %w", err)
	}
	resp, err := c.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, c.cfg.GatewayID, clientv3.WithLease(lease.ID))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("record one-time use in etcd: %w", err)
	}
	c.touch()
	if !resp.Succeeded {
		// Already claimed: the new lease holds nothing.
		_, _ = c.client.Revoke(ctx, lease.ID)
	}
	return resp.Succeeded, nil
}

// Close leaves the cluster: the membership record and every key bound to
// the gateway's lease are removed at once (a graceful stop), then the
// client closes.
func (c *Cluster) Close() error {
	c.cancel()
	c.done.Wait()
	if lease := c.Lease(); lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_, _ = c.client.Revoke(ctx, lease)
		cancel()
	}
	return c.client.Close()
}
