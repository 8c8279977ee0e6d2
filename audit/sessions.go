package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/bbolt"
)

// Sessions cut by a crash (kill -9, power loss) never get their
// session.end, so the log would show them open forever. The store keeps,
// in the "sessions" bucket and in the same transaction as the events, the
// sessions whose session.start has no session.end yet; a gateway starting
// up closes each with a session.end of reason "gateway_crashed"
// ([Store.CloseInterrupted]), so exports and `audit verify` tell the
// truth.

const bucketSessions = "sessions" // session id -> openSession JSON

// ReasonGatewayCrashed is the session.end reason of a session that a crash
// cut short, written when the gateway next starts.
const ReasonGatewayCrashed = "gateway_crashed"

// OpenSession is a session whose start is in the log and whose end is not.
type OpenSession struct {
	// Session is the session id; StartID the id of its session.start.
	Session string `json:"-"`
	StartID string `json:"start_id"`
	// Actor and Fields are the session.start event's.
	Actor  string            `json:"actor,omitempty"`
	Fields map[string]string `json:"fields,omitempty"`
	// Start is when it started.
	Start time.Time `json:"start"`
	// RecSHA256 and RecChunks are the recording digest and chunk count
	// of the session's last session.checkpoint; LastSeen is its time.
	RecSHA256 string    `json:"rec_sha256,omitempty"`
	RecChunks string    `json:"rec_chunks,omitempty"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
}

// trackSession keeps the sessions bucket in step with ev, inside the
// transaction that appends it.
func trackSession(tx *bbolt.Tx, ev Event) error {
	if ev.Session == "" || (ev.Type != TypeSessionStart && ev.Type != TypeSessionEnd && ev.Type != TypeSessionCheckpoint) {
		return nil
	}
	b, err := tx.CreateBucketIfNotExists([]byte(bucketSessions))
	if err != nil {
		return err
	}
	if ev.Type == TypeSessionCheckpoint {
		var o OpenSession
		old := b.Get([]byte(ev.Session))
		if old == nil || json.Unmarshal(old, &o) != nil {
			return nil // not open (or unreadable): nothing to update
		}
		o.RecSHA256, o.RecChunks, o.LastSeen = ev.Fields[FieldRecordingSHA256], ev.Fields[FieldRecordingChunks], ev.Time
		v, err := json.Marshal(o)
		if err != nil {
			return err
		}
		return b.Put([]byte(ev.Session), v)
	}
	if ev.Type == TypeSessionEnd {
		return b.Delete([]byte(ev.Session))
	}
	v, err := json.Marshal(OpenSession{StartID: ev.ID, Actor: ev.Actor, Fields: ev.Fields, Start: ev.Time})
	if err != nil {
		return err
	}
	return b.Put([]byte(ev.Session), v)
}

// OpenSessions lists the sessions with a session.start and no
// session.end: live ones while a gateway runs, and those cut by a crash
// until the next start closes them.
func (s *Store) OpenSessions() ([]OpenSession, error) {
	var out []OpenSession
	err := safeRead(func() error {
		return s.db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte(bucketSessions))
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				var o OpenSession
				if err := json.Unmarshal(v, &o); err != nil {
					return fmt.Errorf("%w: sessions bucket entry %q: %v", ErrCorrupt, k, err)
				}
				o.Session = string(k)
				out = append(out, o)
				return nil
			})
		})
	})
	return out, err
}

// Fields of a gateway_crashed session.end: when the session ended is not
// known, only bounds. FieldLastSeen is the latest time the log shows the
// session alive (its last event, checkpoint or stored recording entry):
// it ended at or after that, and before the session.end's own time (the
// restart). FieldDurationMinMS is the duration up to FieldLastSeen; the
// end's "duration_ms" is "unknown", as its byte counts are.
const (
	FieldLastSeen      = "last_seen"
	FieldDurationMinMS = "duration_min_ms"
)

// CloseInterrupted appends a session.end with reason "gateway_crashed" for
// every session the log shows open. Call it when the gateway starts,
// before it accepts connections: no session is live then, so each open one
// was cut by a crash. The end carries the start's actor and fields (user,
// target, ...), "start_id", "duration_ms" and "bytes_up" / "bytes_down" of
// "unknown" (the crash time and the relay's counts died with the
// process), and the bounds that are known: FieldLastSeen, the latest the
// session can be shown alive (its last event in the log, its last
// session.checkpoint or stored recording entry), and FieldDurationMinMS.
// A recorded session's end carries the recording_sha256 and
// recording_chunks of its last checkpoint (the digest of no chunk if it
// had none) and, as recording_unverified_chunks, how many chunks were
// stored after it: `audit verify` reports those as an unverifiable tail.
func (s *Store) CloseInterrupted(ctx context.Context) (int, error) {
	open, err := s.OpenSessions()
	if err != nil {
		return 0, err
	}
	if len(open) == 0 {
		return 0, nil
	}
	// Each session's last event, in one pass from the earliest start.
	// Events of other sessions or of the gateway prove nothing about this
	// one (and a CLI may have written to the log after the crash).
	lastEvent := make(map[string]time.Time, len(open))
	since := open[0].Start
	for _, o := range open {
		lastEvent[o.Session] = o.Start
		if o.Start.Before(since) {
			since = o.Start
		}
	}
	if err := s.Iterate(ctx, Filter{Since: since}, func(ev Event) error {
		if t, ok := lastEvent[ev.Session]; ok && ev.Time.After(t) {
			lastEvent[ev.Session] = ev.Time
		}
		return nil
	}); err != nil {
		return 0, fmt.Errorf("audit: close the sessions a crash cut: %w", err)
	}
	n := 0
	for _, o := range open {
		f := make(map[string]string, len(o.Fields)+8)
		for k, v := range o.Fields {
			f[k] = v
		}
		f["reason"], f["start_id"] = ReasonGatewayCrashed, o.StartID
		f["bytes_up"], f["bytes_down"], f["duration_ms"] = "unknown", "unknown", "unknown"
		lastSeen := o.Start
		for _, t := range []time.Time{o.LastSeen, lastEvent[o.Session]} {
			if t.After(lastSeen) {
				lastSeen = t
			}
		}
		if stored, last, err := s.recordingTail(ctx, o.Session); err == nil {
			// The chain covers the chunks up to the last checkpoint (none
			// without one: the digest of nothing); later ones are an
			// unverifiable tail, said so here and by verify.
			digest, chunks := o.RecSHA256, o.RecChunks
			if digest == "" {
				digest, chunks = emptyDigest, "0"
			}
			f[FieldRecordingSHA256], f[FieldRecordingChunks] = digest, chunks
			if c, _ := strconv.ParseUint(chunks, 10, 64); stored > c {
				f[FieldRecordingUnverified] = strconv.FormatUint(stored-c, 10)
			}
			if last.After(lastSeen) {
				lastSeen = last
			}
		}
		f[FieldLastSeen] = lastSeen.UTC().Format(time.RFC3339Nano)
		f[FieldDurationMinMS] = strconv.FormatInt(lastSeen.Sub(o.Start).Milliseconds(), 10)
		if _, err := s.Append(ctx, Event{Type: TypeSessionEnd, Actor: o.Actor, Session: o.Session, Fields: f}); err != nil {
			return n, fmt.Errorf("audit: close the sessions a crash cut (%d of %d closed): %w", n, len(open), err)
		}
		n++
	}
	return n, nil
}

// rebuildSessions fills the sessions bucket from the whole log, once, for
// a log written before the bucket existed.
func rebuildSessions(tx *bbolt.Tx) error {
	if tx.Bucket([]byte(bucketSessions)) != nil {
		return nil
	}
	if _, err := tx.CreateBucket([]byte(bucketSessions)); err != nil {
		return err
	}
	events := tx.Bucket([]byte(bucketEvents))
	if events == nil {
		return nil
	}
	c := events.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		// Cheap filter before decoding: only session events matter.
		if !bytes.Contains(v, []byte(`"type":"session.`)) {
			continue
		}
		ev, err := DecodeEvent(v)
		if err != nil {
			continue // Verify reports it; this index is best effort
		}
		if err := trackSession(tx, ev); err != nil {
			return err
		}
	}
	return nil
}
