// Package logattr makes bastion's debug log (log/slog) safe and easy to
// read, whichever code logs: Wrap a handler once where the process builds
// its logger, and every record of every component (gateway, cluster,
// shared state, audit) passes through it. A string (a lock name, a source,
// a gateway id, an etcd key, an error text: often supplied by a client or
// an operator) is bounded and has its control and bidi characters escaped,
// as the terminal output escapes them; a duration is written as "30s", not
// as nanoseconds; an error that is a deadline says "timed out" rather than
// Go's "context deadline exceeded".
package logattr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/textbound"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

// MaxString bounds each string of a log record (message, key, value), in
// bytes.
const MaxString = 512

// String is s bounded to MaxString bytes with control and bidi characters
// escaped.
func String(s string) string {
	// Escaping lengthens a string (a control byte becomes \x00), so the
	// bound applies to the escaped text; the first cut only bounds the
	// work.
	return textbound.Cut(ca.Printable(textbound.Cut(s, 4*MaxString)), MaxString)
}

// Error is err's text for a log: bounded and escaped like String, with a
// deadline said as "timed out".
func Error(err error) string {
	msg := usertext.Timeouts(err.Error())
	if errors.Is(err, context.DeadlineExceeded) && !strings.Contains(msg, "timed out") {
		msg += " (timed out)"
	}
	return String(msg)
}

// handler applies Attr to every attribute before handing a record on.
type handler struct{ next slog.Handler }

// Wrap returns h with every record made safe (see the package comment).
// Wrapping twice is a no-op.
func Wrap(h slog.Handler) slog.Handler {
	if _, ok := h.(handler); ok {
		return h
	}
	return handler{next: h}
}

func (h handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(Attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h handler) WithAttrs(as []slog.Attr) slog.Handler {
	b := make([]slog.Attr, len(as))
	for i, a := range as {
		b[i] = Attr(a)
	}
	return handler{next: h.next.WithAttrs(b)}
}

func (h handler) WithGroup(name string) slog.Handler {
	return handler{next: h.next.WithGroup(String(name))}
}

// Attr is a made safe: its key and, for strings, errors, Stringers, byte
// slices and groups, its value bounded and escaped; a duration as text.
func Attr(a slog.Attr) slog.Attr {
	a.Key = String(a.Key)
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		a.Value = slog.StringValue(String(v.String()))
	case slog.KindDuration:
		a.Value = slog.StringValue(v.Duration().String())
	case slog.KindGroup:
		g := v.Group()
		b := make([]slog.Attr, len(g))
		for i, x := range g {
			b[i] = Attr(x)
		}
		a.Value = slog.GroupValue(b...)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			a.Value = slog.StringValue(Error(x))
		case fmt.Stringer:
			a.Value = slog.StringValue(String(x.String()))
		case []byte:
			a.Value = slog.StringValue(String(string(x)))
		case []string:
			b := make([]string, 0, min(len(x), 33))
			for i, s := range x {
				if i == 32 {
					b = append(b, fmt.Sprintf("...[%d more]", len(x)-32))
					break
				}
				b = append(b, String(s))
			}
			a.Value = slog.AnyValue(b)
		default:
			a.Value = v
		}
	default:
		a.Value = v
	}
	return a
}
