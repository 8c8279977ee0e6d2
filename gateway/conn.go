package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// connStateKey keys a connection's state in its gliderlabs context.
type contextKey string

const connStateKey contextKey = "bastion-conn"

// connState is what the gateway knows about one connection.
type connState struct {
	// notifiers write a last message to the user on the connection's
	// session channels (record mode), before the gateway ends it.
	notifyMu  sync.Mutex
	notifiers map[uint64]func(msg string)
	notifyID  uint64

	id     string
	remote netip.Addr
	conn   net.Conn
	g      *Gateway
	log    *slog.Logger

	handshakeTimer *time.Timer
	authed         atomic.Bool
	lastErr        atomic.Pointer[error]
	// accepted describes the last key our check accepted on this
	// connection (its signature may still fail), and userName the user it
	// was offered for.
	accepted    atomic.Pointer[map[string]string]
	userName    atomic.Pointer[string]
	slotOnce    sync.Once
	closeOnce   sync.Once
	closeReason atomic.Pointer[string]
	// bar holds back the end of a connection barred while it runs lock
	// or revoke (barHold), so that an admin who locks or revokes
	// themselves gets the reply and exit status first.
	bar barHold
	// auditRefused is set when the connection's auth.ok could not be
	// made durable: every channel and request is refused.
	auditRefused atomic.Bool
	// staleOnly is set when an admin or auditor was let in while the
	// gateway admits no new session (it cannot vouch for the cluster's
	// shared state): only `cluster status|sessions` and `info` are
	// served, no jump and no other command.
	staleOnly atomic.Bool
	// guard holds the connection's channel count and pending refusal
	// records (connguard.go).
	guard *connGuard

	// attempts are the failed authentication attempts so far (bounded),
	// and user the last user name tried; accounted for once the
	// connection authenticates or ends.
	attemptsMu sync.Mutex
	attempts   []map[string]string
	user       string

	// identity is set once, by verified, when the connection
	// authenticates; touch checks it against the ServerConn's.
	identity    *Identity
	expiryTimer *time.Timer

	// endHolds counts built-in commands running on the connection: while
	// one runs, ending the connection for a revocation or lock waits
	// (endPending) until its output and exit status are out, at most
	// commandEndGrace, so an admin who revokes their own certificate sees
	// what was done. See holdEnd.
	endMu      sync.Mutex
	endHolds   int
	endPending bool
}

// commandEndGrace bounds how long a running built-in command delays the
// end of its connection once its credential is barred: well inside the
// second in which a lock must end every session.
const commandEndGrace = 500 * time.Millisecond

// holdEnd delays closeBarred until release is called or commandEndGrace
// has passed, whichever comes first.
func (cs *connState) holdEnd() (release func()) {
	cs.endMu.Lock()
	cs.endHolds++
	cs.endMu.Unlock()
	var once sync.Once
	rel := func() {
		once.Do(func() {
			cs.endMu.Lock()
			cs.endHolds--
			closeNow := cs.endHolds == 0 && cs.endPending
			cs.endMu.Unlock()
			if closeNow {
				cs.conn.Close()
			}
		})
	}
	timer := time.AfterFunc(commandEndGrace, rel)
	return func() {
		timer.Stop()
		rel()
	}
}

// notifyTimeout bounds how long telling the user why their connection
// ends may delay ending it (a client that does not read its channel).
const notifyTimeout = 500 * time.Millisecond

// addNotifier registers f to be told, once, why the connection is being
// ended; the returned func unregisters it.
func (cs *connState) addNotifier(f func(msg string)) func() {
	cs.notifyMu.Lock()
	defer cs.notifyMu.Unlock()
	if cs.notifiers == nil {
		cs.notifiers = map[uint64]func(string){}
	}
	cs.notifyID++
	id := cs.notifyID
	cs.notifiers[id] = f
	return func() {
		cs.notifyMu.Lock()
		delete(cs.notifiers, id)
		cs.notifyMu.Unlock()
	}
}

// notify tells every registered notifier msg and waits for them, at most
// notifyTimeout.
func (cs *connState) notify(msg string) {
	cs.notifyMu.Lock()
	fs := make([]func(string), 0, len(cs.notifiers))
	for _, f := range cs.notifiers {
		fs = append(fs, f)
	}
	cs.notifyMu.Unlock()
	if len(fs) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, f := range fs {
		wg.Add(1)
		go func() { defer wg.Done(); f(msg) }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(notifyTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// closeBarred closes the connection of a barred credential, or, while a
// built-in command holds it (holdEnd), once that command is done.
func (cs *connState) closeBarred() {
	cs.endMu.Lock()
	if cs.endHolds > 0 {
		cs.endPending = true
		cs.endMu.Unlock()
		return
	}
	cs.endMu.Unlock()
	cs.conn.Close()
}

// maxAttemptsKept bounds the attempts a connection remembers; x/crypto
// itself ends a connection after 128 authentication requests.
const maxAttemptsKept = 32

// addAttempt remembers a failed attempt.
func (cs *connState) addAttempt(user string, fields map[string]string) {
	cs.attemptsMu.Lock()
	defer cs.attemptsMu.Unlock()
	cs.user = user
	if len(cs.attempts) < maxAttemptsKept {
		cs.attempts = append(cs.attempts, fields)
	}
}

// takeAttempts returns the failed attempts so far, and forgets them.
func (cs *connState) takeAttempts() ([]map[string]string, string) {
	cs.attemptsMu.Lock()
	defer cs.attemptsMu.Unlock()
	a := cs.attempts
	cs.attempts = nil
	return a, cs.user
}

// setIdentity finishes authenticating the connection as id (verified has
// already put it in the live set that revocations and locks are checked
// against): its certificate's expiry is scheduled.
func (cs *connState) setIdentity(g *Gateway, id *Identity) {
	cs.log = cs.log.With("user", id.User)
	if g.cfg.Limits.DisconnectExpiredCert {
		cs.expiryTimer = time.AfterFunc(id.ValidUntil.Sub(g.now()), func() { cs.kill(ReasonExpired) })
	}
	cs.log.Info("authenticated", "key_id", bounded(id.KeyID), "serial", id.Serial)
}

// stateOf returns the connection's state; connCallback always sets it.
func stateOf(ctx gliderssh.Context) *connState {
	cs, _ := ctx.Value(connStateKey).(*connState)
	return cs
}

// authenticated runs when x/crypto accepts an authentication: the
// connection no longer counts against the unauthenticated cap and its
// handshake deadline stops.
func (cs *connState) authenticated(g *Gateway) {
	cs.authed.Store(true)
	cs.handshakeTimer.Stop()
	cs.releaseSlot(g)
	g.mu.Lock()
	delete(g.handshaking, cs.conn.RemoteAddr().String())
	g.mu.Unlock()
}

func (cs *connState) releaseSlot(g *Gateway) {
	cs.slotOnce.Do(func() {
		g.startups.release(cs.remote)
		g.metrics.unauthConns.Dec()
	})
}

// touch is called by every channel and request handler. It reads the
// identity from the ServerConn's Permissions (the ones x/crypto kept for
// the key that authenticated), checks it is the one settled at
// authentication, and re-runs the checks that can change since: the CA's
// trust, expiry, revocation and locks. A connection that fails them ends.
func (cs *connState) touch(g *Gateway, conn *gossh.ServerConn) (*Identity, error) {
	if cs.auditRefused.Load() {
		return nil, errAuditUnavailable
	}
	id := cs.identity
	if id == nil {
		cs.kill("no_identity")
		return nil, fmt.Errorf("the connection has no identity")
	}
	if fromConn, err := identityOf(conn); err != nil || fromConn.KeyFP != id.KeyFP || fromConn.User != id.User {
		cs.kill("no_identity")
		return nil, fmt.Errorf("the connection's identity is inconsistent")
	}
	if err := g.checker.recheck(id); err != nil {
		g.endBarred(cs, id, err)
		var ae *authError
		if errors.As(err, &ae) {
			return nil, fmt.Errorf("%s", ae.detail)
		}
		return nil, err
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

// barHold defers ending a connection barred by a re-check while the
// connection runs a command that changes the revocation state: the
// command's own reply comes first, then the connection ends (release).
// Nothing else of a barred connection runs: the command is one exec, its
// channel closes with the reply.
type barHold struct {
	mu      sync.Mutex
	held    bool
	pending error
}

// hold starts deferring.
func (b *barHold) hold() {
	b.mu.Lock()
	b.held = true
	b.mu.Unlock()
}

// deferBar records err for release and reports true while held.
func (b *barHold) deferBar(err error) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.held {
		return false
	}
	if b.pending == nil {
		b.pending = err
	}
	return true
}

// release stops deferring and returns the bar that came meanwhile, if any.
func (b *barHold) release() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held = false
	err := b.pending
	b.pending = nil
	return err
}
