package audit

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"go.etcd.io/bbolt"
)

// The live feed: every committed event is offered to each subscriber
// right after its commit, in commit order. Offering never blocks: a
// subscriber whose buffer is full misses the event and counts it, so a
// slow consumer (an alert webhook, a stalled tail) can never hold up an
// append, and with it an authentication.

// feed fans committed events out to subscribers.
type feed struct {
	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
}

// Subscription is a live feed of the events committed after Subscribe
// returned. Receive from C; C is closed by Close and when the store closes.
type Subscription struct {
	// C delivers the events, in commit order, minus those dropped while
	// its buffer was full.
	C <-chan Event

	c       chan Event
	wake    chan struct{} // Follow's coalescing wake-up; nil for Subscribe
	dropped atomic.Uint64
	feed    *feed
}

// Subscribe starts a live feed with room for buf events (at least 1).
// Appends never wait for a subscriber: when C is full an event is dropped
// for this subscriber and counted in Dropped. Consumers that must not
// miss an event use Follow, which reads them back from the log instead.
func (s *Store) Subscribe(buf int) *Subscription {
	if buf < 1 {
		buf = 1
	}
	c := make(chan Event, buf)
	sub := &Subscription{C: c, c: c, feed: &s.feed}
	s.feed.add(sub)
	return sub
}

// Dropped is how many events this subscriber missed because C was full.
func (sub *Subscription) Dropped() uint64 { return sub.dropped.Load() }

// Close ends the subscription and closes C. It is safe to call more than
// once and concurrently with appends.
func (sub *Subscription) Close() {
	f := sub.feed
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[sub]; ok {
		delete(f.subs, sub)
		sub.close()
	}
}

func (sub *Subscription) close() {
	if sub.wake != nil {
		close(sub.wake)
	} else {
		close(sub.c)
	}
}

// add registers sub, or closes it at once when the store is closed.
func (f *feed) add(sub *Subscription) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		sub.close()
		return
	}
	if f.subs == nil {
		f.subs = map[*Subscription]struct{}{}
	}
	f.subs[sub] = struct{}{}
}

// publish offers ev to every subscriber without waiting.
func (f *feed) publish(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for sub := range f.subs {
		if sub.wake != nil {
			select {
			case sub.wake <- struct{}{}:
			default: // a wake-up is already pending; it covers this event
			}
			continue
		}
		select {
		case sub.c <- ev:
		default:
			sub.dropped.Add(1)
		}
	}
}

// close ends every subscription; later ones start closed.
func (f *feed) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for sub := range f.subs {
		sub.close()
	}
	f.subs = nil
}

// Follow calls fn for every event matching f: first those already in the
// log, as Iterate would, then each one committed later, in log order,
// until ctx ends, fn returns an error or the store closes. It returns
// ctx's error, fn's error, or ErrClosed.
//
// Follow never skips an event, however slow fn is: commits only wake it,
// and it reads what is new from the log in pages of short read
// transactions, with fn running outside any transaction. A stalled
// follower therefore holds no transaction and delays no append, and
// retention does not prune events it has yet to read.
func (s *Store) Follow(ctx context.Context, f Filter, fn func(Event) error) error {
	return s.follow(ctx, f, false, 0, fn)
}

// FollowNew is Follow without the history, like `tail -f` that starts at
// the end: fn sees only the matching events committed after FollowNew
// began, and every one of them.
func (s *Store) FollowNew(ctx context.Context, f Filter, fn func(Event) error) error {
	return s.follow(ctx, f, true, 0, fn)
}

// FollowLast is Follow that starts with the last n matching events
// already in the log (all of them when there are fewer), like
// `tail -n N -f`; n <= 0 is FollowNew.
func (s *Store) FollowLast(ctx context.Context, f Filter, n int, fn func(Event) error) error {
	if n <= 0 {
		return s.FollowNew(ctx, f, fn)
	}
	return s.follow(ctx, f, false, n, fn)
}

// startOfLast is the key of the n-th last event matching f, or f's first
// possible key when fewer match. It reads backwards from the end in pages
// of short read transactions, as scan reads forwards.
func (s *Store) startOfLast(ctx context.Context, f Filter, n int) ([]byte, error) {
	floor := sinceKey(f)
	var before []byte // the oldest key read so far; nil: start at the end
	found := 0
	type rec struct{ k, v []byte }
	page := make([]rec, 0, scanPage)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("audit: read: %w", err)
		}
		page = page[:0]
		atStart := false
		err := safeRead(func() error {
			return s.db.View(func(tx *bbolt.Tx) error {
				b := tx.Bucket([]byte(bucketEvents))
				if b == nil {
					atStart = true
					return nil
				}
				c := b.Cursor()
				var k, v []byte
				if before == nil {
					k, v = c.Last()
				} else if sk, _ := c.Seek(before); sk == nil {
					k, v = c.Last()
				} else {
					k, v = c.Prev()
				}
				for ; k != nil && len(page) < scanPage; k, v = c.Prev() {
					if floor != nil && bytes.Compare(k, floor) < 0 {
						atStart = true
						return nil
					}
					page = append(page, rec{bytes.Clone(k), bytes.Clone(v)})
				}
				atStart = atStart || k == nil
				return nil
			})
		})
		if err != nil {
			return nil, err
		}
		for _, r := range page {
			ev, err := DecodeEvent(r.v)
			if err != nil {
				return nil, fmt.Errorf("%w (record %s; run `bastion audit verify`)", err, keyString(r.k))
			}
			if f.Match(ev) {
				if found++; found == n {
					return r.k, nil
				}
			}
		}
		if atStart || len(page) == 0 {
			return floor, nil
		}
		before = page[len(page)-1].k
	}
}

// follow is Follow from the log's start (or f.Since), from its end
// (fromEnd), or from the last n matching events (n > 0).
func (s *Store) follow(ctx context.Context, f Filter, fromEnd bool, n int, fn func(Event) error) error {
	if err := f.Validate(); err != nil {
		return err
	}
	// Subscribe before the first read, so a commit between that read and
	// the wait below still wakes us.
	wake := make(chan struct{}, 1)
	sub := &Subscription{wake: wake, feed: &s.feed}
	s.feed.add(sub)
	defer sub.Close()

	start := sinceKey(f)
	if n > 0 {
		var err error
		if start, err = s.startOfLast(ctx, f, n); err != nil {
			return err
		}
	}
	if fromEnd {
		var last []byte
		err := safeRead(func() error {
			return s.db.View(func(tx *bbolt.Tx) error {
				if b := tx.Bucket([]byte(bucketEvents)); b != nil {
					if k, _ := b.Cursor().Last(); k != nil {
						last = bytes.Clone(k)
					}
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		if last != nil && bytes.Compare(successor(last), start) > 0 {
			start = successor(last)
		}
	}
	for {
		var last []byte
		err := s.scan(ctx, start, nil, func(k, v []byte) error {
			last = k
			return s.match(k, v, f, fn)
		})
		if err != nil {
			return err
		}
		if last != nil {
			start = successor(last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("audit: follow: %w", ctx.Err())
		case _, ok := <-wake:
			if !ok {
				return fmt.Errorf("%w: follow ended", ErrClosed)
			}
		}
	}
}

// Last is the last event in the log matching f; found is false when none
// does. It reads backwards from the end, so it costs what the events
// after the match cost, not the whole log.
func (s *Store) Last(ctx context.Context, f Filter) (ev Event, found bool, err error) {
	if err := f.Validate(); err != nil {
		return Event{}, false, err
	}
	k, err := s.startOfLast(ctx, f, 1)
	if err != nil || k == nil {
		return Event{}, false, err
	}
	err = s.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(bucketEvents))
		if b == nil {
			return nil
		}
		v := b.Get(k)
		if v == nil {
			return nil
		}
		e, err := DecodeEvent(v)
		if err != nil {
			return err
		}
		ev, found = e, f.Match(e)
		return nil
	})
	return ev, found, err
}
