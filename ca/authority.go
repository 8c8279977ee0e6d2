package ca

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// defaultRand is the randomness source unless a Config names another.
var defaultRand io.Reader = rand.Reader

// Recorder is where the CA writes its audit records; *audit.Store is one.
type Recorder interface {
	Append(ctx context.Context, ev audit.Event) (audit.Event, error)
}

// Config configures an Authority.
type Config struct {
	// Layout locates the CA keys.
	Layout Layout
	// Policy is the signing policy; the zero value means DefaultPolicy().
	Policy Policy
	// Passphrase decrypts CA keys encrypted at rest.
	Passphrase []byte
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Rand is the randomness source for serials and nonces; default crypto/rand.
	Rand io.Reader
	// State is the revocation state the signing pipeline consults (it
	// never signs for a revoked key or key id, or a locked identity).
	// When nil it is loaded from the recorder, which must then also be a
	// StateStore (*audit.Store is).
	State *State
}

// Authority signs user and host certificates with bastion's CA keys.
// It is safe for concurrent use.
type Authority struct {
	layout     Layout
	policy     Policy
	passphrase []byte
	now        func() time.Time
	rand       io.Reader
	rec        Recorder
	state      *State

	mu      sync.RWMutex
	signers map[Kind]ssh.Signer
	trusted map[Kind][]ssh.PublicKey
	// hostSecret is what DeriveHostKey derives from (extracted from the
	// current host CA key, never the key itself); nil, with hostSecretErr
	// saying why, when that key's kind cannot be derived from.
	hostSecret    []byte
	hostSecretErr error
}

// New loads the CA keys from cfg.Layout. rec receives an audit record for
// every certificate signed or refused; it is required, because nothing is
// signed without its record.
func New(cfg Config, rec Recorder) (*Authority, error) {
	if rec == nil {
		return nil, fmt.Errorf("ca: an audit recorder is required: nothing is signed without its audit record")
	}
	if cfg.Policy.UserMaxValidity == 0 && cfg.Policy.HostMaxValidity == 0 {
		cfg.Policy = DefaultPolicy()
	}
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = defaultRand
	}
	if cfg.State == nil {
		store, ok := rec.(StateStore)
		if !ok {
			return nil, fmt.Errorf("ca: a revocation state is required: nothing is signed without checking locks and revocations")
		}
		st, err := LoadState(store, cfg.Now)
		if err != nil {
			return nil, err
		}
		cfg.State = st
	}
	a := &Authority{
		layout:     cfg.Layout,
		policy:     cfg.Policy,
		passphrase: cfg.Passphrase,
		now:        cfg.Now,
		rand:       cfg.Rand,
		rec:        rec,
		state:      cfg.State,
	}
	if err := a.reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload reads the CA key files again (bastion serve does on SIGHUP,
// after the files were replaced by configuration management or a
// Kubernetes Secret update). On error the keys in use stay as they were.
func (a *Authority) Reload() error { return a.reload() }

// reload reads both CAs' private and trusted public keys from disk.
func (a *Authority) reload() error {
	signers := map[Kind]ssh.Signer{}
	trusted := map[Kind][]ssh.PublicKey{}
	var hostSecret []byte
	var hostSecretErr error
	for _, k := range []Kind{UserCA, HostCA} {
		raw, err := loadPrivateKey(a.layout.PrivateKey(k), a.passphrase)
		if err != nil {
			return err
		}
		s, err := newCASigner(raw)
		if err != nil {
			return err
		}
		if k == HostCA {
			hostSecret, hostSecretErr = derivationSecret(raw)
		}
		keys, err := a.layout.TrustedKeys(k)
		if err != nil {
			return err
		}
		if string(keys[0].Marshal()) != string(s.PublicKey().Marshal()) {
			return fmt.Errorf("ca: %s does not match the private key %s; restore the matching pair", a.layout.PublicKey(k), a.layout.PrivateKey(k))
		}
		signers[k], trusted[k] = s, keys
	}
	a.mu.Lock()
	a.signers, a.trusted = signers, trusted
	a.hostSecret, a.hostSecretErr = hostSecret, hostSecretErr
	a.mu.Unlock()
	return nil
}

// State returns the revocation state the Authority signs against; the
// gateway checks connections against the same one.
func (a *Authority) State() *State { return a.state }

// Policy returns the signing policy in force.
func (a *Authority) Policy() Policy { return a.policy }

// PublicKey returns the kind's current (signing) public key.
func (a *Authority) PublicKey(k Kind) ssh.PublicKey {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.signers[k].PublicKey()
}

// TrustedKeys returns the kind's current key followed by the older keys
// still trusted during a rotation.
func (a *Authority) TrustedKeys(k Kind) []ssh.PublicKey {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return append([]ssh.PublicKey(nil), a.trusted[k]...)
}

// RevocationCAs returns every CA key a KRL must cover: the trusted keys of
// both kinds and the retired ones (see Layout.RevocationCAs).
func (a *Authority) RevocationCAs() ([]ssh.PublicKey, error) { return a.layout.RevocationCAs() }

// IsTrusted reports whether key is one of the kind's trusted CA keys,
// comparing marshalled bytes. A certificate is never a trusted CA key.
func (a *Authority) IsTrusted(k Kind, key ssh.PublicKey) bool {
	if key == nil {
		return false
	}
	if _, isCert := key.(*ssh.Certificate); isCert {
		return false
	}
	b := string(key.Marshal())
	a.mu.RLock()
	defer a.mu.RUnlock()
	for _, t := range a.trusted[k] {
		if string(t.Marshal()) == b {
			return true
		}
	}
	return false
}

// signer returns the kind's current signer.
func (a *Authority) signer(k Kind) ssh.Signer {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.signers[k]
}
