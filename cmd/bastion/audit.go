package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/auditquery"
)

func newAuditCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read the audit log: export, tail, verify, and list, play and watch sessions",
	}
	cmd.AddCommand(newAuditExportCommand(a), newAuditTailCommand(a), newAuditVerifyCommand(a), newAuditSalvageCommand(a),
		newAuditSessionsCommand(a), newAuditPlayCommand(a), newAuditWatchCommand(a))
	return cmd
}

func newAuditExportCommand(a *app) *cobra.Command {
	var (
		qf auditquery.Flags
		rf remoteFlags
		cf clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "export [--format jsonl|csv] [filters] [--gateway HOST:PORT] [--cluster]",
		Short: "Stream audit events to stdout as JSON Lines or CSV",
		Long: `Stream audit events to stdout as JSON Lines (the verifiable form) or CSV.

Without --gateway it reads the log in --data-dir, which needs the gateway
stopped (the running gateway holds the file). With --gateway it asks the
running gateway over SSH, as your certificate's identity, which must be in
one of the gateway's auditor_groups; the output is byte for byte what the
offline export of the same log would write.

With --cluster it asks every gateway of the cluster (found in etcd with
--config, or through --gateway) and merges their events by time; each
event names its gateway. A gateway that cannot be read is named on
stderr and the exit status is 3.`,
		Example: `  bastion audit export --format jsonl > audit.jsonl
  bastion audit export --format csv --since 24h --type auth.failed
  bastion audit export --type cert.issued,cert.revoked --actor operator:alice
  bastion audit export --gateway bastion.example.com:2222 --since 2026-11-01 --type auth.*
  bastion audit export --cluster --gateway bastion.example.com:2222 --since 24h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := qf.Query(time.Now())
			if err != nil {
				return err
			}
			if cf.on {
				return a.exportCluster(cmd.Context(), cf, rf, q)
			}
			if rf.gateway != "" {
				return a.runRemoteAudit(cmd.Context(), rf, "export", q)
			}
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			if p := newProgress(a.stderr, store, q.Filter, time.Now); p != nil {
				defer p.done()
				return exportWithProgress(cmd.Context(), store, a.stdout, q, p)
			}
			return store.Export(cmd.Context(), a.stdout, q.Filter, q.Format)
		},
	}
	qf.Register(cmd.Flags())
	rf.register(cmd, false)
	cf.register(cmd, "export the logs")
	return cmd
}

func newAuditTailCommand(a *app) *cobra.Command {
	var (
		qf auditquery.Flags
		rf remoteFlags
	)
	cmd := &cobra.Command{
		Use:   "tail --gateway HOST:PORT [--format jsonl|csv] [filters]",
		Short: "Follow the matching audit events of a running gateway as they are recorded",
		Long: `Print each audit event that matches the filters as the running gateway
records it, until interrupted. Like tail -f it starts at the end: --history
(or --since) first prints the matching events already in the log, and
-n/--lines N the last N of them (like tail -n N -f). It runs
` + "`audit tail`" + ` on the gateway over SSH, as your certificate's identity,
which must be in one of the gateway's auditor_groups. Nothing is missed
however slowly you read.`,
		Example: `  bastion audit tail --gateway bastion.example.com:2222 --type auth.failed,source.banned
  bastion audit tail --gateway 127.0.0.1:2222 --history --type user.locked
  bastion audit tail --gateway 127.0.0.1:2222 -n 20 --type 'auth.*'
  bastion audit tail --gateway 127.0.0.1:2222 --since 1h --format csv`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := qf.Query(time.Now())
			if err != nil {
				return err
			}
			return a.runRemoteAudit(cmd.Context(), rf, "tail", q)
		},
	}
	qf.RegisterTail(cmd.Flags())
	rf.register(cmd, true)
	return cmd
}

// exportWithProgress is Store.Export, reporting progress to p.
func exportWithProgress(ctx context.Context, store *audit.Store, w io.Writer, q auditquery.Query, p *progress) error {
	enc := audit.NewEncoder(w, q.Format)
	err := store.Iterate(ctx, q.Filter, func(ev audit.Event) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		p.event(ev)
		return nil
	})
	if err != nil {
		_ = enc.Flush()
		return err
	}
	return enc.Flush()
}

// progress reports a long export's progress on a terminal: how many events
// were written and how far through the log's time span the export is.
type progress struct {
	w        io.Writer
	now      func() time.Time
	from, to time.Time // the span the export covers
	n        int
	last     time.Time // when progress was last printed
	shown    bool
}

// progressEvery is how often progress is redrawn.
const progressEvery = 250 * time.Millisecond

// newProgress returns a progress reporter when stderr is a terminal, nil
// otherwise: redirected output stays clean.
func newProgress(stderr io.Writer, store *audit.Store, f audit.Filter, now func() time.Time) *progress {
	file, ok := stderr.(*os.File)
	if !ok || !term.IsTerminal(int(file.Fd())) {
		return nil
	}
	h, err := store.Head()
	if err != nil || h.ID == "" {
		return nil
	}
	to := f.Until
	if id, err := ulid.ParseStrict(h.ID); err == nil {
		if last := ulid.Time(id.Time()); to.IsZero() || last.Before(to) {
			to = last
		}
	}
	return &progress{w: stderr, now: now, from: f.Since, to: to, last: now()}
}

// event counts one written event and redraws now and then.
func (p *progress) event(ev audit.Event) {
	p.n++
	if p.from.IsZero() {
		p.from = ev.Time // the first event starts the span
	}
	if p.n%256 != 0 {
		return
	}
	if now := p.now(); now.Sub(p.last) >= progressEvery {
		p.last = now
		p.shown = true
		fmt.Fprintf(p.w, "\rbastion: exported %d events, %s, up to %s ", p.n, p.percent(ev.Time), ev.Time.Format(time.RFC3339))
	}
}

// percent is how far t is through the export's span.
func (p *progress) percent(t time.Time) string {
	span := p.to.Sub(p.from)
	if span <= 0 {
		return "?%"
	}
	pc := 100 * float64(t.Sub(p.from)) / float64(span)
	return fmt.Sprintf("%.0f%%", min(max(pc, 0), 100))
}

// done ends the progress line, if one was drawn.
func (p *progress) done() {
	if p.shown {
		fmt.Fprintf(p.w, "\rbastion: exported %d events%30s\n", p.n, "")
	}
}

func newAuditVerifyCommand(a *app) *cobra.Command {
	var (
		anchorFile string
		rf         remoteFlags
		cf         clusterFlags
	)
	cmd := &cobra.Command{
		Use:   "verify [--anchor FILE]",
		Short: "Check the audit log's hash chain; exit 1 at the first edited, deleted or reordered event",
		Long: `Check the audit log's hash chain: every event's hash, its link to the one
before, the order of ids, the event count, and (after retention) that an
audit.pruned event vouches for the checkpoint the chain starts from.

On success it prints an anchor line naming the newest event. Keep it
somewhere this machine cannot write (a ticket, another host, a chat
message): a later ` + "`verify --anchor FILE`" + ` then proves the log was
neither cut back nor rewritten up to that event, which the chain alone
cannot show.`,
		Example: `  bastion audit verify --data-dir /var/lib/bastion
  bastion audit verify --data-dir /var/lib/bastion | tail -1 | ssh backup 'cat >> anchors/bastion1'
  bastion audit verify --data-dir /var/lib/bastion --anchor ./last-anchor
  bastion audit verify --cluster --config /etc/bastion/bastion.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cf.on {
				if anchorFile != "" {
					return errors.New("--anchor checks one log: use it without --cluster, with that gateway's data dir")
				}
				return a.verifyCluster(cmd.Context(), cf, rf)
			}
			if rf.gateway != "" {
				return errors.New("verify reads --data-dir; for a running gateway use --cluster (every gateway) or ssh GATEWAY audit anchor")
			}
			var anchor *audit.Anchor
			if anchorFile != "" {
				b, err := os.ReadFile(anchorFile)
				if err != nil {
					return fmt.Errorf("--anchor: %w", err)
				}
				an, err := audit.ParseAnchor(string(b))
				if err != nil {
					return fmt.Errorf("--anchor %s: %w", anchorFile, err)
				}
				anchor = &an
			}
			store, err := a.openAuditReadOnly()
			if err != nil {
				return err
			}
			defer store.Close()
			v, err := store.VerifyAnchored(cmd.Context(), anchor)
			var ce *audit.ChainError
			if errors.As(err, &ce) {
				return &exitError{code: 1, err: fmt.Errorf("audit log is NOT intact (%d events checked before the break): %w", v.Checked, err)}
			}
			var re *audit.RecordingsError
			if err != nil && !errors.As(err, &re) {
				return err
			}
			status := "ok"
			if re != nil {
				status = "hash chain ok, recordings NOT intact"
			}
			if v.From.Pruned > 0 {
				fmt.Fprintf(a.stdout, "%s: %d events, hash chain intact from the retention checkpoint (%d older events pruned; the oldest held event chains to %s, the hash of pruned event %s)\n",
					status, v.Checked, v.From.Pruned, v.From.Hash, v.From.ID)
			} else {
				fmt.Fprintf(a.stdout, "%s: %d events, hash chain intact\n", status, v.Checked)
			}
			printRecordings(a.stdout, v, re)
			switch {
			case anchor != nil && v.AnchorPruned:
				fmt.Fprintf(a.stdout, "anchor: event %d (%s) has been pruned by retention; the log is at least that long, its hash could not be compared\n", anchor.Seq, anchor.ID)
			case anchor != nil:
				fmt.Fprintf(a.stdout, "anchor: event %d (%s) is in the chain with the anchored hash\n", anchor.Seq, anchor.ID)
			}
			if open, err := store.OpenSessions(); err == nil && len(open) > 0 {
				fmt.Fprintf(a.stdout, "sessions without session.end: %d (live in a running gateway, or cut by a crash: the next `bastion serve` closes them with reason %s)\n", len(open), audit.ReasonGatewayCrashed)
			}
			if v.Head.ID != "" {
				fmt.Fprintln(a.stdout, v.Head.String())
			}
			if re != nil {
				return &exitError{code: 1, err: fmt.Errorf("%d session recordings are NOT intact (listed above); the hash chain itself is intact", len(re.Failed))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&anchorFile, "anchor", "", "a file holding an anchor line printed by an earlier verify; the log must still contain that event")
	rf.register(cmd, false)
	cf.register(cmd, "verify the hash chains (each reported on its own line)")
	return cmd
}

func newAuditSalvageCommand(a *app) *cobra.Command {
	var out, from string
	cmd := &cobra.Command{
		Use:   "salvage --out NEW.db [--from FILE]",
		Short: "Copy every readable, verifiable event of a damaged audit log into a new file",
		Long: `Read a damaged audit log page by page (without trusting its structure),
keep every event that decodes and whose own hash is right, and write them,
unchanged and in order, to a new log file, followed by an audit.salvaged
event. It reports how many events it recovered, how many records it could
not read, and where the chain has gaps; ` + "`audit verify`" + ` on the new file
stops at the first gap, so a loss is never hidden. Put the new file in
place of audit.db (keep the damaged one) once you have read the report.`,
		Example: `  bastion audit salvage --data-dir /var/lib/bastion --out /var/lib/bastion/audit.salvaged.db
  mv /var/lib/bastion/audit.db /var/lib/bastion/audit.db.damaged && mv /var/lib/bastion/audit.salvaged.db /var/lib/bastion/audit.db`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out is required: the new file to write (it must not exist)")
			}
			if from == "" {
				from = a.layout().AuditDB()
			}
			rep, err := audit.Salvage(cmd.Context(), from, out, time.Now)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "salvaged %d events (%s .. %s) from %s into %s\n", rep.Recovered, rep.First, rep.Last, from, out)
			fmt.Fprintf(a.stdout, "unreadable records: %d\n", rep.Unreadable)
			if rep.BreakCount == 0 {
				fmt.Fprintln(a.stdout, "chain: complete, no gaps")
				return nil
			}
			fmt.Fprintf(a.stdout, "chain: %d gaps (events lost before each of): %s\n", rep.BreakCount, strings.Join(rep.Breaks, ", "))
			return &exitError{code: 1, err: fmt.Errorf("the salvaged log has %d gaps; events were lost (see above)", rep.BreakCount)}
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "the new log file to write (must not exist)")
	cmd.Flags().StringVar(&from, "from", "", "the damaged log (default: audit.db in --data-dir)")
	return cmd
}

// printRecordings says how many session recordings verify checked, and
// lists by session each one that failed or that no digest covers.
func printRecordings(w io.Writer, v audit.Verification, re *audit.RecordingsError) {
	failed := 0
	if re != nil {
		failed = len(re.Failed)
	}
	fmt.Fprintf(w, "recordings: %d session recordings match the digests the audit log holds, %d failed, %d not (fully) verifiable\n", v.Recordings, failed, len(v.Unverified))
	if re != nil {
		for _, p := range re.Failed {
			fmt.Fprintf(w, "  FAILED session %s: %s\n", p.Session, p.Reason)
		}
	}
	for _, p := range v.Unverified {
		fmt.Fprintf(w, "  unverified session %s: %s\n", p.Session, p.Reason)
	}
}
