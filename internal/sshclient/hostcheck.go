package sshclient

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostCAChangedError means a gateway presented a host certificate signed
// by a CA other than the one pinned on first contact: either someone is
// intercepting the connection, or the gateway's host CA was replaced.
type HostCAChangedError struct {
	// Addr is the gateway address dialled.
	Addr string
	// File is the known_hosts file holding the pin.
	File string
	// Pinned are the host CA keys pinned in File.
	Pinned []ssh.PublicKey
	// Presented is the CA that signed the gateway's host certificate.
	Presented ssh.PublicKey
	// Dev is set when the pin is that of a `bastion dev` (see
	// HostCheck.Pin), which makes a new host CA at every start in a
	// temporary data directory: a change is then expected.
	Dev bool
}

func (e *HostCAChangedError) Error() string {
	pinned := make([]string, len(e.Pinned))
	for i, k := range e.Pinned {
		pinned[i] = ssh.FingerprintSHA256(k)
	}
	return fmt.Sprintf(`sshclient: THE GATEWAY'S HOST CA HAS CHANGED!
  %s presented a host certificate signed by the CA %s,
  but the host CA pinned on your first login is %s (in %s).
  Someone may be intercepting this connection (man in the middle), or the
  gateway's host CA was replaced. Nothing was sent to the gateway.
  If the change is legitimate (check the new fingerprint with your
  administrators: `+"`bastion ca export --host`"+` on the gateway prints it),
  delete %s and run `+"`bastion login`"+` again`,
		e.Addr, ssh.FingerprintSHA256(e.Presented), strings.Join(pinned, ", "), e.File, e.File) + e.devHint()
}

// devHint explains the change when the pin is a bastion dev's.
func (e *HostCAChangedError) devHint() string {
	if !e.Dev {
		return ""
	}
	return fmt.Sprintf(`.
  The pinned CA is that of a `+"`bastion dev`"+`: without --data-dir it keeps its
  data in a temporary directory, deleted when it stops, so every start makes
  a new CA and host key. After restarting bastion dev this is expected:
  delete %s and run `+"`bastion login`"+` again (plain ssh that
  warns about the gateway's host key: `+"`ssh-keygen -R '[HOST]:PORT'`"+` for its
  address). To keep one CA across restarts: `+"`bastion dev --data-dir DIR`", e.File)
}

// HostCheckConfig configures [NewHostCheck].
type HostCheckConfig struct {
	// KnownHosts is the file holding the pinned "@cert-authority" line.
	KnownHosts string
	// FirstUse allows the first contact, when nothing is pinned yet: the
	// host certificate's CA is then accepted and [HostCheck.Pin] records
	// it. Without FirstUse an unpinned gateway is refused.
	FirstUse bool
	// Now is the clock for the first contact's certificate check; default
	// time.Now. (Pinned checks use x/crypto's knownhosts, which reads the
	// system clock.)
	Now func() time.Time
}

// HostCheck verifies a gateway's host key: it must be a host certificate,
// signed by the pinned host CA once one is pinned (trust on first use,
// then pinned). Use one HostCheck per connection attempt.
type HostCheck struct {
	cfg    HostCheckConfig
	pinned []ssh.PublicKey
	// devPinned: a pin is that of a bastion dev (devPinNote).
	devPinned bool
	// verify is x/crypto's known_hosts check over cfg.KnownHosts: host CA
	// lines, @revoked lines, the certificate's principals and validity.
	verify ssh.HostKeyCallback

	mu      sync.Mutex
	firstCA ssh.PublicKey
	err     error
}

// NewHostCheck reads the pinned host CAs from cfg.KnownHosts.
func NewHostCheck(cfg HostCheckConfig) (*HostCheck, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &HostCheck{cfg: cfg}
	data, err := os.ReadFile(cfg.KnownHosts)
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sshclient: read %s: %w", cfg.KnownHosts, err)
	}
	h.pinned, h.devPinned, err = pinnedCAs(data)
	if err != nil {
		return nil, fmt.Errorf("sshclient: %s: %w: fix the line or delete the file (the next `bastion login` pins the gateway's host CA again)", cfg.KnownHosts, err)
	}
	if len(h.pinned) > 0 {
		if h.verify, err = knownhosts.New(cfg.KnownHosts); err != nil {
			return nil, fmt.Errorf("sshclient: %s: %w: fix the line or delete the file", cfg.KnownHosts, err)
		}
	}
	return h, nil
}

// pinnedCAs returns the keys of the file's @cert-authority lines, and
// whether one was pinned from a bastion dev.
func pinnedCAs(data []byte) ([]ssh.PublicKey, bool, error) {
	var keys []ssh.PublicKey
	dev := false
	for {
		marker, _, key, comment, rest, err := ssh.ParseKnownHosts(data)
		if errors.Is(err, io.EOF) {
			return keys, dev, nil
		}
		if err != nil {
			return nil, false, err
		}
		if marker == "cert-authority" {
			keys = append(keys, key)
			dev = dev || strings.Contains(comment, devPinNote)
		}
		data = rest
	}
}

// Pinned returns the host CA keys pinned when the check was made.
func (h *HostCheck) Pinned() []ssh.PublicKey { return h.pinned }

// Callback is the ssh.ClientConfig.HostKeyCallback.
func (h *HostCheck) Callback() ssh.HostKeyCallback { return h.check }

// Err returns the reason the last host key was refused, if it was; it is
// the same error the handshake failed with, without the ssh: prefix.
func (h *HostCheck) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// FirstUse returns the host CA accepted on first contact, if the check
// accepted one (nothing was pinned yet).
func (h *HostCheck) FirstUse() (ssh.PublicKey, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.firstCA, h.firstCA != nil
}

func (h *HostCheck) check(addr string, remote net.Addr, key ssh.PublicKey) error {
	err := h.decide(addr, remote, key)
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
	return err
}

func (h *HostCheck) decide(addr string, remote net.Addr, key ssh.PublicKey) error {
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return fmt.Errorf("sshclient: %s presented a plain %s host key (%s), not a host certificate from a bastion host CA: is it a bastion gateway? bastion only talks to gateways whose host CA it can pin",
			addr, key.Type(), ssh.FingerprintSHA256(key))
	}
	if cert.CertType != ssh.HostCert {
		return fmt.Errorf("sshclient: %s presented a user certificate as its host key; refusing it", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("sshclient: gateway address %q: %w", addr, err)
	}
	if len(h.pinned) == 0 {
		if !h.cfg.FirstUse {
			return fmt.Errorf("sshclient: no gateway host CA is pinned in %s yet: run `bastion login --gateway %s` first", h.cfg.KnownHosts, addr)
		}
		// First contact: the CA is whatever signed the certificate, but the
		// certificate must still be well formed, valid now and name the host.
		cc := &ssh.CertChecker{
			IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
				return bytes.Equal(auth.Marshal(), cert.SignatureKey.Marshal())
			},
			Clock: h.cfg.Now,
		}
		if err := cc.CheckHostKey(addr, remote, key); err != nil {
			return describeCertError(addr, host, cert, h.cfg.Now(), err)
		}
		h.mu.Lock()
		h.firstCA = cert.SignatureKey
		h.mu.Unlock()
		return nil
	}
	if !slices.ContainsFunc(h.pinned, func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), cert.SignatureKey.Marshal()) }) {
		return &HostCAChangedError{Addr: addr, File: h.cfg.KnownHosts, Pinned: h.pinned, Presented: cert.SignatureKey, Dev: h.devPinned}
	}
	err = h.verify(addr, remote, key)
	if err != nil && port != "22" {
		// x/crypto's knownhosts reads a pattern without a port, such as
		// the pin's "*", as port 22 only; OpenSSH matches it against
		// "[host]:port" too, so it covers a gateway on any port. Ask
		// again as OpenSSH would.
		err = h.verify(net.JoinHostPort(host, "22"), remote, key)
	}
	if err != nil {
		return describeCertError(addr, host, cert, h.cfg.Now(), err)
	}
	return nil
}

// describeCertError explains why a host certificate from the right CA was
// still refused, and what fixes it, without x/crypto's wording.
func describeCertError(addr, host string, cert *ssh.Certificate, now time.Time, err error) error {
	var revoked *knownhosts.RevokedError
	switch {
	case errors.As(err, &revoked):
		return fmt.Errorf("sshclient: the host key of %s is marked @revoked in %s", addr, revoked.Revoked.Filename)
	case !slices.Contains(cert.ValidPrincipals, host):
		return fmt.Errorf("sshclient: the host certificate of %s is for %s, not for %q: connect with one of those names, or add %q to host_names in the gateway's bastion.yaml and restart the gateway (it re-issues its host certificate when host_names changes)",
			addr, strings.Join(cert.ValidPrincipals, ", "), host, host)
	case cert.ValidBefore != ssh.CertTimeInfinity && now.Unix() >= int64(cert.ValidBefore): // #nosec G115 -- compared as OpenSSH does
		return fmt.Errorf("sshclient: the host certificate of %s expired at %s: a running gateway re-issues it before it expires, so check this machine's clock and the gateway's, or restart the gateway",
			addr, time.Unix(int64(cert.ValidBefore), 0).UTC().Format(time.RFC3339)) // #nosec G115
	case now.Unix() < int64(cert.ValidAfter): // #nosec G115
		return fmt.Errorf("sshclient: the host certificate of %s is not valid before %s: check this machine's clock and the gateway's",
			addr, time.Unix(int64(cert.ValidAfter), 0).UTC().Format(time.RFC3339)) // #nosec G115
	}
	return fmt.Errorf("sshclient: the host certificate of %s was refused: %s", addr, strings.TrimPrefix(err.Error(), "ssh: "))
}

// devPinNote marks, in a pin's comment, the host CA of a `bastion dev`.
const devPinNote = "of a bastion dev"

// Pin appends the host CA met on first contact to the known_hosts file as
// "@cert-authority * KEY", for bastion and for OpenSSH (the config's
// UserKnownHostsFile). It does nothing when a CA was already pinned.
// Call it once the gateway has proven useful, after the login; dev says
// the gateway is a `bastion dev` (its login service says so), whose CA a
// restart replaces: a later change is then explained (HostCAChangedError).
func (h *HostCheck) Pin(addr string, dev bool) (ssh.PublicKey, error) {
	ca, ok := h.FirstUse()
	if !ok {
		return nil, nil
	}
	what := "bastion host CA"
	if dev {
		what = "bastion host CA " + devPinNote
	}
	line := fmt.Sprintf("@cert-authority * %s %s, pinned by bastion login from %s on %s\n",
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca))), what, addr, h.cfg.Now().UTC().Format(time.DateOnly))
	// Rewritten whole (atomically), so a crash never leaves a cut line.
	old, err := os.ReadFile(h.cfg.KnownHosts)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sshclient: pin the host CA: %w", err)
	}
	if len(old) > 0 && old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	if err := writeFileAtomic(h.cfg.KnownHosts, append(old, line...), 0o600); err != nil {
		return nil, fmt.Errorf("sshclient: pin the host CA in %s: %w", h.cfg.KnownHosts, err)
	}
	return ca, nil
}
