package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// KeyType names the algorithm of a CA key.
type KeyType string

// The CA key types `bastion ca init --key-type` accepts.
const (
	KeyEd25519   KeyType = "ed25519"
	KeyECDSAP256 KeyType = "ecdsa-p256"
	KeyRSA4096   KeyType = "rsa-4096"
)

// ParseKeyType checks a --key-type value.
func ParseKeyType(s string) (KeyType, error) {
	switch KeyType(s) {
	case KeyEd25519, KeyECDSAP256, KeyRSA4096:
		return KeyType(s), nil
	case "":
		return KeyEd25519, nil
	}
	return "", fmt.Errorf("ca: unknown key type %q: use ed25519, ecdsa-p256 or rsa-4096", s)
}

// generateKey makes a new private key of the given type.
func generateKey(t KeyType, random io.Reader) (crypto.Signer, error) {
	switch t {
	case KeyEd25519, "":
		_, priv, err := ed25519.GenerateKey(random)
		return priv, err
	case KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), random)
	case KeyRSA4096:
		return rsa.GenerateKey(random, 4096)
	}
	return nil, fmt.Errorf("ca: unknown key type %q", t)
}

// writeKeyPair writes priv to path (mode 0600, OpenSSH format, encrypted when
// passphrase is non-empty) and its public half to path+".pub". It refuses to
// overwrite either file.
func writeKeyPair(path string, priv crypto.Signer, comment string, passphrase []byte) error {
	var (
		block *pem.Block
		err   error
	)
	if len(passphrase) > 0 {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, comment, passphrase)
	} else {
		block, err = ssh.MarshalPrivateKey(priv, comment)
	}
	if err != nil {
		return fmt.Errorf("ca: encode private key: %w", err)
	}
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		return fmt.Errorf("ca: encode public key: %w", err)
	}
	if err := writeNewFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " " + comment + "\n"
	return writeNewFile(path+".pub", []byte(line), 0o644)
}

// writeNewFile creates path with mode, failing if it exists; the file
// appears whole or not at all (see internal/atomicfile).
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.WriteNew(path, data, mode); err != nil {
		if errors.Is(err, atomicfile.ErrExist) {
			return fmt.Errorf("ca: %s already exists; refusing to overwrite a CA key (move it away first if you really mean to replace it)", path)
		}
		return fmt.Errorf("ca: %w", err)
	}
	return nil
}

// replaceFile atomically replaces path with data.
func replaceFile(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("ca: replace: %w", err)
	}
	return nil
}

// loadSigner reads an OpenSSH private key, refusing files that group or
// others can read (as ssh does), and decrypting with passphrase if needed.
func loadSigner(path string, passphrase []byte) (ssh.Signer, error) {
	raw, err := loadPrivateKey(path, passphrase)
	if err != nil {
		return nil, err
	}
	return newCASigner(raw)
}

// loadPrivateKey reads and decrypts the raw private key at path (see
// loadSigner).
func loadPrivateKey(path string, passphrase []byte) (any, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ca: read CA key: %w (run `bastion ca init` to create the CA)", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("ca: CA private key %s has mode %04o and is readable by others; refusing to use it: run `chmod 600 %s`", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca: read CA key: %w", err)
	}
	var raw any
	if len(passphrase) > 0 {
		raw, err = ssh.ParseRawPrivateKeyWithPassphrase(data, passphrase)
	} else {
		raw, err = ssh.ParseRawPrivateKey(data)
	}
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		return nil, fmt.Errorf("ca: CA key %s is encrypted: pass --passphrase-file (or ca.passphrase_file in the config)", path)
	case errors.Is(err, x509.IncorrectPasswordError):
		return nil, fmt.Errorf("ca: wrong passphrase for CA key %s", path)
	case err != nil:
		return nil, fmt.Errorf("ca: parse CA key %s: %w", path, err)
	}
	return raw, nil
}

// newCASigner wraps a raw private key so RSA keys sign with rsa-sha2-512
// (never SHA-1 ssh-rsa).
func newCASigner(raw any) (ssh.Signer, error) {
	// ParseRawPrivateKey returns *ed25519.PrivateKey; NewSignerFromKey wants the value.
	if p, ok := raw.(*ed25519.PrivateKey); ok {
		raw = *p
	}
	s, err := ssh.NewSignerFromKey(raw)
	if err != nil {
		return nil, fmt.Errorf("ca: unsupported CA key: %w", err)
	}
	if s.PublicKey().Type() == ssh.KeyAlgoRSA {
		as, ok := s.(ssh.AlgorithmSigner)
		if !ok {
			return nil, errors.New("ca: RSA CA key cannot choose its signature algorithm")
		}
		return ssh.NewSignerWithAlgorithms(as, []string{ssh.KeyAlgoRSASHA512})
	}
	return s, nil
}

// readPublicKeys parses every authorized_keys-format line of path. A missing
// file yields no keys.
func readPublicKeys(path string) ([]ssh.PublicKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", path, err)
	}
	var keys []ssh.PublicKey
	for len(strings.TrimSpace(string(data))) > 0 {
		k, _, _, rest, err := ssh.ParseAuthorizedKey(data)
		if err != nil {
			return nil, fmt.Errorf("ca: parse %s: %w", path, err)
		}
		if _, isCert := k.(*ssh.Certificate); isCert {
			// Teleport CVE-2025-49825: a "CA key" that is itself a
			// certificate must never be trusted.
			return nil, fmt.Errorf("ca: %s holds a certificate, not a CA public key; replace it with the CA's plain public key", path)
		}
		keys = append(keys, k)
		data = rest
	}
	return keys, nil
}

// Fingerprint is the SHA256 fingerprint of a key as ssh-keygen prints it.
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }
