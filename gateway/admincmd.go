package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
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
		case "--user":
			rev.Kind = revokeUser
			rev.Value, ok = next()
		case "--reason":
			rev.Reason, ok = next()
		default:
			s.errorf("bastion: unknown argument %q\n", args[i])
			ok = false
		}
		if !ok {
			s.errorf("usage: revoke (--serial N | --key-id ID | --user NAME | --key 'ssh-ed25519 AAAA...') [--reason TEXT]\n")
			return 2
		}
	}
	if err := ca.CheckReason(rev.Reason); err != nil {
		s.errorf("bastion: --reason: %v\n", err)
		return 2
	}
	if rev.Kind == ca.RevokeSerial {
		if _, err := strconv.ParseUint(rev.Value, 10, 64); err != nil {
			s.errorf("bastion: --serial wants a number\n")
			return 2
		}
	}
	if rev.Kind == "" {
		s.errorf("usage: revoke (--serial N | --key-id ID | --user NAME | --key 'ssh-ed25519 AAAA...') [--reason TEXT]\n")
		return 2
	}
	rev.By = id.User
	if rev.Kind == revokeUser {
		return g.revokeUser(ctx, s, rev)
	}
	// The state's change callback ends the sessions it now bars and
	// rewrites the KRL file (see stateChanged).
	if err := g.deps.Authority.State().Revocations.Revoke(ctx, rev); errors.Is(err, ca.ErrPending) {
		defer s.errorf("warning: etcd did not answer: the revocation is %v\n", err)
	} else if err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	s.printf("revoked %s %s\n", rev.Kind, rev.Value)
	if r, ok := g.deps.Audit.(ca.EventReader); ok && rev.Kind == ca.RevokeKeyID {
		if exact, similar, err := ca.KeyIDMatches(ctx, r, rev.Value, g.now()); err == nil {
			s.printf("it matches %d unexpired certificate(s) issued by this CA\n", exact)
			if exact == 0 && len(similar) > 0 {
				s.errorf("warning: key ids are matched exactly; these issued key ids start with %q: %s\n  to revoke everything a user holds: revoke --user NAME\n", rev.Value, strings.Join(similar, ", "))
			}
		}
	}
	return 0
}

// revokeUser is a pseudo-kind of the revoke command: every unexpired
// certificate issued to a user, by serial.
const revokeUser ca.RevocationKind = "user"

// revokeUser revokes every unexpired certificate issued to rev.Value.
func (g *Gateway) revokeUser(ctx context.Context, s *sessionIO, rev ca.Revocation) int {
	r, ok := g.deps.Audit.(ca.EventReader)
	if !ok {
		s.errorf("bastion: this gateway cannot read its issued certificates\n")
		return 1
	}
	done, err := g.deps.Authority.State().RevokeUser(ctx, r, rev.Value, rev.Reason, rev.By, g.now())
	if errors.Is(err, ca.ErrPending) {
		defer s.errorf("warning: etcd did not answer: the revocations are %v\n", err)
	} else if err != nil {
		s.errorf("bastion: %v\n", err)
		return 1
	}
	if len(done) == 0 {
		s.errorf("bastion: no unexpired certificate was issued to %q; nothing revoked (to refuse new logins: lock %s)\n", rev.Value, rev.Value)
		return 1
	}
	for _, c := range done {
		s.printf("revoked serial %d (key id %q)\n", c.Serial, c.KeyID)
	}
	s.printf("revoked %d certificate(s) of %s\n", len(done), rev.Value)
	return 0
}

// krl renders the current revocation list.
func (g *Gateway) krl() ([]byte, error) {
	cas, err := g.deps.Authority.RevocationCAs()
	if err != nil {
		return nil, err
	}
	return g.deps.Authority.State().Revocations.KRL(cas).Marshal()
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
	if err := atomicfile.WriteFile(g.cfg.KRLFile, data, 0o644); err != nil {
		return fmt.Errorf("gateway: krl_file: %w", err)
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
