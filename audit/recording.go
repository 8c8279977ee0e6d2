package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Session recordings live beside the events, in the bucket "recordings":
// one sub-bucket per session id, holding an "info" record (JSON: start,
// end, digest, sizes) and the chunks, keyed "c" + 8-byte big-endian
// sequence number. A chunk is a run of entries (see appendEntry),
// compressed with zstd as one frame.
//
// The session's digest is the SHA-256 over the uncompressed contents of
// the committed chunks in sequence order. Recording.Close returns it (and
// Recording.Committed, also after a failed commit) and the gateway writes
// it with the chunk count into the session's session.end event (fields
// recording_sha256, recording_chunks); while the session runs, the store
// writes the digest so far into session.checkpoint events, and after a
// crash CloseInterrupted carries the last one into the session.end. So
// the hash chain covers the recording: VerifyChain checks every stored
// recording against the newest digest the chain holds for it, reports
// an edited, removed, added or reordered chunk as a *RecordingsError
// naming the session, and lists recordings, or crash tails, no digest
// covers. The info record is a convenience for listing and is not
// trusted by verification.
//
// Durability without an fsync per keystroke: entries collect in memory
// and are committed, through the same group commit as the events, when a
// chunk reaches chunkMax bytes or flushEvery after its first entry. A
// Write that fills a chunk waits for its commit and returns its error; a
// commit that fails in the background is returned by the next Write and
// by Close. The recording is then dead (every later call fails), so the
// proxy can end the session rather than carry on unrecorded.

// Field names the gateway writes into session.end for a recorded session.
const (
	// FieldRecordingSHA256 is the digest Recording.Close returned.
	FieldRecordingSHA256 = "recording_sha256"
	// FieldRecordingBytes is the compressed size Recording.Close returned.
	FieldRecordingBytes = "recording_bytes"
	// FieldRecordingChunks is how many chunks recording_sha256 covers.
	FieldRecordingChunks = "recording_chunks"
	// FieldRecordingUnverified, in a gateway_crashed session.end, is how
	// many stored chunks came after the last session.checkpoint: no
	// digest in the chain covers them.
	FieldRecordingUnverified = "recording_unverified_chunks"
)

// Checkpoints: while a recording is open, the store appends a
// session.checkpoint event (fields recording_sha256 and recording_chunks:
// the digest of the chunks committed so far) after a chunk commit once
// checkpointChunks chunks or checkpointEvery have passed since the last
// one, so a crash leaves the chain covering all but the newest chunks.
const (
	checkpointChunks = 16
	checkpointEvery  = 2 * time.Second
)

// Entry kinds. The gateway writes o, e, i, r and x; the store itself
// writes m.
const (
	KindOutput = "o" // terminal or stdout output
	KindStderr = "e" // stderr of an exec session
	KindInput  = "i" // what the user typed
	KindResize = "r" // terminal size, "COLSxROWS"
	KindExec   = "x" // exec command or subsystem name, and protocol events
	KindMarker = "m" // a note from the store, such as where storage stopped
)

// DefaultRecordingMaxBytes is Options.RecordingMaxBytes's default: 64 MiB
// of entries per session.
const DefaultRecordingMaxBytes = 64 << 20

const (
	bucketRecordings = "recordings"
	recInfoKey       = "info"

	// chunkMax is the uncompressed size at which a chunk is committed.
	chunkMax = 64 << 10
	// entryDataMax splits longer writes into several entries, so a chunk
	// never exceeds chunkMax by more than one entry.
	entryDataMax = 32 << 10
	// chunkDecodedMax bounds what reading one stored chunk may inflate to;
	// anything larger was not written by this package.
	chunkDecodedMax = chunkMax + entryDataMax + 64
	// defaultFlushEvery is how long an entry may wait in memory.
	defaultFlushEvery = time.Second
	// maxSessionID bounds the session ids the store accepts.
	maxSessionID = 128
	// readChunks is how many chunks one read transaction copies out.
	readChunks = 64
)

// Recording errors callers can test for with errors.Is.
var (
	// ErrNoRecording means the store holds no recording for the session.
	ErrNoRecording = errors.New("audit: no recording for that session")
	// ErrRecordingClosed means a Write or Close came after Close.
	ErrRecordingClosed = errors.New("audit: recording is closed")
)

// ReasonRecordingMismatch was the ChainError reason for a recording that
// did not match its digest; VerifyChain now reports those, all of them,
// as a *RecordingsError, and the chain itself separately.
const ReasonRecordingMismatch = "recording_mismatch"

// recorder is the Store's recording state.
type recorder struct {
	maxBytes   int64
	flushEvery time.Duration
	// cpChunks and cpEvery bound the chunks and time between checkpoints
	// (checkpointChunks, checkpointEvery; tests may change them).
	cpChunks uint64
	cpEvery  time.Duration

	codecOnce sync.Once
	enc       *zstd.Encoder
	dec       *zstd.Decoder
	codecErr  error

	mu       sync.Mutex
	active   map[string]*Recording
	watchers map[string]map[chan struct{}]struct{}

	// fault, when set (tests only), fails every chunk commit with its
	// error, as a full disk would.
	fault func() error
}

func (r *recorder) init(opts Options) {
	r.maxBytes = opts.RecordingMaxBytes
	if r.maxBytes == 0 {
		r.maxBytes = DefaultRecordingMaxBytes
	}
	r.cpChunks, r.cpEvery = checkpointChunks, checkpointEvery
	r.flushEvery = opts.RecordingFlushEvery
	if r.flushEvery <= 0 {
		r.flushEvery = defaultFlushEvery
	}
}

func (r *recorder) codec() (*zstd.Encoder, *zstd.Decoder, error) {
	r.codecOnce.Do(func() {
		// EncodeAll and DecodeAll are safe for concurrent use; the
		// encoders are created lazily, up to one per core.
		r.enc, r.codecErr = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(1<<20))
		if r.codecErr != nil {
			return
		}
		r.dec, r.codecErr = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(1<<20), zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderConcurrency(2))
	})
	return r.enc, r.dec, r.codecErr
}

// notify wakes the watchers of session.
func (r *recorder) notify(session string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.watchers[session] {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

func (r *recorder) watch(session string) (chan struct{}, func()) {
	c := make(chan struct{}, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.watchers == nil {
		r.watchers = map[string]map[chan struct{}]struct{}{}
	}
	if r.watchers[session] == nil {
		r.watchers[session] = map[chan struct{}]struct{}{}
	}
	r.watchers[session][c] = struct{}{}
	return c, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.watchers[session], c)
		if len(r.watchers[session]) == 0 {
			delete(r.watchers, session)
		}
	}
}

// recInfo is the info record of a recording.
type recInfo struct {
	Start   time.Time `json:"start"`
	End     time.Time `json:"end,omitzero"`
	SHA256  string    `json:"sha256,omitempty"`
	Stored  int64     `json:"stored,omitempty"`
	Bytes   int64     `json:"bytes,omitempty"`
	Dropped int64     `json:"dropped,omitempty"`
	Chunks  uint64    `json:"chunks,omitempty"`
}

// Limited reports whether the recording reached max_bytes_per_session
// (later data is counted, not stored), the bytes it stored and the limit.
func (r *Recording) Limited() (limited bool, stored, limit int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.limited, r.bytes, r.s.recs.maxBytes
}

// RecordingInfo describes a stored recording.
type RecordingInfo struct {
	// Session is the session id.
	Session string
	// Start is when recording began; End when it was closed (zero while
	// it is open, or if the gateway stopped before closing it).
	Start, End time.Time
	// Active is set while this store has the recording open.
	Active bool
	// SHA256 is the digest Close returned ("" until closed).
	SHA256 string
	// Stored is the compressed size in the database; Bytes the
	// uncompressed size of the entries; Dropped the data bytes written
	// after max_bytes_per_session and not stored.
	Stored, Bytes, Dropped int64
	// Chunks is how many chunks were committed.
	Chunks uint64
}

// Recording is one session's recording, open for writing. It implements
// the gateway's Recording interface. Write and Close are safe for
// concurrent use.
type Recording struct {
	s       *Store
	session string
	start   time.Time

	// flushMu orders commits of this recording, so chunks are committed
	// in sequence order; it is taken before mu.
	flushMu sync.Mutex

	mu      sync.Mutex
	buf     []byte
	seq     uint64
	sum     hash.Hash
	bytes   int64 // entry bytes accepted for storage
	stored  int64 // compressed bytes committed
	dropped int64
	limited bool
	done    uint64    // chunks committed
	cpSeq   uint64    // chunks covered by the last checkpoint
	cpAt    time.Time // when it was written
	err     error     // sticky: the first failed commit
	closed  bool
	timer   *time.Timer
}

// StartRecording opens the recording of session, which must not exist
// yet. The recording's start is made durable before it returns.
func (s *Store) StartRecording(ctx context.Context, session string) (*Recording, error) {
	if s.readOnly {
		return nil, fmt.Errorf("%w: cannot record session %q", ErrReadOnly, session)
	}
	if session == "" || len(session) > maxSessionID {
		return nil, fmt.Errorf("audit: recording session id %q: want 1 to %d bytes", session, maxSessionID)
	}
	if _, _, err := s.recs.codec(); err != nil {
		return nil, fmt.Errorf("audit: recording: %w", err)
	}
	rec := &Recording{s: s, session: session, start: s.now().UTC(), sum: sha256.New()}
	rec.cpAt = rec.start
	s.recs.mu.Lock()
	if _, dup := s.recs.active[session]; dup {
		s.recs.mu.Unlock()
		return nil, fmt.Errorf("audit: session %q is already being recorded", session)
	}
	if s.recs.active == nil {
		s.recs.active = map[string]*Recording{}
	}
	s.recs.active[session] = rec
	s.recs.mu.Unlock()

	info, err := json.Marshal(recInfo{Start: rec.start})
	if err == nil {
		err = s.commitRec(ctx, func(tx *bbolt.Tx) error {
			root, err := tx.CreateBucketIfNotExists([]byte(bucketRecordings))
			if err != nil {
				return err
			}
			if root.Bucket([]byte(session)) != nil {
				return fmt.Errorf("audit: session %q already has a recording; session ids are never reused", session)
			}
			b, err := root.CreateBucket([]byte(session))
			if err != nil {
				return err
			}
			return b.Put([]byte(recInfoKey), info)
		})
	}
	if err != nil {
		s.recs.mu.Lock()
		delete(s.recs.active, session)
		s.recs.mu.Unlock()
		return nil, fmt.Errorf("audit: start recording %s: %w", session, err)
	}
	return rec, nil
}

// commitRec runs fn through the group commit and waits for its outcome.
// fn may run more than once and must be idempotent.
func (s *Store) commitRec(ctx context.Context, fn func(*bbolt.Tx) error) error {
	if s.commits == nil {
		return ErrReadOnly
	}
	fault := s.recs.fault
	r, err := s.commits.submit(ctx, func(tx *bbolt.Tx) error {
		if fault != nil {
			if err := fault(); err != nil {
				return err
			}
		}
		return fn(tx)
	})
	if err != nil {
		return err
	}
	err = <-r.done
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		err = ErrClosed
	}
	return err
}

// Write appends one timed entry of channel ch: kind "o" output, "e"
// stderr, "i" input, "r" resize ("COLSxROWS"), "x" exec/subsystem marker.
// at is the time since the session started. It returns an error when
// the entry, or an earlier one, could not be made durable; the recording
// is then dead and the session should end.
//
// Past Options.RecordingMaxBytes the store writes one marker entry saying
// where storage stopped; later Writes count their bytes (reported by
// Close in a final marker) but store nothing.
func (r *Recording) Write(ch uint32, kind string, at time.Duration, data []byte) error {
	switch kind {
	case KindOutput, KindStderr, KindInput, KindResize, KindExec:
	default:
		return fmt.Errorf("audit: recording %s: unknown entry kind %q", r.session, kind)
	}
	if at < 0 {
		at = 0
	}
	for {
		r.mu.Lock()
		if err := r.usableLocked(); err != nil {
			r.mu.Unlock()
			return err
		}
		if r.limited {
			r.dropped += int64(len(data))
			r.mu.Unlock()
			return nil
		}
		piece := data
		if len(piece) > entryDataMax {
			piece = piece[:entryDataMax]
		}
		if r.bytes+int64(entrySize(ch, kind, at, len(piece))) > r.s.recs.maxBytes {
			msg := fmt.Sprintf("recording stopped: max_bytes_per_session (%d bytes) reached; later data is counted, not stored", r.s.recs.maxBytes)
			r.appendLocked(0, KindMarker, at, []byte(msg))
			r.limited = true
			r.dropped += int64(len(data))
			data = nil
		} else {
			r.appendLocked(ch, kind, at, piece)
			data = data[len(piece):]
		}
		full := len(r.buf) >= chunkMax || r.limited
		if !full && r.timer == nil && len(r.buf) > 0 {
			r.timer = time.AfterFunc(r.s.recs.flushEvery, r.timedFlush)
		}
		r.mu.Unlock()
		if full {
			if err := r.flush(); err != nil {
				return err
			}
		}
		if len(data) == 0 {
			return nil
		}
	}
}

func (r *Recording) usableLocked() error {
	if r.closed {
		return fmt.Errorf("%w: session %s", ErrRecordingClosed, r.session)
	}
	return r.err
}

// appendLocked adds one entry to the buffer; the digest takes it when its
// chunk is committed.
func (r *Recording) appendLocked(ch uint32, kind string, at time.Duration, data []byte) {
	n := len(r.buf)
	r.buf = appendEntry(r.buf, ch, kind, at, data)
	r.bytes += int64(len(r.buf) - n)
}

func (r *Recording) timedFlush() {
	if err := r.flush(); err != nil {
		r.s.log.Error("audit: recording chunk not committed; the session's next write will fail", "session", r.session, "err", err)
	}
}

// flush commits the buffered entries as the next chunk.
func (r *Recording) flush() error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if r.err != nil || len(r.buf) == 0 {
		err := r.err
		r.mu.Unlock()
		return err
	}
	buf, seq := r.buf, r.seq
	r.buf = make([]byte, 0, min(2*len(buf), chunkMax+entryDataMax))
	r.seq++
	r.mu.Unlock()

	err := r.commitChunk(seq, buf)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if r.err == nil {
			r.err = fmt.Errorf("audit: recording of session %s: chunk %d not committed: %w", r.session, seq, err)
		}
		return r.err
	}
	// The digest covers exactly the committed chunks, in order (flushMu).
	r.sum.Write(buf)
	r.done = seq + 1
	now := r.s.now()
	due := r.done-r.cpSeq >= r.s.recs.cpChunks || now.Sub(r.cpAt) >= r.s.recs.cpEvery
	if !due || r.closed {
		return nil
	}
	digest, chunks := hex.EncodeToString(r.sum.Sum(nil)), r.done
	r.cpSeq, r.cpAt = chunks, now
	r.mu.Unlock()
	_, cerr := r.s.Append(context.Background(), Event{Type: TypeSessionCheckpoint, Session: r.session, Fields: map[string]string{
		FieldRecordingSHA256: digest, FieldRecordingChunks: strconv.FormatUint(chunks, 10)}})
	r.mu.Lock()
	if cerr != nil {
		// The chunk is stored; only the chain's cover of it is late.
		r.s.log.Error("audit: recording checkpoint not written", "session", r.session, "err", cerr)
	}
	return nil
}

// Committed returns the digest of the chunks committed so far (what a
// session.end must carry when the recording failed) and their count.
func (r *Recording) Committed() (sha256 string, chunks uint64, stored int64) {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	return hex.EncodeToString(r.sum.Sum(nil)), r.done, r.stored
}

func (r *Recording) commitChunk(seq uint64, buf []byte) error {
	enc, _, err := r.s.recs.codec()
	if err != nil {
		return err
	}
	z := enc.EncodeAll(buf, make([]byte, 0, len(buf)/2+64))
	key := chunkKey(seq)
	err = r.s.commitRec(context.Background(), func(tx *bbolt.Tx) error {
		b, err := recordingBucket(tx, r.session)
		if err != nil {
			return err
		}
		// Chunks only ever append, so full pages stay full: split them
		// full rather than half empty (bbolt's default for random keys).
		b.FillPercent = 0.95
		if err := b.Put(key, z); err != nil {
			return err
		}
		tx.OnCommit(func() { r.s.recs.notify(r.session) })
		return nil
	})
	if err == nil {
		r.mu.Lock()
		r.stored += int64(len(z))
		r.mu.Unlock()
	}
	return err
}

// recordingBucket returns the open bucket of session's recording.
func recordingBucket(tx *bbolt.Tx, session string) (*bbolt.Bucket, error) {
	root := tx.Bucket([]byte(bucketRecordings))
	if root == nil {
		return nil, fmt.Errorf("%w: the recordings bucket is missing", ErrCorrupt)
	}
	b := root.Bucket([]byte(session))
	if b == nil {
		return nil, fmt.Errorf("%w: session %s (pruned or deleted while recording)", ErrNoRecording, session)
	}
	return b, nil
}

// Close commits what is buffered, records the recording's end and
// returns the SHA-256 (hex) over the stored entries and the compressed
// bytes stored. When storage stopped at the size limit, a last marker
// entry says how many bytes were not stored; the digest covers it.
func (r *Recording) Close(ctx context.Context) (string, int64, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return "", 0, fmt.Errorf("%w: session %s", ErrRecordingClosed, r.session)
	}
	if r.limited && r.dropped > 0 {
		r.appendLocked(0, KindMarker, r.s.now().Sub(r.start), fmt.Appendf(nil, "recording ended: %d bytes written after storage stopped were not stored", r.dropped))
	}
	r.closed = true
	r.mu.Unlock()
	defer func() {
		r.s.recs.mu.Lock()
		delete(r.s.recs.active, r.session)
		r.s.recs.mu.Unlock()
		r.s.recs.notify(r.session)
	}()

	if err := r.flush(); err != nil {
		return "", 0, err
	}
	r.mu.Lock()
	digest := hex.EncodeToString(r.sum.Sum(nil))
	info := recInfo{Start: r.start, End: r.s.now().UTC(), SHA256: digest, Stored: r.stored, Bytes: r.bytes, Dropped: r.dropped, Chunks: r.seq}
	stored := r.stored
	r.mu.Unlock()
	b, err := json.Marshal(info)
	if err != nil {
		return "", 0, err
	}
	err = r.s.commitRec(ctx, func(tx *bbolt.Tx) error {
		rb, err := recordingBucket(tx, r.session)
		if err != nil {
			return err
		}
		return rb.Put([]byte(recInfoKey), b)
	})
	if err != nil {
		return "", 0, fmt.Errorf("audit: close recording of session %s: %w", r.session, err)
	}
	return digest, stored, nil
}

// flushRecordings commits what every open recording has buffered; Close
// calls it before it stops the committer.
func (s *Store) flushRecordings() {
	s.recs.mu.Lock()
	open := make([]*Recording, 0, len(s.recs.active))
	for _, r := range s.recs.active {
		open = append(open, r)
	}
	s.recs.mu.Unlock()
	for _, r := range open {
		if err := r.flush(); err != nil {
			s.log.Error("audit: recording not flushed at close", "session", r.session, "err", err)
		}
	}
}

func chunkKey(seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = 'c'
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

// The encoding of one entry:
//
//	uvarint channel, one byte kind, uvarint microseconds since the start,
//	uvarint data length, data.

func entrySize(ch uint32, kind string, at time.Duration, n int) int {
	var tmp [binary.MaxVarintLen64]byte
	return binary.PutUvarint(tmp[:], uint64(ch)) + 1 + binary.PutUvarint(tmp[:], uint64(at.Microseconds())) + binary.PutUvarint(tmp[:], uint64(n)) + n
}

func appendEntry(b []byte, ch uint32, kind string, at time.Duration, data []byte) []byte {
	b = binary.AppendUvarint(b, uint64(ch))
	b = append(b, kind[0])
	b = binary.AppendUvarint(b, uint64(at.Microseconds()))
	b = binary.AppendUvarint(b, uint64(len(data)))
	return append(b, data...)
}

// RecordingEntry is one timed entry of a recording.
type RecordingEntry struct {
	// Channel is the SSH channel the entry belongs to (0 for store
	// markers).
	Channel uint32
	// Kind is one of the Kind* constants.
	Kind string
	// At is the time since the recording started.
	At time.Duration
	// Data is the bytes written, or the marker's text.
	Data []byte
}

// errBadChunk is a chunk that does not decode as entries.
var errBadChunk = errors.New("audit: recording chunk is malformed")

// chunkError is a stored chunk that does not decompress.
type chunkError struct {
	seq     uint64
	session string
}

func (e *chunkError) Error() string {
	return fmt.Sprintf("recording chunk %d of session %s does not decompress (edited or damaged; run `bastion audit verify`)", e.seq, e.session)
}

func (e *chunkError) Is(target error) bool { return target == errBadChunk }

// decodeChunk calls fn for each entry of the uncompressed chunk b. The
// entries' Data alias b.
func decodeChunk(b []byte, fn func(RecordingEntry) error) error {
	for len(b) > 0 {
		ch, n := binary.Uvarint(b)
		if n <= 0 || ch > 1<<32-1 {
			return errBadChunk
		}
		b = b[n:]
		if len(b) == 0 {
			return errBadChunk
		}
		kind := string(b[:1])
		switch kind {
		case KindOutput, KindStderr, KindInput, KindResize, KindExec, KindMarker:
		default:
			return fmt.Errorf("%w: unknown kind %q", errBadChunk, kind)
		}
		b = b[1:]
		at, n := binary.Uvarint(b)
		if n <= 0 || at > uint64(1<<62)/1000 {
			return errBadChunk
		}
		b = b[n:]
		size, n := binary.Uvarint(b)
		if n <= 0 || size > uint64(len(b)-n) {
			return errBadChunk
		}
		b = b[n:]
		e := RecordingEntry{Channel: uint32(ch), Kind: kind, At: time.Duration(at) * time.Microsecond, Data: b[:size:size]}
		b = b[size:]
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// RecordingInfo describes session's recording, or returns ErrNoRecording.
func (s *Store) RecordingInfo(session string) (RecordingInfo, error) {
	var info RecordingInfo
	err := s.db.View(func(tx *bbolt.Tx) error {
		root := tx.Bucket([]byte(bucketRecordings))
		if root == nil || root.Bucket([]byte(session)) == nil {
			return fmt.Errorf("%w %q", ErrNoRecording, session)
		}
		var err error
		info, err = readRecInfo(session, root.Bucket([]byte(session)))
		return err
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		err = ErrClosed
	}
	s.markActive(&info)
	return info, err
}

// Recordings calls fn with the info of every stored recording, in
// session id order.
func (s *Store) Recordings(fn func(RecordingInfo) error) error {
	var infos []RecordingInfo
	err := s.db.View(func(tx *bbolt.Tx) error {
		root := tx.Bucket([]byte(bucketRecordings))
		if root == nil {
			return nil
		}
		return root.ForEachBucket(func(k []byte) error {
			info, err := readRecInfo(string(k), root.Bucket(k))
			if err != nil {
				return err
			}
			infos = append(infos, info)
			return nil
		})
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	if err != nil {
		return err
	}
	for i := range infos {
		s.markActive(&infos[i])
		if err := fn(infos[i]); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) markActive(info *RecordingInfo) {
	s.recs.mu.Lock()
	defer s.recs.mu.Unlock()
	_, info.Active = s.recs.active[info.Session]
}

func readRecInfo(session string, b *bbolt.Bucket) (RecordingInfo, error) {
	var ri recInfo
	if err := json.Unmarshal(b.Get([]byte(recInfoKey)), &ri); err != nil {
		return RecordingInfo{}, fmt.Errorf("%w: the info record of recording %s is unreadable: %v", ErrCorrupt, session, err)
	}
	info := RecordingInfo{Session: session, Start: ri.Start, End: ri.End, SHA256: ri.SHA256, Stored: ri.Stored, Bytes: ri.Bytes, Dropped: ri.Dropped, Chunks: ri.Chunks}
	if info.SHA256 == "" {
		// Open, or never closed (disk full, crash): the info record has no
		// totals, so count what the chunks hold.
		info.Stored, info.Chunks = 0, 0
		c := b.Cursor()
		for k, v := c.Seek([]byte{'c'}); k != nil && len(k) == 9 && k[0] == 'c'; k, v = c.Next() {
			info.Stored += int64(len(v))
			info.Chunks++
		}
	}
	return info, nil
}

// ReadRecording calls fn, in order, with each entry of session's stored
// recording, and returns fn's first error. It reads the chunks in pages of
// short read transactions and runs fn outside them, so a slow reader
// delays no commit. Entries still buffered by an open recording are not
// yet stored; FollowRecording waits for them.
func (s *Store) ReadRecording(ctx context.Context, session string, fn func(RecordingEntry) error) error {
	_, err := s.readChunks(ctx, session, 0, func(_ uint64, raw []byte) error {
		return decodeChunk(raw, fn)
	})
	return err
}

// FollowRecording is ReadRecording that then waits for the chunks an open
// recording commits later, until the recording is closed, ctx ends or fn
// fails. Chunks are committed about once a second, so a follower lags
// the session by about that much.
func (s *Store) FollowRecording(ctx context.Context, session string, fn func(RecordingEntry) error) error {
	wake, stop := s.recs.watch(session)
	defer stop()
	var next uint64
	for {
		s.recs.mu.Lock()
		_, open := s.recs.active[session]
		s.recs.mu.Unlock()
		n, err := s.readChunks(ctx, session, next, func(_ uint64, raw []byte) error {
			return decodeChunk(raw, fn)
		})
		if err != nil {
			return err
		}
		next = n
		if !open {
			return nil // closed before this read began: all of it was read
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("audit: follow recording %s: %w", session, ctx.Err())
		case <-wake:
		}
	}
}

// readChunks calls fn with the sequence number and uncompressed content
// of each chunk of session from sequence from on, and returns the
// sequence after the last one read.
func (s *Store) readChunks(ctx context.Context, session string, from uint64, fn func(seq uint64, raw []byte) error) (uint64, error) {
	_, dec, err := s.recs.codec()
	if err != nil {
		return from, err
	}
	type chunk struct {
		seq uint64
		z   []byte
	}
	next := from
	page := make([]chunk, 0, readChunks)
	buf := make([]byte, 0, chunkDecodedMax)
	for {
		if err := ctx.Err(); err != nil {
			return next, fmt.Errorf("audit: read recording %s: %w", session, err)
		}
		page = page[:0]
		err := s.db.View(func(tx *bbolt.Tx) error {
			root := tx.Bucket([]byte(bucketRecordings))
			if root == nil || root.Bucket([]byte(session)) == nil {
				return fmt.Errorf("%w %q", ErrNoRecording, session)
			}
			c := root.Bucket([]byte(session)).Cursor()
			for k, v := c.Seek(chunkKey(next)); k != nil && len(page) < readChunks; k, v = c.Next() {
				if len(k) != 9 || k[0] != 'c' {
					break
				}
				page = append(page, chunk{binary.BigEndian.Uint64(k[1:]), bytes.Clone(v)})
			}
			return nil
		})
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return next, ErrClosed
		}
		if err != nil {
			return next, err
		}
		for _, c := range page {
			raw, err := dec.DecodeAll(c.z, buf[:0])
			if err != nil || len(raw) > chunkDecodedMax {
				return next, &chunkError{seq: c.seq, session: session}
			}
			if err := fn(c.seq, raw); err != nil {
				return next, err
			}
			next = c.seq + 1
		}
		if len(page) < readChunks {
			return next, nil
		}
	}
}

// RecordingDigest recomputes the digest of session's stored recording:
// the SHA-256 over its chunks' uncompressed contents in sequence order.
func (s *Store) RecordingDigest(ctx context.Context, session string) (string, error) {
	h := sha256.New()
	_, err := s.readChunks(ctx, session, 0, func(_ uint64, raw []byte) error {
		h.Write(raw)
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// emptyDigest is the digest of a recording with no committed chunk.
const emptyDigest = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// recordingTail returns how many chunks session's recording holds and
// the time of its last stored entry (the recording's start if none).
func (s *Store) recordingTail(ctx context.Context, session string) (uint64, time.Time, error) {
	info, err := s.RecordingInfo(session)
	if err != nil {
		return 0, time.Time{}, err
	}
	var n, lastSeq uint64
	err = s.db.View(func(tx *bbolt.Tx) error {
		b, err := recordingBucket(tx, session)
		if err != nil {
			return err
		}
		c := b.Cursor()
		for k, _ := c.Seek([]byte{'c'}); k != nil && len(k) == 9 && k[0] == 'c'; k, _ = c.Next() {
			n++
			lastSeq = binary.BigEndian.Uint64(k[1:])
		}
		return nil
	})
	if err != nil || n == 0 {
		return n, info.Start, err
	}
	var at time.Duration
	_, err = s.readChunks(ctx, session, lastSeq, func(_ uint64, raw []byte) error {
		return decodeChunk(raw, func(e RecordingEntry) error { at = max(at, e.At); return nil })
	})
	if err != nil {
		return n, info.Start, nil // verify reports the damaged chunk
	}
	return n, info.Start.Add(at), nil
}

// RecordingProblem is a recording `audit verify` found damaged, or could
// not verify.
type RecordingProblem struct {
	// Session is the session id.
	Session string
	// Reason says what is wrong, in words ("chunk 3 missing", "digest
	// mismatch", "no digest in the audit log", ...).
	Reason string
}

// RecordingsError is what VerifyChain returns when the chain is intact
// but one or more recordings do not match the digests the chain holds.
type RecordingsError struct {
	// Failed lists every recording that failed, in session id order.
	Failed []RecordingProblem
}

func (e *RecordingsError) Error() string {
	parts := make([]string, len(e.Failed))
	for i, p := range e.Failed {
		parts[i] = fmt.Sprintf("session %s: %s", p.Session, p.Reason)
	}
	return fmt.Sprintf("%d session recordings do not match the audit log: %s", len(e.Failed), strings.Join(parts, "; "))
}

// recordingClaim is the newest digest the chain holds for a session's
// recording: from its session.end, or its last session.checkpoint.
type recordingClaim struct {
	digest  string
	chunks  int64 // -1: not recorded (all stored chunks are covered)
	final   bool  // from a session.end
	crashed bool  // a gateway_crashed session.end: a tail is unverifiable, not forged
	tail    int64 // its recording_unverified_chunks: the tail's length at restart
}

// noteRecordingClaim remembers ev's digest if it names one.
func noteRecordingClaim(claims map[string]recordingClaim, ev Event) {
	if ev.Type != TypeSessionEnd && ev.Type != TypeSessionCheckpoint {
		return
	}
	d, ok := ev.Fields[FieldRecordingSHA256]
	if !ok || ev.Session == "" {
		return
	}
	c := recordingClaim{digest: d, chunks: -1, final: ev.Type == TypeSessionEnd, crashed: ev.Fields["reason"] == ReasonGatewayCrashed}
	if n, err := strconv.ParseInt(ev.Fields[FieldRecordingChunks], 10, 64); err == nil && n >= 0 {
		c.chunks = n
	}
	if n, err := strconv.ParseInt(ev.Fields[FieldRecordingUnverified], 10, 64); err == nil && n >= 0 {
		c.tail = n
	}
	claims[ev.Session] = c
}

// verifyRecordings checks every stored recording against the newest
// digest the chain holds for it, and every digest against a stored
// recording. It returns how many matched, the failures and the
// recordings it could not (fully) verify, each in session id order.
func (s *Store) verifyRecordings(ctx context.Context, claims map[string]recordingClaim) (int, []RecordingProblem, []RecordingProblem, error) {
	stored := map[string]bool{}
	if err := s.Recordings(func(ri RecordingInfo) error { stored[ri.Session] = true; return nil }); err != nil {
		return 0, nil, nil, err
	}
	sessions := make([]string, 0, len(stored)+len(claims))
	for k := range stored {
		sessions = append(sessions, k)
	}
	for k := range claims {
		if !stored[k] {
			sessions = append(sessions, k)
		}
	}
	slices.Sort(sessions)
	var ok int
	var failed, unverified []RecordingProblem
	for _, sess := range sessions {
		c, claimed := claims[sess]
		switch {
		case !claimed:
			unverified = append(unverified, RecordingProblem{sess, "no digest in the audit log (recorded before digests were written, still open without a checkpoint, or its session.end is missing)"})
			continue
		case !stored[sess]:
			failed = append(failed, RecordingProblem{sess, "recording missing: the audit log records a digest but no chunk is stored"})
			continue
		}
		reason, tail, err := s.checkRecording(ctx, sess, c)
		if err != nil {
			return ok, failed, unverified, err
		}
		switch {
		case reason != "":
			failed = append(failed, RecordingProblem{sess, reason})
		case tail > 0:
			ok++
			unverified = append(unverified, RecordingProblem{sess, fmt.Sprintf("unverifiable tail: %d chunks stored after the last digest in the audit log (%d chunks verified)", tail, c.chunks)})
		default:
			ok++
		}
	}
	return ok, failed, unverified, nil
}

// checkRecording hashes session's stored chunks against c. It returns
// why they fail ("" if they match) and how many chunks follow those c
// covers when that is not itself a failure.
func (s *Store) checkRecording(ctx context.Context, session string, c recordingClaim) (string, uint64, error) {
	h := sha256.New()
	var want uint64
	if c.chunks >= 0 {
		want = uint64(c.chunks)
	}
	var next, extra uint64
	var reason string
	_, err := s.readChunks(ctx, session, 0, func(seq uint64, raw []byte) error {
		if c.chunks >= 0 && seq >= want {
			extra++
			return nil
		}
		if seq != next {
			reason = fmt.Sprintf("chunk %d missing", next)
			return errStopScan
		}
		h.Write(raw)
		next++
		return nil
	})
	var ce *chunkError
	if errors.As(err, &ce) {
		return fmt.Sprintf("chunk %d does not decompress (edited or damaged)", ce.seq), 0, nil
	}
	if err != nil && !errors.Is(err, errStopScan) {
		return "", 0, err
	}
	if reason != "" {
		return reason, 0, nil
	}
	if c.chunks >= 0 && next < want {
		return fmt.Sprintf("chunk %d missing (the audit log records %d chunks)", next, want), 0, nil
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != c.digest {
		return fmt.Sprintf("digest mismatch: the stored chunks hash to %s, the audit log records %s (a chunk was edited, added or reordered)", got, c.digest), 0, nil
	}
	if c.final && c.crashed && c.chunks >= 0 && int64(extra) != c.tail {
		return fmt.Sprintf("%d chunks stored after the last checkpoint, but the session.end written at restart counted %d (the tail was cut or added to since)", extra, c.tail), 0, nil
	}
	if extra > 0 {
		if c.final && !c.crashed {
			return fmt.Sprintf("%d chunks stored beyond the %d the session.end records (chunks added)", extra, want), 0, nil
		}
		return "", extra, nil
	}
	return "", 0, nil
}

// deleteRecordingsTx deletes the recordings of sessions, whose
// session.end events retention is deleting in the same transaction.
func deleteRecordingsTx(tx *bbolt.Tx, sessions []string) (int, error) {
	root := tx.Bucket([]byte(bucketRecordings))
	if root == nil {
		return 0, nil
	}
	n := 0
	for _, sess := range sessions {
		if root.Bucket([]byte(sess)) == nil {
			continue
		}
		if err := root.DeleteBucket([]byte(sess)); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// orphanMargin is how much older than the retention cutoff a recording
// with no session.end (the gateway stopped before writing it) must be
// before retention deletes it. A recording's session.end is written right
// after the recording closes, so with this margin a session.end still
// held never loses its recording.
const orphanMargin = 24 * time.Hour

// pruneOrphanRecordings deletes recordings that are not open in this
// store and ended (or, never closed, started) before cutoff minus
// orphanMargin: those whose session.end was pruned with its recording
// were deleted with it, so these are the ones no event covers any more.
func (s *Store) pruneOrphanRecordings(cutoff time.Time) (int, error) {
	limit := cutoff.Add(-orphanMargin)
	deleted := 0
	for {
		n := 0
		err := s.commits.update(func(tx *bbolt.Tx) error {
			n = 0
			root := tx.Bucket([]byte(bucketRecordings))
			if root == nil {
				return nil
			}
			var old [][]byte
			err := root.ForEachBucket(func(k []byte) error {
				if len(old) >= pruneBatch {
					return nil
				}
				s.recs.mu.Lock()
				_, open := s.recs.active[string(k)]
				s.recs.mu.Unlock()
				if open {
					return nil
				}
				info, err := readRecInfo(string(k), root.Bucket(k))
				if err != nil {
					return nil // leave what cannot be read to verify
				}
				at := info.End
				if at.IsZero() {
					at = info.Start
				}
				if at.Before(limit) {
					old = append(old, bytes.Clone(k))
				}
				return nil
			})
			if err != nil {
				return err
			}
			for _, k := range old {
				if err := root.DeleteBucket(k); err != nil {
					return err
				}
			}
			n = len(old)
			return nil
		})
		deleted += n
		if err != nil || n < pruneBatch {
			return deleted, err
		}
	}
}
