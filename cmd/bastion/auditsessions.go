package main

import (
	"context"
	"errors"
	"time"

	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/auditquery"
)

func newAuditSessionsCommand(a *app) *cobra.Command {
	var (
		sf auditquery.SessionFlags
		rf remoteFlags
		cf clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "sessions [--since T] [--until T] [--user U] [--target HOST] [--active] [--json] [--gateway HOST:PORT]",
		Short: "List sessions: who went where, when, for how long, and what was recorded",
		Long: `List the sessions of the audit log, one line each: session id, user,
login on the target, target, start, duration, kind (shell, exec, sftp, scp,
forward, or none when no shell, exec or subsystem was asked for), bytes
each way ("- (live)" while the session is open) and the size of the stored
recording (so far, for a live one). Play one with ` + "`bastion audit play SESSION`" + `.

Without --gateway it reads the log in --data-dir (gateway stopped); with
--gateway it asks the running gateway, as your certificate's identity,
which must be in one of its auditor_groups.`,
		Example: `  bastion audit sessions --since 24h
  bastion audit sessions --user alice --target web1 --json
  bastion audit sessions --gateway bastion.example.com:2222 --active
  bastion audit sessions --cluster --gateway bastion.example.com:2222 --active`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := sf.Query(time.Now())
			if err != nil {
				return err
			}
			if cf.on {
				return a.sessionsCluster(cmd.Context(), cf, rf, q)
			}
			if rf.gateway != "" {
				return a.runRemoteAuditArgs(cmd.Context(), rf, "sessions", q.Args())
			}
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			sessions, err := store.Sessions(cmd.Context(), q.Filter)
			if err != nil {
				return err
			}
			return audit.WriteSessions(a.stdout, sessions, q.JSON)
		},
	}
	sf.Register(cmd.Flags())
	rf.register(cmd, false)
	cf.register(cmd, "list the sessions (with --active: the cluster's live ones)")
	return cmd
}

func newAuditPlayCommand(a *app) *cobra.Command {
	var (
		pf auditquery.PlayFlags
		rf remoteFlags
		cf clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "play SESSION [--speed N] [--idle-limit D] [--format terminal|asciicast|text] [--gateway HOST:PORT]",
		Short: "Replay a recorded session, or write it as an asciicast file or a text transcript",
		Long: `Replay a recorded session in this terminal with its original timing
(--speed to go faster, --idle-limit to cut long pauses). --format asciicast
writes an asciicast v2 file for ` + "`asciinema play`" + `; --format text writes the
transcript with control sequences stripped, for grep, with the stderr of
exec sessions on stderr.

Without --gateway it reads the log in --data-dir (gateway stopped); with
--gateway it asks the running gateway, as a member of its auditor_groups.`,
		Example: `  bastion audit play 3f9a0c1d2e4b5a69 --speed 4 --idle-limit 2s
  bastion audit play 3f9a0c1d2e4b5a69 --format asciicast > session.cast && asciinema play session.cast
  bastion audit play 3f9a0c1d2e4b5a69 --format text | grep -n passwd
  bastion audit play 3f9a0c1d2e4b5a69 --gateway bastion.example.com:2222`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := pf.Query(args[0])
			if err != nil {
				return err
			}
			if cf.on {
				if rf, err = a.holderOf(cmd.Context(), cf, rf, q.Session); err != nil {
					return err
				}
			}
			if rf.gateway != "" {
				return a.runRemoteAuditArgs(cmd.Context(), rf, "play", q.Args())
			}
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			opts := q.Options
			opts.Stderr = a.stderr
			return store.Play(cmd.Context(), a.stdout, q.Session, opts)
		},
	}
	pf.Register(cmd.Flags())
	rf.register(cmd, false)
	cf.registerHolder(cmd)
	return cmd
}

func newAuditWatchCommand(a *app) *cobra.Command {
	var (
		pf auditquery.PlayFlags
		rf remoteFlags
		cf clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "watch SESSION --gateway HOST:PORT [--format terminal|text]",
		Short: "Follow a live session read-only through the running gateway",
		Long: `Show a session that is still open: what it has shown so far, then its
output as the gateway records it (about a second behind), until the
session ends or you interrupt. Read-only: nothing you type reaches it.
Needs membership of one of the gateway's auditor_groups.`,
		Example: `  bastion audit sessions --gateway bastion.example.com:2222 --active
  bastion audit watch 3f9a0c1d2e4b5a69 --gateway bastion.example.com:2222`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := pf.Query(args[0])
			if err != nil {
				return err
			}
			if cf.on {
				if rf, err = a.holderOf(cmd.Context(), cf, rf, q.Session); err != nil {
					return err
				}
			}
			if rf.gateway == "" {
				return errors.New("say which gateway: --gateway HOST:PORT, or --cluster (with --gateway or --config) to find the gateway holding the session")
			}
			err = a.runRemoteAuditArgs(cmd.Context(), rf, "watch", q.Args())
			if err != nil && cmd.Context().Err() != nil {
				return nil // an interrupted watch is a normal end
			}
			return err
		},
	}
	pf.Register(cmd.Flags())
	rf.register(cmd, false)
	cf.registerHolder(cmd)
	return cmd
}

// runRemoteAuditArgs runs `audit SUB ARGS...` on the gateway, relaying its
// output and exit status.
func (a *app) runRemoteAuditArgs(ctx context.Context, rf remoteFlags, sub string, args []string) error {
	rf, err := rf.resolve()
	if err != nil {
		return err
	}
	return a.remoteAudit(ctx, rf, sub, args)
}
