package audit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"go.etcd.io/bbolt"
)

// chainFixture writes n events to a new log, closes it and returns the path
// and the events.
func chainFixture(t *testing.T, n int) (string, []Event) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.db")
	s, err := Open(path, Options{Now: stepClock(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	var evs []Event
	for i := 0; i < n; i++ {
		evs = append(evs, mustAppend(t, s, Event{Type: TypeAuthFailed, Actor: fmt.Sprintf("user%d", i), Fields: map[string]string{"reason": "cert_expired"}}))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path, evs
}

// tamper edits the log with bbolt directly, as someone with the file would.
func tamper(t *testing.T, path string, fn func(events, meta *bbolt.Bucket) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error { return fn(tx.Bucket([]byte(bucketEvents)), tx.Bucket([]byte(bucketMeta))) }); err != nil {
		t.Fatal(err)
	}
}

func key(ev Event) []byte {
	id := ulid.MustParseStrict(ev.ID)
	return id[:]
}

// reseal rewrites events from i on with recomputed links and hashes, as an
// attacker who knows the scheme would after editing event i.
func reseal(events, meta *bbolt.Bucket, evs []Event, i int) error {
	prev := ""
	if i > 0 {
		prev = evs[i-1].Hash
	}
	for j := i; j < len(evs); j++ {
		ev := evs[j]
		ev.PrevHash = prev
		ev, rec, err := seal(ev)
		if err != nil {
			return err
		}
		if err := events.Put(key(ev), rec); err != nil {
			return err
		}
		prev = ev.Hash
	}
	return meta.Put([]byte(metaLastHash), []byte(prev))
}

func TestVerify(t *testing.T) {
	const n = 10
	for _, tc := range []struct {
		name      string
		tamper    func(events, meta *bbolt.Bucket, evs []Event) error
		wantIndex int
		wantID    func(evs []Event) string
		reason    string
		wantMsg   string
	}{
		{name: "clean"},
		{
			name: "edited field",
			tamper: func(events, _ *bbolt.Bucket, evs []Event) error {
				ev := evs[4]
				ev.Fields = map[string]string{"reason": "ok"}
				b, _ := encode(ev)
				return events.Put(key(ev), b)
			},
			wantIndex: 4, wantID: func(evs []Event) string { return evs[4].ID },
			reason: ReasonHashMismatch, wantMsg: "the event was edited",
		},
		{
			name: "edited bytes",
			tamper: func(events, _ *bbolt.Bucket, evs []Event) error {
				v := events.Get(key(evs[6]))
				return events.Put(key(evs[6]), []byte(strings.Replace(string(v), "user6", "userX", 1)))
			},
			wantIndex: 6, wantID: func(evs []Event) string { return evs[6].ID },
			reason: ReasonHashMismatch,
		},
		{
			name: "garbled record",
			tamper: func(events, _ *bbolt.Bucket, evs []Event) error {
				return events.Put(key(evs[2]), []byte(`{"id":`))
			},
			wantIndex: 2, wantID: func(evs []Event) string { return evs[2].ID },
			reason: ReasonUndecodable, wantMsg: "cannot be read",
		},
		{
			name:      "deleted in the middle",
			tamper:    func(events, _ *bbolt.Bucket, evs []Event) error { return events.Delete(key(evs[5])) },
			wantIndex: 5, wantID: func(evs []Event) string { return evs[6].ID },
			reason: ReasonPrevHashMismatch, wantMsg: "deleted or events were reordered",
		},
		{
			name:      "deleted first",
			tamper:    func(events, _ *bbolt.Bucket, evs []Event) error { return events.Delete(key(evs[0])) },
			wantIndex: 0, wantID: func(evs []Event) string { return evs[1].ID },
			reason: ReasonPrevHashMismatch,
		},
		{
			name:      "deleted last",
			tamper:    func(events, _ *bbolt.Bucket, evs []Event) error { return events.Delete(key(evs[n-1])) },
			wantIndex: n - 1, wantID: func(evs []Event) string { return evs[n-1].ID },
			reason: ReasonTruncated, wantMsg: "deleted from the end",
		},
		{
			name: "swapped",
			tamper: func(events, _ *bbolt.Bucket, evs []Event) error {
				a, b := events.Get(key(evs[3])), events.Get(key(evs[4]))
				a, b = append([]byte(nil), a...), append([]byte(nil), b...)
				if err := events.Put(key(evs[3]), b); err != nil {
					return err
				}
				return events.Put(key(evs[4]), a)
			},
			wantIndex: 3, wantID: func(evs []Event) string { return evs[3].ID },
			reason: ReasonPrevHashMismatch,
		},
		{
			name: "moved to another key",
			tamper: func(events, _ *bbolt.Bucket, evs []Event) error {
				v := append([]byte(nil), events.Get(key(evs[7]))...)
				k := key(evs[7])
				k[15]++ // still sorts between events 6 and 8
				if err := events.Delete(key(evs[7])); err != nil {
					return err
				}
				return events.Put(k, v)
			},
			wantIndex: 7, wantID: func(evs []Event) string {
				id := ulid.MustParseStrict(evs[7].ID)
				id[15]++
				return id.String()
			},
			reason: ReasonIDMismatch, wantMsg: "was moved",
		},
		{
			name: "time moved forward and chain resealed",
			tamper: func(events, meta *bbolt.Bucket, evs []Event) error {
				evs[5].Time = evs[5].Time.Add(time.Hour)
				return reseal(events, meta, evs, 5)
			},
			wantIndex: 5, wantID: func(evs []Event) string { return evs[5].ID },
			reason: ReasonTimeOrder,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, evs := chainFixture(t, n)
			if tc.tamper != nil {
				tamper(t, path, func(events, meta *bbolt.Bucket) error { return tc.tamper(events, meta, evs) })
			}
			s, err := Open(path, Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got, err := s.Verify(context.Background())
			if tc.reason == "" {
				if err != nil || got != n {
					t.Fatalf("Verify = %d, %v; want %d, nil", got, err, n)
				}
				return
			}
			var ce *ChainError
			if !errors.As(err, &ce) {
				t.Fatalf("Verify = %d, %v; want a *ChainError", got, err)
			}
			if ce.Index != tc.wantIndex || ce.ID != tc.wantID(evs) || ce.Reason != tc.reason {
				t.Errorf("ChainError{Index %d, ID %s, Reason %s}, want {%d, %s, %s}", ce.Index, ce.ID, ce.Reason, tc.wantIndex, tc.wantID(evs), tc.reason)
			}
			if got != tc.wantIndex {
				t.Errorf("Verify checked %d events, want %d", got, tc.wantIndex)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "audit: chain broken at event ") || !strings.Contains(msg, ce.ID) || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message %q does not name the event and the problem (%q)", msg, tc.wantMsg)
			}
		})
	}
}

func TestVerifyEmptyAndLive(t *testing.T) {
	s, _ := newStore(t, Options{})
	if n, err := s.Verify(context.Background()); n != 0 || err != nil {
		t.Errorf("Verify(empty) = %d, %v", n, err)
	}
	for i := 0; i < 5; i++ {
		mustAppend(t, s, Event{Type: TypeAuthOK})
	}
	if n, err := s.Verify(context.Background()); n != 5 || err != nil {
		t.Errorf("Verify = %d, %v", n, err)
	}
}

// TestOpenRefusesMissingMeta checks that a writer does not start a new
// chain on top of records whose metadata is gone.
func TestOpenRefusesMissingMeta(t *testing.T) {
	path, _ := chainFixture(t, 3)
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket([]byte(bucketMeta)) }); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	if _, err := Open(path, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with the meta bucket gone = %v, want ErrCorrupt", err)
	}
}

// TestAppendRefusesInconsistentMeta checks that a writer does not extend the
// chain from a head that is not the log's last record.
func TestAppendRefusesInconsistentMeta(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(events, meta *bbolt.Bucket, evs []Event) error
	}{
		{"tail deleted", func(events, _ *bbolt.Bucket, evs []Event) error { return events.Delete(key(evs[4])) }},
		{"meta rolled back", func(_, meta *bbolt.Bucket, evs []Event) error {
			if err := meta.Put([]byte(metaLastID), key(evs[1])); err != nil {
				return err
			}
			return meta.Put([]byte(metaLastHash), []byte(evs[1].Hash))
		}},
		{"meta head cleared", func(_, meta *bbolt.Bucket, _ []Event) error {
			if err := meta.Delete([]byte(metaLastID)); err != nil {
				return err
			}
			return meta.Delete([]byte(metaLastHash))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, evs := chainFixture(t, 5)
			tamper(t, path, func(events, meta *bbolt.Bucket) error { return tc.tamper(events, meta, evs) })
			s, err := Open(path, Options{Now: func() time.Time { return evs[1].Time }})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Append(context.Background(), Event{Type: TypeAuthOK}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "audit verify") {
				t.Fatalf("Append = %v, want ErrCorrupt", err)
			}
		})
	}
}
