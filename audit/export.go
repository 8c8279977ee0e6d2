package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Format is an export format.
type Format string

// Export formats.
const (
	// FormatJSONL is JSON Lines: each event's canonical JSON, exactly as
	// stored, one per line. It is the verifiable form: every line's hash
	// can be recomputed.
	FormatJSONL Format = "jsonl"
	// FormatCSV is RFC 4180 CSV with a header row and the columns
	// id,time,type,actor,session,fields,prev_hash,hash, where fields is a
	// JSON object. It is meant for people and spreadsheets. Lines end in
	// "\n", not "\r\n", and every cell is quoted. A cell that a
	// spreadsheet would take for a formula (one starting with =, +, -, @,
	// a tab or a carriage return, as OWASP's CSV injection advice lists)
	// is prefixed with a single quote, so a client-chosen user name such
	// as =HYPERLINK(...) is shown as text, never run.
	FormatCSV Format = "csv"
)

// csvColumns is the number of columns of FormatCSV.
const csvColumns = 8

// csvHeader returns the header row of FormatCSV.
func csvHeader() []string {
	return []string{"id", "time", "type", "actor", "session", "fields", "prev_hash", "hash"}
}

// ParseFormat parses a format name as given on a command line.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(strings.TrimSpace(s))); f {
	case FormatJSONL, FormatCSV:
		return f, nil
	}
	return "", fmt.Errorf("audit: unknown export format %q: use jsonl or csv", s)
}

// Encoder writes events in one export format. It buffers: call Flush at the
// end, and check its error.
type Encoder interface {
	Encode(Event) error
	Flush() error
}

// NewEncoder returns an Encoder writing format to w. An unknown format yields
// an Encoder whose methods return the ParseFormat error.
func NewEncoder(w io.Writer, format Format) Encoder {
	format, err := ParseFormat(string(format))
	switch {
	case err != nil:
		return errEncoder{err}
	case format == FormatCSV:
		return &csvEncoder{w: bufio.NewWriter(w)}
	}
	return &jsonlEncoder{w: bufio.NewWriter(w)}
}

type jsonlEncoder struct {
	w *bufio.Writer
}

func (e *jsonlEncoder) Encode(ev Event) error {
	b, err := encode(ev)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if _, err := e.w.Write(b); err != nil {
		return fmt.Errorf("audit: write jsonl: %w", err)
	}
	return nil
}

func (e *jsonlEncoder) Flush() error {
	if err := e.w.Flush(); err != nil {
		return fmt.Errorf("audit: write jsonl: %w", err)
	}
	return nil
}

// csvEncoder writes RFC 4180 rows with every cell quoted. encoding/csv
// quotes only cells that hold its own separator, quotes or line breaks, so
// a cell such as `a;=1+1` would reach a spreadsheet that splits on ';' (as
// Excel does in many locales) as a formula cell; quoting every cell keeps
// each cell one cell whatever the separator (OWASP, "CSV Injection").
type csvEncoder struct {
	w      *bufio.Writer
	header bool
	row    [csvColumns]string
}

// writeRow writes cells as one quoted CSV line ending in "\n".
func (e *csvEncoder) writeRow(cells []string) error {
	for i, c := range cells {
		if i > 0 {
			e.w.WriteByte(',')
		}
		e.w.WriteByte('"')
		e.w.WriteString(strings.ReplaceAll(c, `"`, `""`))
		e.w.WriteByte('"')
	}
	return e.w.WriteByte('\n')
}

func (e *csvEncoder) writeHeader() error {
	if e.header {
		return nil
	}
	e.header = true
	if err := e.writeRow(csvHeader()); err != nil {
		return fmt.Errorf("audit: write csv: %w", err)
	}
	return nil
}

func (e *csvEncoder) Encode(ev Event) error {
	if err := e.writeHeader(); err != nil {
		return err
	}
	fields := []byte("{}")
	if len(ev.Fields) > 0 {
		var err error
		if fields, err = json.Marshal(ev.Fields); err != nil {
			return fmt.Errorf("audit: encode fields of %s: %w", ev.ID, err)
		}
	}
	e.row = [...]string{ev.ID, ev.Time.UTC().Format(time.RFC3339Nano), ev.Type, ev.Actor, ev.Session, string(fields), ev.PrevHash, ev.Hash}
	for i, c := range e.row {
		e.row[i] = neutralizeCell(c)
	}
	if err := e.writeRow(e.row[:]); err != nil {
		return fmt.Errorf("audit: write csv: %w", err)
	}
	return nil
}

// Flush writes the header if no event was encoded, so an empty export is
// still a valid CSV file with its columns named.
func (e *csvEncoder) Flush() error {
	if err := e.writeHeader(); err != nil {
		return err
	}
	if err := e.w.Flush(); err != nil {
		return fmt.Errorf("audit: write csv: %w", err)
	}
	return nil
}

// neutralizeCell makes a cell that a spreadsheet would evaluate as a
// formula plain text by prefixing it with a single quote (OWASP, "CSV
// Injection"). Every cell goes through it, not only the ones known to come
// from clients, so a new column cannot reopen the hole.
func neutralizeCell(c string) string {
	// Leading blanks do not make a formula text in every spreadsheet, and
	// some fold the full-width forms of the trigger characters.
	t := strings.TrimLeft(c, " \u00a0\n")
	if t == "" {
		return c
	}
	switch t[0] {
	case '=', '+', '-', '@', '\t', '\r':
		return "'" + c
	}
	for _, w := range [...]string{"\uff1d", "\uff0b", "\uff0d", "\uff20"} {
		if strings.HasPrefix(t, w) {
			return "'" + c
		}
	}
	return c
}

type errEncoder struct{ err error }

func (e errEncoder) Encode(Event) error { return e.err }
func (e errEncoder) Flush() error       { return e.err }

// Export writes the events matching f to w in format, from a consistent
// snapshot (see Iterate). When it stops early (ctx, an unreadable record, a
// write error) w holds the export up to that point and the error says why.
func (s *Store) Export(ctx context.Context, w io.Writer, f Filter, format Format) error {
	format, err := ParseFormat(string(format))
	if err != nil {
		return err
	}
	enc := NewEncoder(w, format)
	if err := s.Iterate(ctx, f, enc.Encode); err != nil {
		_ = enc.Flush() // keep what was read; err is the one to report
		return err
	}
	return enc.Flush()
}
