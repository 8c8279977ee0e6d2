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
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

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
	// reconnectMaxDelay bounds the wait between attempts to reconnect to
	// an etcd member.
	reconnectMaxDelay = 2 * time.Second
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
	// lostGate is held while the gateway_lost watch (re)starts; lostWatch
	// ends the current one. Tests hold the gate to keep the watch behind.
	lostGate  sync.Mutex
	lostWatch context.CancelFunc
	// resyncs counts the gateway_lost watch's reads of the whole
	// registry after a compaction.
	resyncs atomic.Int64
	// lastKeepAlive is the UnixNano time of the last keepalive answer of
	// the current lease.
	lastKeepAlive atomic.Int64

	mu       sync.Mutex
	member   Member
	onLease  []func(ctx context.Context, lease clientv3.LeaseID)
	onHealth []func(healthy bool)
	healthy  bool
	// conflict is set while another live gateway holds this one's id.
	conflict *IDInUseError
	// onConflict are the OnIDConflict callbacks.
	onConflict []func(error)
	// joined is set once Join succeeded: from then on the gateway keeps
	// its record (and its count) written, and a conflict over its id
	// refuses new sessions (Admit). Nothing is written before.
	joined bool
	// recordLease is the lease the membership record was last written
	// under by this gateway.
	recordLease clientv3.LeaseID
	// leased is closed when the first lease is granted.
	leased     chan struct{}
	leasedOnce sync.Once
	// dropKeepAlive ends the current lease's keepalive stream (tests: a
	// lease the client gives up on while etcd still holds it).
	dropKeepAlive context.CancelFunc

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
		// gRPC's default reconnect backoff grows to 2 minutes: a gateway
		// cut off from etcd for a while would then refuse new sessions
		// long after etcd is reachable again. Retry at least every
		// reconnectMaxDelay instead.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxDelay},
			MinConnectTimeout: cfg.DialTimeout,
		})},
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
	c := &Cluster{cfg: cfg, client: cli, log: log, now: time.Now, leased: make(chan struct{})}
	if err := refused(ctx, cfg.Endpoints, cfg.DialTimeout); err != nil {
		cli.Close()
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	err = c.probe(pctx)
	cancel()
	if err != nil {
		cli.Close()
		return nil, openError(cfg.Endpoints, cfg.DialTimeout, err)
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
func (c *Cluster) Admit() error { return c.admitAt(c.Staleness()) }

// admitAt is Admit for a staleness already read (a status reads it once).
func (c *Cluster) admitAt(stale time.Duration) error {
	if err := c.memberAdmit(); err != nil {
		return err
	}
	limit := c.cfg.MaxStaleness
	if c.cfg.Consistency == Strict {
		limit = StrictStaleness
	}
	if stale <= limit {
		return nil
	}
	return fmt.Errorf("%w: this gateway has not reached etcd for %s (cluster.consistency %s allows %s); new sessions are refused until it does: check etcd's health and this gateway's network", ErrStale, FormatStaleness(stale), c.cfg.Consistency, limit)
}

// memberAdmit is Admit's check of a gateway that joined: while another
// live gateway holds its id, or while it has a new lease but has not yet
// written its record under it, it refuses new sessions (two gateways
// serving under one id would mix up each other's records and sessions).
func (c *Cluster) memberAdmit() error {
	c.mu.Lock()
	joined, conflict, record := c.joined, c.conflict, c.recordLease
	c.mu.Unlock()
	if !joined {
		return nil
	}
	if conflict != nil {
		return fmt.Errorf("%w; new sessions are refused until this gateway holds its membership record again", conflict)
	}
	if lease := c.Lease(); lease != 0 && record != lease {
		return fmt.Errorf("%w: this gateway has a new etcd lease and has not yet written its membership record under it; new sessions are refused until it has", ErrStale)
	}
	return nil
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
		if err != nil {
			err = fmt.Errorf("the quorum read of etcd (allowed %s): %w", ProbeInterval, err)
		}
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
// callbacks, keeps it alive, and grants a new one when it is lost. Before
// the new lease's records are written it settles the sessions registered
// under the old one (see settleLost) and revokes the old lease, so that
// neither a peer nor this gateway's own stale record mistakes it for
// another.
func (c *Cluster) leaseLoop(ctx context.Context) {
	defer c.done.Done()
	backoff := 200 * time.Millisecond
	var old clientv3.LeaseID
	var lostAt time.Time
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
		if old != 0 {
			c.regranted(ctx, old, resp.ID, c.now().Sub(lostAt))
			old = 0
		}
		c.lease.Store(int64(resp.ID))
		c.leasedOnce.Do(func() { close(c.leased) })
		c.mu.Lock()
		fns := append([]func(context.Context, clientv3.LeaseID){c.putMember}, c.onLease...)
		c.mu.Unlock()
		for _, fn := range fns {
			fctx, cancel := context.WithTimeout(ctx, opTimeout)
			fn(fctx, resp.ID)
			cancel()
		}
		c.lastKeepAlive.Store(c.now().UnixNano())
		kctx, kcancel := context.WithCancel(ctx)
		c.mu.Lock()
		c.dropKeepAlive = kcancel
		c.mu.Unlock()
		ch, err := c.client.KeepAlive(kctx, resp.ID)
		if err == nil {
			for range ch {
				c.touch()
				c.lastKeepAlive.Store(c.now().UnixNano())
			}
		}
		kcancel()
		if ctx.Err() == nil {
			// Nothing is written under a lease being given up.
			c.lease.Store(0)
			old, lostAt = resp.ID, time.Unix(0, c.lastKeepAlive.Load())
			c.log.Warn("etcd lease lost; granting a new one", "gateway", c.cfg.GatewayID, "lease", fmt.Sprintf("%x", int64(resp.ID)), "last_keepalive", lostAt.UTC())
		}
	}
}

// regranted runs when lease replaces old, lost cutOff after its last
// keepalive: it settles the sessions registered under old, then revokes
// old (best effort: usually it has expired already) so that no record of
// this gateway is left bound to it to block the new one.
func (c *Cluster) regranted(ctx context.Context, old, lease clientv3.LeaseID, cutOff time.Duration) {
	c.queueSettle(old, cutOff)
	sctx, cancel := context.WithTimeout(ctx, 2*opTimeout)
	err := c.settleLost(sctx)
	cancel()
	if err != nil {
		// Revoked all the same (a record left under it would block this
		// gateway's own): peers may then end the unsettled sessions as
		// lost, and settleLost, tried again from the registry loop, finds
		// their claims and records the sessions resumed.
		c.log.Warn("could not settle the sessions of the lost lease yet; retrying", "gateway", c.cfg.GatewayID, "err", err)
	}
	rctx, cancel := context.WithTimeout(ctx, opTimeout)
	_, _ = c.client.Revoke(rctx, old)
	cancel()
}

// ErrIDInUse is the error (wrapped in an *IDInUseError) of a gateway
// whose gateway_id another live gateway holds.
var ErrIDInUse = errors.New("gateway id already in use")

// IDInUseError says which live gateway holds the id this one was given.
type IDInUseError struct {
	// ID is the contested gateway id; Holder the record of the gateway
	// that holds it.
	ID     string
	Holder Member

	holderLease clientv3.LeaseID
}

func (e *IDInUseError) Error() string {
	return fmt.Sprintf("gateway id %q is already held by a live gateway at %s (started %s); give each gateway its own cluster.gateway_id or BASTION_GATEWAY_ID; if that gateway is gone, its record expires within %s",
		e.ID, e.Holder.SSHAddr, e.Holder.Started.UTC().Format(time.RFC3339), LeaseTTL)
}

// Unwrap makes errors.Is(err, ErrIDInUse) true.
func (e *IDInUseError) Unwrap() error { return ErrIDInUse }

// holderAliveWait is how long Join watches the lease of a record that
// holds its id before it refuses: a live holder renews its lease every
// LeaseTTL/3, a crashed one's record expires within LeaseTTL.
const holderAliveWait = LeaseTTL + 2*time.Second

// Join writes this gateway's membership record (bound to its lease, and
// written again under each new lease). A gateway must have joined before
// it serves anyone: until then it writes no record nor count. Join waits
// for the gateway's first lease (up to DialTimeout plus a request's
// time). The record <prefix>members/<id> belongs to one lease: when
// another live gateway holds it, Join refuses with an *IDInUseError
// (errors.Is ErrIDInUse). A record left by a gateway that crashed with
// this id (kill -9, then a restart) is waited out: Join returns once it
// expires, within LeaseTTL; a holder whose lease is renewed meanwhile is
// live, and Join refuses as soon as it sees that (about LeaseTTL/3). Any
// error leaves the gateway out of the cluster.
func (c *Cluster) Join(ctx context.Context, m Member) (err error) {
	m.ID = c.cfg.GatewayID
	if m.Version == "" {
		m.Version = c.cfg.Version
	}
	c.mu.Lock()
	c.member = m
	c.joined = false
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if err != nil {
			c.member = Member{}
		} else {
			c.joined = true
		}
		c.mu.Unlock()
	}()
	wait := c.cfg.DialTimeout + opTimeout
	t := time.NewTimer(wait)
	select {
	case <-c.leased:
		t.Stop()
	case <-ctx.Done():
		t.Stop()
		return fmt.Errorf("join the cluster: stopped while waiting for an etcd lease: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("join the cluster: etcd granted this gateway no lease within %s: check etcd's health (etcdctl endpoint health --cluster) and this gateway's network, then start it again", wait)
	}
	deadline := c.now().Add(holderAliveWait)
	var lastTTL int64 = -2
	var held clientv3.LeaseID
	for {
		lease := c.Lease()
		if lease == 0 {
			return fmt.Errorf("join the cluster: this gateway lost its etcd lease while joining (etcd unreachable): check etcd's health, then start it again")
		}
		err := c.writeMember(ctx, lease)
		var inUse *IDInUseError
		if !errors.As(err, &inUse) {
			return err
		}
		// Held: by a live gateway (its lease is renewed), or by a record
		// a crash left behind (its lease runs out).
		if inUse.holderLease != held {
			held, lastTTL = inUse.holderLease, -2
			c.log.Info("this gateway's id is held by another record; joining if it expires (a crashed gateway's), refusing if its lease is renewed (a live one)", "gateway", c.cfg.GatewayID, "holder_addr", inUse.Holder.SSHAddr, "holder_started", inUse.Holder.Started)
		}
		ttl := c.leaseTTL(ctx, held)
		if (lastTTL >= 0 && ttl > lastTTL) || !c.now().Before(deadline) {
			return inUse
		}
		lastTTL = ttl
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up waiting for it to expire: %v)", inUse, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// leaseTTL is the remaining TTL in seconds of lease, -1 when it is gone
// (or cannot be read).
func (c *Cluster) leaseTTL(ctx context.Context, lease clientv3.LeaseID) int64 {
	tctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.TimeToLive(tctx, lease)
	if err != nil {
		return -1
	}
	return resp.TTL
}

// OnIDConflict registers fn to run when this gateway, a member already,
// finds its id held by another live gateway (see IDConflict).
func (c *Cluster) OnIDConflict(fn func(err error)) {
	c.mu.Lock()
	c.onConflict = append(c.onConflict, fn)
	c.mu.Unlock()
}

// IDConflict is nil, or the error naming the live gateway that holds this
// gateway's id (this one then stays out of the member list, and keeps
// trying; the metric bastion_cluster_id_conflict shows it).
func (c *Cluster) IDConflict() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conflict == nil {
		return nil
	}
	return c.conflict
}

// SetLiveSessions updates the live-session count in the membership
// record.
func (c *Cluster) SetLiveSessions(ctx context.Context, n int) error {
	c.mu.Lock()
	// Before Join nothing is written; after, the record is written again
	// while it is not ours under the current lease (a conflict, or a
	// write under a new lease that failed).
	current := c.conflict == nil && c.recordLease == c.Lease()
	if !c.joined || (c.member.LiveSessions == n && current) {
		c.mu.Unlock()
		return nil
	}
	c.member.LiveSessions = n
	c.mu.Unlock()
	return c.writeMember(ctx, c.Lease())
}

func (c *Cluster) putMember(ctx context.Context, lease clientv3.LeaseID) {
	if err := c.writeMember(ctx, lease); err != nil && !errors.Is(err, ErrIDInUse) {
		c.log.Warn("could not write the membership record", "gateway", c.cfg.GatewayID, "err", err)
	}
}

// writeMember writes the membership record under lease, unless another
// lease holds it: the key is created if absent and overwritten only when
// its lease is ours, in one transaction, so two gateways given the same
// id never take turns at one record (nor does one delete the other's).
// A refusal is an *IDInUseError, logged (loudly, once per episode) and
// kept for IDConflict.
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
	key := c.Key("members", m.ID)
	put := clientv3.OpPut(key, string(data), clientv3.WithLease(lease))
	resp, err := c.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(put).
		Else(clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", lease)}, []clientv3.Op{put}, []clientv3.Op{clientv3.OpGet(key)})).
		Commit()
	if err != nil {
		return fmt.Errorf("write membership record: %w", err)
	}
	c.touch()
	if resp.Succeeded || resp.Responses[0].GetResponseTxn().Succeeded {
		c.mu.Lock()
		c.recordLease = lease
		c.mu.Unlock()
		c.setConflict(nil)
		return nil
	}
	inUse := &IDInUseError{ID: m.ID}
	if kvs := resp.Responses[0].GetResponseTxn().Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		_ = json.Unmarshal(kvs[0].Value, &inUse.Holder)
		inUse.holderLease = clientv3.LeaseID(kvs[0].Lease)
	}
	c.setConflict(inUse)
	return inUse
}

// setConflict records (nil: clears) a conflict over this gateway's id,
// logging the change.
func (c *Cluster) setConflict(e *IDInUseError) {
	c.mu.Lock()
	was := c.conflict
	c.conflict = e
	joined := c.joined
	fns := append([]func(error){}, c.onConflict...)
	c.mu.Unlock()
	switch {
	case e != nil && was == nil && joined:
		for _, fn := range fns {
			fn(e)
		}
		c.log.Error("ANOTHER LIVE GATEWAY HOLDS THIS GATEWAY'S ID: this one stays out of the member list and leaves the other's records alone", "gateway", c.cfg.GatewayID, "holder_addr", e.Holder.SSHAddr, "holder_started", e.Holder.Started, "err", e)
	case e == nil && was != nil && joined:
		c.log.Info("this gateway's id is no longer held by another gateway; back in the member list", "gateway", c.cfg.GatewayID)
	}
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
	key := c.claimKey(kind, id)
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

// claimKey is the key of Claim(kind, id).
func (c *Cluster) claimKey(kind, id string) string {
	sum := sha256.Sum256([]byte(id))
	return c.Key("claims", kind, hex.EncodeToString(sum[:]))
}

// Close leaves the cluster: the membership record and every key bound to
// the gateway's lease are removed at once (a graceful stop), then the
// client closes.
func (c *Cluster) Close() error {
	c.cancel()
	c.done.Wait()
	if lease := c.Lease(); lease != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		// Say the lease ends by a clean stop, for peers whose watch missed
		// the revoke (compacted away): they do not take this gateway's
		// last sessions for lost (lostLoop's resync).
		_, _ = c.client.Put(ctx, c.Key("left", c.cfg.GatewayID), fmt.Sprintf("%x", int64(lease)))
		_, _ = c.client.Revoke(ctx, lease)
		cancel()
	}
	return c.client.Close()
}
