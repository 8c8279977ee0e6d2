package clusterstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/logattr"
)

// Keys of the revocation state:
//
//	<prefix>locks/<target>                 a lock, or the tombstone of an unlock
//	<prefix>revocations/<kind>/<value>     a revocation (never removed)
//
// Names are path-escaped. Values are small JSON records (see record).
// A tombstone keeps who unlocked for tombstoneTTL, so that a gateway that
// was cut off records where the unlock came from; then it expires.
const tombstoneTTL = 24 * time.Hour

// Who and where, in a state.applied record, for an unlock whose record
// does not say: its tombstone expired before this gateway read it, or the
// lock was deleted from etcd directly, bypassing every gateway.
const (
	expiredActor = "unknown (the unlock's record expired from etcd before this gateway read it)"
	directActor  = "etcd (deleted directly in etcd, not through a gateway)"
)

// Bounds on what goes into etcd: a reason is cut, an oversized record is
// refused.
const (
	maxReason = 512
	maxRecord = 4096
)

// record is the JSON value of a lock, tombstone or revocation key.
type record struct {
	ca.Change
	// Gateway is the gateway that took the change.
	Gateway string `json:"gateway"`
}

// Sync shares one gateway's revocation state through etcd: it is the
// state's ca.Shared copy, and it applies the changes other gateways make.
type Sync struct {
	c   *cluster.Cluster
	st  *ca.State
	log *slog.Logger

	// flushMu serialises publishing the outbox.
	flushMu sync.Mutex
	// kick asks the retry loop to publish the outbox again.
	kick chan struct{}
	// synced counts tables read in full at least once (2 = ready).
	synced  atomic.Int32
	ready   chan struct{}
	readyMu sync.Once

	onApply []func(ca.Change, string)

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// Start links st to the cluster and starts following the locks and
// revocations in etcd. onApply, when set, is told of every change applied
// from another gateway (after the state's own change callbacks ran).
func Start(c *cluster.Cluster, st *ca.State, log *slog.Logger, onApply func(ch ca.Change, from string)) *Sync {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sync{c: c, st: st, log: log, kick: make(chan struct{}, 1), ready: make(chan struct{})}
	if onApply != nil {
		s.onApply = append(s.onApply, onApply)
	}
	st.SetShared(s)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done.Add(3)
	markSynced := func() {
		if s.synced.Add(1) >= 2 {
			s.readyMu.Do(func() { close(s.ready) })
		}
	}
	var lockOnce, revOnce sync.Once
	go func() {
		defer s.done.Done()
		Follow(ctx, c, c.Key("locks")+"/", lockTable{s}, log, s.flush, func() { lockOnce.Do(markSynced) })
	}()
	go func() {
		defer s.done.Done()
		Follow(ctx, c, c.Key("revocations")+"/", revTable{s}, log, s.flush, func() { revOnce.Do(markSynced) })
	}()
	go func() {
		defer s.done.Done()
		s.retryLoop(ctx)
	}()
	return s
}

// Ready is closed once the gateway has read the shared state in full.
func (s *Sync) Ready() <-chan struct{} { return s.ready }

// WaitReady waits (bounded by ctx) for the first full read.
func (s *Sync) WaitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the shared lock and revocation state was not read from etcd: %w", ctx.Err())
	}
}

// Close stops following etcd and unlinks the state.
func (s *Sync) Close() {
	s.cancel()
	s.done.Wait()
	s.st.SetShared(nil)
}

// retryLoop publishes the outbox again after a failed publication, with
// backoff, until it is empty (not a poll of etcd: it only runs while
// something is pending).
func (s *Sync) retryLoop(ctx context.Context) {
	backoff := retryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			if err := s.flush(ctx); err == nil {
				backoff = retryMin
				break
			}
			backoff = min(backoff*2, retryMax)
		}
	}
}

func (s *Sync) retry() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// flush publishes every change in the outbox, oldest first.
func (s *Sync) flush(ctx context.Context) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	pending, err := s.st.Pending()
	if err != nil {
		return err
	}
	for _, ch := range pending {
		pctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := s.publish(pctx, ch)
		if err == nil {
			err = s.st.Published(pctx, ch)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("publish the pending %s of %s: %w", ch.Op, ch.Name(), err)
		}
		s.log.Info("published a change taken while etcd was unreachable", "op", ch.Op, "name", ch.Name())
	}
	return nil
}

// Publish implements ca.Shared: a change taken on this gateway is written
// to etcd.
func (s *Sync) Publish(ctx context.Context, ch ca.Change) error {
	err := s.publish(ctx, ch)
	if err != nil {
		why := err
		if errors.Is(err, context.DeadlineExceeded) {
			why = errors.New("etcd did not answer the write in time")
		}
		s.log.Warn("could not publish a change to etcd; it is in effect here and kept to publish later", "op", ch.Op, "name", ch.Name(), "by", ch.Actor(), "err", why)
		s.retry()
	}
	return err
}

// key is the etcd key of a change.
func (s *Sync) key(ch ca.Change) string {
	if ch.Op == ca.OpRevoke {
		return s.c.Key("revocations", url.PathEscape(string(ch.Revocation.Kind)), url.PathEscape(ch.Revocation.Value))
	}
	return s.c.Key("locks", url.PathEscape(ch.Name()))
}

func (s *Sync) encode(ch ca.Change) (string, error) {
	rec := record{Change: ch, Gateway: s.c.GatewayID()}
	switch {
	case ch.Lock != nil:
		lk := *ch.Lock
		lk.Reason = cut(lk.Reason, maxReason)
		rec.Lock = &lk
	case ch.Revocation != nil:
		rev := *ch.Revocation
		rev.Reason = cut(rev.Reason, maxReason)
		rec.Revocation = &rev
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	if len(data) > maxRecord {
		return "", fmt.Errorf("the %s of %.64q is too large to share (%d bytes)", ch.Op, ch.Name(), len(data))
	}
	return string(data), nil
}

// publish writes ch. A revocation is written once (revocations only
// grow). A lock or unlock replaces what is at its target unless what is
// there was taken later (by the gateways' clocks): the change taken last
// wins, wherever and whenever it was published.
func (s *Sync) publish(ctx context.Context, ch ca.Change) error {
	if ch.Name() == "" {
		return errors.New("a change with nothing named")
	}
	key := s.key(ch)
	val, err := s.encode(ch)
	if err != nil {
		return err
	}
	cli := s.c.Client()
	if ch.Op == ca.OpRevoke {
		_, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).Then(clientv3.OpPut(key, val)).Commit()
		return err
	}
	for range 3 {
		cur, err := cli.Get(ctx, key)
		if err != nil {
			return err
		}
		var modRev int64
		if len(cur.Kvs) == 1 {
			modRev = cur.Kvs[0].ModRevision
			var have record
			if json.Unmarshal(cur.Kvs[0].Value, &have) == nil && have.Time.After(ch.Time) {
				// A later change to the same target is there: ours
				// never takes effect beyond this gateway. Say so, and
				// take the later one here too.
				return s.discard(ctx, ch, have)
			}
		}
		opts := []clientv3.OpOption{}
		if ch.Op == ca.OpUnlock {
			lease, err := cli.Grant(ctx, int64(tombstoneTTL/time.Second))
			if err != nil {
				return err
			}
			opts = append(opts, clientv3.WithLease(lease.ID))
		}
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).Then(clientv3.OpPut(key, val, opts...)).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
	}
	return errors.New("the lock kept changing under this write; try again")
}

// discard drops ch, taken here, in favour of have, a later change to the
// same target already in etcd: ch leaves the outbox with a record that it
// was overridden, and have is applied here.
func (s *Sync) discard(ctx context.Context, ch ca.Change, have record) error {
	if cluster.ValidateGatewayID(have.Gateway) != nil {
		have.Gateway = "unknown"
	}
	if err := s.st.Discard(ctx, ch, have.Change, s.c.GatewayID(), have.Gateway); err != nil {
		return err
	}
	s.log.Warn("a change taken here while etcd was unreachable was overridden by a later one before it could be shared; it never took effect on the other gateways",
		"op", ch.Op, "name", logattr.String(ch.Name()), "by", logattr.String(ch.Actor()),
		"overridden_by_op", have.Op, "overridden_by", logattr.String(have.Actor()), "overridden_from_gateway", have.Gateway)
	if have.Op == ca.OpLock || have.Op == ca.OpUnlock {
		return s.apply(ctx, have.Change, have.Gateway)
	}
	return nil
}

// apply applies a record from etcd to the local state.
func (s *Sync) apply(ctx context.Context, ch ca.Change, from string) error {
	actx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	applied, err := s.st.Apply(actx, ch, from)
	if err != nil {
		return err
	}
	if applied {
		s.log.Info("applied a change from the cluster", "op", ch.Op, "name", ch.Name(), "from_gateway", from)
		for _, fn := range s.onApply {
			fn(ch, from)
		}
	}
	return nil
}

// pendingNames are the outbox entries of table, by name.
func (s *Sync) pendingNames(table string) (map[string]bool, error) {
	pending, err := s.st.Pending()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, ch := range pending {
		if ch.Table() == table {
			out[ch.Name()] = true
		}
	}
	return out, nil
}

func decode(kv *mvccpb.KeyValue) (record, error) {
	var rec record
	if len(kv.Value) > maxRecord {
		return rec, fmt.Errorf("record %.80q is %d bytes, over the %d allowed", kv.Key, len(kv.Value), maxRecord)
	}
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return rec, fmt.Errorf("record %.80q is not JSON: %w", kv.Key, err)
	}
	if err := cluster.ValidateGatewayID(rec.Gateway); err != nil {
		rec.Gateway = "unknown"
	}
	return rec, nil
}

// lockTable follows <prefix>locks/.
type lockTable struct{ s *Sync }

func (t lockTable) Reset(ctx context.Context, kvs []*mvccpb.KeyValue) error {
	pending, err := t.s.pendingNames("locks")
	if err != nil {
		return err
	}
	seen := map[string]string{} // target -> gateway of its record
	for _, kv := range kvs {
		rec, err := decode(kv)
		if err != nil {
			t.s.log.Warn("ignoring a corrupt lock record in etcd", "err", err)
			continue
		}
		name := rec.Name()
		seen[name] = rec.Gateway
		if pending[name] {
			continue // ours is newer and waits to be published
		}
		if rec.Op == ca.OpLock || rec.Op == ca.OpUnlock {
			if err := t.s.apply(ctx, rec.Change, rec.Gateway); err != nil {
				return err
			}
		}
	}
	// A lock held here that etcd does not hold was lifted while this
	// gateway was cut off, and its tombstone has expired since.
	for _, lk := range t.s.st.Locks.List() {
		if _, ok := seen[lk.Target]; ok || pending[lk.Target] {
			continue
		}
		// Who lifted it and where is gone with the tombstone.
		if err := t.s.apply(ctx, ca.Change{Op: ca.OpUnlock, Target: lk.Target, By: expiredActor}, expiredActor); err != nil {
			return err
		}
	}
	return nil
}

func (t lockTable) Event(ctx context.Context, ev *clientv3.Event) error {
	if ev.Type == clientv3.EventTypeDelete {
		// A tombstone expired (nothing to do), or someone removed a
		// lock by hand with etcdctl: lift it here too.
		name, err := url.PathUnescape(strings.TrimPrefix(string(ev.Kv.Key), t.s.c.Key("locks")+"/"))
		if err != nil || ev.PrevKv == nil {
			return nil
		}
		if prev, err := decode(ev.PrevKv); err == nil && prev.Op == ca.OpLock {
			return t.s.apply(ctx, ca.Change{Op: ca.OpUnlock, Target: name, By: directActor}, directActor)
		}
		return nil
	}
	rec, err := decode(ev.Kv)
	if err != nil {
		t.s.log.Warn("ignoring a corrupt lock record in etcd", "err", err)
		return nil
	}
	if rec.Op != ca.OpLock && rec.Op != ca.OpUnlock {
		return nil
	}
	return t.s.apply(ctx, rec.Change, rec.Gateway)
}

// revTable follows <prefix>revocations/.
type revTable struct{ s *Sync }

func (t revTable) Reset(ctx context.Context, kvs []*mvccpb.KeyValue) error {
	inEtcd := map[string]bool{}
	for _, kv := range kvs {
		rec, err := decode(kv)
		if err != nil || rec.Op != ca.OpRevoke || rec.Revocation == nil {
			t.s.log.Warn("ignoring a corrupt revocation record in etcd", "key", fmt.Sprintf("%.80q", kv.Key), "err", err)
			continue
		}
		inEtcd[rec.Name()] = true
		if err := t.s.apply(ctx, rec.Change, rec.Gateway); err != nil {
			return err
		}
	}
	// Revocations only grow: one this gateway holds that etcd lacks (made
	// before the gateway joined a cluster) is published.
	for _, rev := range t.s.st.Revocations.List() {
		ch := ca.Change{Op: ca.OpRevoke, Revocation: &rev, Time: rev.Time}
		if inEtcd[ch.Name()] {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := t.s.publish(pctx, ch)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

func (t revTable) Event(ctx context.Context, ev *clientv3.Event) error {
	if ev.Type == clientv3.EventTypeDelete {
		return nil // revocations are never lifted
	}
	rec, err := decode(ev.Kv)
	if err != nil || rec.Op != ca.OpRevoke || rec.Revocation == nil {
		t.s.log.Warn("ignoring a corrupt revocation record in etcd", "err", err)
		return nil
	}
	return t.s.apply(ctx, rec.Change, rec.Gateway)
}

// cut bounds s to n bytes.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
