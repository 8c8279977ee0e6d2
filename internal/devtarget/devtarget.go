// Package devtarget is the built-in demo SSH host `bastion dev` puts
// behind the gateway when no usable sshd is at hand. It trusts bastion's
// user CA exactly as a hardened sshd would (certificates only, principal =
// login name), presents a host certificate from bastion's host CA, offers
// only the algorithms `bastion scan` passes, and is a real host for the
// demo: commands run through the account's shell with their exit status
// and signals, sessions get a pty, and the sftp subsystem is served by
// pkg/sftp, so ssh, scp, sftp, rsync and git all work through the gateway.
//
// It listens on loopback only. When bastion runs as root, commands and
// SFTP run as Config.Account (a non-root account), never as root: a demo
// must not hand out a root shell, and the README promises what a real,
// hardened host does.
package devtarget

import (
	"net"
	"os"
	"os/user"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// SFTPChildEnv, when set in a process's environment, asks the bastion
// binary to serve SFTP on its standard input and output and exit (see
// ServeSFTPChild): that is how the demo host runs SFTP as a non-root
// account without running the whole server as it.
const SFTPChildEnv = "BASTION_DEVTARGET_SFTP"

// Config configures Start.
type Config struct {
	// Addr is a loopback address (127.0.0.1:0, [::1]:0); anything else is
	// refused.
	Addr string
	// Listener, when set, is used instead of listening on Addr; it too
	// must be on loopback.
	Listener net.Listener
	// IsUserCA reports whether a key is a trusted user CA key.
	IsUserCA func(gossh.PublicKey) bool
	// HostSigners are the host key and, ideally, its certificate signer.
	HostSigners []gossh.Signer
	// Account runs commands and SFTP (nil: the current user). It must be
	// set, and not be root, when the process runs as root.
	Account *user.User
	// Executable is the program re-run as Account to serve SFTP (with
	// SFTPChildEnv set); default os.Executable(). Only used when Account
	// differs from the current user. A copy is run, from a directory the
	// account can read: `go run` and `go test` build into directories
	// only their owner can enter.
	Executable string
}

// Target is a running demo host.
type Target struct {
	srv *gliderssh.Server
	ln  net.Listener
	dir string // holds the copy of Executable, if any
}

// Addr is the address the target listens on.
func (t *Target) Addr() string { return t.ln.Addr().String() }

// Close stops the target; it is safe on a nil or half-built Target.
func (t *Target) Close() error {
	if t == nil || t.srv == nil {
		return nil
	}
	err := t.srv.Close()
	if t.dir != "" {
		os.RemoveAll(t.dir)
	}
	return err
}
