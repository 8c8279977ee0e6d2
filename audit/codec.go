package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
)

// The canonical encoding of an Event is what encoding/json produces for the
// struct: fixed field order, sorted map keys, time in UTC as RFC 3339 with
// nanoseconds. Append stores exactly these bytes and DecodeEvent accepts only
// them, so a record survives decode and re-encode byte for byte and any edit
// to the stored bytes is visible.

// encode returns the canonical JSON of ev.
func encode(ev Event) ([]byte, error) {
	ev.Time = ev.Time.UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("audit: encode event: %w", err)
	}
	return b, nil
}

// hashSuffix is how the canonical encoding of an event with an empty Hash
// ends; Hash is the struct's last field.
const hashSuffix = `"hash":""}`

// seal sets ev.Hash from ev.PrevHash and ev's content and returns the record
// to store: the canonical encoding of the sealed event.
func seal(ev Event) (Event, []byte, error) {
	ev.Hash = ""
	body, err := encode(ev)
	if err != nil {
		return Event{}, nil, err
	}
	ev.Hash = hashOf(ev.PrevHash, body)
	// Splice the hash in rather than encoding twice: the encoding with Hash
	// set differs only inside the final string (hex needs no escaping).
	if !bytes.HasSuffix(body, []byte(hashSuffix)) {
		return Event{}, nil, fmt.Errorf("audit: encode event: unexpected encoding %q", body)
	}
	rec := make([]byte, 0, len(body)+len(ev.Hash))
	rec = append(rec, body[:len(body)-2]...)
	rec = append(rec, ev.Hash...)
	rec = append(rec, '"', '}')
	return ev, rec, nil
}

// hashOf is hex(SHA-256(prev || "\n" || body)) where body is the canonical
// encoding of the event with an empty Hash.
func hashOf(prev string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write([]byte{'\n'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// computeHash recomputes the hash ev should carry.
func computeHash(ev Event) (string, error) {
	ev.Hash = ""
	body, err := encode(ev)
	if err != nil {
		return "", err
	}
	return hashOf(ev.PrevHash, body), nil
}

// DecodeEvent decodes one stored record strictly: unknown or duplicate
// fields, trailing data, a non-UTC time, a malformed id or hash, and any
// encoding other than the canonical one are errors. An accepted record
// re-encodes to exactly b.
func DecodeEvent(b []byte) (Event, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var ev Event
	if err := dec.Decode(&ev); err != nil {
		return Event{}, fmt.Errorf("audit: decode event: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Event{}, errors.New("audit: decode event: data after the event")
	}
	if _, off := ev.Time.Zone(); off != 0 {
		return Event{}, fmt.Errorf("audit: decode event: time %s is not in UTC", ev.Time.Format(time.RFC3339Nano))
	}
	ev.Time = ev.Time.UTC()
	id, err := ulid.ParseStrict(ev.ID)
	if err != nil || id.String() != ev.ID {
		return Event{}, fmt.Errorf("audit: decode event: id %q is not a canonical ULID", ev.ID)
	}
	if !isHash(ev.Hash) {
		return Event{}, fmt.Errorf("audit: decode event: hash %q is not 64 lower-case hex digits", ev.Hash)
	}
	if ev.PrevHash != "" && !isHash(ev.PrevHash) {
		return Event{}, fmt.Errorf("audit: decode event: prev_hash %q is not empty or 64 lower-case hex digits", ev.PrevHash)
	}
	if err := checkShape(ev); err != nil {
		return Event{}, err
	}
	re, err := encode(ev)
	if err != nil {
		return Event{}, err
	}
	if !bytes.Equal(re, b) {
		return Event{}, errors.New("audit: decode event: record is not in canonical form (edited by hand?)")
	}
	return ev, nil
}

func isHash(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// validType reports whether t matches ^[a-z]+(\.[a-z_]+)+$.
func validType(t string) bool {
	segs := strings.Split(t, ".")
	if len(segs) < 2 {
		return false
	}
	for i, s := range segs {
		if s == "" {
			return false
		}
		for j := 0; j < len(s); j++ {
			c := s[j]
			if !(c >= 'a' && c <= 'z' || i > 0 && c == '_') {
				return false
			}
		}
	}
	return true
}

// validKey reports whether k matches ^[a-z0-9_]+$.
func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// secretKey reports whether k looks like the name of a secret: one of the
// words below, or a name ending in "_" and one of them such as
// "client_secret", "id_token" or "ca_private_key". Names such as
// "password_auth" or "token_expiry" describe a secret without holding one
// and pass. This is a cheap guard against a careless producer, not a
// scanner: values are not inspected, because they often come from the
// client and refusing them would let a client suppress its own audit record.
func secretKey(k string) bool {
	for _, w := range [...]string{"password", "passwd", "passphrase", "secret", "token", "private_key"} {
		if k == w || strings.HasSuffix(k, "_"+w) {
			return true
		}
	}
	return false
}

// checkShape checks the parts of an event its producer controls by code:
// the type and the field names.
func checkShape(ev Event) error {
	if ev.Type == "" {
		return fmt.Errorf("%w: type is empty; use a constant such as audit.TypeAuthFailed", ErrInvalidEvent)
	}
	if !validType(ev.Type) {
		return fmt.Errorf("%w: type %q must be dotted lower-case words such as \"auth.failed\"", ErrInvalidEvent, ev.Type)
	}
	for k := range ev.Fields {
		if !validKey(k) {
			return fmt.Errorf("%w: %s field name %q must use only a-z, 0-9 and _", ErrInvalidEvent, ev.Type, k)
		}
	}
	return nil
}

// prepare validates ev for Append and normalizes it to what will be stored,
// so the event Append returns equals the one DecodeEvent later reads back.
func prepare(ev Event) (Event, error) {
	if err := checkShape(ev); err != nil {
		return Event{}, err
	}
	for k := range ev.Fields {
		if secretKey(k) {
			return Event{}, fmt.Errorf("%w: %s field %q looks like a secret; the audit log must never hold secrets, so record a fingerprint or id instead (or rename the field if it is not secret)", ErrInvalidEvent, ev.Type, k)
		}
	}
	if !ev.Time.IsZero() {
		if err := checkTime(ev.Time); err != nil {
			return Event{}, err
		}
	}
	ev.Time = ev.Time.UTC()
	ev.ID, ev.PrevHash, ev.Hash = "", "", ""
	// Actor, session and values often come from the client; JSON would
	// replace invalid UTF-8 anyway, so do it first and return what is stored.
	ev.Actor = strings.ToValidUTF8(ev.Actor, "\uFFFD")
	ev.Session = strings.ToValidUTF8(ev.Session, "\uFFFD")
	if len(ev.Fields) == 0 {
		ev.Fields = nil
	} else {
		f := make(map[string]string, len(ev.Fields))
		for k, v := range ev.Fields {
			if !utf8.ValidString(v) {
				v = strings.ToValidUTF8(v, "\uFFFD")
			}
			f[k] = v
		}
		ev.Fields = f
	}
	return ev, nil
}

// checkTime refuses times a ULID or JSON cannot carry.
func checkTime(t time.Time) error {
	if t.Unix() < 0 || t.UTC().Year() > 9999 {
		return fmt.Errorf("%w: time %s is outside 1970..9999; leave Time zero to use the store's clock", ErrInvalidEvent, t.UTC().Format(time.RFC3339Nano))
	}
	return nil
}
