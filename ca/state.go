package ca

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// State is bastion's one revocation state: revoked certificates and keys
// (Revocations) and locked identities (Locks). It sits below both the
// signing pipeline, which refuses to issue a credential it bars, and the
// gateway, which re-checks every authenticated connection against it on
// each use and whenever it changes. This implementation keeps the state in
// the audit database (bbolt); a cluster keeps it in etcd behind the same
// methods.
type State struct {
	Revocations *Revocations
	Locks       *Locks

	// sharing links local changes to a cluster's shared copy (shared.go).
	sharing sharing
}

// LoadState reads the revocation list and the locks from store.
func LoadState(store StateStore, now func() time.Time) (*State, error) {
	revs, err := LoadRevocations(store, now)
	if err != nil {
		return nil, err
	}
	locks, err := LoadLocks(store, now)
	if err != nil {
		return nil, err
	}
	st := &State{Revocations: revs, Locks: locks}
	revs.share, locks.share = &st.sharing, &st.sharing
	return st, nil
}

// Subject is what a credential names, as the revocation state matches it.
// At signing time Serial is 0 and User is empty; at use, every field is
// known.
type Subject struct {
	// User is the login name in use ("" while signing).
	User string
	// Principals are the certificate's principals.
	Principals []string
	// KeyID is the certificate's key id.
	KeyID string
	// Serial is the certificate's serial (0 while signing).
	Serial uint64
	// KeyFP is the SHA256 fingerprint of the subject key (never of a
	// certificate), as ssh.FingerprintSHA256 prints it.
	KeyFP string
}

// SubjectOf describes a signed certificate as the state matches it.
func SubjectOf(cert *ssh.Certificate, user string) Subject {
	return Subject{User: user, Principals: cert.ValidPrincipals, KeyID: cert.KeyId, Serial: cert.Serial, KeyFP: ssh.FingerprintSHA256(cert.Key)}
}

// names are the names a lock may bar: the login user, every principal,
// the key id, and the key id's owner (the part of a login certificate's
// key id "alice@example.com sub=..." before " sub=").
// LockedBy reports whether a lock on target would bar s.
func (s Subject) LockedBy(target string) bool {
	return target != "" && slices.Contains(s.names(), target)
}

func (s Subject) names() []string {
	names := make([]string, 0, len(s.Principals)+3)
	names = append(names, s.User, s.KeyID)
	if owner, _, ok := strings.Cut(s.KeyID, " sub="); ok {
		names = append(names, owner)
	}
	return append(names, s.Principals...)
}

// Barred reasons: the stable codes of BarredError.
const (
	BarredRevoked = "revoked"
	BarredLocked  = "locked"
)

// BarredError says why the state bars a subject.
type BarredError struct {
	// Reason is BarredRevoked or BarredLocked.
	Reason string
	// Detail names the revocation or lock, for people.
	Detail string
	// Revocation or Lock is the entry that matched.
	Revocation *Revocation
	Lock       *Lock
}

func (e *BarredError) Error() string { return e.Detail }

// Check returns nil if sub may use or receive a credential, or a
// *BarredError naming the revocation or lock that bars it.
func (s *State) Check(sub Subject) error {
	if rev, ok := s.Revocations.CheckSubject(sub); ok {
		return &BarredError{Reason: BarredRevoked, Revocation: &rev, Detail: fmt.Sprintf("revoked by %s %s%s", rev.Kind, rev.Value, reasonSuffix(rev.Reason))}
	}
	if lk, ok := s.Locks.FindAny(sub.names()); ok {
		return &BarredError{Reason: BarredLocked, Lock: &lk, Detail: fmt.Sprintf("%s is locked%s", lk.Target, reasonSuffix(lk.Reason))}
	}
	return nil
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + Printable(r)
}

// OnChange registers fn to run after every new revocation or lock, so
// that holders of live sessions can re-check them. fn must not block.
func (s *State) OnChange(fn func()) {
	s.Revocations.subscribe(fn)
	s.Locks.subscribe(fn)
}

// listeners is a list of change callbacks, safe for concurrent use.
type listeners struct {
	mu  sync.Mutex
	fns []func()
}

func (l *listeners) subscribe(fn func()) {
	l.mu.Lock()
	l.fns = append(l.fns, fn)
	l.mu.Unlock()
}

func (l *listeners) notify() {
	l.mu.Lock()
	fns := slices.Clone(l.fns)
	l.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}
