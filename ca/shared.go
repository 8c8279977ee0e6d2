package ca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/bastion-ssh/bastion/audit"
)

// A cluster of gateways shares one revocation state. Each gateway keeps
// its own copy in its audit database (bbolt), where the checks read it;
// the cluster's shared copy (etcd, package internal/clusterstate) sits
// behind the Shared interface, so this package knows nothing of etcd:
//
//   - A change taken on this gateway (Lock, Unlock, Revoke) is written to
//     bbolt with its audit record and takes effect here at once; the same
//     transaction puts it in the outbox bucket. It is then published to
//     the Shared copy and leaves the outbox once that succeeded. While the
//     shared copy cannot be reached the change stays in the outbox
//     (Pending) and is published again when it can (see
//     internal/clusterstate).
//   - A change another gateway took arrives through Apply: written to
//     bbolt with a state.applied record, then the change callbacks run so
//     live sessions are re-checked and the KRL file is rewritten.
//
// A single gateway has no Shared copy: its changes stay in the outbox
// (one entry per lock target or revocation, so it stays as small as the
// state itself) and are published if the gateway later joins a cluster.

// Change operations.
const (
	OpLock   = "lock"
	OpUnlock = "unlock"
	OpRevoke = "revoke"
)

// Change is one change of the revocation state, as gateways share it.
type Change struct {
	// Op is OpLock, OpUnlock or OpRevoke.
	Op string `json:"op"`
	// Lock is the lock set (OpLock).
	Lock *Lock `json:"lock,omitempty"`
	// Target is the name unlocked (OpUnlock).
	Target string `json:"target,omitempty"`
	// Revocation is the entry added (OpRevoke).
	Revocation *Revocation `json:"revocation,omitempty"`
	// Time is when the change was taken.
	Time time.Time `json:"time"`
	// By is who took the change (the admin's name), for every Op; Lock.By
	// and Revocation.By say the same for a lock and a revocation.
	By string `json:"by,omitempty"`
}

// Actor is who took the change, whichever field of an older record says
// so; "" when nothing does.
func (c Change) Actor() string {
	switch {
	case c.By != "":
		return c.By
	case c.Lock != nil && c.Lock.By != "":
		return c.Lock.By
	case c.Revocation != nil:
		return c.Revocation.By
	}
	return ""
}

// unknownActor stands in, in a record, for who took a change whose record
// does not say.
const unknownActor = "unknown"

// Table and Name place the change in the shared store: table "locks" and
// the target, or table "revocations" and "kind/value". A lock and the
// unlock of the same target share a place: the last one wins.
func (c Change) Table() string {
	if c.Op == OpRevoke {
		return "revocations"
	}
	return "locks"
}

// Name is the change's key inside its Table (see Table).
func (c Change) Name() string {
	switch c.Op {
	case OpRevoke:
		if c.Revocation == nil {
			return ""
		}
		return string(c.Revocation.Kind) + "/" + c.Revocation.Value
	case OpLock:
		if c.Lock == nil {
			return ""
		}
		return c.Lock.Target
	}
	return c.Target
}

// Shared is the copy of the revocation state a cluster of gateways shares.
type Shared interface {
	// Publish makes ch visible to every gateway. An error leaves ch in
	// the outbox, to be published again.
	Publish(ctx context.Context, ch Change) error
}

// PublishTimeout bounds how long a Lock, Unlock or Revoke waits for the
// shared copy before it reports the change as pending.
const PublishTimeout = 2 * time.Second

// outboxBucket holds changes taken here and not yet published, one JSON
// Change per key "table\x00name".
var outboxBucket = []byte("state_outbox")

// sharing is the link from Locks and Revocations to the shared copy, if
// any.
type sharing struct {
	mu sync.RWMutex
	to Shared
}

func (s *sharing) get() Shared {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.to
}

// SetShared links the state to the cluster's shared copy: from now on
// every local change is published to it. nil unlinks.
func (s *State) SetShared(sh Shared) {
	s.Revocations.share, s.Locks.share = &s.sharing, &s.sharing
	s.sharing.mu.Lock()
	s.sharing.to = sh
	s.sharing.mu.Unlock()
}

// Shared reports whether the state is linked to a cluster's shared copy.
func (s *State) Shared() bool { return s.sharing.get() != nil }

func outboxKey(ch Change) []byte { return []byte(ch.Table() + "\x00" + ch.Name()) }

// putOutbox records ch in the outbox inside a state transaction.
func putOutbox(tx *bbolt.Tx, ch Change) error {
	b, err := tx.CreateBucketIfNotExists(outboxBucket)
	if err != nil {
		return err
	}
	data, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	return b.Put(outboxKey(ch), data)
}

// publish hands ch to the shared copy, if there is one, and takes it out
// of the outbox once it is published. It reports whether ch is still
// pending.
func (s *sharing) publish(ctx context.Context, store StateStore, ch Change) (pending bool) {
	to := s.get()
	if to == nil {
		return false
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), PublishTimeout)
	defer cancel()
	if err := to.Publish(pctx, ch); err != nil {
		return true
	}
	return markPublished(pctx, store, ch) != nil
}

// stateUpdater is a StateStore that can also change state buckets with
// no audit record (*audit.Store can).
type stateUpdater interface {
	UpdateState(ctx context.Context, fn func(tx *bbolt.Tx) error) error
}

// markPublished takes ch out of the outbox, unless a newer change to the
// same place replaced it meanwhile.
func markPublished(ctx context.Context, store StateStore, ch Change) error {
	u, ok := store.(stateUpdater)
	if !ok {
		return fmt.Errorf("ca: the state store cannot clear its outbox")
	}
	want, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	return u.UpdateState(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(outboxBucket)
		if b == nil {
			return nil
		}
		if string(b.Get(outboxKey(ch))) != string(want) {
			return nil
		}
		return b.Delete(outboxKey(ch))
	})
}

// ErrPending is the error of a Lock, Unlock or Revoke that took effect on
// this gateway, with its audit record, but that the cluster's shared copy
// could not take yet: it stays in the outbox and reaches the other
// gateways once the shared copy answers again.
var ErrPending = errors.New("in effect on this gateway; the other gateways get it once etcd answers again (kept in the outbox until then)")

// pendingErr is what a change returns after publish.
func pendingErr(pending bool) error {
	if pending {
		return ErrPending
	}
	return nil
}

// Published takes ch out of the outbox after the shared copy took it (the
// cluster's resend of pending changes calls it).
func (s *State) Published(ctx context.Context, ch Change) error {
	return markPublished(ctx, s.Revocations.store, ch)
}

// Pending returns the changes taken here that the shared copy has not
// confirmed, oldest first.
func (s *State) Pending() ([]Change, error) {
	var out []Change
	err := s.Revocations.store.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(outboxBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var ch Change
			if err := json.Unmarshal(v, &ch); err != nil {
				return fmt.Errorf("ca: outbox entry %q is corrupt: %w", k, err)
			}
			out = append(out, ch)
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, err
}

// Apply applies a change another gateway (from) took: it is written to
// bbolt with a state.applied record, and the change callbacks run. A
// change this gateway already holds (its own, coming back from the shared
// copy) is a no-op; applied reports whether anything changed.
func (s *State) Apply(ctx context.Context, ch Change, from string) (applied bool, err error) {
	by := ch.Actor()
	if by == "" {
		by = unknownActor
	}
	if from == "" {
		from = unknownActor
	}
	ev := audit.Event{Type: audit.TypeStateApplied, Actor: by, Fields: map[string]string{"kind": ch.Op, "by": by, "from_gateway": from, "outcome": "applied"}}
	switch ch.Op {
	case OpLock:
		if ch.Lock == nil || validLockTarget(ch.Lock.Target) != nil {
			return false, fmt.Errorf("ca: apply: a lock without a valid target")
		}
		if cur, ok := s.Locks.get(ch.Lock.Target); ok && cur.equal(*ch.Lock) {
			return false, nil
		}
		ev.Fields["target"], ev.Fields["reason"] = ch.Lock.Target, ch.Lock.Reason
		return true, s.Locks.apply(ctx, ev, *ch.Lock)
	case OpUnlock:
		if _, ok := s.Locks.get(ch.Target); !ok {
			return false, nil
		}
		ev.Fields["target"] = ch.Target
		return true, s.Locks.applyUnlock(ctx, ev, ch.Target)
	case OpRevoke:
		if ch.Revocation == nil {
			return false, fmt.Errorf("ca: apply: a revocation without an entry")
		}
		if s.Revocations.has(*ch.Revocation) {
			return false, nil
		}
		ev.Fields["target"] = string(ch.Revocation.Kind) + " " + ch.Revocation.Value
		ev.Fields["reason"] = ch.Revocation.Reason
		return true, s.Revocations.apply(ctx, ev, *ch.Revocation)
	}
	return false, fmt.Errorf("ca: apply: unknown change %q", ch.Op)
}

// Discard takes ch, a change this gateway took while the shared copy could
// not be reached, out of the outbox because a later change to the same
// place (winner, taken on gateway winnerFrom) overrode it before ch could
// be published: ch never took effect beyond this gateway. It records
// state.applied with outcome "discarded" so that an auditor sees that
// (self is this gateway's id).
func (s *State) Discard(ctx context.Context, ch, winner Change, self, winnerFrom string) error {
	want, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	by, wby := ch.Actor(), winner.Actor()
	if by == "" {
		by = unknownActor
	}
	if wby == "" {
		wby = unknownActor
	}
	ev := audit.Event{Type: audit.TypeStateApplied, Actor: by, Fields: map[string]string{
		"kind": ch.Op, "target": ch.Name(), "by": by, "from_gateway": self, "outcome": "discarded",
		"taken":         ch.Time.UTC().Format(time.RFC3339Nano),
		"overridden_by": wby, "overridden_kind": winner.Op, "overridden_from_gateway": winnerFrom,
		"overridden_taken": winner.Time.UTC().Format(time.RFC3339Nano),
	}}
	_, err = s.Revocations.store.AppendWith(ctx, ev, func(tx *bbolt.Tx) error {
		b := tx.Bucket(outboxBucket)
		if b == nil || string(b.Get(outboxKey(ch))) != string(want) {
			return errNotPending
		}
		return b.Delete(outboxKey(ch))
	})
	if errors.Is(err, errNotPending) {
		return nil // already published or replaced by a newer local change
	}
	return err
}

// errNotPending aborts Discard's transaction (and its record) when the
// change is no longer in the outbox.
var errNotPending = errors.New("ca: not pending")
