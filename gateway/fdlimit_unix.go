//go:build unix

package gateway

import "syscall"

// openFileLimit is the process's soft RLIMIT_NOFILE (0 if unknown).
func openFileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return uint64(r.Cur)
}
