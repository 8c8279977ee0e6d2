package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Append validates ev, assigns its ID, Time (when zero, from Options.Now),
// PrevHash and Hash, and returns it once it is durable: committed to bbolt
// and fsync'd. Concurrent Appends share commits (group commit, see
// commit.go).
//
// If ctx ends before the event reaches a transaction, nothing is written and
// Append returns ctx's error. Once the event is in a transaction Append
// waits for the commit and reports its outcome, so an event is never written
// after its caller was told it was not.
//
// Append refuses, with ErrInvalidEvent, a Type that is empty or not dotted
// lower-case words (^[a-z]+(\.[a-z_]+)+$), field names outside [a-z0-9_],
// and, as a cheap guard against a careless producer, field names that look
// like they hold a secret: password, passwd, passphrase, secret, token or
// private_key, alone or as the last part of a name (client_secret,
// id_token, access_token). Values are not inspected: they often come from
// the client, and refusing them would let a client suppress its own audit
// record. Actor, Session and values are stored as given, with invalid UTF-8
// replaced by U+FFFD; the returned event is exactly what was stored.
func (s *Store) Append(ctx context.Context, ev Event) (Event, error) {
	return s.write(ctx, ev, nil)
}

// AppendWith appends ev and runs fn in the same bbolt transaction, so state
// that must change with its audit record (a revocation, a user lock) is
// committed with it or not at all: if fn fails, nothing is written and its
// error is returned wrapped. fn runs before the event is appended, exactly
// once (AppendWith commits alone, never in a shared batch), and must not
// touch the "events" or "meta" buckets. A nil fn makes it Append.
func (s *Store) AppendWith(ctx context.Context, ev Event, fn func(tx *bbolt.Tx) error) (Event, error) {
	if fn == nil {
		return s.Append(ctx, ev)
	}
	return s.write(ctx, ev, fn)
}

// States of one write, shared between the caller and the transaction. The
// caller may abandon a write only while it is pending; once a transaction
// has claimed it, the caller waits for the commit.
const (
	writePending int32 = iota
	writeClaimed
	writeAbandoned
)

// stateError marks an error returned by an AppendWith callback.
type stateError struct{ err error }

func (e *stateError) Error() string { return e.err.Error() }
func (e *stateError) Unwrap() error { return e.err }

func (s *Store) write(ctx context.Context, ev Event, fn func(*bbolt.Tx) error) (Event, error) {
	if s.readOnly {
		return Event{}, fmt.Errorf("%w: %s not recorded; open the log without ReadOnly to append", ErrReadOnly, ev.Type)
	}
	if err := ctx.Err(); err != nil {
		return Event{}, fmt.Errorf("audit: %s not recorded: %w", ev.Type, err)
	}
	ev, err := prepare(ev)
	if err != nil {
		return Event{}, err
	}
	ev = s.stampGateway(ev)

	var (
		state atomic.Int32
		out   Event
	)
	// txFn may run more than once: a batch is re-run when one of its
	// functions fails, and the failing one is re-run alone. Each run
	// starts from the chain's end as this transaction sees it, and sets out
	// afresh; the run that commits is the one the caller gets.
	txFn := func(tx *bbolt.Tx) error {
		if state.Load() == writePending && ctx.Err() != nil {
			state.CompareAndSwap(writePending, writeAbandoned)
		}
		if !state.CompareAndSwap(writePending, writeClaimed) && state.Load() == writeAbandoned {
			return nil // write nothing; the caller has gone
		}
		if fn != nil {
			if err := fn(tx); err != nil {
				return &stateError{err}
			}
		}
		e, err := appendTx(tx, ev, s.now)
		if err != nil {
			return err
		}
		out = e
		// Only a transaction that commits runs its handlers, and it runs
		// them under the committer's writeMu, so the feed sees exactly
		// the committed events, in commit order.
		tx.OnCommit(func() { s.feed.publish(e) })
		return nil
	}
	if fn == nil {
		err = s.queue(ctx, txFn, &state)
	} else {
		// AppendWith runs alone, so fn runs exactly once per call and never
		// because some other append in its batch failed.
		err = s.runCancelable(ctx, func() error { return s.commits.update(txFn) }, &state)
	}
	if err == nil && state.Load() == writeAbandoned {
		err = ctx.Err()
	}
	if err != nil {
		var se *stateError
		switch {
		case errors.As(err, &se):
			return Event{}, fmt.Errorf("audit: %s not recorded: the state change failed: %w", ev.Type, se.err)
		case errors.Is(err, ErrInvalidEvent), errors.Is(err, ErrCorrupt):
			return Event{}, err
		case errors.Is(err, ErrClosed), errors.Is(err, berrors.ErrDatabaseNotOpen):
			return Event{}, fmt.Errorf("%w: %s not recorded", ErrClosed, ev.Type)
		}
		return Event{}, fmt.Errorf("audit: %s not recorded: %w", ev.Type, err)
	}
	return out, nil
}

// FieldGateway is the field naming the gateway that wrote an event
// (Options.GatewayID).
const FieldGateway = "gateway"

// stampGateway sets the "gateway" field of ev (a copy made by prepare)
// unless the producer named one.
func (s *Store) stampGateway(ev Event) Event {
	if s.gatewayID == "" {
		return ev
	}
	if _, ok := ev.Fields[FieldGateway]; ok {
		return ev
	}
	if ev.Fields == nil {
		ev.Fields = make(map[string]string, 1)
	}
	ev.Fields[FieldGateway] = s.gatewayID
	return ev
}

// queue hands txFn to the committer and waits for its commit; the caller
// may give up while the write is still queued.
func (s *Store) queue(ctx context.Context, txFn func(*bbolt.Tx) error, state *atomic.Int32) error {
	r, err := s.commits.submit(ctx, txFn)
	if err != nil {
		return err
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		if state.CompareAndSwap(writePending, writeAbandoned) {
			return ctx.Err()
		}
		return <-r.done
	}
}

// runCancelable runs run in a goroutine so the caller can give up while its
// write still waits for the writer lock.
func (s *Store) runCancelable(ctx context.Context, run func() error, state *atomic.Int32) error {
	if ctx.Done() == nil {
		return run()
	}
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			r.panic = recover()
			done <- r
		}()
		r.err = run()
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		if state.CompareAndSwap(writePending, writeAbandoned) {
			return ctx.Err()
		}
		r = <-done
	}
	if r.panic != nil {
		panic(r.panic) // an AppendWith callback panicked; the tx rolled back
	}
	return r.err
}

// appendTx appends ev to the chain inside tx and returns it as stored.
func appendTx(tx *bbolt.Tx, ev Event, now func() time.Time) (Event, error) {
	events, meta := tx.Bucket([]byte(bucketEvents)), tx.Bucket([]byte(bucketMeta))
	if events == nil || meta == nil {
		return Event{}, fmt.Errorf("%w: events or meta bucket missing", ErrCorrupt)
	}
	m, err := readMeta(tx)
	if err != nil {
		return Event{}, err
	}
	// The meta bucket must name the log's actual last record, or the new
	// event would chain to the wrong one or overwrite evidence. A seek to
	// the end is cheap; it is not a scan.
	var want []byte
	if m.hasLast {
		want = m.lastID[:]
	}
	if last, _ := events.Cursor().Last(); !bytes.Equal(last, want) {
		return Event{}, fmt.Errorf("%w: the last record is %s but the meta bucket says %s; the file was edited, run `bastion audit verify` and restore from a backup", ErrCorrupt, keyString(last), keyString(want))
	}
	if ev.Time.IsZero() {
		// Dated inside the write transaction, so events the store dates
		// itself are in time order whenever the clock is.
		ev.Time = now().UTC()
		if err := checkTime(ev.Time); err != nil {
			return Event{}, err
		}
	}
	id := nextID(m, ev.Time)
	ev.ID = id.String()
	ev.PrevHash = m.lastHash
	ev, rec, err := seal(ev)
	if err != nil {
		return Event{}, err
	}
	key := id[:]
	if err := events.Put(key, rec); err != nil {
		return Event{}, err
	}
	var count [8]byte
	binary.BigEndian.PutUint64(count[:], m.count+1)
	if err := meta.Put([]byte(metaLastID), key); err != nil {
		return Event{}, err
	}
	if err := meta.Put([]byte(metaLastHash), []byte(ev.Hash)); err != nil {
		return Event{}, err
	}
	if err := meta.Put([]byte(metaCount), count[:]); err != nil {
		return Event{}, err
	}
	if err := trackSession(tx, ev); err != nil {
		return Event{}, err
	}
	return ev, nil
}

// nextID returns the id for an event at time t: a ULID whose time is t's
// millisecond, strictly greater than the chain's last id. When t is not past
// the last id's millisecond (same millisecond, a caller-supplied earlier time,
// or a clock step back) the id keeps the last id's time and increments its
// entropy, so ids always increase and an id's time is never before its
// event's time.
func nextID(m chainMeta, t time.Time) ulid.ULID {
	ms := uint64(t.UnixMilli())
	if m.hasLast && ms <= m.lastID.Time() {
		id := m.lastID
		for i := len(id) - 1; i >= 6; i-- { // entropy is bytes 6..15
			id[i]++
			if id[i] != 0 {
				return id
			}
		}
		ms = m.lastID.Time() + 1 // entropy wrapped: 2^80 ids in one ms
	}
	var id ulid.ULID
	_ = id.SetTime(ms) // ms < ulid.MaxTime: checkTime caps the year at 9999
	_, _ = rand.Read(id[6:])
	return id
}
