package gateway

import (
	"context"
	"fmt"
	"os"
	"strconv"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
)

// Admin commands that change the CA's revocation list. While the gateway
// runs it holds the audit database, so `bastion ca revoke` cannot; these
// are the way to revoke then:
//
//	ssh -p 2222 carol@bastion revoke --serial 1234 --reason 'laptop stolen'
//	ssh -p 2222 carol@bastion krl > revoked.krl

// cmdRevoke revokes by serial, key id or key (an authorized_keys line).
func (g *Gateway) cmdRevoke(ctx context.Context, s *sessionIO, id *Identity, args []string) int {
	var rev ca.Revocation
	for i := 0; i < len(args); i++ {
		next := func() (string, bool) {
			if i+1 >= len(args) {
				return "", false
			}
			i++
			return args[i], true
		}
		var ok bool
		switch args[i] {
		case "--serial":
			rev.Kind = ca.RevokeSerial
			rev.Value, ok = next()
		case "--key-id":
			rev.Kind = ca.RevokeKeyID
			rev.Value, ok = next()
		case "--key":
			var line string
			if line, ok = next(); ok {
				k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
				if err != nil {
					s.errorf("bastion: --key wants a public key line (quote it): %v\n", err)
					return 2
				}
				rev = ca.RevokeKeyRequest(k)
			}
		case "--reason":
			rev.Reason, ok = next()
		default:
			s.errorf("bastion: unknown argument %q\n", args[i])
			ok = false
		}
		if !ok {
			s.errorf("usage: revoke (--serial N | --key-id ID | --key 'ssh-ed25519 AAAA...') [--reason TEXT]\n")
			return 2
		}
	}
	if rev.Kind == ca.RevokeSerial {
		if _, err := strconv.ParseUint(rev.Value, 10, 64); err != nil {
			s.errorf("bastion: --serial wants a number\n")
			return 2
		}
	}
	if rev.Kind == "" {
		s.errorf("usage: revoke (--serial N | --key-id ID | --key 'ssh-ed25519 AAAA...') [--reason TEXT]\n")
		return 2
	}
	rev.By = id.User
	if err := g.deps.Revocations.Revoke(ctx, rev); err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	g.endRevokedSessions()
	if err := g.writeKRL(); err != nil {
		s.errorf("bastion: revoked, but %v\n", err)
	}
	s.printf("revoked %s %s\n", rev.Kind, rev.Value)
	return 0
}

// krl renders the current revocation list.
func (g *Gateway) krl() ([]byte, error) {
	cas := append(g.deps.Authority.TrustedKeys(ca.UserCA), g.deps.Authority.TrustedKeys(ca.HostCA)...)
	return g.deps.Revocations.KRL(cas).Marshal()
}

// writeKRL refreshes cfg.KRLFile (if set) atomically, so a web server or
// config management can hand it to hosts' RevokedKeys.
func (g *Gateway) writeKRL() error {
	if g.cfg.KRLFile == "" {
		return nil
	}
	data, err := g.krl()
	if err != nil {
		return err
	}
	tmp := g.cfg.KRLFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("gateway: write krl_file: %w", err)
	}
	if err := os.Rename(tmp, g.cfg.KRLFile); err != nil {
		return fmt.Errorf("gateway: write krl_file: %w", err)
	}
	return nil
}

// cmdKRL writes the revocation list as an OpenSSH KRL (binary) to stdout.
func (g *Gateway) cmdKRL(_ context.Context, s *sessionIO, _ *Identity, _ []string) int {
	data, err := g.krl()
	if err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	if _, err := s.stdout.Write(data); err != nil {
		return 1
	}
	return 0
}

// endRevokedSessions ends live connections whose certificate was just
// revoked (by serial, key id or key).
func (g *Gateway) endRevokedSessions() {
	g.mu.Lock()
	var victims []*connState
	for cs := range g.live {
		id := cs.identity
		if id == nil || id.Login {
			continue
		}
		key, _, _, _, err := gossh.ParseAuthorizedKey([]byte(id.PublicKey))
		if err != nil {
			continue
		}
		if _, revoked := g.deps.Revocations.Check(&gossh.Certificate{Serial: id.Serial, KeyId: id.KeyID, Key: key}); revoked {
			victims = append(victims, cs)
		}
	}
	g.mu.Unlock()
	for _, cs := range victims {
		cs.kill(ReasonRevoked)
	}
}
