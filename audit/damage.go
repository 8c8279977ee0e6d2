package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"time"

	"go.etcd.io/bbolt"
)

// A damaged file must never be used: bbolt maps the file into memory, so a
// file cut short kills the process with SIGBUS on the first read past its
// end, and random bytes over its pages make bbolt panic or, worse, write
// new pages into a broken tree. Open therefore checks, before bbolt sees
// the file, that it is not empty, that one of its two meta pages is valid
// and that the file is as long as that page says; after opening, it runs
// bbolt's consistency check over every page. Reads recover from page
// faults and bbolt's panics (debug.SetPanicOnFault), so a damaged page
// that slips past these checks is an error, not a crash.

// Fixed layout of bbolt's file format (go.etcd.io/bbolt/internal/common):
// each meta page is a 16-byte page header followed by magic, version,
// page size, flags, the root bucket (root page id and sequence), the
// freelist page id, the high-water page id, the transaction id and an
// FNV-64a checksum of the fields before it.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16
	boltMetaSize     = 64
	boltMetaChecksum = 56 // offset of the checksum within the meta
)

// boltMeta is what preflight reads from a meta page.
type boltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: pages the file must hold
	txid     uint64
}

// damagedError says what is wrong with the file and how to recover.
type damagedError struct {
	path, what string
}

func (e *damagedError) Error() string {
	return fmt.Sprintf("audit: %s is damaged: %s. Restore it from a backup; or run `bastion audit salvage --out NEW.db` to copy every readable, verifiable event into a new file and put that in its place; bastion will not write to a damaged log", e.path, e.what)
}

func (e *damagedError) Is(target error) bool { return target == ErrDamaged }

// preflight checks path before bbolt opens it. It returns exists=false
// when there is no file (or, with mustExist false, an empty one bbolt may
// initialize).
func preflight(path string, mustExist bool) (exists bool, err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		if mustExist {
			return false, &missingError{path: path}
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("audit: open %s: %w", path, err)
	}
	if fi.Size() == 0 {
		if mustExist {
			return false, &damagedError{path: path, what: "the file is empty (0 bytes), so the log that was there has been wiped"}
		}
		return false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return true, fmt.Errorf("audit: open %s: %w", path, err)
	}
	defer f.Close()
	m0, err0 := readBoltMeta(f, 0)
	pageSize := int64(os.Getpagesize())
	if err0 == nil {
		pageSize = int64(m0.pageSize)
	}
	m1, err1 := readBoltMeta(f, pageSize)
	var m boltMeta
	switch {
	case err0 != nil && err1 != nil:
		return true, &damagedError{path: path, what: fmt.Sprintf("neither of its two header (meta) pages is valid (%v; %v)", err0, err1)}
	case err0 != nil:
		m = m1
	case err1 != nil || m0.txid > m1.txid:
		m = m0
	default:
		m = m1
	}
	if need := int64(m.pgid) * int64(m.pageSize); fi.Size() < need {
		return true, &damagedError{path: path, what: fmt.Sprintf("the file is cut short: %d bytes, but its header says the data runs to %d", fi.Size(), need)}
	}
	return true, nil
}

// readBoltMeta reads and validates the meta page at off.
func readBoltMeta(r io.ReaderAt, off int64) (boltMeta, error) {
	var b [boltPageHeader + boltMetaSize]byte
	if _, err := r.ReadAt(b[:], off); err != nil {
		return boltMeta{}, fmt.Errorf("meta page at %d: %w", off, err)
	}
	m := b[boltPageHeader:]
	le := binary.LittleEndian // bbolt writes native order; every platform Go's bbolt runs on here is little-endian
	if le.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, fmt.Errorf("meta page at %d: not a bbolt header (bad magic)", off)
	}
	if v := le.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("meta page at %d: bbolt format version %d", off, v)
	}
	h := fnv.New64a()
	h.Write(m[:boltMetaChecksum])
	if h.Sum64() != le.Uint64(m[boltMetaChecksum:]) {
		return boltMeta{}, fmt.Errorf("meta page at %d: checksum mismatch", off)
	}
	ps := le.Uint32(m[8:])
	if ps < 512 || ps > 1<<20 || ps&(ps-1) != 0 {
		return boltMeta{}, fmt.Errorf("meta page at %d: page size %d", off, ps)
	}
	return boltMeta{pageSize: ps, pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, nil
}

// checkPages runs bbolt's consistency check over every page of db and
// returns the first problems it reports, as a damagedError.
func checkPages(db *bbolt.DB, path string) error {
	var problems []error
	err := safeRead(func() error {
		return db.View(func(tx *bbolt.Tx) error {
			for err := range tx.Check() {
				if len(problems) < 3 {
					problems = append(problems, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return &damagedError{path: path, what: fmt.Sprintf("bbolt's consistency check failed: %v", errors.Join(problems...))}
	}
	return nil
}

// safeRead runs fn turning a page fault (a read past the end of a mapped
// file that shrank) or a panic in bbolt (a page whose bytes make no sense)
// into an ErrDamaged error instead of a crash.
func safeRead(fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: reading a page failed (%v); stop bastion and run `bastion audit verify` on the file", ErrDamaged, p)
		}
	}()
	return fn()
}

// missingError is Open's error when a log must exist but does not.
type missingError struct{ path string }

func (e *missingError) Error() string {
	return fmt.Sprintf("audit: %s does not exist, but this data directory has a CA, so it had an audit log: restore audit.db from a backup, or pass --new-audit-log to start a new log (the new log records that it was started this way)", e.path)
}

func (e *missingError) Is(target error) bool { return target == ErrMissing }

// MoveAside renames a damaged or empty log out of the way, to
// path.damaged-TIME, so a new log can start without destroying what was
// there. It returns the new name ("" when there was no file).
func MoveAside(path string, now time.Time) (string, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	to := path + ".damaged-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(path, to); err != nil {
		return "", fmt.Errorf("audit: move %s aside: %w", path, err)
	}
	return to, nil
}
