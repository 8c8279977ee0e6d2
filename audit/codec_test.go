package audit

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sealedSamples returns a small valid chain covering awkward content.
func sealedSamples(t testing.TB) ([]Event, [][]byte) {
	t.Helper()
	var (
		evs  []Event
		recs [][]byte
		prev string
	)
	for i, ev := range []Event{
		{Type: TypeAuthFailed, Actor: "alice", Session: "s1", Fields: map[string]string{"reason": "cert_expired", "b": "2", "a": "1"}},
		{Type: TypeCertIssued, Actor: "<b>&amp;</b> \u2028 \x00 \t", Fields: map[string]string{"serial": "18446744073709551615"}},
		{Type: "session.channel_open", Time: time.Date(2024, 5, 1, 12, 0, 0, 120000000, time.UTC)},
		{Type: TypeSessionEnd, Time: time.Date(2024, 5, 1, 12, 0, 1, 1, time.FixedZone("X", -7*3600)), Fields: map[string]string{"bytes_out": "0", "why": "\"quoted\"\n\\"}},
	} {
		ev, err := prepare(ev)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Time.IsZero() {
			ev.Time = testEpoch.Add(time.Duration(i) * time.Second)
		}
		ev.ID = nextID(chainMeta{}, ev.Time).String()
		ev.PrevHash = prev
		ev, rec, err := seal(ev)
		if err != nil {
			t.Fatal(err)
		}
		prev = ev.Hash
		evs, recs = append(evs, ev), append(recs, rec)
	}
	return evs, recs
}

func TestCanonicalEncoding(t *testing.T) {
	evs, recs := sealedSamples(t)
	for i, ev := range evs {
		// The spliced record is exactly encoding/json's output.
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(recs[i], want) {
			t.Errorf("event %d: record\n%s\nwant\n%s", i, recs[i], want)
		}
		// Decode and re-encode are byte-identical, and the hash recomputes.
		got, err := DecodeEvent(recs[i])
		if err != nil {
			t.Fatalf("event %d: DecodeEvent: %v", i, err)
		}
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("event %d: decoded %+v, want %+v", i, got, ev)
		}
		re, err := encode(got)
		if err != nil || !bytes.Equal(re, recs[i]) {
			t.Errorf("event %d: re-encoded %s, want %s (%v)", i, re, recs[i], err)
		}
		if h, _ := computeHash(got); h != ev.Hash {
			t.Errorf("event %d: recomputed hash %s, want %s", i, h, ev.Hash)
		}
	}
	if !strings.Contains(string(recs[3]), `"time":"2024-05-01T19:00:01.000000001Z"`) {
		t.Errorf("time not canonical UTC: %s", recs[3])
	}
	if !strings.Contains(string(recs[0]), `"fields":{"a":"1","b":"2","reason":"cert_expired"}`) {
		t.Errorf("field keys not sorted: %s", recs[0])
	}
}

func TestHashDefinition(t *testing.T) {
	// hash = hex(SHA-256(prev_hash || 0x0a || canonical JSON with hash "")),
	// written out independently of seal.
	evs, _ := sealedSamples(t)
	ev := evs[1]
	body := strings.Replace(mustJSON(t, ev), `"hash":"`+ev.Hash+`"`, `"hash":""`, 1)
	if got := hashOf(ev.PrevHash, []byte(body)); got != ev.Hash {
		t.Errorf("hash %s, want %s", ev.Hash, got)
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDecodeEventRejects(t *testing.T) {
	_, recs := sealedSamples(t)
	good := string(recs[0])
	for _, tc := range []struct {
		name, rec, want string
	}{
		{"empty", "", "decode event"},
		{"truncated", good[:len(good)-5], "decode event"},
		{"not an object", `[1,2]`, "decode event"},
		{"wrong type", strings.Replace(good, `"type":"auth.failed"`, `"type":7`, 1), "decode event"},
		{"unknown field", strings.Replace(good, `{"id"`, `{"extra":1,"id"`, 1), "unknown field"},
		{"trailing data", good + `{}`, "data after the event"},
		{"trailing space", good + " ", "canonical"},
		{"leading space", " " + good, "canonical"},
		{"reordered fields", reorder(t, good), "canonical"},
		{"upper-case key", strings.Replace(good, `"actor"`, `"Actor"`, 1), "canonical"},
		{"duplicate key", strings.Replace(good, `{"id"`, `{"actor":"x","id"`, 1), "canonical"},
		{"empty fields object", strings.Replace(string(recs[2]), `"prev_hash"`, `"fields":{},"prev_hash"`, 1), "canonical"},
		{"unescaped html", strings.Replace(string(recs[1]), `\u003cb\u003e`, `<b>`, 1), "canonical"},
		{"offset time", strings.Replace(good, `Z"`, `+01:00"`, 1), "not in UTC"},
		{"lower-case id", good[:7] + strings.ToLower(good[7:33]) + good[33:], "canonical ULID"},
		{"bad hash", good[:len(good)-3] + `X"}`, "64 lower-case hex"},
		{"bad type", strings.Replace(good, `"type":"auth.failed"`, `"type":"AUTH"`, 1), "invalid event"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeEvent([]byte(tc.rec))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "audit: ") {
				t.Fatalf("DecodeEvent(%s) = %v, want an error saying %q", tc.rec, err, tc.want)
			}
		})
	}
}

// reorder moves the "type" member to the front of a record.
func reorder(t testing.TB, rec string) string {
	t.Helper()
	i := strings.Index(rec, `,"type":`)
	j := strings.Index(rec[i+1:], `,`) + i + 1
	member := rec[i+1 : j]
	return "{" + member + "," + rec[1:i] + rec[j:]
}

// FuzzDecodeEvent checks that DecodeEvent never panics and that whatever it
// accepts is canonical: it re-encodes to the same bytes and the same hash.
func FuzzDecodeEvent(f *testing.F) {
	_, recs := sealedSamples(f)
	for _, r := range recs {
		f.Add(r)
		f.Add(r[:len(r)/2])
		f.Add(bytes.Replace(r, []byte(`"type":"`), []byte(`"type":1,"x":"`), 1))
	}
	f.Add([]byte(`{"id":1,"time":true,"type":[],"fields":{"a":2},"prev_hash":null,"hash":{}}`))
	f.Add([]byte(`{"time":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := DecodeEvent(b)
		if err != nil {
			return
		}
		re, err := encode(ev)
		if err != nil {
			t.Fatalf("accepted %q but cannot encode it: %v", b, err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("accepted a non-canonical record:\n%q\nre-encodes as\n%q", b, re)
		}
		ev2, err := DecodeEvent(re)
		if err != nil {
			t.Fatalf("re-encoded record rejected: %v", err)
		}
		h1, err1 := computeHash(ev)
		h2, err2 := computeHash(ev2)
		if err1 != nil || err2 != nil || h1 != h2 {
			t.Fatalf("hash changed across a round trip: %s / %s (%v, %v)", h1, h2, err1, err2)
		}
	})
}

func TestParseFilter(t *testing.T) {
	since := time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		args    []string
		want    Filter
		wantErr string
	}{
		{"empty", nil, Filter{}, ""},
		{"all", []string{"since=2024-05-01T02:00:00+02:00", "until=2024-05-02T00:00:00.5Z", "type=auth.*,session.start", "type=cert.issued", "actor=alice=admin", "session=s 1"},
			Filter{Since: since, Until: since.Add(24*time.Hour + 500*time.Millisecond), Types: []string{"auth.*", "session.start", "cert.issued"}, Actor: "alice=admin", Session: "s 1"}, ""},
		{"no value", []string{"actor="}, Filter{}, "want key=value"},
		{"no equals", []string{"alice"}, Filter{}, "want key=value"},
		{"unknown key", []string{"user=alice"}, Filter{}, "unknown key"},
		{"twice", []string{"actor=a", "actor=b"}, Filter{}, "given twice"},
		{"bad time", []string{"since=yesterday"}, Filter{}, "RFC 3339"},
		{"bad type", []string{"type=auth*"}, Filter{}, "auth.*"},
		{"empty type", []string{"type=auth.ok,"}, Filter{}, "auth.*"},
		{"since after until", []string{"since=2024-05-02T00:00:00Z", "until=2024-05-01T00:00:00Z"}, Filter{}, "not before"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFilter(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseFilter = %v, want error %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !filtersEqual(got, tc.want) {
				t.Fatalf("ParseFilter = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func filtersEqual(a, b Filter) bool {
	return a.Since.Equal(b.Since) && a.Until.Equal(b.Until) && a.Actor == b.Actor && a.Session == b.Session &&
		strings.Join(a.Types, "\x00") == strings.Join(b.Types, "\x00") && len(a.Types) == len(b.Types)
}

// FuzzFilterParse checks that ParseFilter never panics, accepts only valid
// filters, and that Args round-trips what it accepts.
func FuzzFilterParse(f *testing.F) {
	for _, s := range []string{
		"since=2024-05-01T00:00:00Z\nuntil=2024-05-02T00:00:00Z",
		"type=auth.*,session.start\ntype=cert.issued",
		"actor=alice\nsession=01HZX3J4K5M6N7P8Q9R0S1T2V3",
		"since=2024-05-01T00:00:00.123456789+05:30",
		"type=*", "=", "actor==", "since=9999-12-31T23:59:59Z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var args []string
		if s != "" {
			args = strings.Split(s, "\n")
		}
		flt, err := ParseFilter(args)
		if err != nil {
			return
		}
		if err := flt.Validate(); err != nil {
			t.Fatalf("accepted an invalid filter %+v: %v", flt, err)
		}
		again, err := ParseFilter(flt.Args())
		if err != nil || !filtersEqual(flt, again) {
			t.Fatalf("Args round trip: %q -> %+v -> %q -> %+v, %v", args, flt, flt.Args(), again, err)
		}
	})
}
