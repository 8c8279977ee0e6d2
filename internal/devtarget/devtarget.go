// Package devtarget is the built-in demo SSH host `bastion dev` puts
// behind the gateway when no usable sshd is at hand. It trusts bastion's
// user CA exactly as a hardened sshd would (certificates only, principal =
// login name) but runs no programs: sessions print what they would run.
package devtarget

import (
	"fmt"
	"io"
	"net"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// Target is a running demo host.
type Target struct {
	srv *gliderssh.Server
	ln  net.Listener
}

// Start serves on addr (e.g. 127.0.0.1:0). userCAs are the trusted user
// CA keys; hostKey is the target's own host key.
func Start(addr string, userCAs func(gossh.PublicKey) bool, hostKey gossh.Signer) (*Target, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("devtarget: listen on %s: %w", addr, err)
	}
	checker := &gossh.CertChecker{IsUserAuthority: userCAs}
	srv := &gliderssh.Server{
		Version:     "bastion-demo-target",
		IdleTimeout: 15 * time.Minute,
		// Each call builds its own answer; the demo target keeps no
		// identity beyond the session's user name.
		PublicKeyHandler: func(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
			cert, ok := key.(*gossh.Certificate)
			if !ok || len(cert.ValidPrincipals) == 0 {
				return false
			}
			_, err := checker.Authenticate(ctxMeta{ctx}, cert)
			return err == nil
		},
		Handler: func(s gliderssh.Session) {
			if cmd := s.RawCommand(); cmd != "" {
				fmt.Fprintf(s, "bastion demo target: you are %s; a real host would now run: %s\n", s.User(), cmd)
				s.Exit(0)
				return
			}
			fmt.Fprintf(s, "Welcome to the bastion demo target, %s.\r\nYou came through the gateway with a short-lived certificate.\r\nThis built-in host runs no programs; put real hosts behind bastion with deploy/target/.\r\n", s.User())
			io.Copy(io.Discard, s)
			s.Exit(0)
		},
	}
	srv.AddHostKey(hostKey)
	t := &Target{srv: srv, ln: ln}
	go srv.Serve(ln)
	return t, nil
}

// Addr is the address the target listens on.
func (t *Target) Addr() string { return t.ln.Addr().String() }

// Close stops the target.
func (t *Target) Close() error { return t.srv.Close() }

type ctxMeta struct{ ctx gliderssh.Context }

func (m ctxMeta) User() string          { return m.ctx.User() }
func (m ctxMeta) SessionID() []byte     { return []byte(m.ctx.SessionID()) }
func (m ctxMeta) ClientVersion() []byte { return []byte(m.ctx.ClientVersion()) }
func (m ctxMeta) ServerVersion() []byte { return []byte(m.ctx.ServerVersion()) }
func (m ctxMeta) RemoteAddr() net.Addr  { return m.ctx.RemoteAddr() }
func (m ctxMeta) LocalAddr() net.Addr   { return m.ctx.LocalAddr() }
