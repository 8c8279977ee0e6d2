package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Retention deletes the oldest events once they are older than
// Options.Retention, without breaking the hash chain's verifiability: the
// meta bucket records a checkpoint, the id and hash of the last event
// deleted, and Verify starts there. Each run also appends an audit.pruned
// event naming the checkpoint, so the log itself says what was cut.
//
// The checkpoint lives in the meta bucket, which nothing authenticates, so
// Verify believes it only when the newest audit.pruned event in the chain
// names exactly that checkpoint (id, hash and count pruned). That event is
// appended in the same transaction as the deletions it describes, so a
// crash between the two cannot leave a checkpoint nothing vouches for, and
// deleting old events and writing a checkpoint by hand fails Verify.
//
// Space: bbolt never shrinks its file, but the pages that deleted records
// occupied go on its freelist and later commits reuse them, so under
// steady load with retention on the file stops growing once it holds
// about one retention period of events (see TestRetentionBoundsFileSize
// for the measurement). Compaction (bbolt's Compact into a new file) would
// also return space to the file system, but needs the gateway stopped;
// reuse needs nothing.

// Meta keys of the checkpoint.
const (
	metaPrunedID    = "pruned_id"    // 16-byte key of the last pruned event
	metaPrunedHash  = "pruned_hash"  // its hash
	metaPrunedCount = "pruned_count" // events pruned in all, 8 bytes
)

const (
	// pruneBatch caps the events one prune transaction deletes, which
	// bounds how long an append can wait behind it.
	pruneBatch = 512

	defaultPruneEvery = time.Hour
)

// Checkpoint is where the verifiable chain starts after retention pruned
// the oldest events. The zero value means nothing was pruned.
type Checkpoint struct {
	// Pruned is how many events retention has deleted in all.
	Pruned uint64
	// ID and Hash are the last deleted event's; the oldest event held
	// chains to Hash.
	ID, Hash string
}

// PruneResult says what one Prune call did.
type PruneResult struct {
	// Deleted is how many events this call deleted.
	Deleted int
	// Transactions is how many write transactions it took; appends could
	// commit between any two of them.
	Transactions int
	// Checkpoint is the checkpoint after the call.
	Checkpoint Checkpoint
}

// Prune deletes the events whose ids are dated before cutoff, oldest
// first, in transactions of at most a few hundred events, so an append
// never waits behind more than one small transaction. It keeps:
//
//   - the newest event, so the chain's end is never lost;
//   - every event an Iterate, Export, Verify or Follow in progress has yet
//     to read, so their snapshots stay whole;
//   - everything from the first broken link on: Prune checks each event it
//     is about to delete against the chain and stops with a *ChainError
//     rather than destroy the evidence of tampering.
//
// An id's time is never before its event's time, so no event dated at or
// after cutoff is deleted. Each transaction that deletes anything appends,
// in that transaction, an audit.pruned event with its count and the new
// checkpoint.
func (s *Store) Prune(ctx context.Context, cutoff time.Time) (PruneResult, error) {
	var res PruneResult
	if s.readOnly {
		return res, fmt.Errorf("%w: nothing pruned; retention runs in the process that holds the log for writing", ErrReadOnly)
	}
	if cutoff.Unix() < 0 {
		return res, nil
	}
	var limit ulid.ULID
	if err := limit.SetTime(uint64(cutoff.UnixMilli())); err != nil {
		return res, fmt.Errorf("audit: prune: cutoff %s: %w", cutoff.Format(time.RFC3339), err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("audit: prune: %w", err)
		}
		n, cp, err := s.pruneBatch(limit[:], cutoff)
		if n > 0 {
			res.Transactions++
			res.Deleted += n
			res.Checkpoint = cp
		}
		if err != nil {
			return res, err
		}
		if n < pruneBatch {
			break
		}
		runtime.Gosched() // let queued appends have the writer lock
	}
	if _, err := s.pruneOrphanRecordings(cutoff); err != nil {
		return res, fmt.Errorf("audit: prune recordings: %w", err)
	}
	if res.Deleted == 0 {
		cp, err := s.Checkpoint()
		res.Checkpoint = cp
		return res, err
	}
	return res, nil
}

// pruneBatch deletes up to pruneBatch events with keys before limit in one
// transaction, appends the audit.pruned event that vouches for the new
// checkpoint in the same transaction, and returns how many it deleted and
// the new checkpoint.
func (s *Store) pruneBatch(limit []byte, cutoff time.Time) (int, Checkpoint, error) {
	// The reader registry stays locked until the commit, so no scan can
	// start between computing the bound and deleting up to it.
	s.readers.mu.Lock()
	defer s.readers.mu.Unlock()
	if low := s.readers.lowestLocked(); low != nil && bytes.Compare(low, limit) < 0 {
		limit = low
	}
	var (
		n  int
		cp Checkpoint
	)
	err := s.commits.update(func(tx *bbolt.Tx) error {
		n = 0
		events, meta := tx.Bucket([]byte(bucketEvents)), tx.Bucket([]byte(bucketMeta))
		if events == nil || meta == nil {
			return fmt.Errorf("%w: events or meta bucket missing", ErrCorrupt)
		}
		var err error
		if cp, err = readCheckpoint(meta); err != nil {
			return err
		}
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		prev := Event{ID: cp.ID, Hash: cp.Hash}
		var keys [][]byte
		var ended []string // sessions whose recordings go with their session.end
		c := events.Cursor()
		for k, v := c.First(); k != nil && len(keys) < pruneBatch && bytes.Compare(k, limit) < 0; k, v = c.Next() {
			if m.hasLast && bytes.Equal(k, m.lastID[:]) {
				break // never the newest event
			}
			ev, err := checkLink(int(cp.Pruned)+len(keys), k, v, prev)
			if err != nil {
				return err
			}
			keys = append(keys, bytes.Clone(k))
			prev = ev
			if ev.Type == TypeSessionEnd && ev.Session != "" {
				ended = append(ended, ev.Session)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		for _, k := range keys {
			if err := events.Delete(k); err != nil {
				return err
			}
		}
		if _, err := deleteRecordingsTx(tx, ended); err != nil {
			return err
		}
		cp.Pruned += uint64(len(keys))
		cp.ID, cp.Hash = prev.ID, prev.Hash
		// bbolt keeps the value slices until the commit: one each.
		pruned, count := make([]byte, 8), make([]byte, 8)
		binary.BigEndian.PutUint64(pruned, cp.Pruned)
		binary.BigEndian.PutUint64(count, m.count-uint64(len(keys)))
		for k, v := range map[string][]byte{
			metaPrunedID:    keys[len(keys)-1],
			metaPrunedHash:  []byte(cp.Hash),
			metaPrunedCount: pruned,
			metaCount:       count,
		} {
			if err := meta.Put([]byte(k), v); err != nil {
				return err
			}
		}
		n = len(keys)
		e, err := appendTx(tx, s.stampGateway(prunedEvent(n, cutoff, cp)), s.now)
		if err != nil {
			return err
		}
		tx.OnCommit(func() { s.feed.publish(e) })
		return nil
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return 0, cp, ErrClosed
	}
	var ce *ChainError
	if errors.As(err, &ce) {
		return 0, cp, fmt.Errorf("audit: prune stopped, keeping the evidence: %w", err)
	}
	if err != nil {
		return 0, cp, fmt.Errorf("audit: prune: %w", err)
	}
	return n, cp, nil
}

// prunedEvent is the audit.pruned event of one prune transaction.
func prunedEvent(n int, cutoff time.Time, cp Checkpoint) Event {
	return Event{Type: TypeAuditPruned, Actor: "retention", Fields: map[string]string{
		"events":       fmt.Sprint(n),
		"before":       cutoff.UTC().Format(time.RFC3339),
		"through_id":   cp.ID,
		"through_hash": cp.Hash,
		"pruned_total": fmt.Sprint(cp.Pruned),
	}}
}

// vouches reports whether the audit.pruned event ev names exactly cp.
func vouches(ev Event, cp Checkpoint) bool {
	return ev.Type == TypeAuditPruned && ev.Fields["through_id"] == cp.ID &&
		ev.Fields["through_hash"] == cp.Hash && ev.Fields["pruned_total"] == fmt.Sprint(cp.Pruned)
}

// Checkpoint returns the current retention checkpoint.
func (s *Store) Checkpoint() (Checkpoint, error) {
	var cp Checkpoint
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		cp, err = readCheckpoint(tx.Bucket([]byte(bucketMeta)))
		return err
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		err = ErrClosed
	}
	return cp, err
}

// readCheckpoint reads the checkpoint from the meta bucket (nil: none).
func readCheckpoint(meta *bbolt.Bucket) (Checkpoint, error) {
	var cp Checkpoint
	if meta == nil {
		return cp, nil
	}
	id, hash, count := meta.Get([]byte(metaPrunedID)), meta.Get([]byte(metaPrunedHash)), meta.Get([]byte(metaPrunedCount))
	if id == nil && hash == nil && count == nil {
		return cp, nil
	}
	if len(id) != 16 || !isHash(string(hash)) || len(count) != 8 {
		return cp, fmt.Errorf("%w: the retention checkpoint in the meta bucket is incomplete; run `bastion audit verify` and restore from a backup", ErrCorrupt)
	}
	cp.ID, cp.Hash, cp.Pruned = keyString(id), string(hash), binary.BigEndian.Uint64(count)
	return cp, nil
}

// runRetention prunes events older than keep every interval until stop
// closes, starting at once.
func (s *Store) runRetention(keep, every time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		res, err := s.Prune(ctx, s.now().Add(-keep))
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("audit: retention run failed", "err", err, "deleted", res.Deleted)
		case res.Deleted > 0:
			s.log.Info("audit: retention pruned events", "deleted", res.Deleted, "transactions", res.Transactions, "through_id", res.Checkpoint.ID)
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// readers tracks how far each scan in progress has read, so that
// retention never deletes what a scan has yet to read.
type readers struct {
	mu  sync.Mutex
	pos map[*readerPos][]byte
}

// readerPos identifies one scan.
type readerPos struct{}

// add registers a scan that will read from start (nil: the first key).
func (r *readers) add(start []byte) *readerPos {
	p := &readerPos{}
	if start == nil {
		start = []byte{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pos == nil {
		r.pos = map[*readerPos][]byte{}
	}
	r.pos[p] = start
	return p
}

// advance records that the scan has read every key before next.
func (r *readers) advance(p *readerPos, next []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pos[p] = next
}

func (r *readers) remove(p *readerPos) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.pos, p)
}

// lowestLocked is the lowest key a scan has yet to read, or nil when no
// scan runs. r.mu must be held.
func (r *readers) lowestLocked() []byte {
	var low []byte
	for _, k := range r.pos {
		if low == nil || bytes.Compare(k, low) < 0 {
			low = k
		}
	}
	return low
}
