package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/sshclient"
)

// lockChange is one lock or unlock, done either on the audit log directly
// or by the running gateway's admin command.
type lockChange struct {
	// local changes the locks when the audit log is free.
	local func(ctx context.Context, l *ca.Locks) error
	// remote is the gateway admin command line.
	remote string
	// done is printed after a local change (local may rewrite it).
	done *string
	// offline, when set, runs instead of local when no gateway holds the
	// audit log: for state that lives only in a running gateway (bans).
	offline func(clusterGatewayID string) error
}

func newLockCommand(a *app) *cobra.Command {
	var reason, gw string
	var force bool
	cmd := &cobra.Command{
		Use:   "lock USER [--reason TEXT]",
		Short: "Lock a user out of the gateway and end their live sessions",
		Long: `bastion lock refuses USER (a login name, any certificate principal, or a
certificate key id) at the gateway from now on, and ends the user's live
sessions within a second.

When the audit log in --data-dir is free (no gateway running on it), the
lock is written there directly. While a gateway holds it, the lock goes
through that gateway's admin command over SSH instead, with your bastion
certificate (from bastion login; it must carry an admin group): the
gateway of your last bastion login, or $BASTION_GATEWAY. With --gateway, the
lock always goes through that gateway.`,
		Example: `  bastion lock alice --reason "laptop stolen"
  bastion lock alice --gateway bastion.example.com:2222 --reason "left the company"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			target := args[0]
			if err := ca.CheckReason(reason); err != nil {
				return fmt.Errorf("--reason: %w", err)
			}
			remote := "lock " + quoteArg(target)
			if reason != "" {
				remote += " --reason " + quoteArg(reason)
			}
			if force {
				remote += " --force"
			}
			done := "locked " + target
			return a.changeLock(cmd, gw, lockChange{
				local: func(ctx context.Context, l *ca.Locks) error {
					if l.IsLocked(target) {
						done = target + " is already locked (lock renewed with this reason)"
					}
					return l.Lock(ctx, ca.Lock{Target: target, Reason: reason, By: a.operator()})
				},
				remote: remote,
				done:   &done,
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the audit log")
	cmd.Flags().BoolVar(&force, "force", false, "through a gateway: lock even if the lock bars your own certificate")
	cmd.Flags().StringVar(&gw, "gateway", "", "lock through this running gateway (HOST:PORT) with your bastion certificate")
	return cmd
}

func newUnlockCommand(a *app) *cobra.Command {
	var gw string
	cmd := &cobra.Command{
		Use:   "unlock USER",
		Short: "Lift a lock set with bastion lock",
		Long: `bastion unlock lets USER in again. Like bastion lock, it writes the audit
log in --data-dir when it is free, and otherwise goes through the running
gateway (--gateway, $BASTION_GATEWAY, or the gateway of your last bastion
login).`,
		Example: `  bastion unlock alice
  bastion unlock alice --gateway bastion.example.com:2222`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			target := args[0]
			done := "unlocked " + target
			return a.changeLock(cmd, gw, lockChange{
				local: func(ctx context.Context, l *ca.Locks) error {
					err := l.Unlock(ctx, target, a.operator())
					if errors.Is(err, ca.ErrNotLocked) {
						done, err = target+" is not locked", nil
					}
					return err
				},
				remote: "unlock " + quoteArg(target),
				done:   &done,
			})
		},
	}
	cmd.Flags().StringVar(&gw, "gateway", "", "unlock through this running gateway (HOST:PORT) with your bastion certificate")
	return cmd
}

func newLocksCommand(a *app) *cobra.Command {
	var (
		gw     string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "locks [--json]",
		Short: "List the users locked with bastion lock",
		Long: `bastion locks lists the locked users: target, when, by whom and why. Like
bastion lock, it reads the audit log in --data-dir when it is free, and
otherwise asks the running gateway (--gateway, $BASTION_GATEWAY, or the
gateway of your last bastion login) with your bastion certificate, which
must carry an admin group. With none, it says "no locks" on stderr;
--json prints a JSON array ([] when empty).`,
		Example: `  bastion locks
  bastion locks --gateway bastion.example.com:2222 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			remote := "locks"
			if asJSON {
				remote += " --json"
			}
			return a.changeLock(cmd, gw, lockChange{
				local: func(_ context.Context, l *ca.Locks) error {
					return writeLocks(a, l.List(), asJSON)
				},
				remote: remote,
			})
		},
	}
	cmd.Flags().StringVar(&gw, "gateway", "", "ask this running gateway (HOST:PORT) with your bastion certificate")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the locks as a JSON array")
	return cmd
}

// writeLocks lists locks as the gateway's `locks` command does.
func writeLocks(a *app, locks []ca.Lock, asJSON bool) error {
	if asJSON {
		if locks == nil {
			locks = []ca.Lock{}
		}
		return json.NewEncoder(a.stdout).Encode(locks)
	}
	if len(locks) == 0 {
		fmt.Fprintln(a.stderr, "no locks")
		return nil
	}
	for _, lk := range locks {
		fmt.Fprintln(a.stdout, gateway.FormatLock(lk))
	}
	return nil
}

// changeLock applies ch: on the audit log when it is free, else through
// the gateway. An explicit --gateway always goes through the gateway.
func (a *app) changeLock(cmd *cobra.Command, gwFlag string, ch lockChange) error {
	ctx := cmd.Context()
	db := a.layout().AuditDB()
	held := false
	if !cmd.Flags().Changed("gateway") {
		if _, err := os.Stat(db); err == nil {
			store, gatewayID, err := a.openAuditOffline()
			switch {
			case err == nil:
				defer store.Close()
				if ch.offline != nil {
					return ch.offline(gatewayID)
				}
				locks, err := ca.LoadLocks(store, nil)
				if err != nil {
					return err
				}
				if err := ch.local(ctx, locks); err != nil {
					return err
				}
				if ch.done != nil {
					fmt.Fprintln(a.stdout, *ch.done)
					if gatewayID != "" {
						a.offlineClusterNote(gatewayID, "bastion "+ch.remote+" --gateway HOST:PORT")
					}
				}
				return nil
			case errors.Is(err, audit.ErrInUse):
				held = true
			default:
				return err
			}
		}
	}
	st := sshclient.State{}
	paths, err := sshclient.DefaultPaths()
	if err == nil {
		st, _ = sshclient.LoadState(paths.State())
	}
	addr, err := resolveGateway(gwFlag, st, "")
	if err != nil {
		return fmt.Errorf("--gateway: %w", err)
	}
	if addr == "" {
		verb, _, _ := strings.Cut(ch.remote, " ")
		why := fmt.Sprintf("there is no audit log at %s (is --data-dir right?)", db)
		if held {
			why = fmt.Sprintf("the audit log %s is held by a running gateway", db)
		}
		return fmt.Errorf("%s; to %s through the gateway, pass --gateway HOST:PORT (it uses the certificate from `bastion login`, which must carry an admin group), or run `ssh -p 2222 YOUR_USER@bastion %s` as a member of an admin group",
			why, verb, ch.remote)
	}
	return a.gatewayAdmin(ctx, addr, ch.remote)
}

// gatewayAdmin runs an admin command on the gateway at addr with the
// user's bastion certificate, relaying its output and exit status.
func (a *app) gatewayAdmin(ctx context.Context, addr, command string) error {
	paths, err := sshclient.DefaultPaths()
	if err != nil {
		return err
	}
	key, err := sshclient.LoadKey(paths.Key())
	if err != nil {
		return err
	}
	cert, err := sshclient.ReadCertificate(paths.Certificate())
	if err != nil {
		return err
	}
	if s := statusOf(cert, paths, addr, time.Now()); !s.Valid {
		return fmt.Errorf("your bastion certificate cannot be used: %s: run `bastion login --gateway %s`", s.Problem, addr)
	}
	if len(cert.ValidPrincipals) == 0 {
		return fmt.Errorf("your bastion certificate %s has no principals: run `bastion login --gateway %s`", paths.Certificate(), addr)
	}
	signer, err := gossh.NewCertSigner(cert, key.Signer)
	if err != nil {
		return fmt.Errorf("your bastion certificate does not match your key: %w: run `bastion login --gateway %s`", err, addr)
	}
	user := cert.ValidPrincipals[0]
	err = a.gatewayExec(ctx, addr, user, signer, paths.KnownHosts(), command)
	if errors.Is(err, sshclient.ErrAuthRefused) {
		return fmt.Errorf("%w: is your certificate revoked, or %s locked? `bastion status` shows the certificate", err, user)
	}
	return err
}
