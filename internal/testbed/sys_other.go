//go:build !linux

package testbed

import (
	"errors"
	"syscall"
)

// lockFile is only needed to create TestUser, which needs root and Linux's
// useradd; elsewhere tests run as the current user.
func lockFile(string) (func(), error) {
	return nil, errors.New("running the end-to-end tests as root is only supported on Linux; run them as a normal user")
}

// daemonSysProcAttr has no parent-death signal outside Linux; a crashed test
// run can leave sshd behind, listening on loopback only.
func daemonSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{}
}
