package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/ca"
)

// buildInfo is what `bastion version` prints.
type buildInfo struct {
	Version, Commit string
}

// app carries what every command needs; it replaces package-level state.
type app struct {
	build   buildInfo
	dataDir string
	// configPath is `ca --config`: the bastion.yaml whose signing policy
	// the ca commands apply.
	configPath string
	// keyDir is the CA key directory (ca.dir of --config), "" for
	// DATA_DIR/ca.
	keyDir string
	// newAuditLog (--new-audit-log) allows starting a new audit log where
	// the data directory's CA says one should exist.
	newAuditLog bool
	stdin       io.Reader
	stdout      io.Writer
	stderr      io.Writer
}

// layout is the data directory's file layout.
func (a *app) layout() ca.Layout { return ca.Layout{DataDir: a.dataDir, KeyDir: a.keyDir} }

// hint is a bastion command line to print as a next step: words, then
// --data-dir with the data dir in use, so it runs verbatim whatever the
// default would be.
func (a *app) hint(words string) string {
	return "bastion " + words + " --data-dir " + shellWord(a.dataDir)
}

// shellWord is s as one shell word: itself when it needs no quoting, else
// single-quoted.
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r))
	}) < 0 {
		return s
	}
	return quoteArg(s)
}

// operator names the person running a CLI command, for audit records.
func (a *app) operator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if sudo := os.Getenv("SUDO_USER"); sudo != "" {
		name = sudo + " (via sudo)"
	}
	return "operator:" + name
}

// exitError carries a specific exit code (e.g. 1 for "verify failed").
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func defaultDataDir() string {
	if d := os.Getenv("BASTION_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/bastion"
}

func newRootCommand(build buildInfo, stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	a := &app{build: build, stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "bastion",
		Short: "An SSH bastion gateway with a built-in certificate authority and audit log",
		Long: `bastion fronts all your SSH hosts. Engineers log in with the company's
identity provider, receive a short-lived SSH certificate from bastion's CA,
and reach hosts with the ordinary OpenSSH client (ssh -J). Passwords and
root logins are refused by construction; every attempt is audited.`,
		Example: `  bastion ca init --data-dir ./data
  bastion ca sign --data-dir ./data -I alice -n alice ~/.ssh/id_ed25519.pub
  bastion audit export --data-dir ./data --format jsonl`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&a.dataDir, "data-dir", defaultDataDir(), "bastion's data directory (CA keys in ca/, audit log in audit.db); env BASTION_DATA_DIR")
	root.PersistentFlags().BoolVar(&a.newAuditLog, "new-audit-log", false, "start a new audit log although this data directory's CA had one (it is missing, empty or damaged and no backup can be restored); the new log records that it was started this way")
	root.AddCommand(
		newVersionCommand(a),
		newCACommand(a),
		newAuditCommand(a),
		newServeCommand(a),
		newDevCommand(a),
		newScanCommand(a),
		newLoginCommand(a),
		newStatusCommand(a),
		newLockCommand(a),
		newUnlockCommand(a),
		newLocksCommand(a),
		newBansCommand(a),
		newUnbanCommand(a),
		newAlertsCommand(a),
		newClusterCommand(a),
	)
	return root
}

func newVersionCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print bastion's version and commit",
		Example: "  bastion version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(a.stdout, "bastion %s (commit %s)\n", a.build.Version, a.build.Commit)
			return err
		},
	}
}
