// Package auditquery parses the flags that select and format audit events
// for `audit export` and `audit tail`. The CLI (`bastion audit export`)
// and the gateway's auditor commands (`ssh auditor@bastion audit export`)
// both parse with it, so the same flags select the same events and write
// the same bytes wherever they run.
package auditquery

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/bastion-ssh/bastion/audit"
)

// Query is a parsed request: which events, in which format.
type Query struct {
	Filter audit.Filter
	Format audit.Format
	// History makes a tail print the matching events already in the log
	// before following; without it (and without --since) a tail starts at
	// the end, like tail -f. See FromStart.
	History bool
	// Lines makes a tail print the last Lines matching events already in
	// the log before following, like tail -n N -f.
	Lines int
}

// Flags are the flag values as typed, before times are resolved.
type Flags struct {
	Since, Until, Actor, Session string
	Types                        []string
	Format                       string
	History                      bool
	Lines                        int
}

// Register adds the flags to fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	fs.StringVar(&f.Since, "since", "", "only events at or after: RFC 3339 time, YYYY-MM-DD (local midnight), or a duration ago such as 24h")
	fs.StringVar(&f.Until, "until", "", "only events before: same forms as --since")
	fs.StringSliceVar(&f.Types, "type", nil, "only these event types (repeatable or comma-separated; auth.* matches a family)")
	fs.StringVar(&f.Actor, "actor", "", "only events by this actor")
	fs.StringVar(&f.Session, "session", "", "only events of this session id")
	fs.StringVar(&f.Format, "format", string(audit.FormatJSONL), "output format: jsonl or csv")
}

// RegisterTail adds the flags of `audit tail`: Register's, --history
// and -n/--lines.
func (f *Flags) RegisterTail(fs *pflag.FlagSet) {
	f.Register(fs)
	fs.BoolVar(&f.History, "history", false, "print the matching events already in the log first (default: only new ones, like tail -f; --since implies it)")
	fs.IntVarP(&f.Lines, "lines", "n", 0, "print the last N matching events already in the log first, then follow (like tail -n N -f)")
}

// Query resolves the flags into a Query; relative times count back from
// now, dates are local midnight.
func (f *Flags) Query(now time.Time) (Query, error) {
	format, err := audit.ParseFormat(f.Format)
	if err != nil {
		return Query{}, fmt.Errorf("--format: %w", err)
	}
	since, err := ParseTime(f.Since, now)
	if err != nil {
		return Query{}, fmt.Errorf("--since: %w", err)
	}
	until, err := ParseTime(f.Until, now)
	if err != nil {
		return Query{}, fmt.Errorf("--until: %w", err)
	}
	q := Query{
		Filter:  audit.Filter{Since: since, Until: until, Types: f.Types, Actor: f.Actor, Session: f.Session},
		Format:  format,
		History: f.History,
		Lines:   f.Lines,
	}
	if f.Lines < 0 {
		return Query{}, fmt.Errorf("--lines: %d is negative: give the number of recent events to print first", f.Lines)
	}
	if f.Lines > 0 && f.History {
		return Query{}, errors.New("--lines and --history: give one (--history prints every matching event in the log, --lines N the last N)")
	}
	if err := q.Filter.Validate(); err != nil {
		return Query{}, err
	}
	for _, t := range f.Types {
		if err := audit.CheckKnownType(t); err != nil {
			return Query{}, fmt.Errorf("--type: %w", err)
		}
	}
	return q, nil
}

// Parse parses a command line of these flags and nothing else, as the
// gateway receives it. Errors name the flag; usage, when asked for with
// --help, is written to usage and reported as pflag.ErrHelp.
func Parse(name string, args []string, now time.Time, usage io.Writer) (Query, error) {
	var f Flags
	register := f.Register
	if strings.HasSuffix(name, "tail") {
		register = f.RegisterTail
	}
	hint := "--since, --until, --type, --actor, --session, --format"
	if strings.HasSuffix(name, "tail") {
		hint += ", --history, -n/--lines"
	}
	if err := parseFlagsOnly(name, args, usage, register, hint); err != nil {
		return Query{}, err
	}
	q, err := f.Query(now)
	if err != nil {
		return Query{}, fmt.Errorf("auditquery: %w", err)
	}
	return q, nil
}

// FromStart reports whether a tail of q prints the log's matching events
// before following: --history, or --since (which asks for events from a
// time).
func (q Query) FromStart() bool { return q.History || !q.Filter.Since.IsZero() }

// Args renders q as flags Parse reads back to the same Query, with times
// absolute (RFC 3339, UTC), so a query resolved on one machine means the
// same on another whatever its clock or time zone.
func (q Query) Args() []string {
	var args []string
	f := q.Filter
	if !f.Since.IsZero() {
		args = append(args, "--since="+f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		args = append(args, "--until="+f.Until.UTC().Format(time.RFC3339Nano))
	}
	if len(f.Types) > 0 {
		args = append(args, "--type="+strings.Join(f.Types, ","))
	}
	if f.Actor != "" {
		args = append(args, "--actor="+f.Actor)
	}
	if f.Session != "" {
		args = append(args, "--session="+f.Session)
	}
	if q.Format != "" {
		args = append(args, "--format="+string(q.Format))
	}
	if q.History {
		args = append(args, "--history")
	}
	if q.Lines > 0 {
		args = append(args, "--lines="+strconv.Itoa(q.Lines))
	}
	return args
}

// ParseTime accepts RFC 3339, a date (local midnight), or a duration
// before now; "" is the zero time (no bound).
func ParseTime(s string, now time.Time) (time.Time, error) {
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

// parseFlagsOnly parses args, a command line of the flags register adds
// and nothing else, as the gateway receives it. --help writes usage and
// is reported as pflag.ErrHelp; a stray argument is an error naming the
// flags (hint).
func parseFlagsOnly(name string, args []string, usage io.Writer, register func(*pflag.FlagSet), hint string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(usage, "usage: %s [flags]\n%s", name, fs.FlagUsages())
		}
		return fmt.Errorf("auditquery: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("auditquery: unexpected argument %q: %s takes flags only (%s)", fs.Arg(0), name, hint)
	}
	return nil
}
