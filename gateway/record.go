package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
)

// Access rule modes.
const (
	// ModeRecord: the gateway terminates the inner SSH connection, checks
	// the user's certificate again, re-originates to the target with a
	// per-session certificate and records what happens.
	ModeRecord = "record"
	// ModeTunnel: the direct-tcpip bytes are relayed untouched.
	ModeTunnel = "tunnel"
)

// Record-mode refusal reasons (audit "reason" codes).
const (
	ReasonIdentityMismatch     = "identity_mismatch"
	ReasonLoginNotAllowed      = "login_not_allowed"
	ReasonTargetHostKeyUnknown = "target_host_key_unknown"
	ReasonTargetAuthFailed     = "target_auth_failed"
	ReasonHostCertUnavailable  = "host_cert_unavailable"
	ReasonSessionCertFailed    = "session_cert_failed"
	ReasonRecordingFailed      = "recording_failed"
	ReasonInnerAuthFailed      = "inner_auth_failed"
	ReasonEnvForbidden         = "env_forbidden"
	ReasonForwardingNotAllowed = "port_forwarding_not_permitted"
	// ReasonClientDisconnected ends a recorded session whose client left
	// while the gateway was still setting up the inner hop (before or
	// after it authenticated: minting the target's certificate, logging
	// in to the target, starting the recording). It is the client's doing,
	// not a failure of the CA or the target, and nothing is refused.
	ReasonClientDisconnected = "client_disconnected"
	// ReasonInnerHandshakeTimeout ends a recorded session whose inner hop
	// did not finish its handshake within limits.handshake_timeout.
	ReasonInnerHandshakeTimeout = "inner_handshake_timeout"
)

// Recording failure policies (RecordConfig.OnFailure).
const (
	OnFailureClose    = "close"
	OnFailureContinue = "continue"
)

// RecordConfig configures record-mode sessions.
type RecordConfig struct {
	// KnownHostsFile, when set, is an OpenSSH known_hosts file of target
	// host keys trusted besides host certificates from bastion's host CA.
	// A target presenting neither is refused (never trusted on first use).
	KnownHostsFile string
	// Input records what users type at a terminal (kind "i"); off by
	// default, since keystrokes include passwords typed at prompts. Input
	// of sessions without a terminal (a script piped to a shell) is
	// recorded whatever this says, file transfers' streams never.
	Input bool
	// OnFailure is what happens when a recording cannot be written:
	// "close" (default) ends the session, "continue" lets it go on
	// unrecorded (audited either way).
	OnFailure string
	// HostCertCache is how long a minted host certificate for a target
	// name is reused (default 5m; its validity is this plus 10 minutes).
	HostCertCache time.Duration
	// SessionCertValidity is how long a minted per-session certificate is
	// valid after signing (default 1m); it only has to outlive the
	// target's authentication.
	SessionCertValidity time.Duration
}

func (c RecordConfig) validate() error {
	switch c.OnFailure {
	case "", OnFailureClose, OnFailureContinue:
	default:
		return fmt.Errorf("gateway: recording.on_failure is %q: use close or continue", c.OnFailure)
	}
	if c.HostCertCache < 0 || c.HostCertCache > time.Hour {
		return fmt.Errorf("gateway: recording.host_cert_cache must be between 0 and 1h")
	}
	if c.SessionCertValidity < 0 || c.SessionCertValidity > time.Hour {
		return fmt.Errorf("gateway: recording.session_cert_validity must be between 0 and 1h")
	}
	return nil
}

// effectiveMode is the rule's mode with the default applied: record for
// rules that reach SSH's port only, tunnel otherwise.
func (r AccessRule) effectiveMode() string {
	if r.Mode != "" {
		return r.Mode
	}
	for _, p := range r.Ports {
		if p != 22 {
			return ModeTunnel
		}
	}
	return ModeRecord
}

func (r AccessRule) validateRecord() error {
	switch r.Mode {
	case "", ModeRecord, ModeTunnel:
	default:
		return fmt.Errorf("mode %q is unknown: use record or tunnel", r.Mode)
	}
	for _, l := range r.Logins {
		if strings.EqualFold(l, "root") {
			return fmt.Errorf("logins names root, which is never allowed: remove it")
		}
		if err := ca.ValidateUserPrincipal(l); err != nil {
			return fmt.Errorf("logins: %w", err)
		}
	}
	if len(r.Logins) > 0 && r.effectiveMode() != ModeRecord {
		return fmt.Errorf("logins only apply to record mode, and this rule tunnels: remove logins or set mode: record")
	}
	return nil
}

// recorder is record mode's shared state: minted host certificates by
// target name and the configured known_hosts.
type recorder struct {
	cfg        RecordConfig
	auth       *ca.Authority
	now        func() time.Time
	knownHosts gossh.HostKeyCallback // nil when no file is configured

	mu        sync.Mutex
	hostCerts map[string]hostCertEntry
}

type hostCertEntry struct {
	signers []gossh.Signer // the certificate, then its plain key
	until   time.Time
	ca      string // the host CA key that signed it (marshalled)
}

func newRecorder(cfg RecordConfig, auth *ca.Authority, now func() time.Time) (*recorder, error) {
	if cfg.OnFailure == "" {
		cfg.OnFailure = OnFailureClose
	}
	if cfg.HostCertCache == 0 {
		cfg.HostCertCache = 5 * time.Minute
	}
	if cfg.SessionCertValidity == 0 {
		cfg.SessionCertValidity = time.Minute
	}
	r := &recorder{cfg: cfg, auth: auth, now: now, hostCerts: map[string]hostCertEntry{}}
	if cfg.KnownHostsFile != "" {
		cb, err := knownhosts.New(cfg.KnownHostsFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: recording.known_hosts: %w", err)
		}
		r.knownHosts = cb
	}
	return r, nil
}

// hostSigners returns the host keys to present for exactly name: a host
// certificate minted (and cached) from the host CA, then its plain key,
// for clients that take no host certificates (the plain key is pinned on
// first use either way). Callers have already checked that the policy
// lets the user reach name.
//
// The certificate is re-signed every HostCertCache, but its key is not
// new: it is derived from the host CA key and the name (see
// ca.Authority.DeriveHostKey), so a user who trusts the target's key on
// first use, rather than through the @cert-authority line, sees the same
// key from every gateway sharing the CA files, after restarts and after
// the cache expires, until the host CA is rotated.
func (r *recorder) hostSigners(ctx context.Context, name, requester string) ([]gossh.Signer, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	now := r.now()
	// A certificate from a host CA key that is no longer the current one
	// (rotated, or files reloaded) is not served from the cache.
	current := string(r.auth.PublicKey(ca.HostCA).Marshal())
	r.mu.Lock()
	if e, ok := r.hostCerts[name]; ok && now.Before(e.until) && e.ca == current {
		r.mu.Unlock()
		return e.signers, nil
	}
	r.mu.Unlock()
	signer, err := r.auth.DeriveHostKey(name)
	if err != nil {
		return nil, err
	}
	v, err := ca.ParseValidity(fmt.Sprintf("-5m:+%ds", int((r.cfg.HostCertCache + 10*time.Minute).Seconds())))
	if err != nil {
		return nil, err
	}
	cert, err := r.auth.Sign(ctx, ca.Request{
		Kind: ca.HostCA, Key: signer.PublicKey(), KeyID: "bastion-record:" + name, Principals: []string{name},
		Validity: v, Requester: requester, Via: "gateway", Purpose: "record-host",
	})
	if err != nil {
		return nil, err
	}
	cs, err := gossh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	// Drop expired entries so names reached once do not pile up.
	for k, e := range r.hostCerts {
		if !now.Before(e.until) {
			delete(r.hostCerts, k)
		}
	}
	signers := []gossh.Signer{cs, signer}
	r.hostCerts[name] = hostCertEntry{signers: signers, until: now.Add(r.cfg.HostCertCache), ca: string(cert.SignatureKey.Marshal())}
	r.mu.Unlock()
	return signers, nil
}

// hostKeyError is a target host key the gateway does not trust.
type hostKeyError struct{ detail string }

func (e *hostKeyError) Error() string { return e.detail }

// targetHostKey verifies a target's host key: a host certificate from
// bastion's host CA naming exactly host, or a key in the configured
// known_hosts file. Anything else is refused.
func (r *recorder) targetHostKey(host string) gossh.HostKeyCallback {
	return func(addr string, remote net.Addr, key gossh.PublicKey) error {
		var certErr error
		if cert, ok := key.(*gossh.Certificate); ok {
			if r.auth.IsTrusted(ca.HostCA, cert.SignatureKey) {
				cc := gossh.CertChecker{
					IsHostAuthority: func(k gossh.PublicKey, _ string) bool { return r.auth.IsTrusted(ca.HostCA, k) },
					Clock:           r.now,
				}
				if certErr = cc.CheckHostKey(addr, remote, key); certErr == nil {
					return nil
				}
			}
			// A certificate from another CA proves possession of its key,
			// which known_hosts may still list.
			key = cert.Key
		}
		if r.knownHosts != nil {
			if err := r.knownHosts(addr, remote, key); err == nil {
				return nil
			}
		}
		detail := fmt.Sprintf("%s presented host key %s, which is neither certified for %q by bastion's host CA nor listed in recording.known_hosts", addr, gossh.FingerprintSHA256(key), host)
		if certErr != nil {
			detail += fmt.Sprintf(" (its certificate: %v)", certErr)
		}
		return &hostKeyError{detail: detail}
	}
}

// channelConn is an SSH channel seen as a net.Conn, so that an SSH server
// can run over it. Deadlines are not supported (and not needed: the outer
// connection has its own).
type channelConn struct {
	gossh.Channel
	local, remote net.Addr
	// up and down count the bytes read from and written to the client,
	// as tunnel mode counts its direct-tcpip channel.
	up, down atomic.Int64

	// While the client sends in bulk, Read takes what the channel holds
	// in one call of up to bulkReadSize (ahead, pending: what is left of
	// it) instead of the inner transport's 4 KiB fills and packet-sized
	// reads: x/crypto writes a window adjustment to the client for nearly
	// every read of a backlogged channel, so fewer, larger reads mean
	// fewer packets and write calls. bulk says the last read filled its
	// buffer. Only x/crypto's read loop calls Read.
	ahead   *[]byte
	pending []byte
	bulk    bool
}

func (c *channelConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		c.release()
		return n, nil
	}
	if !c.bulk || len(p) >= bulkReadSize {
		n, err := c.Channel.Read(p)
		c.up.Add(int64(n))
		c.bulk = n > 0 && n == len(p)
		return n, err
	}
	if c.ahead == nil {
		c.ahead = bulkBuffers.Get().(*[]byte)
	}
	n, err := c.Channel.Read(*c.ahead)
	c.up.Add(int64(n))
	c.bulk = n == len(*c.ahead)
	m := copy(p, (*c.ahead)[:n])
	c.pending = (*c.ahead)[m:n]
	c.release()
	return m, err
}

// release returns the read-ahead buffer once it is drained and the
// client no longer sends in bulk, so that idle sessions hold none.
func (c *channelConn) release() {
	if len(c.pending) == 0 && !c.bulk && c.ahead != nil {
		bulkBuffers.Put(c.ahead)
		c.ahead, c.pending = nil, nil
	}
}

func (c *channelConn) Write(p []byte) (int, error) {
	n, err := c.Channel.Write(p)
	c.down.Add(int64(n))
	return n, err
}

func (c *channelConn) LocalAddr() net.Addr              { return c.local }
func (c *channelConn) RemoteAddr() net.Addr             { return c.remote }
func (c *channelConn) SetDeadline(time.Time) error      { return nil }
func (c *channelConn) SetReadDeadline(time.Time) error  { return nil }
func (c *channelConn) SetWriteDeadline(time.Time) error { return nil }

// loginMeta is ConnMetadata with another user name: the inner login is
// checked separately when it comes from the rule's logins list.
type loginMeta struct {
	gossh.ConnMetadata
	user string
}

func (m loginMeta) User() string { return m.user }

// recordedSession is one record-mode session: one inner SSH connection
// inside one direct-tcpip channel.
type recordedSession struct {
	g     *Gateway
	cs    *connState
	id    *Identity // the outer connection's identity
	dest  Destination
	id2   string // session id
	start time.Time
	// target is "host:port" as requested.
	target string

	lastAuthErr atomic.Pointer[error]

	// attempts are the inner hop's failed attempts (at most
	// maxAttemptsKept), folded into its auth.ok or, if it never
	// authenticates, written as auth.failed records.
	attemptsMu sync.Mutex
	attempts   []map[string]string
}

// takeAttempts returns the inner hop's failed attempts and forgets them.
func (s *recordedSession) takeAttempts() []map[string]string {
	s.attemptsMu.Lock()
	defer s.attemptsMu.Unlock()
	a := s.attempts
	s.attempts = nil
	return a
}

// recordSession runs a record-mode session on a direct-tcpip channel
// whose target policy has allowed and upstream has been dialled.
func (g *Gateway) recordSession(ctx context.Context, cs *connState, id *Identity, nc gossh.NewChannel, req directTCPIP, dest Destination, upstream net.Conn) {
	target := net.JoinHostPort(req.Host, strconv.Itoa(int(req.Port)))
	refuse := func(reason, msg string, rejection gossh.RejectionReason) {
		upstream.Close()
		g.metrics.jumps.WithLabelValues("refused", reason).Inc()
		f := id.auditFields()
		f["target"], f["reason"], f["detail"], f["remote"], f["conn"], f["mode"] = target, reason, bounded(msg), cs.remote.String(), cs.id, ModeRecord
		g.recordRefusal(cs, audit.Event{Type: audit.TypeChannelDenied, Actor: id.User, Session: cs.id, Fields: f})
		nc.Reject(rejection, "bastion: "+msg)
	}
	hostKeys, err := g.rec.hostSigners(ctx, dest.Host, id.User)
	if err != nil && clientLeft(ctx, err) {
		// The client went while the certificate was being signed: no
		// one to refuse, and nothing failed.
		upstream.Close()
		g.metrics.jumps.WithLabelValues("refused", ReasonClientDisconnected).Inc()
		cs.log.Info("client left before the recorded session started", "target", target)
		return
	}
	if err != nil {
		refuse(ReasonHostCertUnavailable, fmt.Sprintf("cannot present a host certificate for %s: %v", dest.Host, err), gossh.ConnectionFailed)
		return
	}
	s := &recordedSession{g: g, cs: cs, id: id, dest: dest, id2: newID(), start: g.now(), target: target}
	f := id.auditFields()
	f["target"], f["addr"], f["remote"], f["conn"], f["mode"] = target, dest.Addr.String(), cs.remote.String(), cs.id, ModeRecord
	f["origin"] = net.JoinHostPort(req.OriginAddr, strconv.Itoa(int(req.OriginPort)))
	// Fail closed: nothing happens unless the start of the session is on disk.
	if err := g.recordOrRefuse(ctx, audit.Event{Type: audit.TypeSessionStart, Actor: id.User, Session: s.id2, Fields: f}); err != nil {
		upstream.Close()
		g.metrics.jumps.WithLabelValues("refused", ReasonAuditUnavailable).Inc()
		nc.Reject(gossh.ResourceShortage, "bastion: audit log unavailable; refusing to open an unrecorded session")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		upstream.Close()
		s.end(sessionResult{why: "accept_failed"})
		return
	}
	g.sessions.Add(1)
	defer g.sessions.Done()
	g.metrics.jumps.WithLabelValues("ok", "").Inc()
	g.metrics.channels.WithLabelValues("direct-tcpip").Inc()
	defer g.metrics.channels.WithLabelValues("direct-tcpip").Dec()
	go gossh.DiscardRequests(reqs)
	cs.log.Info("recorded session started", "session", s.id2, "target", target, "addr", dest.Addr.String())

	res := s.run(ctx, ch, hostKeys, upstream)
	if r := cs.reason(); r != "" {
		res.why = r
	}
	s.end(res)
}

// sessionResult is what a recorded session's end record says.
type sessionResult struct {
	why   string
	login string
	// up and down are the bytes of the inner SSH connection, as in
	// tunnel mode; payloadUp and payloadDown what its channels carried.
	up, down               int64
	payloadUp, payloadDown int64
	recSHA                 string
	recStored              int64
	recChunks              string
	recErr                 string
}

func (s *recordedSession) end(r sessionResult) {
	f := s.id.auditFields()
	f["target"], f["remote"], f["conn"], f["mode"] = s.target, s.cs.remote.String(), s.cs.id, ModeRecord
	f["duration_ms"] = strconv.FormatInt(s.g.now().Sub(s.start).Milliseconds(), 10)
	f["bytes_up"], f["bytes_down"], f["reason"] = strconv.FormatInt(r.up, 10), strconv.FormatInt(r.down, 10), r.why
	f["payload_up"], f["payload_down"] = strconv.FormatInt(r.payloadUp, 10), strconv.FormatInt(r.payloadDown, 10)
	if r.login != "" {
		f["login"] = r.login
	}
	if r.recSHA != "" {
		f["recording_sha256"], f["recording_bytes"] = r.recSHA, strconv.FormatInt(r.recStored, 10)
		if r.recChunks != "" {
			f[audit.FieldRecordingChunks] = r.recChunks
		}
	}
	if r.recErr != "" {
		f["recording_error"] = bounded(r.recErr)
	}
	s.g.metrics.bytesRelayed.WithLabelValues("up").Add(float64(r.up))
	s.g.metrics.bytesRelayed.WithLabelValues("down").Add(float64(r.down))
	s.g.record(context.Background(), audit.Event{Type: audit.TypeSessionEnd, Actor: s.id.User, Session: s.id2, Fields: f})
	s.cs.log.Info("recorded session ended", "session", s.id2, "bytes_up", r.up, "bytes_down", r.down, "reason", r.why)
}

// event writes a record about this session.
func (s *recordedSession) event(ctx context.Context, typ string, extra map[string]string) error {
	return s.g.record(ctx, s.eventOf(typ, extra))
}

// eventOf is the record of typ in this session, with extra fields.
func (s *recordedSession) eventOf(typ string, extra map[string]string) audit.Event {
	f := s.id.auditFields()
	f["target"], f["remote"], f["conn"], f["mode"] = s.target, s.cs.remote.String(), s.cs.id, ModeRecord
	for k, v := range extra {
		f[k] = v
	}
	return audit.Event{Type: typ, Actor: s.id.User, Session: s.id2, Fields: f}
}

// refusal audits a refusal the client can provoke at will (a request or
// channel refused), folded per connection like the gateway's own: the
// first of each kind at once, repeats counted (see recordRefusal).
func (s *recordedSession) refusal(typ string, extra map[string]string) {
	s.g.recordRefusal(s.cs, s.eventOf(typ, extra))
}

// run serves the inner SSH connection on ch and proxies it to upstream.
func (s *recordedSession) run(ctx context.Context, ch gossh.Channel, hostKeys []gossh.Signer, upstream net.Conn) sessionResult {
	defer upstream.Close()
	conn := &channelConn{Channel: ch, local: s.cs.conn.LocalAddr(), remote: s.cs.conn.RemoteAddr()}
	res := s.serve(ctx, conn, hostKeys, upstream)
	res.up, res.down = conn.up.Load(), conn.down.Load()
	return res
}

// serve runs the inner server on conn, then the proxy.
func (s *recordedSession) serve(ctx context.Context, conn *channelConn, hostKeys []gossh.Signer, upstream net.Conn) sessionResult {
	g := s.g
	ch := conn.Channel
	scfg := &gossh.ServerConfig{
		Config:                  gossh.Config{KeyExchanges: kexAlgorithms, Ciphers: ciphers, MACs: macs},
		MaxAuthTries:            g.cfg.Limits.MaxAuthTries,
		PublicKeyAuthAlgorithms: pubKeyAlgos,
		ServerVersion:           "SSH-2.0-bastion",
		PublicKeyCallback:       s.verifyInner,
		AuthLogCallback:         s.authLog,
	}
	for _, k := range hostKeys {
		scfg.AddHostKey(k)
	}
	var timedOut atomic.Bool
	timer := time.AfterFunc(g.cfg.Limits.HandshakeTimeout, func() { timedOut.Store(true); ch.Close() })
	sconn, chans, greqs, err := gossh.NewServerConn(conn, scfg)
	timer.Stop()
	if err != nil {
		ch.Close()
		// The inner hop never authenticated: each failed attempt is a
		// record of its own.
		attempts := s.takeAttempts()
		for i, f := range attempts {
			f["attempt"] = strconv.Itoa(i + 1)
			s.event(context.Background(), audit.TypeAuthFailed, f)
		}
		return sessionResult{why: innerHandshakeReason(err, len(attempts), timedOut.Load())}
	}
	defer sconn.Close()
	// ictx ends when the inner client leaves (or the outer connection
	// ends): minting, the target's login and the recording's start stop
	// then, and their errors are the client leaving (clientLeft), not
	// failures of the CA or the target.
	ictx, leave := context.WithCancel(ctx)
	defer leave()
	go func() {
		sconn.Wait()
		leave()
	}()
	login := sconn.User()
	res := sessionResult{login: login}
	okf := map[string]string{"hop": "inner", "login": login, "method": "publickey"}
	if attempts := s.takeAttempts(); len(attempts) > 0 {
		// OpenSSH offers the plain key before its certificate: attempts
		// that preceded success are folded in, as on the outer hop.
		okf["attempts_failed"] = strconv.Itoa(len(attempts))
		okf["attempts_reasons"] = attemptReasons(attempts)
	}
	s.event(ctx, audit.TypeAuthOK, okf)

	// The rest of the session is refused with this message on every
	// channel the client opens, for at most a few seconds.
	fail := func(reason, msg string) sessionResult {
		s.event(context.Background(), audit.TypeChannelDenied, map[string]string{"reason": reason, "detail": bounded(msg), "login": login})
		go gossh.DiscardRequests(greqs)
		deadline := time.AfterFunc(10*time.Second, func() { sconn.Close() })
		defer deadline.Stop()
		for nc := range chans {
			nc.Reject(gossh.Prohibited, "bastion: "+msg)
		}
		res.why = reason
		return res
	}

	left := func(phase string) sessionResult {
		s.cs.log.Info("client left while the recorded session was being set up", "session", s.id2, "phase", phase)
		res.why = ReasonClientDisconnected
		return res
	}
	cert, signer, err := s.mintSessionCert(ictx, sconn, login, upstream)
	if clientLeft(ictx, err) {
		return left("session_cert")
	}
	if err != nil {
		return fail(ReasonSessionCertFailed, fmt.Sprintf("cannot mint a session certificate: %v", err))
	}
	var hostKeyErr *hostKeyError
	var keyErr error
	check := g.rec.targetHostKey(s.dest.Host)
	ccfg := &gossh.ClientConfig{
		Config: gossh.Config{KeyExchanges: kexAlgorithms, Ciphers: ciphers, MACs: macs},
		User:   login,
		Auth:   []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: func(addr string, remote net.Addr, key gossh.PublicKey) error {
			err := check(addr, remote, key)
			if errors.As(err, &hostKeyErr) {
				keyErr = err
			}
			return err
		},
		ClientVersion: "SSH-2.0-bastion",
		Timeout:       g.cfg.DialTimeout,
	}
	upstream.SetDeadline(g.now().Add(g.cfg.DialTimeout))
	// A client that leaves cuts the target's login short.
	unhook := context.AfterFunc(ictx, func() { upstream.SetDeadline(time.Unix(1, 0)) })
	tconn, tchans, treqs, err := gossh.NewClientConn(upstream, net.JoinHostPort(s.dest.Host, strconv.Itoa(s.dest.Port)), ccfg)
	unhook()
	upstream.SetDeadline(time.Time{})
	switch {
	case clientLeft(ictx, err):
		return left("target_login")
	case err != nil && keyErr != nil:
		return fail(ReasonTargetHostKeyUnknown, hostKeyErr.detail+"; ask an administrator to give the target a host certificate (bastion ca sign --host) or add it to recording.known_hosts")
	case err != nil:
		return fail(ReasonTargetAuthFailed, fmt.Sprintf("%s did not accept the session certificate for %q (serial %d): %v; the target must trust bastion's user CA (TrustedUserCAKeys) and have the account", s.target, login, cert.Serial, err))
	}
	defer tconn.Close()

	var rec Recording
	if g.deps.Recordings != nil {
		rec, err = g.deps.Recordings.StartRecording(ictx, s.id2)
		if clientLeft(ictx, err) {
			return left("recording_start")
		}
		if err != nil {
			s.event(context.Background(), audit.TypeRecordingFailed, map[string]string{"detail": bounded(err.Error()), "login": login})
			if g.rec.cfg.OnFailure != OnFailureContinue {
				return fail(ReasonRecordingFailed, "the session cannot be recorded, so it is not opened; try again later")
			}
			rec = nil
		}
	}
	p := newProxy(s, sconn, tconn, rec, login)
	p.run(chans, greqs, tchans, treqs)
	res.payloadUp, res.payloadDown = p.up.Load(), p.down.Load()
	res.why = "closed"
	if p.failed.Load() {
		res.why = ReasonRecordingFailed
	}
	if rec != nil {
		sum, stored, err := rec.Close(context.Background())
		if err != nil {
			res.recErr = err.Error()
		} else {
			res.recSHA, res.recStored = sum, stored
		}
		// Whatever happened, the session.end carries the digest of exactly
		// what was committed, so the chain covers a recording cut short.
		if c, ok := rec.(committedRecording); ok {
			sum, chunks, stored := c.Committed()
			res.recSHA, res.recStored, res.recChunks = sum, stored, strconv.FormatUint(chunks, 10)
		}
	}
	return res
}

// clientLeft reports whether err, from a step of setting up a recorded
// session, is the client leaving rather than a failure: ctx (the inner
// or outer connection) has ended, and the step failed because it did
// (cancelled, or cut short by a deadline set when it ended). A real
// failure, of the CA say, that races the client's leaving is still one.
func clientLeft(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() == nil {
		return false
	}
	return errors.Is(err, context.Canceled) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed)
}

// innerHandshakeReason is why an inner hop that never authenticated
// ended: the handshake deadline; failed attempts (auth.failed records
// say which); or, with no attempt failed, the client going away (an
// OpenSSH client killed, or one that opened the hop and left).
func innerHandshakeReason(err error, failedAttempts int, timedOut bool) string {
	switch {
	case timedOut:
		return ReasonInnerHandshakeTimeout
	case failedAttempts > 0:
		return ReasonInnerAuthFailed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		strings.HasPrefix(err.Error(), "ssh: disconnect, reason"):
		return ReasonClientDisconnected
	}
	return ReasonInnerAuthFailed
}

// verifyInner authenticates the inner connection: the full certificate
// check again (checker.verifyKey), the login either a principal of the
// certificate or in the rule's logins, and the very certificate the outer
// connection authenticated with.
func (s *recordedSession) verifyInner(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	perms, err := s.checkInner(meta, key)
	if err != nil {
		s.lastAuthErr.Store(&err)
		return nil, err
	}
	s.lastAuthErr.Store(nil)
	return perms, nil
}

func (s *recordedSession) checkInner(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	login := meta.User()
	if s.g.deps.Authority.Policy().Forbidden(login) {
		return nil, &authError{reason: ReasonForbiddenUser, detail: fmt.Sprintf("login as %q is never allowed", bounded(login))}
	}
	checkAs := login
	if cert, ok := key.(*gossh.Certificate); ok {
		if gossh.FingerprintSHA256(cert.Key) != s.id.KeyFP || cert.Serial != s.id.Serial {
			return nil, &authError{reason: ReasonIdentityMismatch, keyFP: gossh.FingerprintSHA256(cert.Key), serial: cert.Serial, keyID: cert.KeyId,
				detail: fmt.Sprintf("the inner connection offered a different certificate than the one %s authenticated to the gateway with", s.id.User)}
		}
		if !slices.Contains(cert.ValidPrincipals, login) {
			if !slices.Contains(s.dest.Logins, login) {
				return nil, &authError{reason: ReasonLoginNotAllowed, keyFP: gossh.FingerprintSHA256(cert.Key), serial: cert.Serial, keyID: cert.KeyId,
					detail: fmt.Sprintf("login %q is neither a principal of the certificate nor in the access rule's logins", bounded(login))}
			}
			checkAs = s.id.User
		}
	}
	perms, err := s.g.checker.verifyKey(loginMeta{ConnMetadata: meta, user: checkAs}, key)
	if err != nil {
		return nil, err
	}
	inner, err := identityFromPerms(perms)
	if err != nil {
		return nil, err
	}
	if inner.KeyFP != s.id.KeyFP || inner.Serial != s.id.Serial || inner.CAFP != s.id.CAFP {
		return nil, &authError{reason: ReasonIdentityMismatch, keyFP: inner.KeyFP, serial: inner.Serial, keyID: inner.KeyID,
			detail: fmt.Sprintf("the inner connection authenticated as another identity than %s", s.id.User)}
	}
	return perms, nil
}

// authLog audits failed inner authentications.
func (s *recordedSession) authLog(meta gossh.ConnMetadata, method string, err error) {
	if err == nil || method == "none" {
		return
	}
	f := map[string]string{"hop": "inner", "login": bounded(meta.User()), "method": method}
	var ae *authError
	if last := s.lastAuthErr.Load(); method == "publickey" && last != nil && errors.As(*last, &ae) {
		// The session's identity stays in key_id and friends; what the
		// inner hop offered is named apart.
		for k, v := range ae.fields() {
			switch k {
			case "key_fp", "serial", "key_id":
				k = "offered_" + k
			}
			f[k] = v
		}
	} else {
		f["reason"], f["detail"] = methodReason(method), bounded(err.Error())
	}
	s.g.metrics.authAttempts.WithLabelValues("failed", f["reason"]).Inc()
	s.attemptsMu.Lock()
	if len(s.attempts) < maxAttemptsKept {
		s.attempts = append(s.attempts, f)
	}
	s.attemptsMu.Unlock()
}

// mintSessionCert signs a fresh key for login through the CA's pipeline
// (so it is a cert.issued record): valid about a minute, usable only
// from the gateway's egress address, with no extension the user's own
// certificate lacks, and the user's force-command carried over. Agent
// and X11 forwarding are never granted: record mode refuses both.
func (s *recordedSession) mintSessionCert(ctx context.Context, sconn *gossh.ServerConn, login string, upstream net.Conn) (*gossh.Certificate, gossh.Signer, error) {
	egress, err := netip.ParseAddrPort(upstream.LocalAddr().String())
	if err != nil {
		return nil, nil, fmt.Errorf("egress address %s: %w", upstream.LocalAddr(), err)
	}
	opts := []string{"clear", "source-address=" + egress.Addr().Unmap().String()}
	for _, ext := range []string{"permit-pty", "permit-port-forwarding", "permit-user-rc"} {
		if _, ok := sconn.Permissions.Extensions[ext]; ok {
			opts = append(opts, ext)
		}
	}
	if s.id.ForceCommand != "" {
		opts = append(opts, "force-command="+s.id.ForceCommand)
	}
	v, err := ca.ParseValidity(fmt.Sprintf("-1m:+%ds", int(s.g.rec.cfg.SessionCertValidity.Seconds())))
	if err != nil {
		return nil, nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	key, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	cert, err := s.g.deps.Authority.Sign(ctx, ca.Request{
		Kind: ca.UserCA, Key: key.PublicKey(), KeyID: "bastion-session:" + s.id.User + ":" + s.id2,
		Principals: []string{login}, Validity: v, Options: opts,
		Requester: s.id.User, Via: "gateway", Purpose: "session",
	})
	if err != nil {
		return nil, nil, err
	}
	cs, err := gossh.NewCertSigner(cert, key)
	if err != nil {
		return nil, nil, err
	}
	return cert, cs, nil
}
