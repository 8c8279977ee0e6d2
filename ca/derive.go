package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"golang.org/x/crypto/ssh"
)

// ErrHostKeyNotDerivable is returned by DeriveHostKey when the host CA's
// private key is of a kind no host key can be derived from (none of the
// kinds `bastion ca init` makes or the CA loads today).
var ErrHostKeyNotDerivable = errors.New("ca: the host CA key cannot derive host keys")

// Domain separation of the derivation. Changing either string changes
// every derived host key, so they carry a version.
const (
	// deriveSalt is HKDF's salt when the host CA key is extracted into
	// the derivation secret.
	deriveSalt = "bastion host-key derivation v1"
	// deriveInfo prefixes the canonical name in HKDF's info; the NUL
	// keeps a name from ever extending the prefix.
	deriveInfo = "bastion record-mode host key v1\x00"
	// deriveGatewayInfo is HKDF's info for a gateway's own host key.
	deriveGatewayInfo = "bastion gateway host key v1"
	// maxDeriveName bounds a name (no valid host name is longer).
	maxDeriveName = 255
)

// derivationSecret extracts the secret host keys are derived from out of
// a CA private key: HKDF-Extract over the key's algorithm and private
// scalar. Only this pseudorandom key is kept beside the signer; the CA
// key cannot be recovered from it, nor from anything derived from it.
func derivationSecret(raw any) ([]byte, error) {
	var alg string
	var scalar []byte
	switch k := raw.(type) {
	case ed25519.PrivateKey:
		alg, scalar = ssh.KeyAlgoED25519, k.Seed()
	case *ed25519.PrivateKey:
		alg, scalar = ssh.KeyAlgoED25519, k.Seed()
	case *ecdsa.PrivateKey:
		b, err := k.Bytes()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrHostKeyNotDerivable, err)
		}
		alg, scalar = "ecdsa-"+k.Curve.Params().Name, b
	case *rsa.PrivateKey:
		alg, scalar = ssh.KeyAlgoRSA, k.D.Bytes()
	default:
		return nil, fmt.Errorf("%w (key type %T)", ErrHostKeyNotDerivable, raw)
	}
	ikm := append([]byte(alg+"\x00"), scalar...)
	return hkdf.Extract(sha256.New, ikm, []byte(deriveSalt))
}

// CanonicalHostName is the form of a target name that derived host keys
// are bound to: lower case, without a trailing dot, IP addresses in their
// standard notation (so "::1" and "0:0::1" are one name).
func CanonicalHostName(name string) string {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if a, err := netip.ParseAddr(name); err == nil && a.Zone() == "" {
		return a.Unmap().String()
	}
	return name
}

// DeriveHostKey returns the ed25519 host key that stands for the target
// name (see CanonicalHostName) when the gateway terminates SSH in its
// place (record mode). It is derived from the current host CA key with
// HKDF, so every gateway that reads the same CA key files presents the
// same key for a name, across restarts, and until the host CA is
// rotated: users who trust a target's key on first use are not told it
// changed. Whoever learns one derived key can impersonate that name (and
// only that name) to users who pinned it, exactly as with any host key;
// the host CA key, and the keys of other names, cannot be computed from
// it. Nothing is signed or audited here: certifying the key goes through
// Sign.
func (a *Authority) DeriveHostKey(name string) (ssh.Signer, error) {
	name = CanonicalHostName(name)
	if name == "" || len(name) > maxDeriveName {
		return nil, fmt.Errorf("ca: cannot derive a host key for a name of %d bytes (1 to %d)", len(name), maxDeriveName)
	}
	priv, err := a.derive(deriveInfo + name)
	if err != nil {
		return nil, err
	}
	return ssh.NewSignerFromKey(priv)
}

// DeriveGatewayHostKey returns the ed25519 key a gateway takes as its own
// host key when it has none yet: derived from the host CA key like
// DeriveHostKey (in another domain), so gateways started from the same CA
// key files behind one load balancer show users one host key. The
// gateway keeps it in its data directory, so it stays when the host CA
// is rotated later.
func (a *Authority) DeriveGatewayHostKey() (ed25519.PrivateKey, error) {
	return a.derive(deriveGatewayInfo)
}

// derive expands the host CA's derivation secret into an ed25519 key for
// info.
func (a *Authority) derive(info string) (ed25519.PrivateKey, error) {
	a.mu.RLock()
	secret, deriveErr := a.hostSecret, a.hostSecretErr
	a.mu.RUnlock()
	if secret == nil {
		return nil, deriveErr
	}
	seed, err := hkdf.Expand(sha256.New, secret, info, ed25519.SeedSize)
	if err != nil {
		return nil, fmt.Errorf("ca: derive host key: %w", err)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}
