// Command bastion is the SSH bastion gateway: its CA, audit log and
// gateway, in one binary. Run `bastion --help` for the commands.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/bastion-ssh/bastion/internal/devtarget"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	// The demo host of `bastion dev` re-runs this binary as a non-root
	// account to serve SFTP.
	if devtarget.ServeSFTPChild() {
		return
	}
	slog.SetDefault(libraryLogger(os.Stderr))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand(buildInfo{Version: version, Commit: commit}, os.Stdin, os.Stdout, os.Stderr).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bastion:", userError(err))
		os.Exit(exitCode(err))
	}
}
