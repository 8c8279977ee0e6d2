package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// hostIdentity is the gateway's own host key and the host certificate it
// presents for it. The certificate is re-issued (through the CA's
// pipeline, so each one is a cert.issued record like the first) whenever
// it no longer says what the gateway is: at start, when the CA files are
// reloaded (SIGHUP), and at every housekeeping tick. It is a
// gossh.AlgorithmSigner whose public key is the current certificate, so a
// re-issued certificate reaches the next connection without a restart.
type hostIdentity struct {
	key      gossh.AlgorithmSigner
	certPath string
	names    []string // the principals the configuration asks for
	auth     *ca.Authority
	now      func() time.Time
	log      *slog.Logger

	renewMu sync.Mutex // one re-issue at a time
	mu      sync.RWMutex
	cert    *gossh.Certificate
	signer  gossh.Signer // NewCertSigner(cert, key)
}

// loadHostKeys loads the gateway's ed25519 host key (creating it, 0600,
// when missing: derived from the host CA, so that gateways sharing the CA
// key files present one key to users who trust it on first use) and its
// host certificate from the host CA, re-issued when stale (see
// hostIdentity.staleness). It returns the plain signer and the
// certificate signer.
func loadHostKeys(ctx context.Context, cfg Config, auth *ca.Authority) (*hostIdentity, []gossh.Signer, error) {
	signer, err := loadOrCreateHostKey(cfg.HostKeyPath, auth.DeriveGatewayHostKey)
	if err != nil {
		return nil, nil, err
	}
	key, ok := signer.(gossh.AlgorithmSigner)
	if !ok {
		return nil, nil, fmt.Errorf("gateway: host key %s: its type %s cannot sign as the SSH protocol asks; use an ed25519 key", cfg.HostKeyPath, signer.PublicKey().Type())
	}
	names := cfg.HostNames
	if len(names) == 0 {
		names = defaultHostNames()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &hostIdentity{key: key, certPath: cfg.HostKeyPath + "-cert.pub", names: names, auth: auth, now: cfg.Now, log: log}
	h.cert = readHostCert(h.certPath, signer.PublicKey())
	if h.cert != nil {
		if h.signer, err = gossh.NewCertSigner(h.cert, key); err != nil {
			return nil, nil, fmt.Errorf("gateway: host certificate %s: %w", h.certPath, err)
		}
	}
	if _, err := h.renew(ctx); err != nil {
		return nil, nil, err
	}
	return h, []gossh.Signer{signer, h}, nil
}

// staleness says why cert must be re-issued ("" when it need not be): it
// is missing, its principals are not the configured names, it was signed
// by a host CA key other than the current one (a rotation, or CA files
// replaced), or it is not valid now with more than half its life left.
func (h *hostIdentity) staleness(cert *gossh.Certificate, now time.Time) string {
	switch {
	case cert == nil:
		return "missing"
	case !samePrincipals(cert.ValidPrincipals, h.names):
		return fmt.Sprintf("principals %s, configured %s", strings.Join(cert.ValidPrincipals, ","), strings.Join(h.names, ","))
	case string(cert.SignatureKey.Marshal()) != string(h.auth.PublicKey(ca.HostCA).Marshal()):
		return "signed by a host CA key that is no longer the current one"
	case !certFresh(cert, now):
		return "expired or past half its life"
	}
	return ""
}

// renew re-issues the host certificate when it is stale, writes it beside
// the key and presents it from the next connection on. It reports whether
// it re-issued; on error the certificate in use (if any) stays.
func (h *hostIdentity) renew(ctx context.Context) (bool, error) {
	h.renewMu.Lock()
	defer h.renewMu.Unlock()
	h.mu.RLock()
	old := h.cert
	h.mu.RUnlock()
	why := h.staleness(old, h.now())
	if why == "" {
		return false, nil
	}
	cert, err := h.auth.Sign(ctx, ca.Request{Kind: ca.HostCA, Key: h.key.PublicKey(), KeyID: "bastion-gateway", Principals: h.names, Requester: "gateway", Via: "gateway"})
	if err != nil {
		return false, fmt.Errorf("gateway: sign the gateway's host certificate: %w", err)
	}
	signer, err := gossh.NewCertSigner(cert, h.key)
	if err != nil {
		return false, fmt.Errorf("gateway: host certificate: %w", err)
	}
	if err := atomicfile.WriteFile(h.certPath, gossh.MarshalAuthorizedKey(cert), 0o644); err != nil {
		return false, fmt.Errorf("gateway: write host certificate: %w", err)
	}
	h.mu.Lock()
	h.cert, h.signer = cert, signer
	h.mu.Unlock()
	if old != nil {
		h.log.Info("re-issued the gateway's host certificate", "reason", why, "principals", strings.Join(h.names, ","), "serial", cert.Serial)
	}
	return true, nil
}

// current returns the certificate signer in use.
func (h *hostIdentity) current() gossh.Signer {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.signer
}

// PublicKey returns the host certificate in use.
func (h *hostIdentity) PublicKey() gossh.PublicKey { return h.current().PublicKey() }

// Sign signs with the host key (the same key behind every certificate).
func (h *hostIdentity) Sign(r io.Reader, data []byte) (*gossh.Signature, error) {
	return h.key.Sign(r, data)
}

// SignWithAlgorithm signs with the host key.
func (h *hostIdentity) SignWithAlgorithm(r io.Reader, data []byte, algorithm string) (*gossh.Signature, error) {
	return h.key.SignWithAlgorithm(r, data, algorithm)
}

// samePrincipals reports whether a and b hold the same names, in any
// order.
func samePrincipals(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// loadOrCreateHostKey reads the host key at path, or creates it from
// derive (a fresh random key when the CA cannot derive one).
func loadOrCreateHostKey(path string, derive func() (ed25519.PrivateKey, error)) (gossh.Signer, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		priv, err := derive()
		if errors.Is(err, ca.ErrHostKeyNotDerivable) {
			_, priv, err = ed25519.GenerateKey(rand.Reader)
		}
		if err != nil {
			return nil, err
		}
		block, err := gossh.MarshalPrivateKey(priv, "bastion-gateway")
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("gateway: create host key dir: %w", err)
		}
		if err := atomicfile.WriteNew(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, fmt.Errorf("gateway: write host key: %w", err)
		}
		return gossh.NewSignerFromKey(priv)
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: read host key: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("gateway: host key %s has mode %04o and is readable by others: run `chmod 600 %s`", path, st.Mode().Perm(), path)
	}
	s, err := gossh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("gateway: parse host key %s: %w", path, err)
	}
	return s, nil
}

// readHostCert returns the certificate at path if it certifies pub.
func readHostCert(path string, pub gossh.PublicKey) *gossh.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey(data)
	if err != nil {
		return nil
	}
	cert, ok := k.(*gossh.Certificate)
	if !ok || cert.CertType != gossh.HostCert || string(cert.Key.Marshal()) != string(pub.Marshal()) {
		return nil
	}
	return cert
}

// certFresh reports whether cert is valid now with more than half its
// life left.
func certFresh(cert *gossh.Certificate, now time.Time) bool {
	after, before := int64(cert.ValidAfter), int64(cert.ValidBefore)
	return now.Unix() >= after && now.Unix() < before && before-now.Unix() > (before-after)/2
}

// defaultHostNames are the host certificate's principals when none are
// configured: the machine's name and "localhost".
func defaultHostNames() []string {
	names := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && ca.ValidateHostPrincipal(h) == nil && h != "localhost" {
		names = append([]string{h}, names...)
	}
	return names
}

// renewHostCert re-issues the gateway's host certificate if it went
// stale; a failure is logged and the certificate in use stays (the next
// housekeeping tick tries again).
func (g *Gateway) renewHostCert(ctx context.Context) {
	if g.host == nil {
		return
	}
	if _, err := g.host.renew(ctx); err != nil {
		g.log.Error("could not re-issue the gateway's host certificate; the one in use stays", "err", err)
	}
}
