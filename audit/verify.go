package audit

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
)

// Verify walks the whole chain, from a consistent snapshot (see Iterate),
// and returns how many events it checked. At the first broken link it stops
// with a *ChainError naming the event and what is wrong with it: edited
// (ReasonHashMismatch), deleted or reordered (ReasonPrevHashMismatch), moved
// (ReasonIDMismatch), out of order (ReasonIDOrder, ReasonTimeOrder), cut
// short (ReasonTruncated) or unreadable (ReasonUndecodable).
//
// When retention has pruned the oldest events, the walk starts at the
// retention checkpoint: the oldest event held must chain to the hash of
// the last one pruned. VerifyChain says which checkpoint it started from.
func (s *Store) Verify(ctx context.Context) (int, error) {
	v, err := s.VerifyChain(ctx)
	return v.Checked, err
}

// Verification is what VerifyChain found.
type Verification struct {
	// Checked is how many events were verified.
	Checked int
	// From is the retention checkpoint the walk started from (zero: the
	// log's first event, nothing pruned).
	From Checkpoint
	// Recordings is how many session recordings were checked against the
	// digest in their session.end event.
	Recordings int
}

// VerifyChain is Verify, also reporting the checkpoint it started from.
func (s *Store) VerifyChain(ctx context.Context) (Verification, error) {
	var (
		res  Verification
		prev Event
		last []byte
		meta chainMeta
		ends []recordedEnd // session.end events naming a recording digest
	)
	// The meta bucket and checkpoint are read in the transaction of the
	// scan's first page: appends that land after it only add records past
	// its last id, which the check below ignores, and the scan keeps
	// retention from pruning what it has yet to read.
	first := func(tx *bbolt.Tx) error {
		var err error
		if meta, err = readMeta(tx); err != nil {
			return err
		}
		res.From, err = readCheckpoint(tx.Bucket([]byte(bucketMeta)))
		prev = Event{ID: res.From.ID, Hash: res.From.Hash}
		return err
	}
	err := s.scan(ctx, nil, first, func(k, v []byte) error {
		if meta.hasLast && bytes.Compare(k, meta.lastID[:]) > 0 {
			return errStopScan // appended after the meta snapshot
		}
		ev, err := checkLink(res.Checked, k, v, prev)
		if err != nil {
			return err
		}
		prev, last = ev, k
		ends = noteRecordedEnd(ends, res.Checked, ev)
		res.Checked++
		return nil
	})
	if errors.Is(err, errStopScan) {
		err = nil
	}
	if err != nil {
		return res, err
	}
	if meta.hasLast && !bytes.Equal(last, meta.lastID[:]) {
		got := "the start"
		if last != nil {
			got = keyString(last)
		}
		return res, &ChainError{Index: res.Checked, ID: meta.lastID.String(), Reason: ReasonTruncated, Expected: meta.lastID.String(), Got: got}
	}
	res.Recordings, err = s.verifyRecordings(ctx, ends)
	return res, err
}

// errStopScan ends a scan early without error.
var errStopScan = errors.New("audit: stop scan")

// checkLink checks record i (key k, value v) against the event before it
// and returns the record's event.
func checkLink(i int, k, v []byte, prev Event) (Event, error) {
	keyID := keyString(k)
	broken := func(reason, expected, got string) *ChainError {
		return &ChainError{Index: i, ID: keyID, Reason: reason, Expected: expected, Got: got}
	}
	ev, err := DecodeEvent(v)
	if err != nil {
		return Event{}, broken(ReasonUndecodable, "", err.Error())
	}
	if want, err := computeHash(ev); err != nil || want != ev.Hash {
		return Event{}, broken(ReasonHashMismatch, want, ev.Hash)
	}
	if ev.PrevHash != prev.Hash {
		return Event{}, broken(ReasonPrevHashMismatch, prev.Hash, ev.PrevHash)
	}
	if ev.ID != keyID {
		return Event{}, broken(ReasonIDMismatch, keyID, ev.ID)
	}
	if prev.ID != "" && ev.ID <= prev.ID {
		return Event{}, broken(ReasonIDOrder, prev.ID, ev.ID)
	}
	id := ulid.MustParseStrict(ev.ID) // DecodeEvent checked it
	if ev.Time.UnixMilli() > int64(id.Time()) {
		return Event{}, broken(ReasonTimeOrder, ulid.Time(id.Time()).UTC().Format(time.RFC3339Nano), ev.Time.Format(time.RFC3339Nano))
	}
	return ev, nil
}
