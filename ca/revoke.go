package ca

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// StateStore keeps state that must change atomically with its audit
// record; *audit.Store is one.
type StateStore interface {
	AppendWith(ctx context.Context, ev audit.Event, fn func(tx *bbolt.Tx) error) (audit.Event, error)
	View(fn func(tx *bbolt.Tx) error) error
}

// revocationsBucket holds one JSON Revocation per key "kind\x00value".
var revocationsBucket = []byte("revocations")

// RevocationKind says what a revocation names.
type RevocationKind string

// What can be revoked: a certificate serial or key id (under any of
// bastion's CA keys), or a public key (plain, or the key inside any
// certificate) by its SHA-256 fingerprint.
const (
	RevokeSerial RevocationKind = "serial"
	RevokeKeyID  RevocationKind = "key_id"
	RevokeKey    RevocationKind = "key"
)

// Revocation is one entry of the revocation list.
type Revocation struct {
	Kind RevocationKind `json:"kind"`
	// Value is the decimal serial, the key id, or the key's SHA256:...
	// fingerprint.
	Value  string    `json:"value"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
	By     string    `json:"by,omitempty"`
	// keyHash is the raw SHA-256 of the key blob, for RevokeKey.
	keyHash [32]byte
}

// Revocations is the revocation list, kept in memory for fast checks and
// persisted in the audit database next to the cert.revoked records.
type Revocations struct {
	store StateStore
	now   func() time.Time
	share *sharing

	mu      sync.RWMutex
	serials map[uint64]Revocation
	keyIDs  map[string]Revocation
	keys    map[[32]byte]Revocation

	changed listeners
}

// LoadRevocations reads the revocation list from store.
func LoadRevocations(store StateStore, now func() time.Time) (*Revocations, error) {
	if now == nil {
		now = time.Now
	}
	r := &Revocations{
		store:   store,
		now:     now,
		serials: map[uint64]Revocation{},
		keyIDs:  map[string]Revocation{},
		keys:    map[[32]byte]Revocation{},
	}
	err := store.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(revocationsBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var rev Revocation
			if err := json.Unmarshal(v, &rev); err != nil {
				return fmt.Errorf("ca: revocation %q is corrupt: %w", k, err)
			}
			return r.add(rev)
		})
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// RevokeKeyRequest builds a key revocation for pub. For a certificate, the
// key inside it is revoked (so every certificate for that key is).
func RevokeKeyRequest(pub ssh.PublicKey) Revocation {
	if c, ok := pub.(*ssh.Certificate); ok {
		pub = c.Key
	}
	return Revocation{Kind: RevokeKey, Value: ssh.FingerprintSHA256(pub), keyHash: sha256.Sum256(pub.Marshal())}
}

// add indexes rev in memory, checking its value.
func (r *Revocations) add(rev Revocation) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch rev.Kind {
	case RevokeSerial:
		n, err := strconv.ParseUint(rev.Value, 10, 64)
		if err != nil || n == 0 {
			return fmt.Errorf("ca: revoke: serial %q is not a non-zero 64-bit number", rev.Value)
		}
		r.serials[n] = rev
	case RevokeKeyID:
		if rev.Value == "" {
			return fmt.Errorf("ca: revoke: empty key id")
		}
		r.keyIDs[rev.Value] = rev
	case RevokeKey:
		h, err := parseSHA256Fingerprint(rev.Value)
		if err != nil {
			return err
		}
		rev.keyHash = h
		r.keys[h] = rev
	default:
		return fmt.Errorf("ca: revoke: unknown kind %q", rev.Kind)
	}
	return nil
}

// Revoke adds rev to the list; the list and its cert.revoked audit record
// are written in one transaction. In a cluster it is then published to
// every gateway; ErrPending means it is in effect here but could not be
// published yet.
func (r *Revocations) Revoke(ctx context.Context, rev Revocation) error {
	if err := CheckReason(rev.Reason); err != nil {
		return fmt.Errorf("ca: revoke: %w", err)
	}
	if rev.Time.IsZero() {
		rev.Time = r.now().UTC()
	}
	ev := audit.Event{
		Type:   audit.TypeCertRevoked,
		Actor:  rev.By,
		Fields: map[string]string{"kind": string(rev.Kind), "value": rev.Value, "reason": rev.Reason},
	}
	ch := Change{Op: OpRevoke, Revocation: &rev, Time: rev.Time, By: rev.By}
	if err := r.write(ctx, ev, rev, &ch); err != nil {
		return err
	}
	return pendingErr(r.share.publish(ctx, r.store, ch))
}

// apply adds a revocation another gateway made (see State.Apply).
func (r *Revocations) apply(ctx context.Context, ev audit.Event, rev Revocation) error {
	return r.write(ctx, ev, rev, nil)
}

// has reports whether rev's kind and value are revoked already.
func (r *Revocations) has(rev Revocation) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	switch rev.Kind {
	case RevokeSerial:
		n, err := strconv.ParseUint(rev.Value, 10, 64)
		_, ok := r.serials[n]
		return err == nil && ok
	case RevokeKeyID:
		_, ok := r.keyIDs[rev.Value]
		return ok
	case RevokeKey:
		h, err := parseSHA256Fingerprint(rev.Value)
		_, ok := r.keys[h]
		return err == nil && ok
	}
	return false
}

// write stores rev with its record ev (and ch in the outbox, for a local
// change), then re-checks what it bars.
func (r *Revocations) write(ctx context.Context, ev audit.Event, rev Revocation, ch *Change) error {
	if rev.Time.IsZero() {
		rev.Time = r.now().UTC()
	}
	// Validate before writing.
	probe := &Revocations{serials: map[uint64]Revocation{}, keyIDs: map[string]Revocation{}, keys: map[[32]byte]Revocation{}}
	if err := probe.add(rev); err != nil {
		return err
	}
	data, err := json.Marshal(rev)
	if err != nil {
		return fmt.Errorf("ca: revoke: %w", err)
	}
	_, err = r.store.AppendWith(ctx, ev, func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(revocationsBucket)
		if err != nil {
			return err
		}
		if ch != nil {
			if err := putOutbox(tx, *ch); err != nil {
				return err
			}
		}
		return b.Put([]byte(string(rev.Kind)+"\x00"+rev.Value), data)
	})
	if err != nil {
		return fmt.Errorf("ca: revoke: %w", err)
	}
	if err := r.add(rev); err != nil {
		return err
	}
	r.changed.notify()
	return nil
}

func (r *Revocations) subscribe(fn func()) { r.changed.subscribe(fn) }

// CheckSubject reports whether sub's serial (when non-zero), key id or
// key is revoked, and by which entry.
func (r *Revocations) CheckSubject(sub Subject) (Revocation, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if sub.Serial != 0 {
		if rev, ok := r.serials[sub.Serial]; ok {
			return rev, true
		}
	}
	if rev, ok := r.keyIDs[sub.KeyID]; ok && sub.KeyID != "" {
		return rev, true
	}
	if h, err := parseSHA256Fingerprint(sub.KeyFP); err == nil {
		if rev, ok := r.keys[h]; ok {
			return rev, true
		}
	}
	return Revocation{}, false
}

// List returns every revocation, oldest first.
func (r *Revocations) List() []Revocation {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Revocation
	for _, v := range r.serials {
		out = append(out, v)
	}
	for _, v := range r.keyIDs {
		out = append(out, v)
	}
	for _, v := range r.keys {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Revocation) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return compareStrings(string(a.Kind)+a.Value, string(b.Kind)+b.Value)
	})
	return out
}

// Check reports whether key (a plain key or a certificate) is revoked, and
// by which entry. For a certificate, its serial, key id and subject key are
// all checked; callers check separately that its CA is one of ours.
func (r *Revocations) Check(key ssh.PublicKey) (Revocation, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if c, ok := key.(*ssh.Certificate); ok {
		if rev, ok := r.serials[c.Serial]; ok {
			return rev, true
		}
		if rev, ok := r.keyIDs[c.KeyId]; ok {
			return rev, true
		}
		key = c.Key
	}
	rev, ok := r.keys[sha256.Sum256(key.Marshal())]
	return rev, ok
}

// KRL renders the list as an OpenSSH KRL: serials and key ids revoked under
// every CA key in cas (current and previous, user and host), and revoked
// keys by SHA-256.
func (r *Revocations) KRL(cas []ssh.PublicKey) *KRL {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k := &KRL{
		Version:       uint64(len(r.serials) + len(r.keyIDs) + len(r.keys)),
		GeneratedDate: r.now(),
		Comment:       "bastion revocation list",
	}
	var serials []uint64
	for s := range r.serials {
		serials = append(serials, s)
	}
	slices.Sort(serials)
	var ids []string
	for id := range r.keyIDs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if len(serials)+len(ids) > 0 {
		for _, ca := range cas {
			k.Certificates = append(k.Certificates, KRLCertSection{CA: ca, Serials: serials, KeyIDs: ids})
		}
	}
	for h := range r.keys {
		k.SHA256s = append(k.SHA256s, h)
	}
	slices.SortFunc(k.SHA256s, func(a, b [32]byte) int { return compareStrings(string(a[:]), string(b[:])) })
	return k
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// parseSHA256Fingerprint decodes "SHA256:base64" as ssh-keygen prints it.
func parseSHA256Fingerprint(fp string) ([32]byte, error) {
	var h [32]byte
	const prefix = "SHA256:"
	if len(fp) <= len(prefix) || fp[:len(prefix)] != prefix {
		return h, fmt.Errorf("ca: revoke: %q is not a SHA256: key fingerprint", fp)
	}
	raw, err := base64.RawStdEncoding.DecodeString(fp[len(prefix):])
	if err != nil || len(raw) != 32 {
		return h, fmt.Errorf("ca: revoke: %q is not a SHA256: key fingerprint", fp)
	}
	copy(h[:], raw)
	return h, nil
}
