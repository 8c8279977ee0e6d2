package ca

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Kind says which of the two CAs a key belongs to.
type Kind string

// The two CAs. They never share a key: a user certificate must never be
// usable as a host certificate or the other way round.
const (
	UserCA Kind = "user"
	HostCA Kind = "host"
)

// fileName is the base name of the kind's private key under DATA_DIR/ca.
func (k Kind) fileName() string { return string(k) + "_ca" }

// Layout names the files of a CA inside a data directory. The layout is a
// published interface (other tools and tests rely on it):
//
//	DATA_DIR/ca/user_ca               user CA private key (OpenSSH, 0600)
//	DATA_DIR/ca/user_ca.pub           its public key
//	DATA_DIR/ca/user_ca.previous.pub  older user CA keys still trusted after `ca rotate`
//	DATA_DIR/ca/user_ca.retired.pub   user CA keys retired by `ca retire`, kept for KRLs
//	DATA_DIR/ca/host_ca, host_ca.pub, host_ca.previous.pub, host_ca.retired.pub  the same for hosts
//	DATA_DIR/audit.db                 the audit log (package audit)
//
// KeyDir, when set (the configuration's ca.dir), holds the key files
// instead of DATA_DIR/ca: gateways of a cluster each keep their own data
// directory (bbolt holds its file locked) and read the same CA key files,
// such as a Kubernetes Secret copied into a memory volume.
type Layout struct {
	// DataDir is bastion's data directory (--data-dir).
	DataDir string
	// KeyDir is where the CA key files live; empty means DATA_DIR/ca.
	KeyDir string
}

// Dir is the directory of the CA key files: KeyDir, or DATA_DIR/ca.
func (l Layout) Dir() string {
	if l.KeyDir != "" {
		return l.KeyDir
	}
	return filepath.Join(l.DataDir, "ca")
}

// PrivateKey is the path of the kind's current private key.
func (l Layout) PrivateKey(k Kind) string { return filepath.Join(l.Dir(), k.fileName()) }

// PublicKey is the path of the kind's current public key.
func (l Layout) PublicKey(k Kind) string { return l.PrivateKey(k) + ".pub" }

// PreviousKeys is the path of the kind's older, still trusted public keys.
func (l Layout) PreviousKeys(k Kind) string { return l.PrivateKey(k) + ".previous.pub" }

// RetiredKeys is the path of the kind's retired public keys: no longer
// trusted, but still named in every KRL so that certificates they signed
// and bastion revoked stay revoked on hosts that trust them still.
func (l Layout) RetiredKeys(k Kind) string { return l.PrivateKey(k) + ".retired.pub" }

// RevocationCAs returns every CA public key, of both kinds, whose
// certificates a KRL must cover: the trusted keys (current and previous)
// and the retired ones. Duplicates are harmless (KRL.Marshal merges them).
func (l Layout) RevocationCAs() ([]ssh.PublicKey, error) {
	var cas []ssh.PublicKey
	for _, k := range []Kind{UserCA, HostCA} {
		keys, err := l.TrustedKeys(k)
		if err != nil {
			return nil, err
		}
		retired, err := readPublicKeys(l.RetiredKeys(k))
		if err != nil {
			return nil, err
		}
		cas = append(append(cas, keys...), retired...)
	}
	return cas, nil
}

// AuditDB is the path of the audit log.
func (l Layout) AuditDB() string { return filepath.Join(l.DataDir, "audit.db") }

// InitOptions configure Init.
type InitOptions struct {
	// KeyType of both CA keys; default ed25519.
	KeyType KeyType
	// Passphrase, when non-empty, encrypts both private keys at rest.
	Passphrase []byte
	// Rand is the randomness source; default crypto/rand.
	Rand io.Reader
}

// Init creates the user and host CA key pairs under l.Dir(). It refuses to
// overwrite an existing CA. It returns the two new public keys.
func Init(l Layout, opts InitOptions) (user, host ssh.PublicKey, err error) {
	if opts.Rand == nil {
		opts.Rand = defaultRand
	}
	if err := os.MkdirAll(l.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("ca: create data dir: %w", err)
	}
	if err := os.Mkdir(l.Dir(), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, nil, fmt.Errorf("ca: create %s: %w", l.Dir(), err)
	}
	// An existing directory may have been made with a looser umask.
	if err := os.Chmod(l.Dir(), 0o700); err != nil {
		return nil, nil, fmt.Errorf("ca: chmod %s: %w", l.Dir(), err)
	}
	for _, k := range []Kind{UserCA, HostCA} {
		if _, err := os.Lstat(l.PrivateKey(k)); err == nil {
			return nil, nil, fmt.Errorf("ca: %s already exists; refusing to overwrite the CA (use `bastion ca rotate` to replace a key)", l.PrivateKey(k))
		}
	}
	var pubs [2]ssh.PublicKey
	for i, k := range []Kind{UserCA, HostCA} {
		priv, err := generateKey(opts.KeyType, opts.Rand)
		if err != nil {
			return nil, nil, fmt.Errorf("ca: generate %s CA key: %w", k, err)
		}
		if err := writeKeyPair(l.PrivateKey(k), priv, "bastion-"+string(k)+"-ca", opts.Passphrase); err != nil {
			return nil, nil, err
		}
		if pubs[i], err = ssh.NewPublicKey(priv.Public()); err != nil {
			return nil, nil, fmt.Errorf("ca: %w", err)
		}
	}
	return pubs[0], pubs[1], nil
}

// Exists reports whether a CA has been initialised in l.
func (l Layout) Exists() bool {
	_, err := os.Stat(l.PrivateKey(UserCA))
	return err == nil
}

// TrustedKeys returns the kind's current public key first, then the older
// keys still trusted after a rotation. It reads only public files, so tools
// that verify (rather than sign) need no passphrase.
func (l Layout) TrustedKeys(k Kind) ([]ssh.PublicKey, error) {
	cur, err := readPublicKeys(l.PublicKey(k))
	if err != nil {
		return nil, err
	}
	if len(cur) != 1 {
		return nil, fmt.Errorf("ca: %s must hold exactly one public key, found %d (run `bastion ca init` first)", l.PublicKey(k), len(cur))
	}
	prev, err := readPublicKeys(l.PreviousKeys(k))
	if err != nil {
		return nil, err
	}
	return append(cur, prev...), nil
}

// ExportLines renders the kind's trusted keys in the form operators paste:
// TrustedUserCAKeys file content for the user CA, and `@cert-authority`
// known_hosts lines for the host CA. pattern is the known_hosts host pattern
// (default "*").
func ExportLines(k Kind, keys []ssh.PublicKey, pattern string) string {
	if pattern == "" {
		pattern = "*"
	}
	var b strings.Builder
	for i, key := range keys {
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
		comment := "bastion-" + string(k) + "-ca"
		if i > 0 {
			comment += "-previous"
		}
		if k == HostCA {
			fmt.Fprintf(&b, "@cert-authority %s %s %s\n", pattern, line, comment)
		} else {
			fmt.Fprintf(&b, "%s %s\n", line, comment)
		}
	}
	return b.String()
}
