package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bastion-ssh/bastion/internal/textbound"
)

// typeSessionExec is the event the record-mode proxy writes for each exec
// or subsystem request of a session (field command, and subsystem for
// subsystems).
const typeSessionExec = TypeSessionExec

// Bounds on what a summary keeps of client-supplied strings.
const (
	maxSummaryCommands = 20
	maxSummaryString   = 200
)

// SessionFilter selects sessions for Sessions. Zero fields select
// everything.
type SessionFilter struct {
	// Since and Until bound the session's start: Since <= start < Until.
	Since, Until time.Time
	// User matches the session's user (its actor) exactly.
	User string
	// Target matches the target exactly, or its host part ("web1" matches
	// "web1:22").
	Target string
	// Active selects only sessions that have no session.end yet.
	Active bool
}

// SessionSummary is one session, from its session.start, session.exec and
// session.end events and its recording.
type SessionSummary struct {
	Session string    `json:"session"`
	User    string    `json:"user"`
	Login   string    `json:"login,omitempty"`
	Target  string    `json:"target,omitempty"`
	Remote  string    `json:"remote,omitempty"`
	Start   time.Time `json:"start"`
	// End and Duration are absent when not known: a session a crash cut
	// (reason gateway_crashed) ended at or after EndAfter, its last sign
	// of life in the log, and before EndBefore, when the restarted
	// gateway closed it; DurationMin is the duration up to EndAfter.
	End         time.Time `json:"end,omitzero"`
	Duration    *Millis   `json:"duration_ms,omitempty"`
	EndAfter    time.Time `json:"end_after,omitzero"`
	EndBefore   time.Time `json:"end_before,omitzero"`
	DurationMin *Millis   `json:"duration_min_ms,omitempty"`
	// Kind is shell, exec, sftp, scp or forward: the session.* events'
	// kind field when the gateway wrote one, else inferred from the
	// commands and whether there is a terminal recording.
	// A record-mode session's kind comes only from what happened in it:
	// the first shell, exec or subsystem request's kind, else "forward"
	// if it forwarded ports, else "none".
	Kind     string   `json:"kind"`
	Commands []string `json:"commands,omitempty"`
	// BytesUp and BytesDown are the session.end's counts; absent (nil)
	// while the session is active or when the end could not count them
	// (a crash).
	BytesUp   *int64 `json:"bytes_up,omitempty"`
	BytesDown *int64 `json:"bytes_down,omitempty"`
	// Recorded is the compressed size of the stored recording (0: none):
	// the session.end's figure, else the chunks stored so far (an active
	// session, or one whose recording could not be closed).
	Recorded int64 `json:"recorded_bytes"`
	// Recording is set when a recording of the session is stored.
	Recording bool `json:"recording"`
	// Active is set while the session has no session.end.
	Active bool   `json:"active"`
	Reason string `json:"reason,omitempty"`
	// Gateway is the gateway that held the session (its session.start's
	// "gateway" field; set in a cluster).
	Gateway string `json:"gateway,omitempty"`

	record, execKind bool // mode record; a session.exec said the kind
	forwarded        bool // a session.forward was seen
}

// Millis is a duration that encodes as whole milliseconds.
type Millis time.Duration

func millisPtr(d time.Duration) *Millis { m := Millis(d); return &m }

// MarshalJSON writes the milliseconds.
func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatInt(time.Duration(m).Milliseconds(), 10)), nil
}

// UnmarshalJSON reads the milliseconds MarshalJSON wrote, so a summary
// that crossed the wire (`audit sessions --cluster` merges the gateways'
// --json lists) keeps its duration.
func (m *Millis) UnmarshalJSON(b []byte) error {
	ms, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("audit: duration_ms %.40q is not a whole number of milliseconds", b)
	}
	*m = Millis(time.Duration(ms) * time.Millisecond)
	return nil
}

// Sessions lists the sessions that match f, in order of their start. The
// durations of active sessions run to now.
func (s *Store) Sessions(ctx context.Context, f SessionFilter) ([]SessionSummary, error) {
	byID := map[string]*SessionSummary{}
	var order []*SessionSummary
	err := s.Iterate(ctx, Filter{Since: f.Since, Types: []string{"session.*"}}, func(ev Event) error {
		if ev.Session == "" {
			return nil
		}
		sum := byID[ev.Session]
		if ev.Type == TypeSessionStart {
			if sum != nil || (!f.Until.IsZero() && !ev.Time.Before(f.Until)) {
				return nil
			}
			sum = &SessionSummary{
				Session: ev.Session, User: ev.Actor, Start: ev.Time, Active: true,
				Login: bound(ev.Fields["login"]), Target: bound(ev.Fields["target"]),
				Remote: bound(ev.Fields["remote"]), Kind: ev.Fields["kind"],
				Gateway: bound(ev.Fields[FieldGateway]), record: ev.Fields["mode"] == "record",
			}
			byID[ev.Session] = sum
			order = append(order, sum)
			return nil
		}
		if sum == nil {
			return nil // started before Since
		}
		if sum.Login == "" && ev.Fields["login"] != "" {
			// Record mode learns the inner login after the start.
			sum.Login = bound(ev.Fields["login"])
		}
		switch ev.Type {
		case TypeSessionForward:
			sum.forwarded = true
		case typeSessionExec:
			if k := ev.Fields["kind"]; k != "" && !sum.execKind {
				sum.Kind, sum.execKind = k, true
			}
			c := ev.Fields["command"]
			if sub := ev.Fields["subsystem"]; sub != "" {
				c = "subsystem " + sub
			}
			if len(sum.Commands) < maxSummaryCommands {
				sum.Commands = append(sum.Commands, bound(c))
			}
		case TypeSessionEnd:
			sum.Active = false
			ms, err := strconv.ParseInt(ev.Fields["duration_ms"], 10, 64)
			switch {
			case ev.Fields["reason"] == ReasonGatewayCrashed:
				// The end is the restart, not the crash: only bounds are
				// known (an older end's duration_ms is the lower one).
				minMS, merr := strconv.ParseInt(ev.Fields[FieldDurationMinMS], 10, 64)
				if merr != nil && err == nil {
					minMS, merr = ms, nil
				}
				if merr == nil && minMS >= 0 {
					sum.DurationMin = millisPtr(time.Duration(minMS) * time.Millisecond)
					sum.EndAfter = sum.Start.Add(time.Duration(minMS) * time.Millisecond)
				}
				if t, terr := time.Parse(time.RFC3339Nano, ev.Fields[FieldLastSeen]); terr == nil && !t.Before(sum.Start) {
					sum.EndAfter = t.UTC()
				}
				sum.EndBefore = ev.Time
			case err == nil:
				sum.End, sum.Duration = ev.Time, millisPtr(time.Duration(ms)*time.Millisecond)
			default:
				sum.End, sum.Duration = ev.Time, millisPtr(ev.Time.Sub(sum.Start))
			}
			sum.BytesUp, sum.BytesDown = parseCount(ev.Fields["bytes_up"]), parseCount(ev.Fields["bytes_down"])
			sum.Reason = bound(ev.Fields["reason"])
			if n, err := strconv.ParseInt(ev.Fields[FieldRecordingBytes], 10, 64); err == nil {
				sum.Recorded = n
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	recs := map[string]RecordingInfo{}
	if err := s.Recordings(func(ri RecordingInfo) error {
		if _, ok := byID[ri.Session]; ok {
			recs[ri.Session] = ri
		}
		return nil
	}); err != nil {
		return nil, err
	}
	now := s.now()
	var out []SessionSummary
	for _, sum := range order {
		if f.User != "" && sum.User != f.User {
			continue
		}
		if f.Target != "" && sum.Target != f.Target && hostOf(sum.Target) != f.Target {
			continue
		}
		if f.Active && !sum.Active {
			continue
		}
		if ri, ok := recs[sum.Session]; ok {
			sum.Recording = true
			if sum.Recorded == 0 {
				sum.Recorded = ri.Stored
			}
		}
		if sum.Active {
			sum.Duration = millisPtr(now.Sub(sum.Start))
		}
		sum.Kind = inferKind(sum)
		out = append(out, *sum)
	}
	return out, nil
}

// parseCount is a byte count field, nil when absent or not a number.
func parseCount(s string) *int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return nil
	}
	return &n
}

// inferKind names a session's kind when no event said it.
func inferKind(sum *SessionSummary) string {
	if sum.record && !sum.execKind {
		// Record mode audits every program it starts: no session.exec
		// means none ran, whatever channels were opened.
		if sum.forwarded {
			return "forward"
		}
		return "none"
	}
	switch sum.Kind {
	case "shell", "exec", "sftp", "scp", "forward":
		return sum.Kind
	case "":
	default:
		return bound(sum.Kind)
	}
	for _, c := range sum.Commands {
		switch {
		case c == "subsystem sftp" || strings.HasSuffix(c, "sftp-server") || strings.Contains(c, "sftp-server "):
			return "sftp"
		case c == "scp" || strings.HasPrefix(c, "scp "):
			return "scp"
		}
	}
	switch {
	case len(sum.Commands) > 0:
		return "exec"
	case sum.Recording:
		return "shell"
	}
	return "forward"
}

func hostOf(target string) string {
	if i := strings.LastIndexByte(target, ':'); i > 0 && !strings.Contains(target[i+1:], "]") {
		return strings.Trim(target[:i], "[]")
	}
	return target
}

// bound cuts a client-supplied string for display and makes it one line.
func bound(s string) string {
	s = textbound.Cut(strings.ToValidUTF8(s, "\uFFFD"), maxSummaryString)
	return printable([]byte(s))
}

// WriteSessions writes sessions as a table, or as JSON Lines when asJSON.
func WriteSessions(w io.Writer, sessions []SessionSummary, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, s := range sessions {
			if err := enc.Encode(s); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	// A cluster's sessions name their gateway; one gateway's need not.
	withGateway := false
	for _, s := range sessions {
		withGateway = withGateway || s.Gateway != ""
	}
	if withGateway {
		fmt.Fprint(tw, "GATEWAY\t")
	}
	fmt.Fprintln(tw, "SESSION\tUSER\tLOGIN\tTARGET\tSTART\tDURATION\tKIND\tBYTES UP/DOWN\tRECORDED")
	for _, s := range sessions {
		if withGateway {
			gw := s.Gateway
			if gw == "" {
				gw = "-"
			}
			fmt.Fprintf(tw, "%s\t", gw)
		}
		dur := durationText(s)
		rec := "-"
		if s.Recording {
			rec = humanBytes(s.Recorded)
			if s.Active {
				rec += " (live)" // stored so far
			}
		}
		bytesUpDown := countOrDash(s.BytesUp) + "/" + countOrDash(s.BytesDown)
		if s.Active {
			bytesUpDown = "- (live)"
		}
		login := s.Login
		if login == "" {
			login = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Session, bound(s.User), login, s.Target,
			s.Start.UTC().Format(time.RFC3339), dur, s.Kind, bytesUpDown, rec)
	}
	return tw.Flush()
}

// durationText is a session's DURATION cell: "≥3s" for a session a crash
// cut (only a lower bound is known), "unknown" when not even that is.
func durationText(s SessionSummary) string {
	if s.Duration == nil {
		if s.DurationMin != nil {
			if d := time.Duration(*s.DurationMin).Round(time.Second); d > 0 {
				return "≥" + d.String()
			}
		}
		return "unknown"
	}
	dur := time.Duration(*s.Duration).Round(time.Second).String()
	if s.Active {
		dur = "active " + dur
	}
	return dur
}

// countOrDash is humanBytes of a count, or "-" when it is unknown.
func countOrDash(n *int64) string {
	if n == nil {
		return "-"
	}
	return humanBytes(*n)
}

// humanBytes writes n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%dB", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
}
