package auditquery

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/bastion-ssh/bastion/audit"
)

var now = time.Date(2026, 11, 27, 15, 0, 0, 0, time.UTC)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want Query
		err  string
	}{
		{"defaults", nil, Query{Format: audit.FormatJSONL}, ""},
		{"everything", []string{"--since", "2026-11-01T00:00:00Z", "--until=2026-11-02T00:00:00Z", "--type", "auth.*", "--type", "cert.issued,cert.revoked", "--actor", "alice", "--session", "s1", "--format", "csv"},
			Query{Filter: audit.Filter{
				Since: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), Until: time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC),
				Types: []string{"auth.*", "cert.issued", "cert.revoked"}, Actor: "alice", Session: "s1",
			}, Format: audit.FormatCSV}, ""},
		{"relative", []string{"--since", "24h"}, Query{Filter: audit.Filter{Since: now.Add(-24 * time.Hour)}, Format: audit.FormatJSONL}, ""},
		{"bad format", []string{"--format", "xml"}, Query{}, "--format"},
		{"bad time", []string{"--since", "yesterday"}, Query{}, "--since"},
		{"bad type", []string{"--type", "AUTH"}, Query{}, "filter type"},
		{"since after until", []string{"--since", "2h", "--until", "3h"}, Query{}, "not before"},
		{"positional", []string{"auth.failed"}, Query{}, "flags only"},
		{"unknown flag", []string{"--rm", "-rf"}, Query{}, "unknown flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("audit export", tc.args, now, &bytes.Buffer{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "auditquery: ") {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	var usage bytes.Buffer
	if _, err := Parse("audit tail", []string{"--help"}, now, &usage); !errors.Is(err, pflag.ErrHelp) || !strings.Contains(usage.String(), "--since") {
		t.Errorf("--help: %v, usage %q", err, usage.String())
	}
}

// TestArgsRoundTrip: a query resolved on one machine and sent as Args
// means the same on the other, whatever its clock.
func TestArgsRoundTrip(t *testing.T) {
	var f Flags
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	f.Register(fs)
	if err := fs.Parse([]string{"--since", "90m", "--until", "2026-11-28", "--type", "auth.*,login.failed", "--actor", "bob smith", "--format", "csv"}); err != nil {
		t.Fatal(err)
	}
	q, err := f.Query(now)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse("audit export", q.Args(), now.Add(1000*time.Hour), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !back.Filter.Since.Equal(q.Filter.Since) || !back.Filter.Until.Equal(q.Filter.Until) ||
		!reflect.DeepEqual(back.Filter.Types, q.Filter.Types) || back.Filter.Actor != "bob smith" || back.Format != audit.FormatCSV {
		t.Errorf("round trip changed the query:\n%+v\n%+v", q, back)
	}
}

// FuzzParse: the gateway parses these flags from whatever a client sends.
// Parse never panics, and what it accepts survives Args.
func FuzzParse(f *testing.F) {
	f.Add("--since\x002026-11-01T00:00:00Z\x00--type\x00auth.*")
	f.Add("--format=csv\x00--actor\x00a,b")
	f.Add("--until\x0024h\x00--session\x00")
	f.Add("-h")
	f.Fuzz(func(t *testing.T, line string) {
		q, err := Parse("audit export", strings.Split(line, "\x00"), now, &bytes.Buffer{})
		if err != nil {
			return
		}
		back, err := Parse("audit export", q.Args(), now, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("Args %q of an accepted query do not parse: %v", q.Args(), err)
		}
		if !back.Filter.Since.Equal(q.Filter.Since) || !back.Filter.Until.Equal(q.Filter.Until) || back.Format != q.Format ||
			back.Filter.Actor != q.Filter.Actor || back.Filter.Session != q.Filter.Session || len(back.Filter.Types) != len(q.Filter.Types) {
			t.Fatalf("round trip changed %+v into %+v", q, back)
		}
	})
}

// TestTailHistory: a tail starts at the end unless --history or --since
// asks for the log's events; export has no --history; Args keeps it.
func TestTailHistory(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		args []string
		want bool
	}{{nil, false}, {[]string{"--history"}, true}, {[]string{"--since", "1h"}, true}} {
		q, err := Parse("audit tail", tc.args, now, &bytes.Buffer{})
		if err != nil || q.FromStart() != tc.want {
			t.Errorf("audit tail %v: from start %v, %v; want %v", tc.args, q.FromStart(), err, tc.want)
		}
		back, err := Parse("audit tail", q.Args(), now, &bytes.Buffer{})
		if err != nil || back.FromStart() != tc.want {
			t.Errorf("audit tail %v: Args %v read back with from start %v, %v", tc.args, q.Args(), back.FromStart(), err)
		}
	}
	if _, err := Parse("audit export", []string{"--history"}, now, &bytes.Buffer{}); err == nil {
		t.Error("audit export accepted --history")
	}
	// -n/--lines N: the last N, then follow; it survives Args.
	for _, args := range [][]string{{"-n", "20"}, {"--lines", "20"}, {"-n20"}} {
		q, err := Parse("audit tail", args, now, &bytes.Buffer{})
		if err != nil || q.Lines != 20 || q.FromStart() {
			t.Errorf("audit tail %v: lines %d from start %v, %v", args, q.Lines, q.FromStart(), err)
		}
		if back, err := Parse("audit tail", q.Args(), now, &bytes.Buffer{}); err != nil || back.Lines != 20 {
			t.Errorf("audit tail %v: Args %v read back as lines %d, %v", args, q.Args(), back.Lines, err)
		}
	}
	for _, args := range [][]string{{"-n", "-1"}, {"-n", "3", "--history"}} {
		if _, err := Parse("audit tail", args, now, &bytes.Buffer{}); err == nil {
			t.Errorf("audit tail %v accepted", args)
		}
	}
	if _, err := Parse("audit export", []string{"-n", "3"}, now, &bytes.Buffer{}); err == nil {
		t.Error("audit export accepted -n")
	}
}

// TestUnknownEventTypeIsAnError: a --type that matches no event type is
// refused with the list of known ones, instead of filtering to nothing.
func TestUnknownEventTypeIsAnError(t *testing.T) {
	now := time.Now()
	for _, bad := range []string{"bogus.type", "auth.faild", "nope.*"} {
		_, err := Parse("audit export", []string{"--type", bad}, now, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "auth.failed") || !strings.Contains(err.Error(), bad) {
			t.Errorf("--type %s: %v", bad, err)
		}
	}
	for _, good := range []string{"auth.failed", "auth.*", "session.*,user.locked", "audit.outage"} {
		if _, err := Parse("audit tail", []string{"--type", good}, now, &bytes.Buffer{}); err != nil {
			t.Errorf("--type %s: %v", good, err)
		}
	}
}
