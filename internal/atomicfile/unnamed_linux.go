package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// writeUnnamed writes data to an unnamed file in path's directory
// (O_TMPFILE), fsyncs it and returns it open: until it is linked it has no
// name, so a crash while writing leaves nothing behind. ok is false when
// the filesystem or kernel cannot do this (the caller then uses a named
// temporary file).
func writeUnnamed(path string, data []byte, perm os.FileMode) (f *os.File, ok bool, err error) {
	f, err = os.OpenFile(filepath.Dir(path), os.O_WRONLY|unix.O_TMPFILE, perm)
	if err != nil {
		return nil, false, nil
	}
	fail := func(err error) (*os.File, bool, error) {
		_ = f.Close()
		return nil, true, fmt.Errorf("write %s: %w", path, err)
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
	return f, true, nil
}

// linkUnnamed gives the unnamed file f the name dst; like link(2) it
// fails if dst exists.
func linkUnnamed(f *os.File, dst string) error {
	return unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
}
