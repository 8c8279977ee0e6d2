package audit

import (
	"errors"
	"fmt"
	"time"

	berrors "go.etcd.io/bbolt/errors"
)

// Errors callers can test for with errors.Is. The returned errors wrap them
// with details and a fix.
var (
	// ErrInUse means another process holds the database's file lock: a
	// running `bastion serve`, or another command that has the file open. The
	// error names the holder when it can.
	ErrInUse = errors.New("audit: database is in use by another process")
	// ErrInvalidEvent means Append refused an event because of its shape:
	// its type or a field name, or a field name that looks like a secret.
	ErrInvalidEvent = errors.New("audit: invalid event")
	// ErrReadOnly means a write was attempted on a store opened with
	// Options.ReadOnly.
	ErrReadOnly = errors.New("audit: store is open read-only")
	// ErrClosed means the store was used after Close.
	ErrClosed = errors.New("audit: store is closed")
	// ErrCorrupt means the store's own metadata is missing or inconsistent,
	// so appending could not continue the chain safely.
	ErrCorrupt = errors.New("audit: database is corrupt")
	// ErrDamaged means the file itself is damaged (empty, cut short, or
	// with pages bbolt cannot read), so it must not be used; the error
	// names the file and the fix (a backup, or `bastion audit salvage`).
	ErrDamaged = errors.New("audit: database file is damaged")
	// ErrMissing means the log does not exist although Options.MustExist
	// said it must (the data directory has a CA, so it had a log).
	ErrMissing = errors.New("audit: database file is missing")
)

// errFormat means the file was written in a layout this build does not know.
var errFormat = errors.New("audit: unsupported log format")

// Stable reasons a [ChainError] reports; they are machine-readable codes.
const (
	// ReasonUndecodable: the stored record is not a canonical event.
	ReasonUndecodable = "undecodable"
	// ReasonHashMismatch: the record's hash does not match its content, so
	// the event was edited.
	ReasonHashMismatch = "hash_mismatch"
	// ReasonPrevHashMismatch: the record does not chain to the one before
	// it, so an event was deleted or events were reordered.
	ReasonPrevHashMismatch = "prev_hash_mismatch"
	// ReasonIDMismatch: the record's id differs from the key it is stored
	// under, so it was moved.
	ReasonIDMismatch = "id_mismatch"
	// ReasonIDOrder: ids do not strictly increase.
	ReasonIDOrder = "id_order"
	// ReasonTimeOrder: the event's time is after the time encoded in its id,
	// which Append never produces.
	ReasonTimeOrder = "time_order"
	// ReasonTruncated: the log ends before the last event the store's
	// metadata recorded, so events were deleted from the end.
	ReasonTruncated = "truncated"
	// ReasonCheckpoint: the chain starts from a retention checkpoint that
	// no audit.pruned event in the log names, so the oldest events were
	// deleted and the checkpoint written by hand.
	ReasonCheckpoint = "checkpoint_unvouched"
	// ReasonCount: the number of events held differs from the count the
	// store recorded.
	ReasonCount = "count_mismatch"
	// ReasonAnchor: the event an anchor names is missing, or has another
	// hash or position: the log was rewritten.
	ReasonAnchor = "anchor_mismatch"
)

// ChainError reports the first broken link found by [Store.Verify].
type ChainError struct {
	// Index is the 0-based position of the offending record in the log.
	Index int
	// ID is the offending record's id (from its key when the record itself
	// cannot be read).
	ID string
	// Reason is one of the Reason* codes.
	Reason string
	// Expected and Got are the values that differ (hashes, ids or times).
	Expected, Got string
}

// Error names the event and says what is wrong with it, in words.
func (e *ChainError) Error() string {
	at := fmt.Sprintf("audit: chain broken at event %d (id %s)", e.Index, e.ID)
	switch e.Reason {
	case ReasonHashMismatch:
		return fmt.Sprintf("%s: stored hash %s does not match the event's content (recomputed %s): the event was edited", at, e.Got, e.Expected)
	case ReasonPrevHashMismatch:
		return fmt.Sprintf("%s: prev_hash %q does not match the previous event's hash %q: an event before it was deleted or events were reordered", at, e.Got, e.Expected)
	case ReasonIDMismatch:
		return fmt.Sprintf("%s: the record says id %s but is stored under key %s: the record was moved", at, e.Got, e.Expected)
	case ReasonIDOrder:
		return fmt.Sprintf("%s: id %s does not come after the previous id %s: events are out of order", at, e.Got, e.Expected)
	case ReasonTimeOrder:
		return fmt.Sprintf("%s: event time %s is after the time in its id (%s): the time was changed or the id forged", at, e.Got, e.Expected)
	case ReasonTruncated:
		return fmt.Sprintf("%s: the log ends at %s but the store recorded %s as its last event: events were deleted from the end", at, e.Got, e.Expected)
	case ReasonCheckpoint:
		return fmt.Sprintf("%s: the log starts after a retention checkpoint (%s) that no audit.pruned event vouches for: the oldest events were deleted and the checkpoint written by hand", at, e.Expected)
	case ReasonCount:
		return fmt.Sprintf("%s: the log holds %s events but the store recorded %s: events were deleted or added by hand", at, e.Got, e.Expected)
	case ReasonAnchor:
		return fmt.Sprintf("%s: the anchor names %s, the log has %s: the log was rewritten since the anchor was published", at, e.Expected, e.Got)
	case ReasonRecordingMismatch:
		return fmt.Sprintf("%s: the session's stored recording hashes to %s, not to the recording_sha256 %s its session.end records: a recording chunk was edited, removed, added or reordered", at, e.Got, e.Expected)
	case ReasonUndecodable:
		return fmt.Sprintf("%s: the record cannot be read (%s): it was edited or damaged", at, e.Got)
	}
	return fmt.Sprintf("%s: %s (expected %q, got %q)", at, e.Reason, e.Expected, e.Got)
}

// inUseError is what Open returns when bbolt's file lock is taken.
type inUseError struct {
	path    string
	holder  string
	timeout time.Duration
}

func (e *inUseError) Error() string {
	return fmt.Sprintf("audit: %s is in use by %s (lock not free after %s); stop `bastion serve` or run the command through the running gateway", e.path, e.holder, e.timeout)
}

func (e *inUseError) Is(target error) bool { return target == ErrInUse }

// InUseBy says who holds the database when err is an ErrInUse from Open
// (the command line and pid the holder recorded), for callers that word
// the error themselves.
func InUseBy(err error) (string, bool) {
	var e *inUseError
	if errors.As(err, &e) {
		return e.holder, true
	}
	return "", false
}

func (e *inUseError) Unwrap() error { return berrors.ErrTimeout }
