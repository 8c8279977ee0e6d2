//go:build !linux

package atomicfile

import "os"

// writeUnnamed is not available here: callers use a named temporary file.
func writeUnnamed(string, []byte, os.FileMode) (*os.File, bool, error) { return nil, false, nil }

// linkUnnamed is never called where writeUnnamed is unavailable.
func linkUnnamed(*os.File, string) error { return os.ErrInvalid }
