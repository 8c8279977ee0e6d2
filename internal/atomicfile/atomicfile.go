// Package atomicfile writes files so that a crash, a kill -9 or a power cut
// leaves either the old file or the whole new one, never a part or an
// empty file: the data goes to a temporary file in the same directory,
// which is fsync'd, renamed (or hard-linked, for a file that must not
// replace another) over the destination, and the directory is fsync'd so
// the new name itself survives a power cut. On Linux the temporary file
// is unnamed (O_TMPFILE) while it is written, so a crash leaves no
// temporary file behind either.
//
// github.com/google/renameio/v2 was considered: it does the first three
// steps but does not fsync the directory and has no create-only mode,
// which CA keys need; both are a few lines here.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// ErrExist is returned by [WriteNew] when the destination exists.
var ErrExist = os.ErrExist

// WriteFile replaces path with data, with permissions perm (not subject to
// the umask). Readers see the old content or the new, never a part.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	// A symlink is followed, so the file it names is replaced, not the
	// link. A device, FIFO or socket (--out /dev/null, --out /dev/stdout)
	// is written in place: renaming over it would replace a device node
	// with a regular file.
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		path = resolved
	}
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		if fi.IsDir() {
			return fmt.Errorf("write %s: it is a directory", path)
		}
		return writeInPlace(path, data)
	}
	if f, ok, err := writeUnnamed(path, data, perm); ok {
		if err != nil {
			return err
		}
		defer f.Close()
		removeStale(path)
		// The file gets a temporary name only for the instant between
		// this link and the rename: a crash while writing leaves nothing.
		tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.tmp-%d", filepath.Base(path), f.Fd()))
		for i := 0; ; i++ {
			err = linkUnnamed(f, tmp)
			if !errors.Is(err, os.ErrExist) || i > 8 {
				break
			}
			tmp += "x"
		}
		if err == nil {
			if err := os.Rename(tmp, path); err != nil {
				_ = os.Remove(tmp)
				return fmt.Errorf("write %s: %w", path, err)
			}
			return syncDir(path)
		}
		// No /proc, or linking refused: fall back to a named temporary.
	}
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(path)
}

// WriteNew creates path with data, failing with an error that wraps
// [ErrExist] if it exists. The file appears whole or not at all.
func WriteNew(path string, data []byte, perm os.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("write %s: %w", path, ErrExist)
	}
	if f, ok, err := writeUnnamed(path, data, perm); ok {
		if err != nil {
			return err
		}
		defer f.Close()
		// linkat(2) names the file only once it is whole, and fails if
		// path exists, so two writers cannot both win.
		err = linkUnnamed(f, path)
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("write %s: %w", path, ErrExist)
		}
		if err == nil {
			return syncDir(path)
		}
		// No /proc, or linking refused: fall back to a named temporary.
	}
	tmp, err := writeTemp(path, data, perm)
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp) }()
	// link(2) fails if path exists, so two writers cannot both win.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("write %s: %w", path, ErrExist)
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(path)
}

// writeTemp writes data to a new temporary file beside path and fsyncs it.
func writeTemp(path string, data []byte, perm os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		_ = f.Close()
		_ = os.Remove(name)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return name, nil
}

// writeInPlace writes data to an existing special file (a device, FIFO
// or socket) as os.WriteFile would, without replacing it.
func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// staleAfter is how old a temporary file beside a destination must be to
// be taken for one left by a crash (a kill between link and rename).
const staleAfter = time.Minute

// removeStale removes temporary files of path's that a crashed writer
// left behind; a live writer's exists for microseconds, not a minute.
func removeStale(path string) {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*"))
	for _, m := range matches {
		if fi, err := os.Lstat(m); err == nil && fi.Mode().IsRegular() && time.Since(fi.ModTime()) > staleAfter {
			_ = os.Remove(m)
		}
	}
}

// syncDir fsyncs the directory holding path, so a rename or link in it is
// durable.
func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("sync directory of %s: %w", path, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory of %s: %w", path, err)
	}
	return nil
}
