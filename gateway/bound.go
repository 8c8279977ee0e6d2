package gateway

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/logattr"
	"github.com/bastion-ssh/bastion/internal/textbound"
)

// Bounds on what a client can make the gateway write. Every audit record
// passes through boundEvent (in Gateway.record) and every log line through
// boundLogs (internal/logattr), so no client-supplied string (a user
// name, a request or channel type, a command line, a jump host name, a
// client version) is written at more than this length, wherever it is put
// in a record.
const (
	// maxRecordedString bounds each string of an audit record or log line.
	maxRecordedString = 512
	// maxRecordedFields bounds the fields of one audit record.
	maxRecordedFields = 64
	// maxCommandLine bounds a command line the gateway accepts at all.
	maxCommandLine = 8192
)

// boundString cuts s to at most max bytes (on UTF-8 boundaries), keeping
// its head and its tail around a note of how much was cut: the end of a
// long path or command line is often the part that matters.
func boundString(s string, max int) string {
	return textbound.Cut(s, max)
}

// boundEvent returns ev with every string bounded; ev's own field map is
// left alone (callers may reuse it).
func boundEvent(ev audit.Event) audit.Event {
	ev.Actor = boundString(ev.Actor, maxRecordedString)
	ev.Session = boundString(ev.Session, maxRecordedString)
	ev.Type = boundString(ev.Type, maxRecordedString)
	over := len(ev.Fields) > maxRecordedFields
	for k, v := range ev.Fields {
		if len(k) > maxRecordedString || len(v) > maxRecordedString {
			over = true
			break
		}
	}
	if !over {
		return ev
	}
	f := make(map[string]string, min(len(ev.Fields), maxRecordedFields+1))
	dropped := 0
	for k, v := range ev.Fields {
		if len(f) >= maxRecordedFields {
			dropped++
			continue
		}
		f[boundString(k, maxRecordedString)] = boundString(v, maxRecordedString)
	}
	if dropped > 0 {
		f["fields_dropped"] = fmt.Sprint(dropped)
	}
	ev.Fields = f
	return ev
}

// boundLogs wraps h so that no log line carries an unbounded or
// unescaped string (internal/logattr; serve wraps its logger the same way,
// so this matters for a gateway built by a test or another program).
func boundLogs(h slog.Handler) slog.Handler { return logattr.Wrap(h) }

// bounded is boundString at the record bound, with invalid UTF-8 replaced,
// for client-chosen strings put into error details before they reach a
// record (where boundEvent bounds them again).
func bounded(s string) string {
	// Leave room for the cut note, so that boundEvent does not cut again
	// and lose the real length.
	return boundString(strings.ToValidUTF8(s, "\uFFFD"), maxRecordedString-32)
}

// boundedList bounds each element and the number of elements.
func boundedList(list []string) []string {
	const maxItems = 32
	out := make([]string, 0, min(len(list), maxItems+1))
	for i, s := range list {
		if i == maxItems {
			out = append(out, fmt.Sprintf("...[%d more]", len(list)-maxItems))
			break
		}
		out = append(out, bounded(s))
	}
	return out
}
