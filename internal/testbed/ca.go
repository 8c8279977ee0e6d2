package testbed

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// CA is a certificate authority run by OpenSSH's own ssh-keygen, the
// reference that bastion's certificates and KRLs must agree with.
type CA struct {
	// Dir holds the CA key and scratch files for signing.
	Dir string
	// KeyPath is the ed25519 CA private key; KeyPath+".pub" is its public half.
	KeyPath string
	// PublicKey is the CA public key.
	PublicKey ssh.PublicKey

	t testing.TB
}

// CertOptions are the ssh-keygen -s flags for one certificate.
type CertOptions struct {
	// Host makes a host certificate (-h) instead of a user certificate.
	Host bool
	// KeyID is the key identity (-I); empty means "testbed".
	KeyID string
	// Principals are the user names or host names (-n).
	Principals []string
	// Validity is the -V interval, for example "+1h" or "-2h:-1h" (already
	// expired); empty means valid forever.
	Validity string
	// Serial is the certificate serial number (-z).
	Serial uint64
	// Options are -O certificate options, for example
	// "source-address=127.0.0.1/32", "force-command=true" or "clear".
	Options []string
}

// NewCA generates an ed25519 CA key in a fresh directory.
func NewCA(t testing.TB) *CA {
	t.Helper()
	RequireOpenSSH(t)
	dir := makeTempDir(t, "bastion-ca-", 0o700)
	ca := &CA{Dir: dir, KeyPath: filepath.Join(dir, "ca"), t: t}
	runTool(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testbed CA", "-f", ca.KeyPath)
	ca.PublicKey = readPublicKey(t, ca.KeyPath+".pub")
	return ca
}

// AuthorizedKey returns the CA public key as an authorized_keys line with a
// trailing newline, ready for SSHDConfig.TrustedUserCAKeys.
func (ca *CA) AuthorizedKey() string {
	return string(ssh.MarshalAuthorizedKey(ca.PublicKey))
}

// Sign certifies pub with ssh-keygen -s and returns the certificate in
// OpenSSH "-cert.pub" format (see Client.SetCertificate and
// SSHDConfig.HostCertificate). It fails the test if ssh-keygen does.
func (ca *CA) Sign(pub ssh.PublicKey, opts CertOptions) []byte {
	t := ca.t
	t.Helper()
	work := ca.scratch()
	pubPath := filepath.Join(work, "key.pub")
	if err := os.WriteFile(pubPath, ssh.MarshalAuthorizedKey(pub), 0o600); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	id := opts.KeyID
	if id == "" {
		id = "testbed"
	}
	args := []string{"-q", "-s", ca.KeyPath, "-I", id}
	if opts.Host {
		args = append(args, "-h")
	}
	if len(opts.Principals) > 0 {
		args = append(args, "-n", strings.Join(opts.Principals, ","))
	}
	if opts.Validity != "" {
		args = append(args, "-V", opts.Validity)
	}
	if opts.Serial != 0 {
		args = append(args, "-z", strconv.FormatUint(opts.Serial, 10))
	}
	for _, o := range opts.Options {
		args = append(args, "-O", o)
	}
	runTool(t, "ssh-keygen", append(args, pubPath)...)
	cert, err := os.ReadFile(filepath.Join(work, "key-cert.pub"))
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return cert
}

// KRL builds a binary OpenSSH key revocation list with ssh-keygen -k from a
// specification in ssh-keygen's KRL format, whose "serial:" and "id:"
// lines refer to certificates signed by this CA. For example:
//
//	serial: 7
//	id: alice@session-42
//	key: ssh-ed25519 AAAA...
func (ca *CA) KRL(spec string) []byte {
	t := ca.t
	t.Helper()
	work := ca.scratch()
	specPath, krlPath := filepath.Join(work, "krl.spec"), filepath.Join(work, "krl")
	if err := os.WriteFile(specPath, []byte(spec), 0o600); err != nil {
		t.Fatalf("testbed: %v", err)
	}
	runTool(t, "ssh-keygen", "-q", "-k", "-f", krlPath, "-s", ca.KeyPath+".pub", specPath)
	krl, err := os.ReadFile(krlPath)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return krl
}

// scratch returns a new directory inside Dir, so that concurrent signings
// never share file names.
func (ca *CA) scratch() string {
	ca.t.Helper()
	work, err := os.MkdirTemp(ca.Dir, "work-")
	if err != nil {
		ca.t.Fatalf("testbed: %v", err)
	}
	return work
}

// NewSigner returns a fresh ed25519 signer, for a host key, a user key or
// a CA of a test's own.
func NewSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
