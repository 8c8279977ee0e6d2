package audit

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// Options configure Open. The zero value opens read-write with a one-second
// lock timeout and the system clock.
type Options struct {
	// Timeout is how long Open waits for bbolt's file lock before returning
	// ErrInUse (default 1s). Open never waits forever.
	Timeout time.Duration
	// ReadOnly opens the file with a shared lock for export and verify.
	// Several read-only opens may share the file; none may share it with a
	// writer.
	ReadOnly bool
	// Now is the clock that dates events appended with a zero Time; default
	// time.Now.
	Now func() time.Time
	// Logger receives the store's few operational messages; nil discards
	// them. Events never go to the logger.
	Logger *slog.Logger
	// Retention, when positive, prunes events older than this in the
	// background (see Prune); zero keeps every event forever. Ignored
	// when ReadOnly.
	Retention time.Duration
	// PruneEvery is how often retention runs (default 1h); it also runs
	// once at Open.
	PruneEvery time.Duration
	// MustExist refuses to start a new log: a missing file is ErrMissing
	// and an empty one ErrDamaged. Set it whenever a log should exist
	// (the data directory has a CA), so that wiping the log is an error
	// and not a silently fresh chain.
	MustExist bool
	// RecordingMaxBytes bounds the entry bytes one session recording
	// stores (default DefaultRecordingMaxBytes; see Recording.Write).
	RecordingMaxBytes int64
	// RecordingFlushEvery is how long a recording's entries may wait in
	// memory before their chunk is committed (default 1s).
	RecordingFlushEvery time.Duration
	// GatewayID, when set (a gateway in a cluster), is written as the
	// field "gateway" of every event appended that does not name one,
	// so a cluster's merged logs say which gateway wrote each event. It
	// is an ordinary field, inside the hash like every other: logs
	// written without it verify as before.
	GatewayID string
}

const (
	defaultTimeout = time.Second

	// maxBatchSize caps the appends one commit takes (see commit.go); it
	// bounds the time a batch holds the writer lock, not throughput.
	maxBatchSize = 1000

	// initialMmapSize is address space, not disk: the file grows as usual.
	// bbolt must remap to grow and a remap waits for every open read
	// transaction, so mapping generously up front keeps a long View from
	// stalling appends until the log passes this size.
	initialMmapSize = 1 << 30

	// formatVersion is the layout of the events and meta buckets.
	formatVersion = 1
)

// Bucket names, and keys of the meta bucket.
const (
	bucketEvents = "events" // 16-byte binary ULID -> canonical JSON record
	bucketMeta   = "meta"   // the end of the chain, so Append needs no scan

	metaVersion  = "version"
	metaLastID   = "last_id"
	metaLastHash = "last_hash"
	metaCount    = "count"
)

// Store is an open audit log. Its methods are safe for concurrent use.
type Store struct {
	db        *bbolt.DB
	commits   *committer // nil when read-only
	path      string
	ownerPath string
	readOnly  bool
	now       func() time.Time
	log       *slog.Logger
	feed      feed
	readers   readers
	recs      recorder // session recordings (recording.go)

	// Retention's background loop, when on: closed to stop it, closed by
	// it when it has stopped.
	stopRetention, retentionDone chan struct{}

	closeOnce sync.Once
	closeErr  error

	// created is set when Open initialized a new, empty log.
	created bool
	// gatewayID is Options.GatewayID.
	gatewayID string
}

// Open opens or creates the audit log at path. A writer records who holds
// the file in path+".owner" while it is open, so that a second process gets
// an ErrInUse that names it.
func Open(path string, opts Options) (*Store, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	s := &Store{
		path:      path,
		ownerPath: path + ".owner",
		readOnly:  opts.ReadOnly,
		now:       opts.Now,
		log:       opts.Logger,
		gatewayID: opts.GatewayID,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if opts.RecordingMaxBytes < 0 {
		return nil, fmt.Errorf("audit: open %s: recording max bytes %d must not be negative", path, opts.RecordingMaxBytes)
	}
	s.recs.init(opts)
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("audit: open %s read-only: %w (check the path; a read-only open does not create the log)", path, err)
		}
	}
	exists, err := preflight(path, opts.MustExist || opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	var db *bbolt.DB
	err = safeRead(func() error {
		var err error
		db, err = bbolt.Open(path, 0o600, &bbolt.Options{
			Timeout:         timeout,
			ReadOnly:        opts.ReadOnly,
			FreelistType:    bbolt.FreelistMapType,
			InitialMmapSize: initialMmapSize,
		})
		return err
	})
	if errors.Is(err, ErrDamaged) {
		return nil, &damagedError{path: path, what: err.Error()}
	}
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, &inUseError{path: path, holder: describeOwner(s.ownerPath), timeout: timeout}
	}
	if err != nil {
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	s.db = db
	if exists {
		if err := checkPages(db, path); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	if exists && !opts.ReadOnly {
		// bbolt's check sees pages, not what they hold: bytes changed
		// inside a record pass it. A writer must never append to a log
		// whose records it cannot prove, so it checks every record first
		// (it decodes, and its own hash is right); read-only opens skip
		// this so that verify can say where the chain breaks. Gaps (a
		// salvaged log) are for verify to report, not a reason to stop.
		if err := s.checkRecords(); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("%w: %s holds a damaged record (%v); nothing was written to it. Restore it from a backup, or copy every event that can be proven with `bastion audit salvage --out NEW.db` and put that in its place", ErrDamaged, path, err)
		}
	}

	if opts.ReadOnly {
		err = db.View(func(tx *bbolt.Tx) error { return checkVersion(tx.Bucket([]byte(bucketMeta))) })
	} else {
		err = db.Update(func(tx *bbolt.Tx) error {
			created, err := initBuckets(tx)
			s.created = created
			if err != nil {
				return err
			}
			return rebuildSessions(tx)
		})
	}
	if err != nil {
		_ = db.Close()
		if errors.Is(err, ErrCorrupt) || errors.Is(err, errFormat) {
			return nil, fmt.Errorf("%w (%s)", err, path)
		}
		return nil, fmt.Errorf("audit: open %s: %w", path, err)
	}
	if opts.Retention < 0 || opts.PruneEvery < 0 {
		_ = db.Close()
		return nil, fmt.Errorf("audit: open %s: retention %s and prune interval %s must not be negative", path, opts.Retention, opts.PruneEvery)
	}
	if !opts.ReadOnly {
		s.commits = startCommitter(db)
		if err := writeOwner(s.ownerPath, s.now()); err != nil {
			// Only the ErrInUse message depends on it; say so and go on.
			s.log.Warn("audit: cannot record the lock holder; a second process will not learn who holds the log", "path", s.ownerPath, "err", err)
		}
		if opts.Retention > 0 {
			every := opts.PruneEvery
			if every == 0 {
				every = defaultPruneEvery
			}
			s.stopRetention, s.retentionDone = make(chan struct{}), make(chan struct{})
			go s.runRetention(opts.Retention, every, s.stopRetention, s.retentionDone)
		}
	}
	s.log.Debug("audit: opened", "path", path, "read_only", opts.ReadOnly)
	return s, nil
}

// checkRecords checks that every stored event decodes and carries its own
// hash (a linear scan: about 3 s for 192 MiB).
func (s *Store) checkRecords() error {
	return s.scan(context.Background(), nil, nil, func(k, v []byte) error {
		ev, err := DecodeEvent(v)
		if err != nil {
			return fmt.Errorf("record %x: %w", k, err)
		}
		if h, err := computeHash(ev); err != nil || h != ev.Hash {
			return fmt.Errorf("event %s: its hash does not match its content", ev.ID)
		}
		return nil
	})
}

// initBuckets creates the buckets of a new log (reporting created) and
// checks those of an existing one.
func initBuckets(tx *bbolt.Tx) (created bool, err error) {
	events, err := tx.CreateBucketIfNotExists([]byte(bucketEvents))
	if err != nil {
		return false, err
	}
	meta := tx.Bucket([]byte(bucketMeta))
	if meta == nil {
		if k, _ := events.Cursor().First(); k != nil {
			return false, fmt.Errorf("%w: the events bucket has records but the meta bucket is missing; run `bastion audit verify` and restore from a backup", ErrCorrupt)
		}
		if meta, err = tx.CreateBucket([]byte(bucketMeta)); err != nil {
			return false, err
		}
		return true, meta.Put([]byte(metaVersion), []byte{formatVersion})
	}
	return false, checkVersion(meta)
}

func checkVersion(meta *bbolt.Bucket) error {
	if meta == nil {
		return nil // read-only open of a log no writer initialized
	}
	v := meta.Get([]byte(metaVersion))
	if len(v) != 1 {
		return fmt.Errorf("%w: meta bucket has no format version", ErrCorrupt)
	}
	if v[0] != formatVersion {
		return fmt.Errorf("%w: log format %d, this build reads %d; use the bastion release that wrote it", errFormat, v[0], formatVersion)
	}
	return nil
}

// owner is the content of the owner file.
type owner struct {
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

func writeOwner(path string, now time.Time) error {
	b, err := json.Marshal(owner{PID: os.Getpid(), Command: strings.Join(os.Args, " "), Since: now.UTC()})
	if err != nil {
		return err
	}
	// A reader never sees half a file.
	return atomicfile.WriteFile(path, b, 0o600)
}

// describeOwner says who holds the lock, from the owner file a writer left.
func describeOwner(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "another process (no " + path + ", so probably a read-only export or verify)"
	}
	var o owner
	if err := json.Unmarshal(b, &o); err != nil || o.PID == 0 {
		return "another process (" + path + " is unreadable)"
	}
	cmd := o.Command
	if len(cmd) > 200 {
		cmd = cmd[:200] + "..."
	}
	return fmt.Sprintf("pid %d (%q, open since %s, per %s)", o.PID, cmd, o.Since.Format(time.RFC3339), path)
}

// Close stops retention, commits the appends already queued, refuses new
// ones with ErrClosed, ends every subscription and releases the file.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.stopRetention != nil {
			close(s.stopRetention)
			<-s.retentionDone
		}
		if s.commits != nil {
			s.flushRecordings()
			s.commits.stop()
		}
		s.feed.close()
		if !s.readOnly {
			// Remove while still holding the lock, so the next writer's
			// owner file is never the one removed.
			if err := os.Remove(s.ownerPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("audit: cannot remove the owner file", "path", s.ownerPath, "err", err)
			}
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("audit: close %s: %w", s.path, err)
		}
		s.log.Debug("audit: closed", "path", s.path)
	})
	return s.closeErr
}

// Created reports whether Open started a new, empty log (there was no file,
// or an empty one, and Options.MustExist was off).
func (s *Store) Created() bool { return s.created }

// Path is the file the store was opened from.
func (s *Store) Path() string { return s.path }

// View runs fn in a read-only bbolt transaction, for state buckets other
// packages keep in the audit file. fn's error is returned as is. Keep fn
// short: a long read transaction can delay appends once the file outgrows
// its initial mapping.
func (s *Store) View(fn func(tx *bbolt.Tx) error) error {
	return s.db.View(fn)
}

// Head describes the end of the chain. Publishing Head.Hash somewhere the
// gateway cannot write anchors the log: no one can rewrite history up to
// that point without changing the hash.
type Head struct {
	// Count is how many events the log holds.
	Count uint64
	// ID and Hash are the last event's ("" when the log is empty).
	ID   string
	Hash string
}

// Head returns the current end of the chain.
func (s *Store) Head() (Head, error) {
	var h Head
	err := s.db.View(func(tx *bbolt.Tx) error {
		m, err := readMeta(tx)
		if err != nil {
			return err
		}
		h = Head{Count: m.count, Hash: m.lastHash}
		if m.hasLast {
			h.ID = m.lastID.String()
		}
		return nil
	})
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		err = ErrClosed
	}
	return h, err
}

// chainMeta is what the meta bucket records about the end of the chain.
type chainMeta struct {
	hasLast  bool
	lastID   ulid.ULID
	lastHash string
	count    uint64
}

// readMeta reads the meta bucket; a missing bucket reads as an empty log.
func readMeta(tx *bbolt.Tx) (chainMeta, error) {
	var m chainMeta
	b := tx.Bucket([]byte(bucketMeta))
	if b == nil {
		return m, nil
	}
	if id := b.Get([]byte(metaLastID)); id != nil {
		if len(id) != len(m.lastID) {
			return m, fmt.Errorf("%w: meta last_id has %d bytes, want 16", ErrCorrupt, len(id))
		}
		copy(m.lastID[:], id)
		m.hasLast = true
	}
	m.lastHash = string(b.Get([]byte(metaLastHash)))
	if m.hasLast != (m.lastHash != "") {
		return m, fmt.Errorf("%w: meta last_id and last_hash disagree", ErrCorrupt)
	}
	if c := b.Get([]byte(metaCount)); c != nil {
		if len(c) != 8 {
			return m, fmt.Errorf("%w: meta count has %d bytes, want 8", ErrCorrupt, len(c))
		}
		m.count = binary.BigEndian.Uint64(c)
	}
	return m, nil
}

// UpdateState runs fn in a read-write transaction of its own, with no
// audit record, for bookkeeping in state buckets other packages keep in the
// audit file (the revocation state's outbox of changes not yet shared with
// a cluster). fn must not touch the "events" or "meta" buckets; anything
// that changes what the gateway enforces goes through AppendWith instead.
func (s *Store) UpdateState(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	return s.commitRec(ctx, fn)
}
