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
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
//
// A gateway that was only cut off (frozen, partitioned) past LeaseTTL
// races its peers for the same claims once it has a new lease, before it
// revokes the old one (settleLost): a session it claims first is not
// ended by anyone; one a peer claimed first, and that still lives, is
// handed to the OnSessionsResumed callbacks (session.resumed). The claim
// names the lease the entry was lost with, so a session lost twice is
// settled twice.

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
	// written is the lease each entry in etcd was last written under.
	written map[string]clientv3.LeaseID
	// settle are the entries written under a lost lease whose fate (a
	// peer ended them as gateway_lost, or not) is not settled yet.
	settle map[string]settleItem
	// settling is held by settleLost, so that its callers (the lease and
	// registry loops) never settle one entry twice.
	settling sync.Mutex
	// order puts each session's end and the decision that it resumed in
	// one order: a session's end is recorded under its read lock
	// (SessionEnding), and settleLost holds it from the check that a
	// session is live until its session.resumed is recorded. So no
	// session.resumed follows the session's own session.end.
	order sync.RWMutex
	kick  chan struct{}
	lost  []func(ctx context.Context, gateway string, sessions []Session)
	// resumed are the OnSessionsResumed callbacks.
	resumed []func(ctx context.Context, sessions []ResumedSession)
	// lastCount is when the member record's count was last written.
	lastCount time.Time
}

func (r *registry) init() {
	r.own = map[string]Session{}
	r.dirty = map[string]struct{}{}
	r.written = map[string]clientv3.LeaseID{}
	r.settle = map[string]settleItem{}
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
	_, inEtcd := r.written[id]
	known = known || inEtcd
	delete(r.own, id)
	if known {
		r.dirty[id] = struct{}{}
	}
	r.mu.Unlock()
	if known {
		r.wake()
	}
}

// SessionEnding is called before this gateway records the end of one of
// its sessions; done is called once the end is recorded and SessionEnded
// called. Meanwhile no session.resumed is decided or recorded, so that a
// session that ended is never recorded as resumed after its end.
func (c *Cluster) SessionEnding() (done func()) {
	c.reg.order.RLock()
	return c.reg.order.RUnlock
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

// ResumedSession is a session of this gateway that a peer ended as
// gateway_lost while this gateway was cut off from etcd (frozen, or its
// network down, past LeaseTTL) and that is live all the same.
type ResumedSession struct {
	Session
	// LostBy is the gateway that recorded the session.end gateway_lost.
	LostBy string
	// CutOff is how long this gateway went without a keepalive answer,
	// up to its new lease.
	CutOff time.Duration
}

// OnSessionsResumed registers fn to run when this gateway, back in touch
// with etcd under a new lease, finds that sessions it still holds were
// ended as gateway_lost by a peer meanwhile; fn records that they live on
// (session.resumed). They are registered again either way.
func (c *Cluster) OnSessionsResumed(fn func(ctx context.Context, sessions []ResumedSession)) {
	c.reg.mu.Lock()
	c.reg.resumed = append(c.reg.resumed, fn)
	c.reg.mu.Unlock()
}

// settleItem is an entry written under a lease that was lost.
type settleItem struct {
	lease  clientv3.LeaseID
	cutOff time.Duration
}

// lostClaimID is the Claim id by which the end of session id of gateway
// gw, lost with lease, is settled once: peers that see the lease expire
// race for it with the gateway itself, back under a new lease. Whoever
// claims it first decides: a peer writes the session.end gateway_lost
// (and the gateway, if the session lives on, a session.resumed); the
// gateway itself means no peer ends the session.
func lostClaimID(gw, id string, lease clientv3.LeaseID) string {
	return fmt.Sprintf("%s/%s/%x", gw, id, int64(lease))
}

// queueSettle marks the entries written under the lost lease old to be
// settled (settleLost).
func (c *Cluster) queueSettle(old clientv3.LeaseID, cutOff time.Duration) {
	r := &c.reg
	r.mu.Lock()
	for id, l := range r.written {
		if l == old {
			r.settle[id] = settleItem{lease: old, cutOff: cutOff}
			delete(r.written, id)
		}
	}
	r.mu.Unlock()
}

// settleLost claims the end of every entry written under a lost lease
// for this gateway (see lostClaimID). Those a peer claimed first were
// ended as gateway_lost in its log: the ones still live are handed to the
// OnSessionsResumed callbacks. Entries are written again under the new
// lease by resumeSessions either way.
func (c *Cluster) settleLost(ctx context.Context) error {
	r := &c.reg
	r.settling.Lock()
	defer r.settling.Unlock()
	r.mu.Lock()
	if len(r.settle) == 0 {
		r.mu.Unlock()
		return nil
	}
	items := make(map[string]settleItem, len(r.settle))
	for id, it := range r.settle {
		items[id] = it
	}
	r.mu.Unlock()
	ids := make([]string, 0, len(items))
	for id := range items {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	claimIDs := make([]string, len(ids))
	for i, id := range ids {
		claimIDs[i] = lostClaimID(c.cfg.GatewayID, id, items[id].lease)
	}
	holders, err := c.claimMany(ctx, ReasonGatewayLost, claimIDs, lostClaimTTL)
	var resumed []ResumedSession
	// From the check that a session is live until its session.resumed is
	// recorded, no session ends (see order).
	r.order.Lock()
	defer r.order.Unlock()
	r.mu.Lock()
	for i, id := range ids {
		holder, done := holders[claimIDs[i]]
		if !done {
			continue
		}
		delete(r.settle, id)
		if holder == c.cfg.GatewayID {
			continue
		}
		if s, live := r.own[id]; live {
			s.ID = id
			resumed = append(resumed, ResumedSession{Session: s, LostBy: holder, CutOff: items[id].cutOff})
		}
	}
	fns := append([]func(context.Context, []ResumedSession){}, r.resumed...)
	r.mu.Unlock()
	if len(resumed) > 0 {
		c.log.Warn("back in touch with etcd: peers had ended live sessions of this gateway as gateway_lost; recording that they live on", "gateway", c.cfg.GatewayID, "sessions", len(resumed), "cut_off", resumed[0].CutOff.Round(time.Millisecond))
		for _, fn := range fns {
			fn(ctx, resumed)
		}
	}
	if err != nil {
		return fmt.Errorf("settle the sessions of a lost lease: %w", err)
	}
	return nil
}

// claimMany is Claim for many ids at once, under one lease: it returns,
// for each id it could settle, the gateway that holds the claim (this one
// when its claim was first). Ids missing from the map could not be
// settled (the error says why).
func (c *Cluster) claimMany(ctx context.Context, kind string, ids []string, ttl time.Duration) (map[string]string, error) {
	out := make(map[string]string, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	lease, err := c.client.Grant(gctx, int64((ttl+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return out, err
	}
	won := false
	var errs error
	for i := 0; i < len(ids); i += txnOps {
		j := min(i+txnOps, len(ids))
		var ops []clientv3.Op
		for _, id := range ids[i:j] {
			key := c.claimKey(kind, id)
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
				[]clientv3.Op{clientv3.OpPut(key, c.cfg.GatewayID, clientv3.WithLease(lease.ID))}, []clientv3.Op{clientv3.OpGet(key)}))
		}
		tctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := c.client.Txn(tctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		c.touch()
		for k, id := range ids[i:j] {
			tr := resp.Responses[k].GetResponseTxn()
			if tr.Succeeded {
				out[id], won = c.cfg.GatewayID, true
				continue
			}
			holder := "an unknown gateway"
			if kvs := tr.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				holder = boundField(string(kvs[0].Value))
			}
			out[id] = holder
		}
	}
	if !won {
		rctx, cancel := context.WithTimeout(ctx, opTimeout)
		_, _ = c.client.Revoke(rctx, lease.ID)
		cancel()
	}
	return out, errs
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
		if c.Lease() != 0 {
			if err := c.settleLost(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("could not settle the sessions of a lost lease; retrying", "gateway", c.cfg.GatewayID, "err", err)
			}
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
	// A conflict over the id is logged (loudly) where it is found; a
	// lease that ended under the gateway is the lease loop's to replace
	// (the count is written again under the new one).
	if err := c.SetLiveSessions(cctx, n); err != nil && !errors.Is(err, ErrIDInUse) && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		c.log.Warn("could not update the live-session count", "gateway", c.cfg.GatewayID, "err", err)
	}
}

// flushSessions writes or deletes the dirty entries in transactions of at
// most txnOps operations. What fails stays dirty. Each entry belongs to
// the lease it was created under: it is written only when absent or
// bound to this gateway's lease, and deleted only when bound to it, so a
// gateway never overwrites nor deletes another's entry.
func (c *Cluster) flushSessions(ctx context.Context) error {
	r := &c.reg
	lease := c.Lease()
	if lease == 0 {
		return nil // written when a lease comes (resumeSessions)
	}
	r.mu.Lock()
	var ops []clientv3.Op
	var ids []string
	var puts []bool
	for id := range r.dirty {
		key := c.Key("sessions", id)
		ours := clientv3.Compare(clientv3.LeaseValue(key), "=", lease)
		if s, ok := r.own[id]; ok {
			s.ID = "" // in the key already
			data, err := json.Marshal(s)
			if err != nil {
				continue
			}
			put := clientv3.OpPut(key, string(data), clientv3.WithLease(lease))
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}, []clientv3.Op{put},
				[]clientv3.Op{clientv3.OpTxn([]clientv3.Cmp{ours}, []clientv3.Op{put}, []clientv3.Op{clientv3.OpGet(key)})}))
			puts = append(puts, true)
		} else {
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{ours}, []clientv3.Op{clientv3.OpDelete(key)}, nil))
			puts = append(puts, false)
		}
		ids = append(ids, id)
		delete(r.dirty, id)
	}
	r.mu.Unlock()
	var errs error
	for i := 0; i < len(ops); i += txnOps {
		j := min(i+txnOps, len(ops))
		tctx, cancel := context.WithTimeout(ctx, opTimeout)
		resp, err := c.client.Txn(tctx).Then(ops[i:j]...).Commit()
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
		r.mu.Lock()
		for k, id := range ids[i:j] {
			tr := resp.Responses[k].GetResponseTxn()
			switch {
			case !puts[i+k]:
				delete(r.written, id)
			case tr.Succeeded || tr.Responses[0].GetResponseTxn().Succeeded:
				r.written[id] = lease
			default:
				// Another gateway's entry under this session id: left alone.
				delete(r.written, id)
				c.log.Error("a live-session registry entry with this session's id belongs to another gateway; not overwriting it", "gateway", c.cfg.GatewayID, "session", id)
			}
		}
		r.mu.Unlock()
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
// callbacks. The watch covers <prefix>members/ .. <prefix>sessions/; a
// lease's keys all go in one revision, so a member's delete and its
// sessions' deletes arrive together.
//
// It also keeps a mirror of the member and session entries, read in full
// at start. When the watch falls behind a compaction (the events it
// missed are gone from etcd's history), it reads everything again and
// compares: a mirrored session of another gateway that is gone, whose
// gateway no longer holds the lease it was written under, and whose
// gateway did not leave cleanly with that lease (<prefix>left/<id>), was
// lost with its gateway and is handed out as the watch would have.
func (c *Cluster) lostLoop(ctx context.Context) {
	defer c.done.Done()
	from := c.Key("members") + "/"
	end := c.Key("sessions") + "0" // '0' follows '/': the end of sessions/
	var m, prev *mirror
	var rev int64
	for ctx.Err() == nil {
		if m == nil {
			snap, err := c.readMirror(ctx)
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(retryEvery):
				}
				continue
			}
			if prev != nil {
				c.reconcile(ctx, prev, snap)
				prev = nil
				c.resyncs.Add(1)
			}
			m, rev = snap, snap.rev
		}
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithPrevKV(), clientv3.WithRev(rev + 1)}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		c.lostGate.Lock()
		c.lostWatch = cancel
		c.lostGate.Unlock()
		for resp := range c.client.Watch(wctx, from, opts...) {
			if resp.CompactRevision > 0 {
				c.log.Warn("the gateway_lost watch fell behind a compaction of etcd's history; reading the registry again to find sessions lost meanwhile", "gateway", c.cfg.GatewayID, "from", rev+1, "compacted", resp.CompactRevision)
				prev, m = m, nil
				break
			}
			if err := resp.Err(); err != nil {
				break
			}
			c.handleEvents(ctx, m, resp.Events)
			if resp.Header.Revision > rev {
				rev = resp.Header.Revision
			}
		}
		cancel()
		if m == nil {
			continue // read again at once
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retryEvery):
		}
	}
}

// mirror is lostLoop's copy of the member and session entries.
type mirror struct {
	rev      int64
	members  map[string]clientv3.LeaseID // gateway id -> lease of its record
	sessions map[string]lostEntry        // session id -> entry
}

// lostEntry is a registry entry and the lease it was bound to.
type lostEntry struct {
	s     Session
	lease clientv3.LeaseID
}

// readMirror reads every member and session entry at one revision.
func (c *Cluster) readMirror(ctx context.Context) (*mirror, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	resp, err := c.client.Get(ctx, c.Key("members")+"/", clientv3.WithRange(c.Key("sessions")+"0"))
	if err != nil {
		return nil, err
	}
	m := &mirror{rev: resp.Header.Revision, members: map[string]clientv3.LeaseID{}, sessions: map[string]lostEntry{}}
	for _, kv := range resp.Kvs {
		m.apply(c, kv, false)
	}
	return m, nil
}

// apply records kv's put (or delete) in the mirror.
func (m *mirror) apply(c *Cluster, kv *mvccpb.KeyValue, deleted bool) {
	memberPrefix, sessPrefix := c.Key("members")+"/", c.Key("sessions")+"/"
	key := string(kv.Key)
	switch {
	case strings.HasPrefix(key, memberPrefix):
		id := strings.TrimPrefix(key, memberPrefix)
		if deleted {
			delete(m.members, id)
		} else {
			m.members[id] = clientv3.LeaseID(kv.Lease)
		}
	case strings.HasPrefix(key, sessPrefix):
		id := strings.TrimPrefix(key, sessPrefix)
		var s Session
		if deleted || json.Unmarshal(kv.Value, &s) != nil {
			delete(m.sessions, id)
			return
		}
		s.ID = id
		m.sessions[id] = lostEntry{s: s, lease: clientv3.LeaseID(kv.Lease)}
	}
}

// handleEvents keeps the mirror current and finds, among one watch
// response's deletes, the sessions deleted in the same revision as their
// gateway's member record: those lost with their gateway's lease.
func (c *Cluster) handleEvents(ctx context.Context, m *mirror, events []*clientv3.Event) {
	memberPrefix, sessPrefix := c.Key("members")+"/", c.Key("sessions")+"/"
	lostAt := map[int64]map[string]bool{}
	var deleted []struct {
		rev int64
		e   lostEntry
	}
	for _, ev := range events {
		if ev.Type != mvccpb.DELETE {
			m.apply(c, ev.Kv, false)
			continue
		}
		m.apply(c, ev.Kv, true)
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
				e   lostEntry
			}{rev, lostEntry{s: s, lease: clientv3.LeaseID(ev.PrevKv.Lease)}})
		}
	}
	byGateway := map[string][]lostEntry{}
	for _, d := range deleted {
		if d.e.s.Gateway == c.cfg.GatewayID || !lostAt[d.rev][d.e.s.Gateway] {
			continue
		}
		byGateway[d.e.s.Gateway] = append(byGateway[d.e.s.Gateway], d.e)
	}
	c.handOut(ctx, byGateway)
}

// reconcile compares the mirror from before a compaction with a fresh
// read and hands out the sessions lost in between (see lostLoop).
func (c *Cluster) reconcile(ctx context.Context, old, now *mirror) {
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	prefix := c.Key("left") + "/"
	resp, err := c.client.Get(gctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		c.log.Warn("could not read which gateways left cleanly; sessions lost while the watch was behind are not ended here (their gateway's restart closes them as gateway_crashed)", "gateway", c.cfg.GatewayID, "err", err)
		return
	}
	left := map[string]string{}
	for _, kv := range resp.Kvs {
		left[strings.TrimPrefix(string(kv.Key), prefix)] = string(kv.Value)
	}
	byGateway := map[string][]lostEntry{}
	for id, e := range old.sessions {
		gw := e.s.Gateway
		if gw == c.cfg.GatewayID || e.lease == 0 {
			continue
		}
		if _, still := now.sessions[id]; still {
			continue
		}
		if now.members[gw] == e.lease || left[gw] == fmt.Sprintf("%x", int64(e.lease)) {
			continue // ended while its gateway ran, or at a clean stop
		}
		byGateway[gw] = append(byGateway[gw], e)
	}
	if len(byGateway) > 0 {
		c.log.Warn("sessions lost while the gateway_lost watch was behind a compaction", "gateway", c.cfg.GatewayID, "lost_gateways", len(byGateway))
	}
	c.handOut(ctx, byGateway)
}

// handOut claims each lost session once cluster-wide (lostClaimID) and
// gives those this member claimed first to the OnGatewayLost callbacks.
func (c *Cluster) handOut(ctx context.Context, byGateway map[string][]lostEntry) {
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
		for _, e := range byGateway[gw] {
			first, err := c.Claim(ctx, ReasonGatewayLost, lostClaimID(gw, e.s.ID, e.lease), lostClaimTTL)
			if err != nil {
				c.log.Warn("could not claim a lost session; another member or the gateway's restart closes it", "gateway", c.cfg.GatewayID, "lost_gateway", gw, "session", e.s.ID, "err", err)
				continue
			}
			if first {
				mine = append(mine, e.s)
			}
		}
		if len(mine) == 0 {
			continue
		}
		sort.Slice(mine, func(i, j int) bool { return mine[i].ID < mine[j].ID })
		c.log.Warn("a gateway's lease expired with live sessions; ending them as gateway_lost", "gateway", c.cfg.GatewayID, "lost_gateway", gw, "sessions", len(mine))
		for _, fn := range fns {
			fn(ctx, gw, mine)
		}
	}
}
