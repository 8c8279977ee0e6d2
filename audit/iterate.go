package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Filter selects events. Zero fields select everything; set fields must all
// match.
type Filter struct {
	// Since and Until bound the event time: Since <= Time < Until.
	Since, Until time.Time
	// Types are exact type names ("auth.failed") or prefixes ending in ".*"
	// ("auth.*" matches "auth.ok" and "auth.failed"); an event matches if
	// any entry does.
	Types []string
	// Actor and Session match exactly.
	Actor   string
	Session string
}

// Validate reports a malformed filter.
func (f Filter) Validate() error {
	for _, t := range f.Types {
		if !validPattern(t) {
			return fmt.Errorf("audit: filter type %q: want a name such as auth.failed or a prefix such as auth.*", t)
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return fmt.Errorf("audit: filter: since %s is not before until %s", f.Since.UTC().Format(time.RFC3339Nano), f.Until.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

func validPattern(p string) bool {
	if prefix, ok := strings.CutSuffix(p, ".*"); ok {
		// "auth.*" and "session.channel.*": the prefix is a type or a
		// single first word.
		return validType(prefix) || validType(prefix+".x")
	}
	return validType(p)
}

// Match reports whether ev passes the filter.
func (f Filter) Match(ev Event) bool {
	if !f.Since.IsZero() && ev.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !ev.Time.Before(f.Until) {
		return false
	}
	if f.Actor != "" && ev.Actor != f.Actor {
		return false
	}
	if f.Session != "" && ev.Session != f.Session {
		return false
	}
	if len(f.Types) == 0 {
		return true
	}
	for _, t := range f.Types {
		if prefix, ok := strings.CutSuffix(t, "*"); ok {
			if strings.HasPrefix(ev.Type, prefix) {
				return true
			}
		} else if ev.Type == t {
			return true
		}
	}
	return false
}

// Iterate calls fn, in log order, for each event that matches f, and stops at
// fn's first error, which it returns.
//
// The events are a consistent snapshot: exactly those committed when
// Iterate started. Appends only add keys past the end and retention never
// prunes a key a scan has yet to read, so the snapshot is read in pages of
// short read transactions bounded by the last key at the start, and fn
// runs outside any transaction: a slow consumer (an export streamed to a
// remote client) never holds a read transaction that would stall appends,
// and fn may itself append.
func (s *Store) Iterate(ctx context.Context, f Filter, fn func(Event) error) error {
	if err := f.Validate(); err != nil {
		return err
	}
	return s.scan(ctx, sinceKey(f), nil, func(k, v []byte) error { return s.match(k, v, f, fn) })
}

// sinceKey is the first key that can hold an event matching f, or nil.
func sinceKey(f Filter) []byte {
	if f.Since.IsZero() || f.Since.Unix() < 0 {
		return nil
	}
	// An id's time is never before its event's time, so no event at or
	// after Since has an id before Since's millisecond.
	var id ulid.ULID
	if id.SetTime(uint64(f.Since.UnixMilli())) != nil {
		return nil
	}
	return id[:]
}

// match decodes the record k, v and calls fn with it if it matches f.
func (s *Store) match(k, v []byte, f Filter, fn func(Event) error) error {
	ev, err := DecodeEvent(v)
	if err != nil {
		return fmt.Errorf("%w (record %s; run `bastion audit verify`)", err, keyString(k))
	}
	if !f.Match(ev) {
		return nil
	}
	return fn(ev)
}

// scanPage is how many records one read transaction of a scan copies out.
const scanPage = 1024

// scan calls fn with the key and value of each record of the events
// bucket from start (nil: the first) to the last record committed when scan
// began. fn runs outside any transaction and may keep k and v. first, when
// set, runs inside the transaction that reads the first page, so what it
// reads (the meta bucket) is from the same snapshot as that page.
//
// While it runs, scan registers how far it has read, and retention never
// prunes a record it has yet to read: the snapshot stays whole.
func (s *Store) scan(ctx context.Context, start []byte, first func(*bbolt.Tx) error, fn func(k, v []byte) error) error {
	type rec struct{ k, v []byte }
	var (
		end  []byte // last key of the snapshot
		next = start
		page = make([]rec, 0, scanPage)
	)
	r := s.readers.add(start)
	defer s.readers.remove(r)
	for isFirst := true; ; isFirst = false {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("audit: read: %w", err)
		}
		page = page[:0]
		err := safeRead(func() error {
			return s.db.View(func(tx *bbolt.Tx) error {
				if isFirst && first != nil {
					if err := first(tx); err != nil {
						return err
					}
				}
				b := tx.Bucket([]byte(bucketEvents))
				if b == nil {
					return nil
				}
				c := b.Cursor()
				if isFirst {
					if k, _ := c.Last(); k != nil {
						end = bytes.Clone(k)
					}
				}
				if end == nil {
					return nil
				}
				var k, v []byte
				if next == nil {
					k, v = c.First()
				} else {
					k, v = c.Seek(next)
				}
				for ; k != nil && len(page) < scanPage && bytes.Compare(k, end) <= 0; k, v = c.Next() {
					page = append(page, rec{bytes.Clone(k), bytes.Clone(v)})
				}
				return nil
			})
		})
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return ErrClosed
		}
		if err != nil {
			var ce *ChainError
			if errors.As(err, &ce) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrDamaged) {
				return err
			}
			return fmt.Errorf("audit: read: %w", err)
		}
		for _, r := range page {
			if err := fn(r.k, r.v); err != nil {
				return err
			}
		}
		if len(page) < scanPage {
			return nil
		}
		last := page[len(page)-1].k
		if bytes.Equal(last, end) {
			return nil
		}
		next = successor(last)
		s.readers.advance(r, next)
	}
}

// successor is the smallest key greater than k.
func successor(k []byte) []byte {
	n := bytes.Clone(k)
	return append(n, 0)
}

// keyString renders an events key for messages.
func keyString(k []byte) string {
	if k == nil {
		return "nothing"
	}
	var id ulid.ULID
	if len(k) == len(id) {
		copy(id[:], k)
		return id.String()
	}
	return fmt.Sprintf("%x", k)
}
