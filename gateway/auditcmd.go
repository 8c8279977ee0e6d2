package gateway

import (
	"context"
	"errors"
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
}

const auditUsage = `usage: audit export [flags]   write the matching events and exit
       audit tail [flags]     write the matching events, then follow new ones until you disconnect
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
	if sub == "anchor" {
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

// tailTo writes the events of q and then follows the log until ctx ends
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
	err := store.Follow(ctx, q.Filter, func(ev audit.Event) error {
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
