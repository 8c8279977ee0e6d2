package sshclient

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// Key is the user's ed25519 key pair.
type Key struct {
	// Path is the private key file.
	Path string
	// Private is the private key, for ssh-agent.
	Private ed25519.PrivateKey
	// Signer signs with Private.
	Signer ssh.Signer
}

// PublicKey returns the public half.
func (k *Key) PublicKey() ssh.PublicKey { return k.Signer.PublicKey() }

// LoadOrCreateKey returns the ed25519 key at path, generating it (0600,
// OpenSSH format, with path+".pub" beside it) when there is none. created
// reports whether it was generated now.
func LoadOrCreateKey(path, comment string) (key *Key, created bool, err error) {
	key, err = LoadKey(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("sshclient: generate a key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, false, fmt.Errorf("sshclient: encode the key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, false, err
	}
	// Create-only: two logins at once must not each write half a key, and
	// a crash leaves the whole key or none.
	if err := atomicfile.WriteNew(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, false, fmt.Errorf("sshclient: create key: %w", err)
	}
	pub := bytes.TrimSpace(ssh.MarshalAuthorizedKey(signer.PublicKey()))
	if comment != "" {
		pub = append(append(pub, ' '), comment...)
	}
	if err := writeFileAtomic(path+".pub", append(pub, '\n'), 0o644); err != nil {
		return nil, false, err
	}
	return &Key{Path: path, Private: priv, Signer: signer}, true, nil
}

// LoadKey reads the ed25519 key at path. A missing file is an error that
// matches os.ErrNotExist. A key readable by other users is refused, as
// ssh refuses it.
func LoadKey(path string) (*Key, error) {
	data, err := os.ReadFile(path) // #nosec G304 -- the user's own key path
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("sshclient: no key at %s: run `bastion login` to create one: %w", path, err)
		}
		return nil, fmt.Errorf("sshclient: read %s: %w", path, err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("sshclient: private key %s has mode %04o and is readable by other users: run `chmod 600 %s`", path, st.Mode().Perm(), path)
	}
	raw, err := ssh.ParseRawPrivateKey(data)
	var pme *ssh.PassphraseMissingError
	if errors.As(err, &pme) {
		return nil, fmt.Errorf("sshclient: %s is protected by a passphrase; bastion manages this key itself and keeps it unencrypted (the certificate is what expires): delete %s and run `bastion login` again", path, path)
	}
	if err != nil {
		return nil, fmt.Errorf("sshclient: %s is not a private key bastion can read (%v): delete it and run `bastion login` again", path, err)
	}
	var priv ed25519.PrivateKey
	switch k := raw.(type) {
	case ed25519.PrivateKey:
		priv = k
	case *ed25519.PrivateKey:
		priv = *k
	default:
		return nil, fmt.Errorf("sshclient: %s holds a %T, not an ed25519 key: delete it and run `bastion login` again", path, raw)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	return &Key{Path: path, Private: priv, Signer: signer}, nil
}

// ParseUserCertificate parses the login service's answer (one
// authorized_keys line) and checks that it is a user certificate for key.
func ParseUserCertificate(data []byte, key ssh.PublicKey) (*ssh.Certificate, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("sshclient: the gateway's answer is not a certificate (%v): %q", err, truncate(string(data), 200))
	}
	cert, ok := k.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("sshclient: the gateway sent a plain %s key, not a certificate", k.Type())
	}
	if cert.CertType != ssh.UserCert {
		return nil, errors.New("sshclient: the gateway sent a host certificate, not a user certificate")
	}
	if !bytes.Equal(cert.Key.Marshal(), key.Marshal()) {
		return nil, fmt.Errorf("sshclient: the certificate is for key %s, not for this machine's key %s",
			ssh.FingerprintSHA256(cert.Key), ssh.FingerprintSHA256(key))
	}
	return cert, nil
}

// ReadCertificate reads the user certificate at path.
func ReadCertificate(path string) (*ssh.Certificate, error) {
	data, err := os.ReadFile(path) // #nosec G304 -- the user's own certificate path
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("sshclient: no certificate at %s: run `bastion login`: %w", path, err)
		}
		return nil, fmt.Errorf("sshclient: read %s: %w", path, err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return nil, fmt.Errorf("sshclient: %s is not a certificate (%v): run `bastion login` for a new one", path, err)
	}
	cert, ok := k.(*ssh.Certificate)
	if !ok || cert.CertType != ssh.UserCert {
		return nil, fmt.Errorf("sshclient: %s holds no user certificate: run `bastion login` for a new one", path)
	}
	return cert, nil
}

// WriteCertificate saves cert at path (0600).
func WriteCertificate(path string, cert *ssh.Certificate) error {
	return writeFileAtomic(path, ssh.MarshalAuthorizedKey(cert), 0o600)
}

// ValidAt reports whether now falls inside cert's validity window, as
// OpenSSH and the gateway decide it.
func ValidAt(cert *ssh.Certificate, now time.Time) bool {
	unix := now.Unix()
	if unix < 0 {
		return false
	}
	return uint64(unix) >= cert.ValidAfter && (cert.ValidBefore == ssh.CertTimeInfinity || uint64(unix) < cert.ValidBefore)
}

// maxCertUnix is 9999-12-31T23:59:59Z: certificate times past it (2^64-1
// is "forever") are shown as it, so they format and compare sanely.
const maxCertUnix = 253402300799

// ValidFrom returns the start of cert's validity.
func ValidFrom(cert *ssh.Certificate) time.Time {
	return time.Unix(int64(min(cert.ValidAfter, maxCertUnix)), 0) // #nosec G115 -- clamped
}

// Expiry returns the end of cert's validity.
func Expiry(cert *ssh.Certificate) time.Time {
	return time.Unix(int64(min(cert.ValidBefore, maxCertUnix)), 0) // #nosec G115 -- clamped (CertTimeInfinity is "forever")
}

func truncate(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
