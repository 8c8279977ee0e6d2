package ca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"go.etcd.io/bbolt"

	"github.com/bastion-ssh/bastion/audit"
)

// locksBucket holds one JSON Lock per locked name.
var locksBucket = []byte("locks")

// Lock bars an identity from the gateway and from the CA.
type Lock struct {
	// Target matches an identity's login user, any of its principals, or
	// its certificate key id.
	Target string    `json:"target"`
	Reason string    `json:"reason,omitempty"`
	By     string    `json:"by,omitempty"`
	Time   time.Time `json:"time"`
}

// Locks is the set of locked users, persisted next to the user.locked and
// user.unlocked audit records that changed it.
type Locks struct {
	store StateStore
	now   func() time.Time
	share *sharing

	mu      sync.RWMutex
	locks   map[string]Lock
	changed listeners
}

// LoadLocks reads the lock list from store.
func LoadLocks(store StateStore, now func() time.Time) (*Locks, error) {
	if now == nil {
		now = time.Now
	}
	l := &Locks{store: store, now: now, locks: map[string]Lock{}}
	err := store.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(locksBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var lk Lock
			if err := json.Unmarshal(v, &lk); err != nil {
				return fmt.Errorf("ca: lock %q is corrupt: %w", k, err)
			}
			l.locks[lk.Target] = lk
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// validLockTarget checks a lock's target: 1-256 printable characters.
func validLockTarget(target string) error {
	if target == "" || len(target) > 256 || strings.ContainsFunc(target, unicode.IsControl) {
		return fmt.Errorf("ca: lock: name a user, principal or key id to lock (1-256 printable characters)")
	}
	return nil
}

// Lock bars target and ends its live sessions. In a cluster the lock is
// then published to every gateway; ErrPending means it is in effect here
// but could not be published yet.
func (l *Locks) Lock(ctx context.Context, lk Lock) error {
	if err := validLockTarget(lk.Target); err != nil {
		return err
	}
	if err := CheckReason(lk.Reason); err != nil {
		return fmt.Errorf("ca: lock: %w", err)
	}
	if lk.Time.IsZero() {
		lk.Time = l.now().UTC()
	}
	ch := Change{Op: OpLock, Lock: &lk, Time: lk.Time, By: lk.By}
	ev := audit.Event{Type: audit.TypeUserLocked, Actor: lk.By, Fields: map[string]string{"target": lk.Target, "reason": lk.Reason}}
	if err := l.write(ctx, ev, lk, &ch); err != nil {
		return err
	}
	return pendingErr(l.share.publish(ctx, l.store, ch))
}

// apply sets a lock another gateway took (see State.Apply).
func (l *Locks) apply(ctx context.Context, ev audit.Event, lk Lock) error {
	return l.write(ctx, ev, lk, nil)
}

// write stores lk with its record ev (and ch in the outbox, for a local
// change), then ends the sessions it bars.
func (l *Locks) write(ctx context.Context, ev audit.Event, lk Lock, ch *Change) error {
	data, err := json.Marshal(lk)
	if err != nil {
		return err
	}
	if _, err := l.store.AppendWith(ctx, ev, func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(locksBucket)
		if err != nil {
			return err
		}
		if ch != nil {
			if err := putOutbox(tx, *ch); err != nil {
				return err
			}
		}
		return b.Put([]byte(lk.Target), data)
	}); err != nil {
		return fmt.Errorf("ca: lock %s: %w", lk.Target, err)
	}
	l.mu.Lock()
	l.locks[lk.Target] = lk
	l.mu.Unlock()
	l.changed.notify()
	return nil
}

// get returns the lock on target itself.
func (l *Locks) get(target string) (Lock, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	lk, ok := l.locks[target]
	return lk, ok
}

// equal reports whether two locks are the same lock.
func (lk Lock) equal(o Lock) bool {
	return lk.Target == o.Target && lk.Reason == o.Reason && lk.By == o.By && lk.Time.Equal(o.Time)
}

// ErrNotLocked is Unlock's error for a target with no lock: callers that
// treat unlocking as idempotent (bastion unlock) report it and succeed.
var ErrNotLocked = errors.New("is not locked")

// IsLocked reports whether target itself has a lock.
func (l *Locks) IsLocked(target string) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, ok := l.locks[target]
	return ok
}

// Unlock lifts the lock on target (everywhere, in a cluster: ErrPending
// as for Lock).
func (l *Locks) Unlock(ctx context.Context, target, by string) error {
	l.mu.RLock()
	_, ok := l.locks[target]
	l.mu.RUnlock()
	if !ok {
		return fmt.Errorf("ca: unlock: %s %w", target, ErrNotLocked)
	}
	ch := Change{Op: OpUnlock, Target: target, Time: l.now().UTC(), By: by}
	ev := audit.Event{Type: audit.TypeUserUnlocked, Actor: by, Fields: map[string]string{"target": target}}
	if err := l.writeUnlock(ctx, ev, target, &ch); err != nil {
		return err
	}
	return pendingErr(l.share.publish(ctx, l.store, ch))
}

// applyUnlock lifts a lock another gateway lifted (see State.Apply).
func (l *Locks) applyUnlock(ctx context.Context, ev audit.Event, target string) error {
	return l.writeUnlock(ctx, ev, target, nil)
}

func (l *Locks) writeUnlock(ctx context.Context, ev audit.Event, target string, ch *Change) error {
	if _, err := l.store.AppendWith(ctx, ev, func(tx *bbolt.Tx) error {
		if ch != nil {
			if err := putOutbox(tx, *ch); err != nil {
				return err
			}
		}
		if b := tx.Bucket(locksBucket); b != nil {
			return b.Delete([]byte(target))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("ca: unlock %s: %w", target, err)
	}
	l.mu.Lock()
	delete(l.locks, target)
	l.mu.Unlock()
	return nil
}

// FindAny returns the lock on the first of names that is locked.
func (l *Locks) FindAny(names []string) (Lock, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, name := range names {
		if lk, ok := l.locks[name]; ok && name != "" {
			return lk, true
		}
	}
	return Lock{}, false
}

func (l *Locks) subscribe(fn func()) { l.changed.subscribe(fn) }

// List returns the locks sorted by target.
func (l *Locks) List() []Lock {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]Lock, 0, len(l.locks))
	for _, lk := range l.locks {
		out = append(out, lk)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out
}
