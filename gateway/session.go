package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	shlex "github.com/anmitsu/go-shlex"
	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

// command is a built-in the gateway runs in a session channel. There is no
// shell: these are the only programs the gateway ever runs.
type command struct {
	summary string
	// group, if set, is required of the caller (AdminGroups for "admin").
	admin bool
	// auditor, if set, requires membership of one of AuditorGroups.
	auditor bool
	run     func(ctx context.Context, s *sessionIO, id *Identity, args []string) int
}

// sessionIO is a session channel seen by a command.
type sessionIO struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	// crlf is set when the client asked for a pty: its terminal needs \r\n.
	crlf bool
}

// printf writes to stdout, translating newlines on a pty.
func (s *sessionIO) printf(format string, args ...any) {
	out := fmt.Sprintf(format, args...)
	if s.crlf {
		out = strings.ReplaceAll(out, "\n", "\r\n")
	}
	io.WriteString(s.stdout, out)
}

// errorf writes to stderr, translating newlines on a pty; internal
// package prefixes are dropped from what the user reads.
func (s *sessionIO) errorf(format string, args ...any) {
	out := usertext.Clean(fmt.Sprintf(format, args...))
	if s.crlf {
		out = strings.ReplaceAll(out, "\n", "\r\n")
	}
	io.WriteString(s.stderr, out)
}

// handleSession serves a session channel on the gateway itself: no shell,
// only the built-in commands. pty-req, env and window-change are accepted
// (and ignored but for line endings); agent forwarding, X11 and subsystems
// are refused and audited; the certificate's force-command, if any,
// replaces whatever the client asked to run.
func (g *Gateway) handleSession(_ *gliderssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	cs := stateOf(ctx)
	id, err := cs.touch(g, conn)
	if err != nil {
		nc.Reject(gossh.Prohibited, "bastion: "+err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	g.metrics.channels.WithLabelValues("session").Inc()
	defer g.metrics.channels.WithLabelValues("session").Dec()
	sio := &sessionIO{stdout: ch, stderr: ch.Stderr(), stdin: g.sessionInput(cs, id.User, ch)}
	for req := range reqs {
		if _, err := cs.touch(g, conn); err != nil {
			req.Reply(false, nil)
			return
		}
		switch req.Type {
		case "pty-req":
			if !id.Login && !id.Permits("permit-pty") {
				g.auditRefusal(cs, audit.TypeRequestDenied, "pty-req", ReasonPTYNotPermitted, "the certificate does not permit a pty")
				req.Reply(false, nil)
				continue
			}
			sio.crlf = true
			req.Reply(true, nil)
		case "env", "window-change", "signal", "break":
			req.Reply(req.Type != "signal", nil)
		case "shell", "exec":
			var line string
			if req.Type == "exec" {
				var p struct{ Command string }
				if err := gossh.Unmarshal(req.Payload, &p); err != nil {
					req.Reply(false, nil)
					continue
				}
				line = p.Command
				if len(line) > maxCommandLine {
					g.auditRefusal(cs, audit.TypeRequestDenied, "exec "+line, ReasonCommandTooLong, fmt.Sprintf("a command line of %d bytes (at most %d)", len(line), maxCommandLine))
					req.Reply(false, nil)
					continue
				}
			}
			req.Reply(true, nil)
			var status int
			if id.Login {
				// Until its exit status is sent, Shutdown waits for it.
				endLogin := g.trackLogin()
				defer endLogin()
				status = g.runLogin(ctx, cs, conn, id, sio, line)
			} else {
				if id.ForceCommand != "" {
					line = id.ForceCommand
				}
				// A command that bars its own caller (an admin revoking
				// their certificate, locking themselves) still gets its
				// output and exit status out before the connection ends.
				release := cs.holdEnd()
				defer release()
				status = g.runCommand(ctx, cs, id, sio, line)
			}
			ch.CloseWrite()
			ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{uint32(status)}))
			if err := cs.bar.release(); err != nil {
				g.endBarred(cs, id, err)
			}
			return
		default:
			// auth-agent-req@openssh.com, x11-req, subsystem and the rest.
			g.auditRefusal(cs, audit.TypeRequestDenied, req.Type, "not_supported", "the gateway does not "+describeRequest(req.Type))
			req.Reply(false, nil)
		}
	}
}

// runCommand runs one built-in and audits it.
func (g *Gateway) runCommand(ctx context.Context, cs *connState, id *Identity, sio *sessionIO, line string) int {
	args, err := shlex.Split(line, true)
	if err != nil {
		sio.errorf("bastion: cannot parse command: %v\n", err)
		return 2
	}
	name := "info"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	cmd, ok := g.commands[name]
	if ok && cmd.admin && (name == "lock" || name == "revoke") && g.isAdmin(id) {
		// An admin locking or revoking themselves learns that it took
		// before the connection ends (the caller releases the hold).
		cs.bar.hold()
	}
	status := 127
	refused := false
	// A command's output is what it gives the user, so it is held back
	// until the command's record is durable: if the record cannot be
	// written, the user gets the audit-unavailable line instead. The
	// audit commands stream (a tail never ends) and write as they go;
	// they are gated only by the check below.
	out := sio
	var held *heldOutput
	if ok && !cmd.auditor {
		held = &heldOutput{}
		out = &sessionIO{stdout: &held.stdout, stderr: &held.stderr, stdin: sio.stdin, crlf: sio.crlf}
	}
	switch {
	case g.spool.down():
		refused = true
		// Its record could not be made durable: refuse, and keep the
		// record of the refusal for when the log takes writes again.
		sio.errorf("bastion: %s\n", MsgAuditUnavailable)
		status = 1
	case cs.staleOnly.Load() && !staleCommand(name, args):
		sio.errorf("bastion: %s\nWhile it admits no new session this gateway serves admins and auditors only `cluster status`, `cluster sessions` and `info` (its own view); run %s through another gateway.\n", g.clusterRefusalMessage(), bounded(name))
		status = 1
	case !ok:
		sio.errorf("bastion: the gateway runs no shell and has no command %q.\nTo reach a host: ssh -J %s@<gateway> %s@HOST\nCommands here: %s\n", name, id.User, id.User, g.commandList(id))
	case cmd.admin && !g.isAdmin(id):
		sio.errorf("bastion: %s needs membership of an admin group (%s)\n", name, strings.Join(g.cfg.AdminGroups, ", "))
		status = 126
	case cmd.auditor && !g.isAuditor(id):
		status = g.refuseAuditCommand(cs, sio, id, line)
	default:
		status = cmd.run(ctx, out, id, args)
		if cmd.admin {
			if err := g.checker.recheck(id); err != nil {
				// It barred the admin's own credential: say so, since
				// the connection ends right after this output.
				detail := err.Error()
				var ae *authError
				if errors.As(err, &ae) {
					detail = ae.detail
				}
				out.errorf("bastion: this also bars you (%s): your connection to the gateway ends now\n", detail)
			}
		}
	}
	f := id.auditFields()
	f["command"], f["exit_status"], f["remote"], f["conn"] = line, fmt.Sprint(status), cs.remote.String(), cs.id
	if refused {
		f["refused"] = ReasonAuditUnavailable
	}
	ev := audit.Event{Type: audit.TypeCommand, Actor: id.User, Session: cs.id, Fields: f}
	if err := g.recordOrRefuse(context.Background(), ev); err != nil {
		// It ran (a lock it took is on record with the lock itself), so
		// its record is kept for later; its output is not given.
		if storeFault(context.Background(), err) {
			f["output_withheld"] = ReasonAuditUnavailable
			g.spool.keep(ev)
		}
		if held != nil && !refused {
			sio.errorf("bastion: %s\n", MsgAuditUnavailable)
			return 1
		}
	}
	if held != nil {
		_, _ = io.Copy(sio.stdout, &held.stdout)
		_, _ = io.Copy(sio.stderr, &held.stderr)
	}
	return status
}

// staleCommand reports whether a command is served to an admin or
// auditor let in while the gateway cannot reach etcd: the read-only
// views of its own state.
func staleCommand(name string, args []string) bool {
	return name == "info" || name == "cluster" && len(args) > 0 && (args[0] == "status" || args[0] == "sessions")
}

// heldOutput is a built-in command's output, held until its record is
// durable.
type heldOutput struct {
	stdout, stderr bytes.Buffer
}

func (g *Gateway) isAdmin(id *Identity) bool {
	for _, grp := range g.cfg.AdminGroups {
		if id.HasGroup(grp) {
			return true
		}
	}
	return false
}

// commandList names the commands id may run.
func (g *Gateway) commandList(id *Identity) string {
	var names []string
	for _, n := range []string{"info", "lock", "unlock", "locks", "revoke", "krl", "bans", "unban", "audit", "cluster"} {
		if n == "cluster" && (g.deps.Cluster == nil || !g.isAdmin(id) && !g.isAuditor(id)) {
			continue
		}
		if c, ok := g.commands[n]; ok && (!c.admin || g.isAdmin(id)) && (!c.auditor || g.isAuditor(id)) {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}

func (g *Gateway) builtinCommands() map[string]command {
	return map[string]command{
		"info":    {summary: "who you are and where you may go", run: g.cmdInfo},
		"lock":    {summary: "lock USER [--reason TEXT]: refuse USER and end their sessions", admin: true, run: g.cmdLock},
		"unlock":  {summary: "unlock USER", admin: true, run: g.cmdUnlock},
		"locks":   {summary: "locks [--json]: list locked users", admin: true, run: g.cmdLocks},
		"revoke":  {summary: "revoke (--serial N | --key-id ID | --user NAME | --key KEY) [--reason TEXT]: revoke certificates and end their sessions", admin: true, run: g.cmdRevoke},
		"krl":     {summary: "write the revocation list as an OpenSSH KRL to stdout", admin: true, run: g.cmdKRL},
		"bans":    {summary: "bans [--json]: list banned sources and when their bans end", admin: true, run: g.cmdBans},
		"unban":   {summary: "unban ADDRESS: lift the ban on a source (an IPv4 address or an IPv6 /64)", admin: true, run: g.cmdUnban},
		"audit":   {summary: "audit export|tail|sessions|play|watch: read the audit log and session recordings (auditor groups)", auditor: true, run: g.cmdAudit},
		"cluster": {summary: "cluster status|sessions [--json]: the gateways of this cluster, their live sessions, this gateway's view of etcd (admin or auditor groups; cluster forget and audit --cluster are CLI commands)", run: g.cmdCluster},
	}
}

// cmdInfo prints who the caller is, when their certificate expires and
// where they may jump.
func (g *Gateway) cmdInfo(_ context.Context, s *sessionIO, id *Identity, _ []string) int {
	left := id.ValidUntil.Sub(g.now()).Round(time.Minute)
	s.printf("bastion: you are %s (key id %q, serial %d)\n", id.User, id.KeyID, id.Serial)
	s.printf("  principals:  %s\n", strings.Join(id.Principals, ", "))
	if len(id.Groups) > 0 {
		s.printf("  groups:      %s\n", strings.Join(id.Groups, ", "))
	}
	s.printf("  certificate: expires %s (in %s)\n", id.ValidUntil.Format(time.RFC3339), left)
	s.printf("  you may reach:\n")
	any := false
	for _, r := range g.access.rules {
		if !r.appliesTo(id) {
			continue
		}
		any = true
		hosts := make([]string, len(r.hosts))
		for i, h := range r.hosts {
			hosts[i] = h.raw
		}
		s.printf("    %s  port %s\n", strings.Join(hosts, ", "), joinInts(r.ports))
	}
	if !any {
		s.printf("    nothing: no access rule covers you\n")
	}
	s.printf("  jump with:   ssh -J %s@<this gateway> %s@HOST\n", id.User, id.User)
	if err := g.admitCluster(); err != nil {
		// Served while the gateway admits nothing else (admins and
		// auditors): the state is part of the answer, not a banner.
		s.printf("  cluster:     NEW SESSIONS REFUSED on this gateway: %s\n", strings.TrimPrefix(err.Error(), cluster.ErrStale.Error()+": "))
		s.printf("               while it cannot reach etcd it serves admins and auditors only cluster status, cluster sessions and info\n")
	}
	return 0
}

func (g *Gateway) cmdLock(ctx context.Context, s *sessionIO, id *Identity, args []string) int {
	target, reason, force, err := parseLockArgs(args)
	if err != nil {
		s.errorf("bastion: %v\nusage: lock USER [--reason TEXT] [--force]\n", err)
		return 2
	}
	if !force && id.subject().LockedBy(target) {
		s.errorf("bastion: locking %s would bar you too (your certificate names %s): this session would end and you could not unlock it through the gateway; pass --force to lock anyway\n", target, target)
		return 1
	}
	locks := g.deps.Authority.State().Locks
	was := locks.IsLocked(target)
	err = locks.Lock(ctx, ca.Lock{Target: target, Reason: reason, By: id.User})
	if errors.Is(err, ca.ErrPending) {
		defer s.errorf("warning: etcd did not answer: the lock is %v\n", err)
	} else if err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	if was {
		s.printf("%s is already locked (lock renewed with this reason)\n", target)
		return 0
	}
	s.printf("locked %s\n", target)
	return 0
}

func (g *Gateway) cmdUnlock(ctx context.Context, s *sessionIO, id *Identity, args []string) int {
	if len(args) != 1 {
		s.errorf("usage: unlock USER\n")
		return 2
	}
	if err := g.deps.Authority.State().Locks.Unlock(ctx, args[0], id.User); errors.Is(err, ca.ErrNotLocked) {
		s.printf("%s is not locked\n", args[0])
		return 0
	} else if errors.Is(err, ca.ErrPending) {
		defer s.errorf("warning: etcd did not answer: the unlock is %v\n", err)
	} else if err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	s.printf("unlocked %s\n", args[0])
	return 0
}

func (g *Gateway) cmdLocks(_ context.Context, s *sessionIO, _ *Identity, args []string) int {
	asJSON, ok := listFlag(args)
	if !ok {
		s.errorf("usage: locks [--json]\n")
		return 2
	}
	return writeList(s, g.deps.Authority.State().Locks.List(), asJSON, "locks", FormatLock)
}

// FormatLock is a lock as `locks` lists it: target, time, by, reason.
func FormatLock(lk ca.Lock) string {
	return fmt.Sprintf("%s\t%s\t%s\t%s", ca.Printable(lk.Target), lk.Time.UTC().Format(time.RFC3339), ca.Printable(lk.By), ca.Printable(lk.Reason))
}

// parseLockArgs reads "USER [--reason TEXT]".
func parseLockArgs(args []string) (target, reason string, force bool, err error) {
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--force":
			force = true
		case a == "--reason" && i+1 < len(args):
			reason = args[i+1]
			i++
		case strings.HasPrefix(a, "--reason="):
			reason = strings.TrimPrefix(a, "--reason=")
		case strings.HasPrefix(a, "-"):
			return "", "", false, fmt.Errorf("unknown flag %s", a)
		case target == "":
			target = a
		default:
			return "", "", false, fmt.Errorf("one user at a time")
		}
	}
	if target == "" {
		return "", "", false, fmt.Errorf("name the user to lock")
	}
	if err := ca.CheckReason(reason); err != nil {
		return "", "", false, fmt.Errorf("--reason: %w", err)
	}
	return target, reason, force, nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ", ")
}
