package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bastion-ssh/bastion/audit"
)

func newAuditCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit log: export and verify",
	}
	cmd.AddCommand(newAuditExportCommand(a), newAuditVerifyCommand(a))
	return cmd
}

// filterFlags are the event filters shared by export (and, later, tail).
type filterFlags struct {
	since, until, actor, session string
	types                        []string
}

func (f *filterFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.since, "since", "", "only events at or after: RFC 3339 time, YYYY-MM-DD, or a duration ago such as 24h")
	fl.StringVar(&f.until, "until", "", "only events before: same forms as --since")
	fl.StringSliceVar(&f.types, "type", nil, "only these event types (repeatable or comma-separated; auth.* matches a family)")
	fl.StringVar(&f.actor, "actor", "", "only events by this actor")
	fl.StringVar(&f.session, "session", "", "only events of this session id")
}

func (f *filterFlags) filter(now time.Time) (audit.Filter, error) {
	since, err := parseWhen(f.since, now)
	if err != nil {
		return audit.Filter{}, fmt.Errorf("--since: %w", err)
	}
	until, err := parseWhen(f.until, now)
	if err != nil {
		return audit.Filter{}, fmt.Errorf("--until: %w", err)
	}
	return audit.Filter{Since: since, Until: until, Types: f.types, Actor: f.actor, Session: f.session}, nil
}

// parseWhen accepts RFC 3339, a date, or a duration before now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "-")); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 (2026-11-27T15:00:00Z), a date (2026-11-27) or a duration ago (24h)", s)
}

func newAuditExportCommand(a *app) *cobra.Command {
	var (
		ff     filterFlags
		format string
	)
	cmd := &cobra.Command{
		Use:   "export [--format jsonl|csv] [filters]",
		Short: "Stream audit events to stdout as JSON Lines or CSV",
		Example: `  bastion audit export --format jsonl > audit.jsonl
  bastion audit export --format csv --since 24h --type auth.failed
  bastion audit export --type cert.issued,cert.revoked --actor operator:alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fm, err := audit.ParseFormat(format)
			if err != nil {
				return err
			}
			flt, err := ff.filter(time.Now())
			if err != nil {
				return err
			}
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			return store.Export(cmd.Context(), a.stdout, flt, fm)
		},
	}
	ff.add(cmd)
	cmd.Flags().StringVar(&format, "format", "jsonl", "output format: jsonl or csv")
	return cmd
}

func newAuditVerifyCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "verify",
		Short:   "Check the audit log's hash chain; exit 1 at the first edited, deleted or reordered event",
		Example: `  bastion audit verify --data-dir /var/lib/bastion`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			n, err := store.Verify(cmd.Context())
			var ce *audit.ChainError
			if errors.As(err, &ce) {
				return &exitError{code: 1, err: fmt.Errorf("audit log is NOT intact (%d events checked before the break): %w", n, err)}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "ok: %d events, hash chain intact\n", n)
			return nil
		},
	}
}
