package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
)

// loadHostKeys loads the gateway's ed25519 host key (creating it, 0600,
// when missing: derived from the host CA, so that gateways sharing the CA
// key files present one key to users who trust it on first use) and a host certificate for it from the host CA (signing a
// new one when it is missing, from another CA, or past half its life).
// It returns the plain signer and the certificate signer.
func loadHostKeys(ctx context.Context, cfg Config, auth *ca.Authority) ([]gossh.Signer, error) {
	signer, err := loadOrCreateHostKey(cfg.HostKeyPath, auth.DeriveGatewayHostKey)
	if err != nil {
		return nil, err
	}
	certPath := cfg.HostKeyPath + "-cert.pub"
	cert := readHostCert(certPath, signer.PublicKey())
	now := cfg.Now()
	if cert == nil || !auth.IsTrusted(ca.HostCA, cert.SignatureKey) || !certFresh(cert, now) {
		names := cfg.HostNames
		if len(names) == 0 {
			names = defaultHostNames()
		}
		cert, err = auth.Sign(ctx, ca.Request{Kind: ca.HostCA, Key: signer.PublicKey(), KeyID: "bastion-gateway", Principals: names, Requester: "gateway", Via: "gateway"})
		if err != nil {
			return nil, fmt.Errorf("gateway: sign the gateway's host certificate: %w", err)
		}
		if err := atomicfile.WriteFile(certPath, gossh.MarshalAuthorizedKey(cert), 0o644); err != nil {
			return nil, fmt.Errorf("gateway: write host certificate: %w", err)
		}
	}
	certSigner, err := gossh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, fmt.Errorf("gateway: host certificate: %w", err)
	}
	return []gossh.Signer{signer, certSigner}, nil
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
