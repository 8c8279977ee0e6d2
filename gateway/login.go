package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

// LoginUser is the reserved user name of the login service: the only name
// a plain (non-certificate) public key may authenticate as, and only to
// run the login service.
const LoginUser = "login"

// IdentityProvider is what the login service needs from the company's
// OIDC provider; *oidc.Provider is one.
type IdentityProvider interface {
	Issuer() string
	SupportsDevice() bool
	StartDevice(ctx context.Context) (*oidc.DeviceAuth, error)
	WaitDevice(ctx context.Context, da *oidc.DeviceAuth) (*oidc.Identity, error)
	StartCode(redirectURI string) (*oidc.CodeLogin, error)
	Finish(ctx context.Context, cl *oidc.CodeLogin, code, state string) (*oidc.Identity, error)
	VerifyIDToken(ctx context.Context, raw, nonce string) (*oidc.Identity, error)
	Status() oidc.Status
}

// LoginConfig turns on the login service.
type LoginConfig struct {
	Provider IdentityProvider
	// ClientID is told to `bastion login` for the PKCE flow.
	ClientID string
	// DefaultValidity and MaxValidity of login certificates.
	DefaultValidity, MaxValidity time.Duration
	// GroupMaxValidity caps the certificate of a member of the group.
	GroupMaxValidity map[string]time.Duration
	// PerMinute is how many logins one source address may start per
	// minute (default 10).
	PerMinute int
	// Timeout bounds one login session (default 10m).
	Timeout time.Duration
	// Dev marks the gateway of `bastion dev` (a new CA at every start in
	// a temporary data dir), for `bastion login` to explain a changed
	// host CA later.
	Dev bool
}

// Login failure reasons of the gateway's own (beyond oidc.Reason*).
const (
	ReasonLoginRateLimited = "rate_limited"
	ReasonCertRefused      = "cert_refused"
	ReasonLoginOnly        = "login_only"
	// ReasonShutdown: the gateway stopped (a restart) before the login
	// finished.
	ReasonShutdown = "shutdown"
)

// errLoginShutdown is what a login cut by the gateway's shutdown tells
// the user. The login cannot continue on another gateway: its device
// code or PKCE verifier lives here, and the one-time claim in etcd keeps
// any other gateway from taking it over.
var errLoginShutdown = errors.New("this gateway is shutting down (a restart or maintenance) before your login finished: run `bastion login` again (another gateway takes it); the code or browser page of this attempt no longer works")

// loginEndWait bounds how long Shutdown waits, after its grace, for the
// logins it ended to send their reason and exit status.
const loginEndWait = 2 * time.Second

// trackLogin registers a login session until end is called.
func (g *Gateway) trackLogin() (end func()) {
	done := make(chan struct{})
	g.mu.Lock()
	g.logins[done] = struct{}{}
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		delete(g.logins, done)
		g.mu.Unlock()
		close(done)
	}
}

// endLogins ends every login session (and any that starts later) with
// ReasonShutdown, and waits up to within for them to say so.
func (g *Gateway) endLogins(within time.Duration) {
	g.loginsEndOnce.Do(func() { close(g.loginsEnd) })
	g.mu.Lock()
	waits := make([]chan struct{}, 0, len(g.logins))
	for done := range g.logins {
		waits = append(waits, done)
	}
	g.mu.Unlock()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for _, done := range waits {
		select {
		case <-done:
		case <-timer.C:
			return
		}
	}
}

// loginKey checks a key offered for the reserved login user. Any key may
// log in (that is how one gets a certificate), but only when the login
// service is configured; the identity can do nothing but log in.
func (c *checker) loginKey(key gossh.PublicKey, login *LoginConfig, now time.Time) (*gossh.Permissions, error) {
	fp := gossh.FingerprintSHA256(key)
	if login == nil {
		return nil, &authError{reason: ReasonLoginServiceUnavailable, detail: "the login service is not configured on this gateway (no oidc: section)", keyFP: fp}
	}
	subject := key
	if cert, ok := key.(*gossh.Certificate); ok {
		subject = cert.Key
	}
	id := &Identity{
		User:       LoginUser,
		KeyFP:      gossh.FingerprintSHA256(subject),
		Principals: []string{LoginUser},
		ValidUntil: now.Add(login.timeout()).UTC(),
		Login:      true,
		PublicKey:  strings.TrimSpace(string(gossh.MarshalAuthorizedKey(subject))),
	}
	perms := &gossh.Permissions{}
	if err := id.attach(perms); err != nil {
		return nil, &authError{reason: ReasonInvalidCertificate, detail: err.Error(), keyFP: fp}
	}
	return perms, nil
}

func (l *LoginConfig) timeout() time.Duration {
	if l.Timeout > 0 {
		return l.Timeout
	}
	return 10 * time.Minute
}

// validity is the certificate lifetime for a user in groups.
func (l *LoginConfig) validity(groups []string) time.Duration {
	v := l.DefaultValidity
	if v == 0 {
		v = 8 * time.Hour
	}
	if l.MaxValidity > 0 && v > l.MaxValidity {
		v = l.MaxValidity
	}
	for _, g := range groups {
		if m, ok := l.GroupMaxValidity[g]; ok && m > 0 && m < v {
			v = m
		}
	}
	return v
}

// Login session commands (ssh login@gateway COMMAND).
const (
	// loginCmdDevice runs the device flow (also the default, no command).
	loginCmdDevice = "login"
	// loginCmdCode runs the browser login the gateway drives: the client
	// sends its loopback redirect URI, gets the authorization URL, and
	// hands back the code the browser brought (see runCodeLogin).
	loginCmdCode = "login-code"
	// loginCmdToken takes an ID token the client fetched itself, bound to
	// a nonce the gateway issues first (public clients only).
	loginCmdToken = "login-token"
	// loginCmdConfig tells `bastion login` what it needs to choose.
	loginCmdConfig = "login-config"
	// loginCmdStatus checks a certificate of the key that logged in with
	// the gateway's own certificate check (see loginStatus).
	loginCmdStatus = "login-status"
)

// CertStatus is the answer of `ssh login@gateway login-status`: whether
// the gateway accepts the certificate sent on stdin now, and if not, the
// audit reason code and why.
type CertStatus struct {
	OK     bool   `json:"ok"`
	User   string `json:"user,omitempty"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// LoginServiceInfo is the answer of `ssh login@gateway login-config`.
type LoginServiceInfo struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"client_id"`
	// Device is true when the IdP offers the device flow.
	Device bool `json:"device"`
	// Code is true when the gateway runs the browser login (login-code).
	Code bool `json:"code"`
	// WindowSeconds is how long one login may take before the gateway
	// ends it.
	WindowSeconds int64 `json:"window_seconds"`
	// IdPUp is false while the IdP does not answer; IdPError says why.
	IdPUp    bool   `json:"idp_up"`
	IdPError string `json:"idp_error,omitempty"`
	// Dev is true for the gateway of `bastion dev`.
	Dev bool `json:"dev,omitempty"`
}

// runLogin is the session of a `login` connection: the device flow (exec
// "" or "login"), the browser login the gateway drives ("login-code"), a
// handed-over ID token bound to the gateway's nonce ("login-token"), or
// "login-config" (what `bastion login` needs to choose).
func (g *Gateway) runLogin(ctx context.Context, cs *connState, meta gossh.ConnMetadata, id *Identity, sio *sessionIO, line string) int {
	l := g.cfg.Login
	args := strings.Fields(line)
	cmd := loginCmdDevice
	if len(args) > 0 {
		cmd = args[0]
	}
	if len(args) > 1 {
		// No login command takes arguments: refuse, rather than let the
		// user believe --principals or --user changed the certificate.
		extra := sanitized(strings.Join(args[1:], " "), 64)
		sio.errorf("bastion: `%s` takes no arguments; %q was refused (the certificate's user and principals come from your identity provider and the gateway's policy)\n", sanitized(cmd, 32), extra)
		g.auditRefusal(cs, audit.TypeRequestDenied, "exec "+sanitized(line, 64), ReasonLoginOnly, "login commands take no arguments")
		return 2
	}
	var flow string
	switch cmd {
	case loginCmdConfig:
		st := l.Provider.Status()
		info := LoginServiceInfo{Issuer: l.Provider.Issuer(), ClientID: l.ClientID, Device: l.Provider.SupportsDevice(), Code: true,
			WindowSeconds: int64(l.timeout().Seconds()), IdPUp: st.Up, IdPError: st.LastError, Dev: l.Dev}
		out, _ := json.Marshal(info)
		sio.printf("%s\n", out)
		return 0
	case loginCmdStatus:
		return g.loginStatus(ctx, meta, id, sio)
	case loginCmdDevice:
		flow = "device"
	case loginCmdCode:
		flow = "pkce"
	case loginCmdToken:
		flow = "token"
	default:
		sio.errorf("bastion: the login user can only log in (`ssh login@<gateway>`); %q is not available\n", sanitized(cmd, 64))
		g.auditRefusal(cs, audit.TypeRequestDenied, "exec "+sanitized(cmd, 64), ReasonLoginOnly, "the login user runs only the login service")
		return 126
	}
	base := map[string]string{"remote": cs.remote.String(), "key_fp": id.KeyFP, "flow": flow, "conn": cs.id}
	fields := func(extra map[string]string) map[string]string {
		f := map[string]string{}
		for k, v := range base {
			f[k] = v
		}
		for k, v := range extra {
			f[k] = v
		}
		return f
	}
	fail := func(reason string, err error) int {
		if errors.Is(context.Cause(ctx), errLoginShutdown) {
			reason, err = ReasonShutdown, errLoginShutdown
		}
		extra := map[string]string{"reason": reason, "detail": sanitized(usertext.Error(err), 512)}
		// Who was refused: the verified claims that led to the refusal.
		if e, ok := errors.AsType[*oidc.Error](err); ok {
			for k, v := range e.Claims {
				extra[k] = v
			}
		}
		g.record(context.Background(), audit.Event{Type: audit.TypeLoginFailed, Actor: LoginUser, Session: cs.id, Fields: fields(extra)})
		sio.errorf("bastion: %s\n", loginFailure(reason, err))
		return 1
	}
	if !g.loginLimiter.allow(cs.remote) {
		return fail(ReasonLoginRateLimited, fmt.Errorf("too many logins from %s; wait a minute", cs.remote))
	}
	if err := g.recordOrRefuse(ctx, audit.Event{Type: audit.TypeLoginStarted, Actor: LoginUser, Session: cs.id, Fields: fields(nil)}); err != nil {
		return fail(ReasonAuditUnavailable, err)
	}
	// The login ends before the connection's login identity expires (the
	// gateway closes the connection then), so that the client hears why.
	deadline := g.now().Add(l.timeout())
	if end := id.ValidUntil.Add(-time.Second); end.Before(deadline) {
		deadline = end
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	// A shutdown past its grace ends the login with its reason (rather
	// than a dropped connection the client cannot explain).
	ctx, stopLogin := context.WithCancelCause(ctx)
	defer stopLogin(nil)
	go func() {
		select {
		case <-g.loginsEnd:
			stopLogin(errLoginShutdown)
		case <-ctx.Done():
		}
	}()

	var ident *oidc.Identity
	var err error
	switch flow {
	case "pkce":
		ident, err = g.codeLogin(ctx, l, sio)
	case "token":
		ident, err = g.tokenLogin(ctx, l, sio)
	default:
		ident, err = g.deviceFlow(ctx, l, sio)
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = &oidc.Error{Reason: oidc.ReasonLoginExpired, Err: fmt.Errorf("the login window (%s) expired before the login finished: run bastion login again", l.timeout())}
	}
	if err != nil {
		return fail(oidc.ReasonOf(err), err)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(id.PublicKey))
	if err != nil {
		return fail(ReasonCertRefused, err)
	}
	validity := l.validity(ident.Groups)
	v, _ := ca.ParseValidity("+" + fmt.Sprint(int64(validity.Seconds())))
	keyID := ident.Email
	if keyID == "" {
		keyID = ident.Username
	}
	keyID = fmt.Sprintf("%s sub=%s", keyID, ident.Subject)
	cert, err := g.deps.Authority.Sign(ctx, ca.Request{
		Kind: ca.UserCA, Key: pub, KeyID: keyID, Principals: ident.Principals, Groups: ident.Groups,
		Validity: v, Requester: "oidc:" + ident.Subject, Via: "login",
	})
	if err != nil {
		reason := ReasonCertRefused
		var re *ca.RefusedError
		if errors.As(err, &re) {
			switch re.Rule {
			case ca.RulePrincipalForbidden:
				reason = oidc.ReasonForbiddenPrincipal
			case ca.RuleLocked, ca.RuleRevoked:
				reason = re.Rule
				err = fmt.Errorf("%s; ask an administrator", re.Reason)
			}
		}
		return fail(reason, &oidc.Error{Reason: reason, Err: err, Claims: map[string]string{
			"subject": sanitized(ident.Subject, 256), "email": sanitized(ident.Email, 256), "username": ident.Username}})
	}
	f := ca.CertFields(cert)
	f["subject"], f["email"], f["issuer"] = ident.Subject, ident.Email, ident.Issuer
	g.record(context.Background(), audit.Event{Type: audit.TypeLoginOK, Actor: ident.Username, Session: cs.id, Fields: fields(f)})
	sio.errorf("Signed a certificate for %s (principals %s", ident.Username, strings.Join(cert.ValidPrincipals, ", "))
	if len(ident.Groups) > 0 {
		sio.errorf("; groups %s", strings.Join(ident.Groups, ", "))
	}
	sio.errorf("), valid until %s.\n", ca.FormatCertTime(cert.ValidBefore))
	if len(args) == 0 {
		// Plain `ssh login@gateway`: no `bastion login` writes the host
		// CA into known_hosts, so say the line, or the user is left to
		// trust the gateway and every record-mode target on first use.
		sio.errorf("%s", hostCAHint(g.deps.Authority.TrustedKeys(ca.HostCA)))
	}
	sio.stdout.Write(gossh.MarshalAuthorizedKey(cert))
	return 0
}

// hostCAHint tells a user of the OpenSSH-only login how to trust the
// host CA: the gateway and the targets record mode answers for present
// certificates from it.
func hostCAHint(keys []gossh.PublicKey) string {
	return "To trust this gateway and the hosts behind it without being asked (once), add to ~/.ssh/known_hosts:\n" +
		ca.ExportLines(ca.HostCA, keys, "*")
}

// asUser is a connection's metadata with another user name: the login
// connection checking a certificate as the principal it would jump as.
type asUser struct {
	gossh.ConnMetadata
	user string
}

func (m asUser) User() string { return m.user }

// loginStatus answers `bastion status`: it reads one certificate line on
// stdin, which must be for the very key this login connection
// authenticated with (so only its holder learns its state), and runs the
// one certificate check on it as its first principal, from this
// connection's address, as a jump would. Nothing is signed or changed,
// and a refusal is not an authentication failure (it bans no one).
func (g *Gateway) loginStatus(ctx context.Context, meta gossh.ConnMetadata, id *Identity, sio *sessionIO) int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var text string
	select {
	case ln, ok := <-readLines(ctx, sio.stdin, 16<<10):
		if ok {
			text = ln.text
		}
	case <-ctx.Done():
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(text))
	cert, isCert := pub.(*gossh.Certificate)
	if err != nil || !isCert {
		sio.errorf("bastion: login-status wants your certificate (an authorized_keys line) on stdin\n")
		return 2
	}
	if strings.TrimSpace(string(gossh.MarshalAuthorizedKey(cert.Key))) != id.PublicKey {
		sio.errorf("bastion: login-status checks only a certificate for the key this connection logged in with\n")
		return 2
	}
	st := CertStatus{OK: true}
	if len(cert.ValidPrincipals) > 0 {
		st.User = cert.ValidPrincipals[0]
	}
	if _, err := g.checker.checkCert(asUser{ConnMetadata: meta, user: st.User}, cert); err != nil {
		st = CertStatus{User: st.User, Reason: reasonOf(err), Detail: err.Error()}
		var ae *authError
		if errors.As(err, &ae) {
			st.Detail = ae.detail
		}
	}
	out, _ := json.Marshal(st)
	sio.printf("%s\n", out)
	return 0
}

// deviceFlow runs RFC 8628 against the IdP, prompting on stderr.
func (g *Gateway) deviceFlow(ctx context.Context, l *LoginConfig, sio *sessionIO) (*oidc.Identity, error) {
	if st := l.Provider.Status(); !st.Discovered {
		// Say "the IdP is down" rather than "it has no device flow".
		return nil, idpDownError(l, st)
	}
	if !l.Provider.SupportsDevice() {
		return nil, &oidc.Error{Reason: oidc.ReasonDeviceUnsupported, Err: errors.New("the identity provider has no device flow: use `bastion login`, which logs in through your browser")}
	}
	da, err := l.Provider.StartDevice(ctx)
	if err != nil {
		return nil, err
	}
	// The device code in flight is this gateway's alone: claim it so no
	// other gateway of a cluster waits on the same one.
	if err := g.claimOnce(ctx, "device_code", da.UserCode+"\x00"+da.VerificationURI, time.Until(da.Expiry)+time.Minute, oidc.ReasonDeviceCodeInvalid); err != nil {
		return nil, err
	}
	sio.errorf("To log in, open %s and enter the code %s\n", da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		sio.errorf("  or open: %s\n", da.VerificationURIComplete)
	}
	sio.errorf("Waiting for approval (the code expires at %s)...\n", da.Expiry.UTC().Format(time.RFC3339))
	return l.Provider.WaitDevice(ctx, da)
}

func idpDownError(l *LoginConfig, st oidc.Status) error {
	return &oidc.Error{Reason: oidc.ReasonIDPError, Err: fmt.Errorf("the identity provider %s has not answered since %s (%s): logins work again once it does; certificates already issued keep working",
		l.Provider.Issuer(), st.Since.UTC().Format(time.RFC3339), st.LastError)}
}

// CodeLoginStart is the client's first message of a login-code session.
type CodeLoginStart struct {
	// RedirectURI is the client's loopback callback (RFC 8252 section 7.3).
	RedirectURI string `json:"redirect_uri"`
}

// CodeLoginURL is the gateway's answer: what to open in the browser, the
// state the callback must carry, and when the gateway gives up.
type CodeLoginURL struct {
	AuthURL string    `json:"auth_url"`
	State   string    `json:"state"`
	Expires time.Time `json:"expires"`
}

// CodeLoginResult is the client's second message: what the browser
// brought to the callback, a code or the IdP's error.
type CodeLoginResult struct {
	Code             string `json:"code,omitempty"`
	State            string `json:"state,omitempty"`
	Error            string `json:"error,omitempty"`
	ErrorDescription string `json:"error_description,omitempty"`
}

// codeLogin is the browser login the gateway drives (login-code): one
// JSON line in (CodeLoginStart), one out (CodeLoginURL), one in
// (CodeLoginResult); then the certificate or the refusal. The gateway
// chooses state, nonce and PKCE verifier and redeems the code itself, so
// the code is good for this session only, and a confidential client's
// secret stays here. While it waits, an IdP that stops answering ends
// the login with idp_error.
func (g *Gateway) codeLogin(ctx context.Context, l *LoginConfig, sio *sessionIO) (*oidc.Identity, error) {
	lines := readLines(ctx, sio.stdin, 8*1024)
	var start CodeLoginStart
	if err := nextJSON(ctx, lines, &start); err != nil {
		return nil, err
	}
	cl, err := l.Provider.StartCode(start.RedirectURI)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	out, _ := json.Marshal(CodeLoginURL{AuthURL: cl.AuthURL, State: cl.State, Expires: deadline.UTC()})
	sio.printf("%s\n", out)

	began := g.now()
	idpDown := make(chan oidc.Status, 1)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				if st := l.Provider.Status(); !st.Up && st.Since.After(began) {
					idpDown <- st
					return
				}
			}
		}
	}()
	var res CodeLoginResult
	errc := make(chan error, 1)
	go func() { errc <- nextJSON(wctx, lines, &res) }()
	select {
	case st := <-idpDown:
		return nil, &oidc.Error{Reason: oidc.ReasonIDPError, Err: fmt.Errorf("the identity provider %s stopped answering during the login (%s): try again once it is back", l.Provider.Issuer(), st.LastError)}
	case err := <-errc:
		if err != nil {
			return nil, err
		}
	}
	if res.Error != "" {
		reason := oidc.ReasonIDPError
		if res.Error == "access_denied" {
			reason = oidc.ReasonAccessDenied
		}
		return nil, &oidc.Error{Reason: reason, Err: fmt.Errorf("the IdP refused the login: %s: %q", sanitized(res.Error, 64), sanitized(res.ErrorDescription, 200))}
	}
	if err := g.claimOnce(ctx, "auth_code", res.Code, 10*time.Minute, oidc.ReasonCodeInvalid); err != nil {
		return nil, err
	}
	return l.Provider.Finish(ctx, cl, res.Code, res.State)
}

// claimOnce records a one-time login value (a nonce, a device code, an
// authorization code) as used across the cluster, refusing with reason
// when another gateway used it first and with cluster_unavailable when
// etcd cannot say (fail closed). Without a cluster the value is this
// gateway's alone and nothing is recorded.
func (g *Gateway) claimOnce(ctx context.Context, kind, id string, ttl time.Duration, reason string) error {
	if g.deps.Cluster == nil {
		return nil
	}
	first, err := g.deps.Cluster.Claim(ctx, kind, id, ttl)
	if err != nil {
		g.log.Warn("could not record a one-time login value in etcd; refusing the login", "kind", kind, "err", err)
		return &oidc.Error{Reason: oidc.ReasonClusterUnavailable, Err: errClusterUnavailable}
	}
	if !first {
		return &oidc.Error{Reason: reason, Err: fmt.Errorf("this %s was already used on another gateway: log in again", strings.ReplaceAll(kind, "_", " "))}
	}
	return nil
}

// tokenLogin takes an ID token the client fetched itself: the gateway
// first sends {"nonce": ...}, and the token must carry that nonce; it is
// good once. A token from another login, another connection or another
// key never carries this session's nonce.
func (g *Gateway) tokenLogin(ctx context.Context, l *LoginConfig, sio *sessionIO) (*oidc.Identity, error) {
	nonce := oidc.Nonce()
	out, _ := json.Marshal(map[string]string{"nonce": nonce})
	sio.printf("%s\n", out)
	lines := readLines(ctx, sio.stdin, 64*1024)
	select {
	case <-ctx.Done():
		return nil, &oidc.Error{Reason: oidc.ReasonCanceled, Err: ctx.Err()}
	case ln, ok := <-lines:
		raw := strings.TrimSpace(ln.text)
		if !ok || ln.err != nil && raw == "" {
			return nil, &oidc.Error{Reason: oidc.ReasonMalformedToken, Err: errors.New("no ID token on stdin")}
		}
		if err := g.claimOnce(ctx, "nonce", nonce, 15*time.Minute, oidc.ReasonBadNonce); err != nil {
			return nil, err
		}
		return l.Provider.VerifyIDToken(ctx, raw, nonce)
	}
}

type line struct {
	text string
	err  error
}

// readLines reads newline-terminated lines of at most max bytes from r
// until ctx is done or r ends; the channel closes after the last.
func readLines(ctx context.Context, r io.Reader, max int) <-chan line {
	ch := make(chan line)
	go func() {
		defer close(ch)
		br := bufio.NewReaderSize(r, 4096)
		for {
			var buf []byte
			var err error
			for {
				var part []byte
				part, err = br.ReadSlice('\n')
				if len(buf)+len(part) > max {
					err = fmt.Errorf("a line longer than %d bytes", max)
					break
				}
				buf = append(buf, part...)
				if !errors.Is(err, bufio.ErrBufferFull) {
					break
				}
			}
			select {
			case ch <- line{text: string(buf), err: err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// nextJSON decodes the next line into v.
func nextJSON(ctx context.Context, lines <-chan line, v any) error {
	select {
	case <-ctx.Done():
		return &oidc.Error{Reason: oidc.ReasonCanceled, Err: ctx.Err()}
	case ln, ok := <-lines:
		if !ok || (ln.err != nil && strings.TrimSpace(ln.text) == "") {
			return &oidc.Error{Reason: oidc.ReasonCanceled, Err: errors.New("the client went away before the login finished")}
		}
		if err := json.Unmarshal([]byte(ln.text), v); err != nil {
			return &oidc.Error{Reason: oidc.ReasonMalformedToken, Err: errors.New("the client's login message is not the JSON the login-code protocol expects: update bastion")}
		}
		return nil
	}
}

// sanitized cuts a client- or IdP-supplied string to n bytes for a
// message or an audit record, replacing control characters.
func sanitized(s string, n int) string {
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// loginFailure is what a failed login tells the client: the reason code
// once (the error may already name it) and no package prefix.
func loginFailure(reason string, err error) string {
	msg := strings.TrimPrefix(err.Error(), "oidc: ")
	if strings.Contains(msg, "("+reason+")") {
		return "login failed: " + msg
	}
	return fmt.Sprintf("login failed (%s): %s", reason, msg)
}
