package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// connStateKey keys a connection's state in its gliderlabs context.
type contextKey string

const connStateKey contextKey = "bastion-conn"

// connState is what the gateway knows about one connection.
type connState struct {
	id     string
	remote netip.Addr
	conn   net.Conn
	g      *Gateway
	log    *slog.Logger

	handshakeTimer *time.Timer
	authed         atomic.Bool
	failures       atomic.Int32
	lastErr        atomic.Pointer[error]
	slotOnce       sync.Once
	closeOnce      sync.Once
	closeReason    atomic.Pointer[string]

	// Set once, by touch, after the handshake.
	postAuth    sync.Once
	identity    *Identity
	identityErr error
	expiryTimer *time.Timer
}

// stateOf returns the connection's state; connCallback always sets it.
func stateOf(ctx gliderssh.Context) *connState {
	cs, _ := ctx.Value(connStateKey).(*connState)
	return cs
}

// authenticated runs when x/crypto accepts an authentication: the
// connection no longer counts against the unauthenticated cap, its
// handshake deadline stops, and its earlier failures are forgiven.
func (cs *connState) authenticated(g *Gateway) {
	cs.authed.Store(true)
	cs.handshakeTimer.Stop()
	cs.releaseSlot(g)
	g.bans.Forgive(cs.remote, int(cs.failures.Load()))
}

func (cs *connState) releaseSlot(g *Gateway) {
	cs.slotOnce.Do(func() {
		<-g.unauth
		g.metrics.unauthConns.Dec()
	})
}

// touch is called by every channel and request handler. The first call
// reads the identity from the ServerConn's Permissions, the ones x/crypto
// kept for the key that authenticated, writes auth.ok and registers the
// connection for locks and certificate expiry. Every call re-checks that
// the identity is neither locked nor expired.
func (cs *connState) touch(g *Gateway, conn *gossh.ServerConn) (*Identity, error) {
	cs.postAuth.Do(func() {
		id, err := identityOf(conn)
		if err != nil {
			cs.identityErr = err
			cs.kill("no_identity")
			return
		}
		cs.identity = id
		cs.log = cs.log.With("user", id.User)
		f := id.auditFields()
		f["remote"], f["conn"], f["method"] = cs.remote.String(), cs.id, "publickey"
		f["valid_until"] = id.ValidUntil.Format(time.RFC3339)
		g.metrics.authAttempts.WithLabelValues("ok", "").Inc()
		if err := g.recordOrRefuse(context.Background(), audit.Event{Type: audit.TypeAuthOK, Actor: id.User, Session: cs.id, Fields: f}); err != nil {
			// Channels are refused with this one line; the connection
			// ends shortly after, once the refusal has reached the client.
			cs.identityErr = errAuditUnavailable
			time.AfterFunc(2*time.Second, func() { cs.kill(ReasonAuditUnavailable) })
			return
		}
		g.mu.Lock()
		g.live[cs] = struct{}{}
		g.mu.Unlock()
		if g.cfg.Limits.DisconnectExpiredCert {
			cs.expiryTimer = time.AfterFunc(id.ValidUntil.Sub(g.now()), func() { cs.kill(ReasonExpired) })
		}
		cs.log.Info("authenticated", "key_id", id.KeyID, "serial", id.Serial)
	})
	if cs.identityErr != nil {
		return nil, cs.identityErr
	}
	id := cs.identity
	if lk, locked := g.deps.Locks.Find(id); locked && !id.Login {
		cs.kill(ReasonLocked)
		return nil, fmt.Errorf("gateway: %s is locked: %s", lk.Target, lk.Reason)
	}
	if !g.now().Before(id.ValidUntil) {
		cs.kill(ReasonExpired)
		return nil, fmt.Errorf("gateway: certificate expired at %s", id.ValidUntil.Format(time.RFC3339))
	}
	return id, nil
}

// kill closes the connection, remembering why for the session records.
func (cs *connState) kill(reason string) {
	cs.closeReason.CompareAndSwap(nil, &reason)
	cs.conn.Close()
}

// reason is why the connection was closed by us, or "" if it was not.
func (cs *connState) reason() string {
	if r := cs.closeReason.Load(); r != nil {
		return *r
	}
	return ""
}

// closed runs once when the connection's socket closes.
func (cs *connState) closed(g *Gateway) {
	cs.closeOnce.Do(func() {
		cs.handshakeTimer.Stop()
		if cs.expiryTimer != nil {
			cs.expiryTimer.Stop()
		}
		cs.releaseSlot(g)
		g.mu.Lock()
		delete(g.live, cs)
		g.mu.Unlock()
		g.metrics.connections.Dec()
	})
}

// trackedConn tells the gateway when the socket closes.
type trackedConn struct {
	net.Conn
	onClose func()
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.onClose()
	return err
}
