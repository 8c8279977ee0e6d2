//go:build !unix

package devtarget

import "errors"

// Start fails: the built-in demo host runs commands, ptys and SFTP the
// Unix way.
func Start(Config) (*Target, error) {
	return nil, errors.New("devtarget: the built-in demo host needs Linux or another Unix; use --target sshd")
}

// ServeSFTPChild does nothing here: no demo host re-runs the program.
func ServeSFTPChild() bool { return false }
