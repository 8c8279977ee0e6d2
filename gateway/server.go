package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	"github.com/prometheus/client_golang/prometheus"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/scan"
)

// Auditor is where the gateway writes audit records; *audit.Store is one.
type Auditor interface {
	Append(ctx context.Context, ev audit.Event) (audit.Event, error)
}

// Deps are the gateway's collaborators.
type Deps struct {
	// Authority checks certificates; its State (revocations and locks) is
	// the one the gateway re-checks connections against.
	Authority *ca.Authority
	Audit     Auditor
	// Registry receives the gateway's metrics; nil registers nowhere.
	Registry prometheus.Registerer
	// Resolver resolves jump targets; default net.DefaultResolver.
	Resolver Resolver
	// Dial connects to jump targets; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Recordings stores record-mode session recordings; nil records
	// none (sessions are still proxied and their commands audited).
	Recordings Recordings
	// SFTP, when set, returns an inspector for each sftp subsystem
	// channel of a record-mode session (see SFTPInspector).
	SFTP func(session string, ch uint32) SFTPInspector
	// Alerter, when set, is told at once (without the disk) when the
	// audit log stops taking writes or descriptors run out.
	Alerter Alerter
	// Cluster, when set, is the etcd-backed cluster this gateway belongs
	// to: new sessions are admitted only while its state is fresh enough
	// (Cluster.Admit), and shared state lives there. nil: a single
	// gateway on bbolt alone.
	Cluster *cluster.Cluster
}

// Gateway is the SSH jump host.
type Gateway struct {
	cfg      Config
	deps     Deps
	log      *slog.Logger
	now      func() time.Time
	checker  *checker
	access   *accessPolicy
	bans     *banList
	metrics  *metrics
	srv      *gliderssh.Server
	hostKeys []gossh.Signer
	host     *hostIdentity // the certificate in hostKeys, re-issued when stale
	startups *startups     // admits unauthenticated connections
	// loginConns counts live login connections per source.
	loginConns *loginConns
	janitor    janitor
	commands   map[string]command
	// targets probes jump targets for require_hardened_targets (nil: off).
	targets *scan.Checker
	// loginLimiter rate-limits logins per source address.
	loginLimiter *rateLimiter
	// record holds record mode's host certificate cache and known_hosts.
	rec *recorder
	// spool tracks the audit log's health and keeps records of past
	// events while it is down (auditspool.go).
	spool *spool
	// fds reports running out of file descriptors (fdlimit.go).
	fds *fdWatch
	// cl is the gateway's part in a cluster (cluster.go); nil alone.
	cl *clusterLink

	mu sync.Mutex
	// live holds every authenticated connection, idle or not, so that a
	// revocation or lock reaches all of them.
	live map[*connState]struct{}
	// handshaking maps a remote "ip:port" to its connection until it
	// authenticates, so a handshake that fails can be accounted for.
	handshaking map[string]*connState
	stopping    bool
	// listener is the listener Serve serves (closed by Shutdown, so that
	// a Serve that starts after Shutdown, or races it, returns).
	listener net.Listener
	sessions sync.WaitGroup
	// logins are the login sessions running (each closes its channel
	// once its exit status is sent); loginsEnd is closed when Shutdown's
	// grace is over, and ends them with ReasonShutdown (login.go).
	logins        map[chan struct{}]struct{}
	loginsEnd     chan struct{}
	loginsEndOnce sync.Once
}

// New builds a gateway; it loads (or creates) its host key and host
// certificate but does not listen yet.
func New(cfg Config, deps Deps) (*Gateway, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = slog.New(boundLogs(cfg.Logger.Handler()))
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 30 * time.Second
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Authority == nil || deps.Audit == nil {
		return nil, errors.New("gateway: Authority and Audit are required")
	}
	if deps.Resolver == nil {
		deps.Resolver = net.DefaultResolver
	}
	if deps.Dial == nil {
		d := &net.Dialer{}
		deps.Dial = d.DialContext
	}
	access, err := compileAccess(cfg.Access)
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		logins:     map[chan struct{}]struct{}{},
		loginsEnd:  make(chan struct{}),
		cfg:        cfg,
		deps:       deps,
		log:        cfg.Logger,
		now:        cfg.Now,
		checker:    &checker{authority: deps.Authority, state: deps.Authority.State(), login: cfg.Login, now: cfg.Now},
		access:     access,
		bans:       newBanList(cfg.Limits, cfg.Now),
		metrics:    newMetrics(deps.Registry),
		startups:   newStartups(cfg.Limits),
		loginConns: newLoginConns(cfg.Limits.MaxLoginConnectionsPerSource),
		janitor:    janitor{stop: make(chan struct{}), done: make(chan struct{})},
		live:       map[*connState]struct{}{},

		handshaking: map[string]*connState{},
	}
	if cfg.Login != nil {
		if cfg.Login.Provider == nil {
			return nil, errors.New("gateway: login: an identity provider is required")
		}
		g.loginLimiter = newRateLimiter(cfg.Login.PerMinute, cfg.Now)
	}
	g.spool = newSpool(deps.Audit, cfg.Logger, deps.Alerter, cfg.Now, deps.Registry)
	g.fds = newFDWatch(g, deps.Registry)
	dial := g.deps.Dial
	g.deps.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		g.fds.check("dial", err)
		return c, err
	}
	g.commands = g.builtinCommands()
	g.targets = newTargetChecker(cfg, deps)
	if g.rec, err = newRecorder(cfg.Record, deps.Authority, cfg.Now); err != nil {
		return nil, err
	}
	deps.Authority.State().OnChange(g.stateChanged)
	if deps.Cluster != nil {
		g.startCluster()
		deps.Cluster.OnGatewayLost(g.endLostSessions)
		deps.Cluster.OnSessionsResumed(g.resumeSessions)
	}
	if g.host, g.hostKeys, err = loadHostKeys(context.Background(), cfg, deps.Authority); err != nil {
		return nil, err
	}
	g.srv = g.newServer()
	if err := g.writeKRL(); err != nil {
		return nil, err
	}
	return g, nil
}

// HostKeys returns the signers the gateway presents (plain key, then its
// host certificate).
func (g *Gateway) HostKeys() []gossh.Signer { return g.hostKeys }

func (g *Gateway) newServer() *gliderssh.Server {
	srv := &gliderssh.Server{
		Version:     "bastion",
		IdleTimeout: g.cfg.Limits.IdleTimeout,
		// PublicKeyHandler must be set: gliderlabs turns on NoClientAuth
		// when no handler is. The handler gives each call its own
		// Permissions (see publicKeyHandler).
		PublicKeyHandler:     g.publicKeyHandler,
		ConnCallback:         g.connCallback,
		ServerConfigCallback: g.serverConfig,
		ChannelHandlers: map[string]gliderssh.ChannelHandler{
			"session":      g.limitChannel(g.handleSession),
			"direct-tcpip": g.limitChannel(g.handleDirectTCPIP),
			"default":      g.refuseChannel,
		},
		RequestHandlers: map[string]gliderssh.RequestHandler{
			"default": g.refuseGlobalRequest,
		},
		ConnectionFailedCallback: g.handshakeFailed,
	}
	for _, s := range g.hostKeys {
		srv.AddHostKey(s)
	}
	return srv
}

// Algorithms the gateway offers: those ssh-audit rates good, no more.
// The ciphers are AES-GCM only: clients pick the first of their own list
// that the server offers, OpenSSH lists chacha20-poly1305 first, and
// x/crypto's chacha20-poly1305 runs at a quarter to a fifth of its AES-GCM
// speed on AES-NI hardware (0.6 vs 2.2-3.4 GB/s measured), which decides
// jump throughput. With AEAD ciphers no MAC
// is used; the list holds only encrypt-then-MAC ones so a MAC never gets
// negotiated in the weak encrypt-and-MAC form.
var (
	kexAlgorithms = []string{gossh.KeyExchangeMLKEM768X25519, gossh.KeyExchangeCurve25519, "curve25519-sha256@libssh.org"}
	ciphers       = []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM}
	macs          = []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM}
	pubKeyAlgos   = []string{
		gossh.KeyAlgoED25519, gossh.KeyAlgoSKED25519,
		gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521, gossh.KeyAlgoSKECDSA256,
		gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256,
	}
)

// serverConfig is called once per connection.
func (g *Gateway) serverConfig(ctx gliderssh.Context) *gossh.ServerConfig {
	cs := stateOf(ctx)
	return &gossh.ServerConfig{
		Config: gossh.Config{
			KeyExchanges: kexAlgorithms,
			Ciphers:      ciphers,
			MACs:         macs,
		},
		MaxAuthTries:            g.cfg.Limits.MaxAuthTries,
		PublicKeyAuthAlgorithms: pubKeyAlgos,
		AuthLogCallback: func(meta gossh.ConnMetadata, method string, err error) {
			g.authLog(cs, meta, method, err)
			if err == nil {
				g.authenticatedAs(cs, meta.User())
			}
		},
		// x/crypto calls this only for the key whose signature it has
		// just verified, with the Permissions our check built for that
		// very key: the connection's identity is settled here, once.
		VerifiedPublicKeyCallback: func(meta gossh.ConnMetadata, _ gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
			return g.verified(cs, meta, perms)
		},
		// Sent before authentication: while the audit log is down a
		// login would be refused anyway, and this line says why. A
		// gateway cut off from etcd says so only to those it refuses
		// (see verified): the admins and auditors it still serves read
		// its state in their command's output, not as a refusal.
		BannerCallback: func(gossh.ConnMetadata) string {
			if g.spool.down() {
				return "bastion: " + MsgAuditUnavailable + "\n"
			}
			return ""
		},
	}
}

// publicKeyHandler adapts verifyKey to gliderlabs. gliderlabs returns
// ctx.Permissions().Permissions to x/crypto after this returns, so it is
// replaced with a fresh object on every call: x/crypto then keeps, for
// the key that finally authenticates, the Permissions built for that key.
func (g *Gateway) publicKeyHandler(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
	perms, err := g.checker.verifyKey(metaOf(ctx), key)
	cs := stateOf(ctx)
	if err != nil {
		ctx.Permissions().Permissions = &gossh.Permissions{}
		cs.lastErr.Store(&err)
		return false
	}
	ctx.Permissions().Permissions = perms
	cs.lastErr.Store(nil)
	// Remember what the accepted key claims, for the record of a
	// signature that then fails to verify.
	accepted := map[string]string{"method": "publickey", "key_fp": gossh.FingerprintSHA256(key)}
	if cert, ok := key.(*gossh.Certificate); ok {
		accepted["key_fp"], accepted["key_id"], accepted["serial"] = gossh.FingerprintSHA256(cert.Key), bounded(cert.KeyId), strconv.FormatUint(cert.Serial, 10)
	}
	cs.accepted.Store(&accepted)
	cs.userName.Store(ptr(bounded(ctx.User())))
	return true
}

// metaOf is the ConnMetadata view of a gliderlabs context.
func metaOf(ctx gliderssh.Context) gossh.ConnMetadata { return ctxMeta{ctx} }

type ctxMeta struct{ ctx gliderssh.Context }

func (m ctxMeta) User() string          { return m.ctx.User() }
func (m ctxMeta) SessionID() []byte     { return []byte(m.ctx.SessionID()) }
func (m ctxMeta) ClientVersion() []byte { return []byte(m.ctx.ClientVersion()) }
func (m ctxMeta) ServerVersion() []byte { return []byte(m.ctx.ServerVersion()) }
func (m ctxMeta) RemoteAddr() net.Addr  { return m.ctx.RemoteAddr() }
func (m ctxMeta) LocalAddr() net.Addr   { return m.ctx.LocalAddr() }

// authLog sees every authentication attempt x/crypto decides. Failures
// are kept with the connection and accounted for once, when it is known
// how the connection ended (see verified and handshakeFailed): a client
// offering other keys before its certificate is not an attacker, and an
// attacker who ends by logging in as "login" is not forgiven.
func (g *Gateway) authLog(cs *connState, meta gossh.ConnMetadata, method string, err error) {
	if method == "none" && err != nil {
		return // every client asks first; it is not an attempt
	}
	if err == nil {
		cs.authenticated(g)
		return
	}
	fields := map[string]string{"method": bounded(method)}
	var ae *authError
	// gliderlabs hands x/crypto its own "permission denied", so the reason
	// travels in lastErr: the verdict on the last key checked, which is
	// the key this attempt was about (x/crypto re-checks any other key).
	if last := cs.lastErr.Load(); method == "publickey" && last != nil && errors.As(*last, &ae) {
		for k, v := range ae.fields() {
			fields[k] = v
		}
	} else {
		fields["reason"] = methodReason(method)
		fields["detail"] = bounded(err.Error())
	}
	g.metrics.authAttempts.WithLabelValues("failed", fields["reason"]).Inc()
	cs.addAttempt(bounded(meta.User()), fields)
}

// verified settles the identity of a connection whose key x/crypto has
// just proven: the connection joins the live set (so revocations and locks
// reach it even before it opens a channel), its auth.ok is made durable
// with the attempts that preceded it, and its certificate's expiry is
// scheduled. If the record cannot be written the authentication fails,
// with a one-line reason for the user.
func (g *Gateway) verified(cs *connState, meta gossh.ConnMetadata, perms *gossh.Permissions) (*gossh.Permissions, error) {
	id, err := identityFromPerms(perms)
	if err != nil {
		return nil, err
	}
	// x/crypto may have asked our check about this key well before the
	// client signed (a query, then a signature seconds later). Join the
	// live set first, then re-check: a revocation or lock made since is
	// caught either here or by the sweep that follows it.
	if !id.Login {
		_, _ = id.caKey() // parsed once, before other goroutines read id
	}
	// A gateway that cannot vouch for the cluster's shared state admits
	// no new session (cluster.consistency); live ones keep running.
	if err := g.admitCluster(); err != nil && !id.Login && (g.isAdmin(id) || g.isAuditor(id)) {
		// An operator asking why the gateway is stale gets its own view
		// (cluster status|sessions) and nothing else: no jump, no change.
		cs.staleOnly.Store(true)
	} else if err != nil {
		ae := clusterRefusal(err)
		ae.keyFP, ae.serial, ae.keyID = id.KeyFP, id.Serial, bounded(id.KeyID)
		var rerr error = ae
		cs.lastErr.Store(&rerr)
		// The refused client is told why, as a banner.
		return nil, &gossh.BannerError{Err: rerr, Message: "bastion: " + g.clusterRefusalMessage() + "\n"}
	}
	cs.identity = id
	g.mu.Lock()
	g.live[cs] = struct{}{}
	g.mu.Unlock()
	if err := g.checker.recheck(id); err != nil {
		g.mu.Lock()
		delete(g.live, cs)
		g.mu.Unlock()
		var ae *authError
		if errors.As(err, &ae) {
			ae.keyFP, ae.serial, ae.keyID = id.KeyFP, id.Serial, bounded(id.KeyID)
		}
		cs.lastErr.Store(&err) // authLog records it as this attempt's reason
		return nil, err
	}
	attempts, user := cs.takeAttempts()
	if id.Login && len(attempts) > 0 {
		// Reaching the login service proves nothing about who the client
		// is: its failures count as if it had never authenticated.
		g.accountFailures(cs, user, attempts)
	}
	f := id.auditFields()
	f["remote"], f["conn"], f["method"] = cs.remote.String(), cs.id, "publickey"
	f["valid_until"] = id.ValidUntil.Format(time.RFC3339)
	f["client"] = bounded(string(meta.ClientVersion()))
	if !id.Login && len(attempts) > 0 {
		f["attempts_failed"] = strconv.Itoa(len(attempts))
		f["attempts_reasons"] = attemptReasons(attempts)
	}
	g.metrics.authAttempts.WithLabelValues("ok", "").Inc()
	cs.setIdentity(g, id)
	// Fail closed: if the record of the login cannot be made durable, the
	// connection may do nothing. It stays up just long enough for its
	// first channel or command to be refused with the one-line reason
	// (an auth failure would only say "Permission denied"); the record
	// itself waits in memory with the other records of past events.
	if err := g.record(context.Background(), audit.Event{Type: audit.TypeAuthOK, Actor: id.User, Session: cs.id, Fields: f}); err != nil {
		cs.auditRefused.Store(true)
		time.AfterFunc(auditRefuseGrace, func() { cs.kill(ReasonAuditUnavailable) })
	}
	return perms, nil
}

// auditRefuseGrace is how long a connection whose login could not be
// recorded stays open to be told why.
const auditRefuseGrace = 2 * time.Second

// handshakeFailed runs when a connection ends before authenticating,
// whatever layer refused it: its failed attempts, and a signature x/crypto
// rejected (a forged or replayed signature never reaches authLog), are
// recorded and counted towards a ban.
func (g *Gateway) handshakeFailed(conn net.Conn, err error) {
	g.mu.Lock()
	cs := g.handshaking[conn.RemoteAddr().String()]
	delete(g.handshaking, conn.RemoteAddr().String())
	g.mu.Unlock()
	if cs == nil {
		return
	}
	attempts, user := cs.takeAttempts()
	var authErr *gossh.ServerAuthError
	if accepted := cs.accepted.Load(); !errors.As(err, &authErr) && accepted != nil && cs.reason() == "" {
		// x/crypto accepted the key, then the signature failed to verify
		// and it dropped the connection.
		f := map[string]string{"reason": ReasonBadSignature, "detail": bounded(err.Error())}
		for k, v := range *accepted {
			f[k] = v
		}
		attempts = append(attempts, f)
		if user == "" {
			user = *cs.userName.Load()
		}
		g.metrics.authAttempts.WithLabelValues("failed", ReasonBadSignature).Inc()
	}
	cs.log.Debug("handshake failed", "err", err, "attempts", len(attempts))
	if len(attempts) > 0 {
		g.accountFailures(cs, user, attempts)
	}
}

// accountFailures writes an auth.failed record for each of a
// connection's failed attempts and counts the connection as one failure
// towards a ban of the source. It runs once the connection's outcome is
// known.
func (g *Gateway) accountFailures(cs *connState, user string, attempts []map[string]string) {
	for i, a := range attempts {
		fields := map[string]string{"remote": cs.remote.String(), "user": user, "conn": cs.id, "attempt": strconv.Itoa(i + 1)}
		for k, v := range a {
			fields[k] = v
		}
		g.record(context.Background(), audit.Event{Type: audit.TypeAuthFailed, Actor: user, Session: cs.id, Fields: fields})
	}
	// A ban counts connections, not key offers: a client whose agent
	// offers six keys before giving up has failed once. A refusal for
	// the gateway's own state (cluster_stale, cluster_id_conflict) is not
	// the client's fault.
	if slices.IndexFunc(attempts, func(a map[string]string) bool {
		return a["reason"] != ReasonClusterStale && a["reason"] != ReasonClusterIDConflict
	}) < 0 {
		return
	}
	if until, banned := g.bans.Fail(cs.remote, 1); banned {
		g.metrics.bans.Inc()
		g.record(context.Background(), audit.Event{Type: audit.TypeSourceBanned, Actor: cs.remote.String(), Fields: map[string]string{
			"remote": cs.remote.String(), "until": until.UTC().Format(time.RFC3339), "after_failures": fmt.Sprint(g.cfg.Limits.BanAfterFailures),
		}})
		cs.kill(ReasonBanned)
		go g.publishBan(sourceKey(cs.remote), until)
	}
}

// attemptReasons summarises attempts as "reason×count" in first-seen
// order, e.g. "not_a_certificate×4,expired×1".
func attemptReasons(attempts []map[string]string) string {
	var order []string
	counts := map[string]int{}
	for _, a := range attempts {
		r := a["reason"]
		if counts[r] == 0 {
			order = append(order, r)
		}
		counts[r]++
	}
	parts := make([]string, len(order))
	for i, r := range order {
		parts[i] = fmt.Sprintf("%s×%d", r, counts[r])
	}
	return strings.Join(parts, ",")
}

// record appends ev, the record of something that already happened (a
// session's end, a refusal, a failed login), timing it. If the log cannot
// take it, it waits in memory and is written when the log can (see
// auditspool.go); the error is still logged and returned.
func (g *Gateway) record(ctx context.Context, ev audit.Event) error {
	err := g.recordOrRefuse(ctx, ev)
	if err != nil && storeFault(ctx, err) {
		g.spool.keep(ev)
	}
	return err
}

// recordOrRefuse appends ev, the record of an action about to be taken (a
// login accepted, a session started). On failure nothing is kept: the
// caller must refuse the action, telling the user MsgAuditUnavailable.
func (g *Gateway) recordOrRefuse(ctx context.Context, ev audit.Event) error {
	if done := g.sessionEnding(ev); done != nil {
		defer done()
	}
	start := time.Now()
	err := g.spool.write(ctx, boundEvent(ev))
	g.metrics.auditLatency.Observe(time.Since(start).Seconds())
	g.registerSession(ev, err)
	if err != nil {
		g.log.Error("audit write failed", "type", ev.Type, "err", err)
	}
	return err
}

// AuditAvailable reports whether the audit log takes writes; while it does
// not, the gateway refuses every action that has an audit record.
func (g *Gateway) AuditAvailable() bool { return !g.spool.down() }

// connCallback runs before the handshake: banned sources and connections
// over the unauthenticated cap are closed at once, and a deadline bounds
// the handshake.
func (g *Gateway) connCallback(ctx gliderssh.Context, conn net.Conn) net.Conn {
	remote := remoteAddr(conn.RemoteAddr())
	if _, banned := g.bans.Banned(remote); banned {
		g.metrics.connsRefused.WithLabelValues(DropBanned).Inc()
		g.startups.dropped(remote, DropBanned)
		return nil
	}
	if reason := g.startups.admit(remote); reason != "" {
		g.metrics.connsRefused.WithLabelValues(reason).Inc()
		return nil
	}
	g.mu.Lock()
	stopping := g.stopping
	g.mu.Unlock()
	if stopping {
		g.startups.release(remote)
		return nil
	}
	cs := &connState{id: newID(), remote: remote, conn: conn, g: g, guard: newConnGuard()}
	cs.log = g.log.With("conn", cs.id, "remote", remote.String())
	ctx.SetValue(connStateKey, cs)
	g.mu.Lock()
	g.handshaking[conn.RemoteAddr().String()] = cs
	g.mu.Unlock()
	g.metrics.unauthConns.Inc()
	g.metrics.connections.Inc()
	cs.handshakeTimer = time.AfterFunc(g.cfg.Limits.HandshakeTimeout, func() {
		if !cs.authed.Load() {
			g.metrics.connsRefused.WithLabelValues("handshake_timeout").Inc()
			cs.kill("handshake_timeout")
		}
	})
	return &trackedConn{Conn: conn, onClose: func() { cs.closed(g); g.connEnded(cs) }}
}

// Serve accepts connections on ln until Shutdown.
func (g *Gateway) Serve(ln net.Listener) error {
	g.mu.Lock()
	if g.stopping {
		g.mu.Unlock()
		ln.Close()
		return nil
	}
	g.listener = ln
	g.mu.Unlock()
	g.record(context.Background(), audit.Event{Type: audit.TypeGatewayStart, Actor: "gateway", Fields: map[string]string{"listen": ln.Addr().String()}})
	g.startJanitor()
	err := g.srv.Serve(fdListener{Listener: ln, w: g.fds})
	if errors.Is(err, gliderssh.ErrServerClosed) {
		return nil
	}
	return err
}

// ListenAndServe listens on cfg.Listen and serves.
func (g *Gateway) ListenAndServe() error {
	ln, err := net.Listen("tcp", g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway: listen on %s: %w%s", g.cfg.Listen, ListenCause(err), ListenHint(err))
	}
	return g.Serve(ln)
}

// Shutdown stops accepting connections, lets live sessions run for up to
// the grace period (or until ctx ends), then closes what is left; every
// session's end event is written before it returns.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.stopping = true
	ln := g.listener
	g.mu.Unlock()
	graceCtx, cancel := context.WithTimeout(ctx, g.cfg.ShutdownGrace)
	defer cancel()
	err := g.srv.Shutdown(graceCtx)
	if ln != nil {
		// The server closes the listeners it tracks; one whose Serve had
		// not reached tracking yet is closed here, so Serve returns.
		ln.Close()
	}
	if err != nil {
		// Grace is over: logins still waiting are told why first (they
		// cannot move to another gateway), then what is left ends.
		g.endLogins(loginEndWait)
		g.mu.Lock()
		for cs := range g.live {
			cs.closeReason.CompareAndSwap(nil, ptr("shutdown"))
		}
		g.mu.Unlock()
		g.srv.Close()
	}
	g.sessions.Wait()
	g.stopJanitor()
	g.stopCluster()
	g.record(context.Background(), audit.Event{Type: audit.TypeGatewayStop, Actor: "gateway"})
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 5*time.Second)
	g.spool.close(flushCtx)
	cancelFlush()
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// stateChanged runs after every revocation and lock: live connections
// are re-checked, and the KRL file is rewritten.
func (g *Gateway) stateChanged() {
	g.recheckAll()
	if err := g.writeKRL(); err != nil {
		g.log.Error("rewriting the KRL file failed", "err", err)
	}
}

// recheckAll re-checks every authenticated connection, idle or not,
// against the revocation state, the CA's trust and expiry, and ends those
// that no longer pass. It runs after every revocation and lock.
func (g *Gateway) recheckAll() {
	g.mu.Lock()
	conns := make([]*connState, 0, len(g.live))
	for cs := range g.live {
		conns = append(conns, cs)
	}
	g.mu.Unlock()
	for _, cs := range conns {
		if id := cs.identity; id != nil {
			if err := g.checker.recheck(id); err != nil && !cs.bar.deferBar(err) {
				g.endBarred(cs, id, err)
			}
		}
	}
}

// endBarred ends an authenticated connection whose credential no longer
// passes the certificate check, and records why (once per connection,
// idle or not: its sessions, if any, also record their end).
func (g *Gateway) endBarred(cs *connState, id *Identity, err error) {
	reason := reasonOf(err)
	if !cs.closeReason.CompareAndSwap(nil, &reason) {
		return // already ending
	}
	f := id.auditFields()
	detail := err.Error()
	var ae *authError
	if errors.As(err, &ae) {
		detail = ae.detail
	}
	f["remote"], f["conn"], f["reason"], f["detail"] = cs.remote.String(), cs.id, reason, detail
	g.record(context.Background(), audit.Event{Type: audit.TypeConnectionEnded, Actor: id.User, Session: cs.id, Fields: f})
	// The user's open sessions are told why before the connection ends
	// (else they see only "Connection closed by remote host").
	msg := fmt.Sprintf("\r\nbastion: your access was ended (%s: %s); this session has ended.\r\n", reason, bounded(detail))
	go func() {
		cs.notify(msg)
		cs.closeBarred()
	}()
}

// reasonOf is the stable reason code of a refusal.
func reasonOf(err error) string {
	var ae *authError
	if errors.As(err, &ae) {
		return ae.reason
	}
	return "refused"
}

// refuseGlobalRequest refuses every global request (tcpip-forward,
// streamlocal-forward, ...) and audits the ones that ask for something.
func (g *Gateway) refuseGlobalRequest(ctx gliderssh.Context, _ *gliderssh.Server, req *gossh.Request) (bool, []byte) {
	cs := stateOf(ctx)
	conn, _ := ctx.Value(gliderssh.ContextKeyConn).(*gossh.ServerConn)
	if _, err := cs.touch(g, conn); err != nil {
		return false, nil
	}
	switch req.Type {
	case "keepalive@openssh.com", "no-more-sessions@openssh.com", "hostkeys-00@openssh.com":
		return false, nil // protocol chatter, not a request for access
	}
	g.auditRefusal(cs, audit.TypeRequestDenied, req.Type, "not_supported", "the gateway does not "+describeRequest(req.Type))
	return false, nil
}

func describeRequest(t string) string {
	switch t {
	case "tcpip-forward", "cancel-tcpip-forward":
		return "do remote port forwarding"
	case "streamlocal-forward@openssh.com":
		return "forward Unix sockets"
	case "auth-agent-req@openssh.com":
		return "accept agent forwarding"
	case "x11-req":
		return "forward X11"
	}
	return "support " + t
}

// refuseChannel refuses channel types the gateway does not serve.
func (g *Gateway) refuseChannel(_ *gliderssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	cs := stateOf(ctx)
	if _, err := cs.touch(g, conn); err != nil {
		nc.Reject(gossh.Prohibited, "not authenticated")
		return
	}
	g.auditRefusal(cs, audit.TypeChannelDenied, nc.ChannelType(), "not_supported", "channel type not supported")
	nc.Reject(gossh.UnknownChannelType, fmt.Sprintf("bastion: %s channels are not allowed", sanitized(nc.ChannelType(), 64)))
}

// auditRefusal records a refused request or channel; repeats are
// aggregated per connection (recordRefusal).
func (g *Gateway) auditRefusal(cs *connState, typ, what, reason, detail string) {
	f := cs.identity.auditFields()
	f["request"], f["reason"], f["detail"], f["remote"], f["conn"] = what, reason, detail, cs.remote.String(), cs.id
	g.recordRefusal(cs, audit.Event{Type: typ, Actor: cs.identity.User, Session: cs.id, Fields: f})
}

// remoteAddr extracts the IP of a connection's remote address.
func remoteAddr(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// newID returns a random 16-hex-digit id for connections and sessions.
func newID() string {
	var b [8]byte
	_, _ = io.ReadFull(rand.Reader, b[:])
	return hex.EncodeToString(b[:])
}

func ptr[T any](v T) *T { return &v }

// ListenCause strips the "listen tcp ADDR:" that net puts in front of a
// listen error, for messages that already name the address; other errors
// are returned as they are.
func ListenCause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "listen" && op.Err != nil {
		return op.Err
	}
	return err
}

// ListenHint is the hint for a listen error that means the address is
// taken, and nothing for other errors (permission, no such address).
func ListenHint(err error) string {
	if errors.Is(err, syscall.EADDRINUSE) {
		return " (is another process using the port?)"
	}
	return ""
}
