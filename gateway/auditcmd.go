package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/auditquery"
)

// The auditor commands let holders of an auditor group read the audit log
// of the running gateway, which holds the log's file lock:
//
//	ssh auditor@bastion audit export [--since ..] [--until ..] [--type ..] [--actor ..] [--session ..] [--format jsonl|csv]
//	ssh auditor@bastion audit tail   [same flags]
//	ssh auditor@bastion audit sessions [--since ..] [--until ..] [--user ..] [--target ..] [--active] [--json]
//	ssh auditor@bastion audit play SESSION [--speed N] [--idle-limit D] [--format terminal|asciicast|text]
//	ssh auditor@bastion audit watch SESSION   (follow a live session read-only)
//
// They parse their flags with internal/auditquery, as `bastion audit
// export` does, and write with the same encoder, so an export over SSH is
// byte for byte the offline export of the same log. The store reads in
// pages of short transactions and the channel's flow control only ever
// blocks the command's own goroutine, so a slow or stalled reader holds no
// transaction and delays no authentication.

// ReasonNotAuditor is the audit reason of an audit command refused to a
// caller outside the auditor groups.
const ReasonNotAuditor = "not_auditor"

// logReader is what the auditor commands read the log through;
// *audit.Store is one. They work when the gateway's Deps.Audit also
// implements it.
type logReader interface {
	Export(ctx context.Context, w io.Writer, f audit.Filter, format audit.Format) error
	Follow(ctx context.Context, f audit.Filter, fn func(audit.Event) error) error
	FollowNew(ctx context.Context, f audit.Filter, fn func(audit.Event) error) error
	FollowLast(ctx context.Context, f audit.Filter, n int, fn func(audit.Event) error) error
}

// sessionReader is what the session commands (sessions, play, watch)
// read recordings through; *audit.Store is one.
type sessionReader interface {
	Sessions(ctx context.Context, f audit.SessionFilter) ([]audit.SessionSummary, error)
	Play(ctx context.Context, w io.Writer, session string, opts audit.PlayOptions) error
}

const auditUsage = `usage: audit export [flags]   write the matching events and exit
       audit tail [flags]     write each new matching event until you disconnect (--history: the log's first; -n N: its last N first)
       audit sessions [--since T] [--until T] [--user U] [--target HOST] [--active] [--json]
       audit play SESSION [--speed N] [--idle-limit D] [--format terminal|asciicast|text] [--channel N]
       audit watch SESSION [--format terminal|text]   follow a live session read-only
       audit anchor           verify the chain and print an anchor line for its end, to keep off this machine
flags: --since T  --until T  --type NAME[,NAME]  --actor WHO  --session ID  --format jsonl|csv
       T is RFC 3339 (2026-11-27T15:00:00Z), a date, or a duration ago (24h)
`

// isAuditor reports whether id belongs to an auditor group.
func (g *Gateway) isAuditor(id *Identity) bool {
	for _, grp := range g.cfg.AuditorGroups {
		if id.HasGroup(grp) {
			return true
		}
	}
	return false
}

// refuseAuditCommand tells a caller outside the auditor groups why the
// audit command is not theirs, and audits the refusal.
func (g *Gateway) refuseAuditCommand(cs *connState, sio *sessionIO, id *Identity, line string) int {
	groups := "none are configured: set auditor_groups in bastion.yaml"
	if len(g.cfg.AuditorGroups) > 0 {
		groups = strings.Join(g.cfg.AuditorGroups, ", ")
	}
	sio.errorf("bastion: audit needs membership of an auditor group (%s); %s is not a member\n", groups, id.User)
	g.auditRefusal(cs, audit.TypeRequestDenied, line, ReasonNotAuditor, "the caller is in no auditor group")
	return 126
}

// cmdAudit runs `audit export` and `audit tail`.
func (g *Gateway) cmdAudit(ctx context.Context, s *sessionIO, _ *Identity, args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "--help" || args[0] == "-h" {
		s.errorf("%s", auditUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub, args := args[0], args[1:]
	if hint := g.cliOnlyHint(sub, args); hint != "" {
		s.errorf("%s", hint)
		return 2
	}
	switch sub {
	case "sessions", "play", "watch":
		return g.cmdAuditSessions(ctx, s, sub, args)
	case "anchor":
		return g.cmdAuditAnchor(ctx, s)
	}
	if sub != "export" && sub != "tail" {
		s.errorf("bastion: audit has no subcommand %q\n%s", sub, auditUsage)
		return 2
	}
	q, err := auditquery.Parse("audit "+sub, args, g.now(), s.stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		s.errorf("bastion: %v\n", err)
		return 2
	}
	store, ok := g.deps.Audit.(logReader)
	if !ok {
		s.errorf("bastion: this gateway's audit log cannot be read through it\n")
		return 1
	}
	if sub == "export" {
		err = exportTo(ctx, store, s, q)
	} else {
		err = tailTo(ctx, store, s, q)
	}
	if err != nil {
		if ctx.Err() != nil {
			return 1 // the client went away; nobody reads a message
		}
		s.errorf("bastion: audit %s: %v\n", sub, err)
		return 1
	}
	return 0
}

// cliOnlyHint is, for `audit SUB --cluster ...` over SSH, why it is not
// served here and the exact CLI command that does it; "" otherwise. A
// gateway answers for its own log: the cluster-wide reads are the CLI's
// fan-out, which asks every gateway with the auditor's own certificate.
func (g *Gateway) cliOnlyHint(sub string, args []string) string {
	rest := make([]string, 0, len(args))
	cluster := false
	for _, a := range args {
		if a == "--cluster" || strings.HasPrefix(a, "--cluster=") {
			cluster = true
			continue
		}
		rest = append(rest, shellQuote(bounded(a)))
	}
	if !cluster {
		return ""
	}
	addr := "HOST:PORT"
	if cl := g.deps.Cluster; cl != nil && cl.Config().Advertise != "" {
		addr = cl.Config().Advertise
	}
	if sub == "anchor" {
		sub = "verify"
	}
	cmd := strings.Join(append([]string{"bastion audit", bounded(sub), "--cluster --gateway", addr}, rest...), " ")
	return fmt.Sprintf("bastion: audit %s --cluster is not served over SSH: each gateway answers for its own log, and the bastion CLI asks every gateway of the cluster with your certificate and merges them. Run on your machine:\n  %s\n", bounded(sub), cmd)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,:/=@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// chainVerifier is what `audit anchor` needs; *audit.Store is one.
type chainVerifier interface {
	VerifyChain(ctx context.Context) (audit.Verification, error)
}

// cmdAuditAnchor verifies the live log's chain and prints an anchor for
// its end: published off the machine (a cron job appending it to another
// host), it lets a later `bastion audit verify --anchor` prove the log
// was neither cut back nor rewritten up to it.
func (g *Gateway) cmdAuditAnchor(ctx context.Context, s *sessionIO) int {
	store, ok := g.deps.Audit.(chainVerifier)
	if !ok {
		s.errorf("bastion: this gateway's audit log cannot be verified through it\n")
		return 1
	}
	v, err := store.VerifyChain(ctx)
	var re *audit.RecordingsError
	if errors.As(err, &re) {
		s.errorf("bastion: the hash chain is intact (%d events) but session recordings are NOT: %v\n", v.Checked, err)
		return 1
	}
	if err != nil {
		s.errorf("bastion: audit log is NOT intact (%d events checked): %v\n", v.Checked, err)
		return 1
	}
	if v.Head.ID == "" {
		s.errorf("bastion: the audit log is empty\n")
		return 1
	}
	s.printf("%s\n", v.Head.String())
	return 0
}

// exportTo writes the events of q to the session with audit.Store.Export,
// as `bastion audit export` does offline: the same bytes, never
// translated for a pty.
func exportTo(ctx context.Context, store logReader, s *sessionIO, q auditquery.Query) error {
	return store.Export(ctx, s.stdout, q.Filter, q.Format)
}

// tailTo writes the events of q (with --history or --since; else only new
// ones, like tail -f) and then follows the log until ctx ends
// (the client disconnected) or a write fails. Each event is flushed as it
// comes, so the client sees it at once.
func tailTo(ctx context.Context, store logReader, s *sessionIO, q auditquery.Query) error {
	enc := audit.NewEncoder(s.stdout, q.Format)
	if q.Format == audit.FormatCSV {
		// The header row goes out before the first event, so a tail of a
		// quiet log still names its columns.
		if err := enc.Flush(); err != nil {
			return err
		}
	}
	follow := store.FollowNew
	switch {
	case q.Lines > 0:
		follow = func(ctx context.Context, f audit.Filter, fn func(audit.Event) error) error {
			return store.FollowLast(ctx, f, q.Lines, fn)
		}
	case q.FromStart():
		follow = store.Follow
	}
	err := follow(ctx, q.Filter, func(ev audit.Event) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return enc.Flush()
	})
	if ctx.Err() != nil {
		return nil // the client disconnected: the normal end of a tail
	}
	return err
}

// cmdAuditSessions runs `audit sessions`, `audit play` and `audit watch`,
// parsing with internal/auditquery as the CLI does offline, so the output
// is the offline command's.
func (g *Gateway) cmdAuditSessions(ctx context.Context, s *sessionIO, sub string, args []string) int {
	store, ok := g.deps.Audit.(sessionReader)
	if !ok {
		s.errorf("bastion: this gateway's sessions cannot be read through it\n")
		return 1
	}
	var err error
	switch sub {
	case "sessions":
		var q auditquery.SessionsQuery
		q, err = auditquery.ParseSessions("audit sessions", args, g.now(), s.stderr)
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		if err != nil {
			s.errorf("bastion: %v\n", err)
			return 2
		}
		var list []audit.SessionSummary
		if list, err = store.Sessions(ctx, q.Filter); err == nil {
			err = audit.WriteSessions(s.stdout, list, q.JSON)
		}
	default: // play, watch
		var q auditquery.PlayQuery
		q, err = auditquery.ParsePlay("audit "+sub, args, s.stderr)
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		if err != nil {
			s.errorf("bastion: %v\n", err)
			return 2
		}
		opts := q.Options
		opts.Stderr = s.stderr
		if sub == "watch" {
			opts.Follow = true
			if opts.Format == audit.PlayAsciicast {
				s.errorf("bastion: audit watch writes terminal or text; use audit play for asciicast\n")
				return 2
			}
		}
		err = store.Play(ctx, s.stdout, q.Session, opts)
		if errors.Is(err, audit.ErrNoRecording) {
			if where := g.heldElsewhere(ctx, q.Session, sub); where != "" {
				s.errorf("bastion: %s\n", where)
				return 1
			}
			s.errorf("bastion: session %s has no recording (see audit sessions: only record-mode sessions are recorded)\n", q.Session)
			return 1
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return 1 // the client went away; nobody reads a message
		}
		s.errorf("bastion: audit %s: %v\n", sub, err)
		return 1
	}
	return 0
}
