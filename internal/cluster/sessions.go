package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/bastion-ssh/bastion/internal/textbound"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The live-session registry: <prefix>sessions/<session id> holds the
// gateway, user, target, start and kind of every live session, bound to
// the gateway's lease. A gateway writes its entries in the background
// (SessionStarted and SessionEnded never wait for etcd: the audit log,
// not the registry, is the record a session depends on), in batched
// transactions, and writes them all again under each new lease.
//
// When a gateway dies its lease expires, and etcd deletes its member
// record and its session entries in one revision. Every member watches
// for such deletes; for each session lost that way, the first member to
// claim it cluster-wide (Claim "gateway_lost") tells its OnGatewayLost
// callbacks, which write the session.end. A member that ends its own
// sessions deletes their entries itself, in other revisions, so they are
// never taken for lost.

// Session is one live session in the registry.
type Session struct {
	// ID is the session id: the key's last segment, left out of the
	// stored value (it is set in lists given out).
	ID      string    `json:"id,omitempty"`
	Gateway string    `json:"gateway"`
	User    string    `json:"user"`
	Target  string    `json:"target"`
	Start   time.Time `json:"start"`
	// Kind is the session's mode: "tunnel" or "record".
	Kind string `json:"kind"`
}

// ReasonGatewayLost is the session.end reason a member writes for a
// session of another gateway whose lease expired (kill -9, power loss,
// cut off from etcd for longer than LeaseTTL).
const ReasonGatewayLost = "gateway_lost"

// Registry timing and bounds.
const (
	// countEvery is how often at most the live-session count in the
	// membership record is rewritten.
	countEvery = time.Second
	// retryEvery is how soon entries that could not be written are tried
	// again.
	retryEvery = time.Second
	// txnOps bounds the operations of one transaction (etcd's default
	// --max-txn-ops is 128).
	txnOps = 100
	// maxSessionField bounds each string a session entry holds.
	maxSessionField = 256
	// lostClaimTTL is how long the claim on a lost session is kept: far
	// longer than any member takes to see the watch event.
	lostClaimTTL = time.Hour
)

// registry is the Cluster's share of the live-session registry.
type registry struct {
	mu sync.Mutex
	// own are this gateway's live sessions; dirty the ids whose entry
	// must be written (present in own) or deleted (absent).
	own   map[string]Session
	dirty map[string]struct{}
	kick  chan struct{}
	lost  []func(ctx context.Context, gateway string, sessions []Session)
	// lastCount is when the member record's count was last written.
	lastCount time.Time
}

func (r *registry) init() {
	r.own = map[string]Session{}
	r.dirty = map[string]struct{}{}
	r.kick = make(chan struct{}, 1)
}

func (r *registry) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func boundField(s string) string {
	return textbound.Cut(s, maxSessionField)
}

// validSessionID is what may be a key segment.
func validSessionID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsAny(id, "/\x00")
}

// SessionStarted registers a live session of this gateway. It returns at
// once; the entry reaches etcd in the background.
func (c *Cluster) SessionStarted(s Session) {
	if !validSessionID(s.ID) {
		return
	}
	s.Gateway = c.cfg.GatewayID
	s.User, s.Target, s.Kind = boundField(s.User), boundField(s.Target), boundField(s.Kind)
	s.Start = s.Start.UTC()
	r := &c.reg
	r.mu.Lock()
	r.own[s.ID] = s
	r.dirty[s.ID] = struct{}{}
	r.mu.Unlock()
	r.wake()
}

// SessionEnded removes a session of this gateway from the registry, in
// the background.
func (c *Cluster) SessionEnded(id string) {
	if !validSessionID(id) {
		return
	}
	r := &c.reg
	r.mu.Lock()
	_, known := r.own[id]
	delete(r.own, id)
	if known {
		r.dirty[id] = struct{}{}
	}
	r.mu.Unlock()
	if known {
		r.wake()
	}
}

// LocalSessions is how many sessions this gateway has registered.
func (c *Cluster) LocalSessions() int {
	c.reg.mu.Lock()
	defer c.reg.mu.Unlock()
	return len(c.reg.own)
}

// OnGatewayLost registers fn to run when another gateway's lease expires
// with sessions in the registry. Across the cluster each lost session is
// given to exactly one member's callbacks (the first to claim it); fn
// writes their session.end with reason ReasonGatewayLost.
func (c *Cluster) OnGatewayLost(fn func(ctx context.Context, gateway string, sessions []Session)) {
	c.reg.mu.Lock()
	c.reg.lost = append(c.reg.lost, fn)
	c.reg.mu.Unlock()
}

// resumeSessions marks every own entry to be written again under a new
// lease (an OnLease callback).
func (c *Cluster) resumeSessions(_ context.Context, _ clientv3.LeaseID) {
	r := &c.reg
	r.mu.Lock()
	for id := range r.own {
		r.dirty[id] = struct{}{}
	}
	n := len(r.dirty)
	r.mu.Unlock()
	if n > 0 {
		r.wake()
	}
}

// registryLoop writes the registry's pending changes and keeps the
// member record's live-session count current. On Close it flushes once
// more, so a gateway that stops cleanly leaves no entry behind to be
// taken for lost.
func (c *Cluster) registryLoop(ctx context.Context) {
	defer c.done.Done()
	tick := time.NewTicker(retryEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			if err := c.flushSessions(fctx); err != nil {
				c.log.Warn("could not remove the live-session registry entries at stop; other members will end them as gateway_lost", "gateway", c.cfg.GatewayID, "err", err)
			}
			cancel()
			return
		case <-c.reg.kick:
		case <-tick.C:
		}
		if err := c.flushSessions(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("could not update the live-session registry; retrying", "gateway", c.cfg.GatewayID, "err", err)
		}
		c.updateCount(ctx)
	}
}

// updateCount rewrites the member record's live-session count, at most
// once per countEvery (SetLiveSessions skips an unchanged count).
func (c *Cluster) updateCount(ctx context.Context) {
	r := &c.reg
	r.mu.Lock()
	if c.now().Sub(r.lastCount) < countEvery {
		r.mu.Unlock()
		return
	}
	r.lastCount = c.now()
	n := len(r.own)
	r.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := c.SetLiveSessions(cctx, n); err != nil {
		c.log.Warn("could not update the live-session count", "gateway", c.cfg.GatewayID, "err", err)
	}
}

// flushSessions writes or deletes the dirty entries in transactions of at
// most txnOps operations. What fails stays dirty.
func (c *Cluster) flushSessions(ctx context.Context) error {
	r := &c.reg
	lease := c.Lease()
	r.mu.Lock()
	var ops []clientv3.Op
	var ids []string
	for id := range r.dirty {
		if s, ok := r.own[id]; ok {
			if lease == 0 {
				continue // written when a lease comes (resumeSessions)
			}
			s.ID = "" // in the key already
			data, err := json.Marshal(s)
			if err != nil {
				continue
			}
			ops = append(ops, clientv3.OpPut(c.Key("sessions", id), string(data), clientv3.WithLease(lease)))
		} else {
			ops = append(ops, clientv3.OpDelete(c.Key("sessions", id)))
		}
		ids = append(ids, id)
		delete(r.dirty, id)
	}
	r.mu.Unlock()
	var errs error
	for i := 0; i < len(ops); i += txnOps {
		j := min(i+txnOps, len(ops))
		tctx, cancel := context.WithTimeout(ctx, opTimeout)
		_, err := c.client.Txn(tctx).Then(ops[i:j]...).Commit()
		cancel()
		if err != nil {
			// Back to dirty, unless changed meanwhile (then it already is).
			r.mu.Lock()
			for _, id := range ids[i:j] {
				r.dirty[id] = struct{}{}
			}
			r.mu.Unlock()
			errs = errors.Join(errs, err)
			continue
		}
		c.touch()
	}
	if errs != nil {
		return fmt.Errorf("write the live-session registry: %w", errs)
	}
	return nil
}

// Sessions lists the live sessions of the whole cluster, oldest first.
func (c *Cluster) Sessions(ctx context.Context) ([]Session, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	prefix := c.Key("sessions") + "/"
	resp, err := c.client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list the cluster's live sessions: %w", err)
	}
	c.touch()
	out := make([]Session, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var s Session
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			continue
		}
		s.ID = strings.TrimPrefix(string(kv.Key), prefix)
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out, nil
}

// LookupSession finds a live session in the registry: which gateway
// holds it. found is false when no live session has that id.
func (c *Cluster) LookupSession(ctx context.Context, id string) (s Session, found bool, err error) {
	if !validSessionID(id) {
		return Session{}, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Get(ctx, c.Key("sessions", id))
	if err != nil {
		return Session{}, false, fmt.Errorf("look the session up in etcd: %w", err)
	}
	c.touch()
	if len(resp.Kvs) == 0 {
		return Session{}, false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		return Session{}, false, fmt.Errorf("the registry entry of session %s is corrupt: %w", id, err)
	}
	s.ID = id
	return s, true, nil
}

// lostLoop watches for members whose lease expired and hands their
// sessions, each claimed once cluster-wide, to the OnGatewayLost
// callbacks. The watch covers <prefix>members/ .. <prefix>sessions/ and
// only deletes; a lease's keys all go in one revision, so a member's
// delete and its sessions' deletes arrive together.
func (c *Cluster) lostLoop(ctx context.Context) {
	defer c.done.Done()
	from := c.Key("members") + "/"
	end := c.Key("sessions") + "0" // '0' follows '/': the end of sessions/
	var rev int64
	for ctx.Err() == nil {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithPrevKV(), clientv3.WithFilterPut()}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev+1))
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for resp := range c.client.Watch(wctx, from, opts...) {
			if resp.CompactRevision > 0 {
				// The events after rev were compacted away: lost
				// sessions in them are closed by their gateway's restart.
				c.log.Warn("the gateway_lost watch missed compacted events", "gateway", c.cfg.GatewayID, "from", rev+1, "compacted", resp.CompactRevision)
				rev = 0
				break
			}
			if err := resp.Err(); err != nil {
				break
			}
			c.handleDeletes(ctx, resp.Events)
			if resp.Header.Revision > rev {
				rev = resp.Header.Revision
			}
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryEvery):
		}
	}
}

// handleDeletes finds, among one watch response's deletes, the sessions
// deleted in the same revision as their gateway's member record.
func (c *Cluster) handleDeletes(ctx context.Context, events []*clientv3.Event) {
	memberPrefix, sessPrefix := c.Key("members")+"/", c.Key("sessions")+"/"
	lostAt := map[int64]map[string]bool{}
	var deleted []struct {
		rev int64
		s   Session
	}
	for _, ev := range events {
		if ev.Type != mvccpb.DELETE {
			continue
		}
		key, rev := string(ev.Kv.Key), ev.Kv.ModRevision
		switch {
		case strings.HasPrefix(key, memberPrefix):
			id := strings.TrimPrefix(key, memberPrefix)
			if lostAt[rev] == nil {
				lostAt[rev] = map[string]bool{}
			}
			lostAt[rev][id] = true
		case strings.HasPrefix(key, sessPrefix) && ev.PrevKv != nil:
			var s Session
			if json.Unmarshal(ev.PrevKv.Value, &s) != nil {
				continue
			}
			s.ID = strings.TrimPrefix(key, sessPrefix)
			deleted = append(deleted, struct {
				rev int64
				s   Session
			}{rev, s})
		}
	}
	byGateway := map[string][]Session{}
	for _, d := range deleted {
		if d.s.Gateway == c.cfg.GatewayID || !lostAt[d.rev][d.s.Gateway] {
			continue
		}
		byGateway[d.s.Gateway] = append(byGateway[d.s.Gateway], d.s)
	}
	if len(byGateway) == 0 {
		return
	}
	c.reg.mu.Lock()
	fns := append([]func(context.Context, string, []Session){}, c.reg.lost...)
	c.reg.mu.Unlock()
	if len(fns) == 0 {
		return
	}
	gateways := make([]string, 0, len(byGateway))
	for gw := range byGateway {
		gateways = append(gateways, gw)
	}
	sort.Strings(gateways)
	for _, gw := range gateways {
		var mine []Session
		for _, s := range byGateway[gw] {
			first, err := c.Claim(ctx, ReasonGatewayLost, gw+"/"+s.ID, lostClaimTTL)
			if err != nil {
				c.log.Warn("could not claim a lost session; another member or the gateway's restart closes it", "gateway", c.cfg.GatewayID, "lost_gateway", gw, "session", s.ID, "err", err)
				continue
			}
			if first {
				mine = append(mine, s)
			}
		}
		if len(mine) == 0 {
			continue
		}
		c.log.Warn("a gateway's lease expired with live sessions; ending them as gateway_lost", "gateway", c.cfg.GatewayID, "lost_gateway", gw, "sessions", len(mine))
		for _, fn := range fns {
			fn(ctx, gw, mine)
		}
	}
}
