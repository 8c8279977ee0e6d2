package ca

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bastion-ssh/bastion/audit"
)

// EventReader reads the audit log; *audit.Store is one.
type EventReader interface {
	Iterate(ctx context.Context, f audit.Filter, fn func(audit.Event) error) error
}

// Issued is a certificate the CA signed, as its cert.issued record
// describes it.
type Issued struct {
	// Kind is UserCA or HostCA.
	Kind Kind
	// CAFP is the fingerprint of the CA key that signed it.
	CAFP        string
	Serial      uint64
	KeyID       string
	Principals  []string
	ValidBefore time.Time
}

// holder reports whether user holds the certificate: user is one of its
// principals, its key id, or the owner named in a login certificate's key
// id ("alice@example.com sub=..." is owned by alice@example.com).
func (c Issued) holder(user string) bool {
	if c.Kind != UserCA {
		return false
	}
	owner, _, _ := strings.Cut(c.KeyID, " sub=")
	return slices.Contains(c.Principals, user) || c.KeyID == user || owner == user
}

// IssuedUnexpired lists the certificates (user and host) the CA issued
// that have not expired at now, from the cert.issued records.
func IssuedUnexpired(ctx context.Context, r EventReader, now time.Time) ([]Issued, error) {
	var out []Issued
	err := r.Iterate(ctx, audit.Filter{Types: []string{audit.TypeCertIssued}}, func(ev audit.Event) error {
		f := ev.Fields
		kind := Kind(f["cert_type"])
		if kind != UserCA && kind != HostCA {
			return nil
		}
		serial, err := strconv.ParseUint(f["serial"], 10, 64)
		if err != nil {
			return nil
		}
		before := maxCertTime
		if f["valid_before"] != "forever" {
			if before, err = time.Parse(time.RFC3339, f["valid_before"]); err != nil {
				return nil
			}
		}
		if !before.After(now) {
			return nil
		}
		var principals []string
		if f["principals"] != "" {
			principals = strings.Split(f["principals"], ",")
		}
		out = append(out, Issued{Kind: kind, CAFP: f["ca_fp"], Serial: serial, KeyID: f["key_id"], Principals: principals, ValidBefore: before})
		return nil
	})
	return out, err
}

// RevokeUser revokes, by serial, every unexpired user certificate issued
// to user (see Issued.holder), and returns them. It does not stop user
// from getting new ones: that is what a lock is for.
func (s *State) RevokeUser(ctx context.Context, r EventReader, user, reason, by string, now time.Time) ([]Issued, error) {
	if err := CheckReason(reason); err != nil {
		return nil, fmt.Errorf("ca: revoke: %w", err)
	}
	issued, err := IssuedUnexpired(ctx, r, now)
	if err != nil {
		return nil, err
	}
	var done []Issued
	var pending error
	for _, c := range issued {
		if !c.holder(user) {
			continue
		}
		rev := Revocation{Kind: RevokeSerial, Value: strconv.FormatUint(c.Serial, 10), Reason: strings.TrimSpace("user " + user + ": " + reason), By: by}
		if err := s.Revocations.Revoke(ctx, rev); errors.Is(err, ErrPending) {
			pending = err // in effect here; published later
		} else if err != nil {
			return done, err
		}
		done = append(done, c)
	}
	return done, pending
}

// KeyIDMatches counts the unexpired issued certificates whose key id is
// exactly keyID, and lists up to five other key ids that start with it (a
// login certificate's key id is "EMAIL sub=SUBJECT"), so a revocation by
// key id can say whether it hit anything.
func KeyIDMatches(ctx context.Context, r EventReader, keyID string, now time.Time) (exact int, similar []string, err error) {
	issued, err := IssuedUnexpired(ctx, r, now)
	if err != nil {
		return 0, nil, err
	}
	for _, c := range issued {
		switch {
		case c.Kind != UserCA:
		case c.KeyID == keyID:
			exact++
		case strings.HasPrefix(c.KeyID, keyID) && len(similar) < 5 && !slices.Contains(similar, c.KeyID):
			similar = append(similar, c.KeyID)
		}
	}
	return exact, similar, nil
}

// ValidUnder counts the unexpired issued certificates signed by any of the
// CA keys with fingerprints fps, and returns when the last of them
// expires: a CA key must stay trusted until then.
func ValidUnder(ctx context.Context, r EventReader, fps []string, now time.Time) (n int, until time.Time, err error) {
	issued, err := IssuedUnexpired(ctx, r, now)
	if err != nil {
		return 0, time.Time{}, err
	}
	for _, c := range issued {
		if slices.Contains(fps, c.CAFP) {
			n++
			if c.ValidBefore.After(until) {
				until = c.ValidBefore
			}
		}
	}
	return n, until, nil
}
