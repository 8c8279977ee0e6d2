package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// gatewayDataDir says why dataDir is a gateway's data dir ("" when
// nothing shows one ran there): it holds the gateway's host key, a
// running gateway holds its audit log, or the log records a gateway
// start. Such a data dir without CA keys has its CA elsewhere (ca.dir).
func gatewayDataDir(dataDir string) string {
	if hasGatewayHostKey(dataDir) {
		return "it holds the gateway host key gateway/ssh_host_ed25519_key"
	}
	return servedLog(dataDir)
}

// hasGatewayHostKey reports whether a gateway made its host key in
// dataDir (it does before it serves).
func hasGatewayHostKey(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "gateway", "ssh_host_ed25519_key"))
	return err == nil
}

// servedLog says why dataDir's audit log is a gateway's: a running
// gateway holds it, or it records a gateway start ("" when neither).
func servedLog(dataDir string) string {
	path := filepath.Join(dataDir, "audit.db")
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	store, err := audit.Open(path, audit.Options{Timeout: 200 * time.Millisecond, ReadOnly: true})
	if errors.Is(err, audit.ErrInUse) {
		return "a running gateway holds its audit log"
	}
	if err != nil {
		return ""
	}
	defer store.Close()
	if _, found, err := store.Last(context.Background(), audit.Filter{Types: []string{audit.TypeGatewayStart}}); err == nil && found {
		return "its audit log records a gateway start"
	}
	return ""
}

// noCAError explains a layout without CA keys and what to do. `ca init`
// is suggested only where no gateway ran: a gateway's data dir without
// keys has its CA in ca.dir, and a CA made there would be a second one
// that no gateway or host trusts. initHint is the `ca init` command line
// for this data dir.
func noCAError(l ca.Layout, initHint string) error {
	if l.KeyDir != "" {
		return fmt.Errorf("no CA keys in %s (the CA key directory: --ca-dir, or ca.dir of the configuration): point it at the directory holding user_ca, user_ca.pub, host_ca and host_ca.pub, as `bastion ca init` makes them", l.Dir())
	}
	if why := gatewayDataDir(l.DataDir); why != "" {
		return fmt.Errorf("no CA keys in %s, but %s is a gateway's data dir (%s): its CA lives in the directory named by ca.dir in the gateway's bastion.yaml. Run the command with --config BASTION.YAML (which reads ca.dir) or --ca-dir DIR; do not run `ca init` here, it would make a second CA that no gateway or host trusts",
			l.Dir(), l.DataDir, why)
	}
	return fmt.Errorf("no CA in %s: run `%s` first", l.Dir(), initHint)
}

// requireCA fails with noCAError unless the CA's public keys are there
// (all that export and krl read).
func (a *app) requireCA() error {
	l := a.layout()
	if _, err := os.Stat(l.PublicKey(ca.UserCA)); err == nil || l.Exists() {
		return nil
	}
	return noCAError(l, a.hint("ca init"))
}

// caHint is hint for a ca command: with --ca-dir when the CA keys are
// not in the data dir, so the line works as printed.
func (a *app) caHint(words string) string {
	h := a.hint(words)
	if a.keyDir != "" {
		h += " --ca-dir " + shellWord(a.keyDir)
	}
	return h
}

// noteUnservedLog tells the operator, after a ca command wrote to the
// data dir's audit log, when no gateway has served that log: its records
// (a cluster's offline signing, when this directory holds the CA that
// the gateways share through ca.dir) are not in any gateway's log, and
// `audit export --cluster` does not show them.
func (a *app) noteUnservedLog(ctx context.Context, store *audit.Store) {
	if hasGatewayHostKey(a.dataDir) {
		return
	}
	if _, found, err := store.Last(ctx, audit.Filter{Types: []string{audit.TypeGatewayStart}}); err != nil || found {
		return
	}
	fmt.Fprintf(a.stderr, "note: the audit record is in %s, which no gateway has served, so an export through the gateways (audit export --cluster) does not show it. If gateways use this CA through ca.dir, keep this log with the CA keys; auditors read it with `%s`\n",
		a.layout().AuditDB(), a.hint("audit export"))
}
