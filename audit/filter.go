package audit

import (
	"fmt"
	"strings"
	"time"
)

// ParseFilter parses filter terms, as typed after `bastion audit export` or
// sent to the gateway's export command:
//
//	since=TIME until=TIME type=NAME[,NAME...] actor=WHO session=ID
//
// TIME is RFC 3339 (2024-05-01T00:00:00Z); NAME is a type or a prefix such as
// auth.*. type may repeat; the others may appear once. Values are taken
// verbatim after the first "=".
func ParseFilter(args []string) (Filter, error) {
	var f Filter
	seen := map[string]bool{}
	for _, a := range args {
		key, val, ok := strings.Cut(a, "=")
		if !ok || val == "" {
			return Filter{}, fmt.Errorf("audit: filter term %q: want key=value with key since, until, type, actor or session", a)
		}
		if key != "type" && seen[key] {
			return Filter{}, fmt.Errorf("audit: filter term %q: %s given twice", a, key)
		}
		seen[key] = true
		switch key {
		case "since", "until":
			t, err := time.Parse(time.RFC3339Nano, val)
			if err != nil {
				return Filter{}, fmt.Errorf("audit: filter term %q: want an RFC 3339 time such as 2024-05-01T00:00:00Z", a)
			}
			if key == "since" {
				f.Since = t.UTC()
			} else {
				f.Until = t.UTC()
			}
		case "type":
			f.Types = append(f.Types, strings.Split(val, ",")...)
		case "actor":
			f.Actor = val
		case "session":
			f.Session = val
		default:
			return Filter{}, fmt.Errorf("audit: filter term %q: unknown key %q; use since, until, type, actor or session", a, key)
		}
	}
	if err := f.Validate(); err != nil {
		return Filter{}, err
	}
	return f, nil
}

// Args returns f as ParseFilter terms, for a command line or a remote
// export request.
func (f Filter) Args() []string {
	var args []string
	if !f.Since.IsZero() {
		args = append(args, "since="+f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		args = append(args, "until="+f.Until.UTC().Format(time.RFC3339Nano))
	}
	if len(f.Types) > 0 {
		args = append(args, "type="+strings.Join(f.Types, ","))
	}
	if f.Actor != "" {
		args = append(args, "actor="+f.Actor)
	}
	if f.Session != "" {
		args = append(args, "session="+f.Session)
	}
	return args
}
