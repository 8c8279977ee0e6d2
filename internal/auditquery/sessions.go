package auditquery

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/bastion-ssh/bastion/audit"
)

// SessionsQuery is a parsed `audit sessions` request.
type SessionsQuery struct {
	Filter audit.SessionFilter
	// JSON asks for JSON Lines instead of a table.
	JSON bool
}

// SessionFlags are the flags of `audit sessions`, as typed.
type SessionFlags struct {
	Since, Until, User, Target string
	Active, JSON               bool
}

// Register adds the flags to fs.
func (f *SessionFlags) Register(fs *pflag.FlagSet) {
	fs.StringVar(&f.Since, "since", "", "only sessions started at or after: RFC 3339 time, YYYY-MM-DD (local midnight), or a duration ago such as 24h")
	fs.StringVar(&f.Until, "until", "", "only sessions started before: same forms as --since")
	fs.StringVar(&f.User, "user", "", "only sessions of this user")
	fs.StringVar(&f.Target, "target", "", "only sessions to this target (host or host:port)")
	fs.BoolVar(&f.Active, "active", false, "only sessions still open (no session.end yet)")
	fs.BoolVar(&f.JSON, "json", false, "write JSON Lines instead of a table")
}

// Query resolves the flags; relative times count back from now.
func (f *SessionFlags) Query(now time.Time) (SessionsQuery, error) {
	since, err := ParseTime(f.Since, now)
	if err != nil {
		return SessionsQuery{}, fmt.Errorf("--since: %w", err)
	}
	until, err := ParseTime(f.Until, now)
	if err != nil {
		return SessionsQuery{}, fmt.Errorf("--until: %w", err)
	}
	if !since.IsZero() && !until.IsZero() && !since.Before(until) {
		return SessionsQuery{}, fmt.Errorf("--since %s is not before --until %s", since.Format(time.RFC3339), until.Format(time.RFC3339))
	}
	return SessionsQuery{Filter: audit.SessionFilter{Since: since, Until: until, User: f.User, Target: f.Target, Active: f.Active}, JSON: f.JSON}, nil
}

// ParseSessions parses an `audit sessions` command line as the gateway
// receives it; --help writes usage and returns pflag.ErrHelp.
func ParseSessions(name string, args []string, now time.Time, usage io.Writer) (SessionsQuery, error) {
	var f SessionFlags
	if err := parseFlagsOnly(name, args, usage, f.Register, "--since, --until, --user, --target, --active, --json"); err != nil {
		return SessionsQuery{}, err
	}
	q, err := f.Query(now)
	if err != nil {
		return SessionsQuery{}, fmt.Errorf("auditquery: %w", err)
	}
	return q, nil
}

// Args renders q as flags ParseSessions reads back, times absolute.
func (q SessionsQuery) Args() []string {
	var args []string
	f := q.Filter
	if !f.Since.IsZero() {
		args = append(args, "--since="+f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		args = append(args, "--until="+f.Until.UTC().Format(time.RFC3339Nano))
	}
	if f.User != "" {
		args = append(args, "--user="+f.User)
	}
	if f.Target != "" {
		args = append(args, "--target="+f.Target)
	}
	if f.Active {
		args = append(args, "--active")
	}
	if q.JSON {
		args = append(args, "--json")
	}
	return args
}

// PlayQuery is a parsed `audit play` request.
type PlayQuery struct {
	Session string
	Options audit.PlayOptions
}

// PlayFlags are the flags of `audit play`, as typed.
type PlayFlags struct {
	Speed     float64
	IdleLimit time.Duration
	Format    string
	Channel   int
}

// Register adds the flags to fs.
func (f *PlayFlags) Register(fs *pflag.FlagSet) {
	fs.Float64Var(&f.Speed, "speed", 1, "replay N times faster (terminal format)")
	fs.DurationVar(&f.IdleLimit, "idle-limit", 0, "cap every pause at this duration, such as 2s (terminal and asciicast)")
	fs.StringVar(&f.Format, "format", string(audit.PlayTerminal), "terminal (replay with timing), asciicast (a .cast file for asciinema) or text (transcript without control sequences)")
	fs.IntVar(&f.Channel, "channel", audit.AutoChannel, "the SSH channel to play (default: the first terminal; text shows every channel)")
}

// Query checks the flags and returns the request for session.
func (f *PlayFlags) Query(session string) (PlayQuery, error) {
	if err := ValidSession(session); err != nil {
		return PlayQuery{}, err
	}
	format, err := audit.ParsePlayFormat(f.Format)
	if err != nil {
		return PlayQuery{}, fmt.Errorf("--format: %w", err)
	}
	if f.Speed <= 0 || f.Speed > 1000 {
		return PlayQuery{}, fmt.Errorf("--speed %v: want a number above 0 and at most 1000", f.Speed)
	}
	if f.IdleLimit < 0 {
		return PlayQuery{}, fmt.Errorf("--idle-limit %s: must not be negative", f.IdleLimit)
	}
	if f.Channel < audit.AutoChannel {
		return PlayQuery{}, fmt.Errorf("--channel %d: want a channel number from `audit play --format text`", f.Channel)
	}
	return PlayQuery{Session: session, Options: audit.PlayOptions{Format: format, Speed: f.Speed, IdleLimit: f.IdleLimit, Channel: f.Channel}}, nil
}

// ParsePlay parses an `audit play SESSION` (or `audit watch SESSION`)
// command line as the gateway receives it.
func ParsePlay(name string, args []string, usage io.Writer) (PlayQuery, error) {
	var f PlayFlags
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.Register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(usage, "usage: %s SESSION [flags]\n%s", name, fs.FlagUsages())
		}
		return PlayQuery{}, fmt.Errorf("auditquery: %w", err)
	}
	if fs.NArg() != 1 {
		return PlayQuery{}, fmt.Errorf("auditquery: %s takes one session id (see `audit sessions`), got %d arguments", name, fs.NArg())
	}
	q, err := f.Query(fs.Arg(0))
	if err != nil {
		return PlayQuery{}, fmt.Errorf("auditquery: %w", err)
	}
	return q, nil
}

// Args renders q as the arguments ParsePlay reads back.
func (q PlayQuery) Args() []string {
	o := q.Options
	args := []string{q.Session, "--format=" + string(o.Format), "--speed=" + strconv.FormatFloat(o.Speed, 'g', -1, 64)}
	if o.IdleLimit > 0 {
		args = append(args, "--idle-limit="+o.IdleLimit.String())
	}
	if o.Channel != audit.AutoChannel {
		args = append(args, "--channel="+strconv.Itoa(o.Channel))
	}
	return args
}

// ValidSession checks a session id as typed: 1 to 64 letters, digits,
// '-' or '_' (the gateway's ids are 16 hex digits).
func ValidSession(s string) error {
	if s == "" || len(s) > 64 {
		return fmt.Errorf("session id %q: want the id `audit sessions` lists (16 hex digits)", truncate(s))
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("session id %q: want the id `audit sessions` lists (16 hex digits)", truncate(s))
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
