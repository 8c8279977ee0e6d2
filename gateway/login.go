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

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/oidc"
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
	VerifyIDToken(ctx context.Context, raw, nonce string) (*oidc.Identity, error)
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
}

// Login failure reasons of the gateway's own (beyond oidc.Reason*).
const (
	ReasonLoginRateLimited = "rate_limited"
	ReasonCertRefused      = "cert_refused"
	ReasonLoginOnly        = "login_only"
)

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

// runLogin is the session of a `login` connection: the device flow (exec
// "" or "login"), the PKCE hand-over (exec "login-token", token and nonce
// on stdin), or "login-config" (what `bastion login` needs to choose).
func (g *Gateway) runLogin(ctx context.Context, cs *connState, id *Identity, sio *sessionIO, line string) int {
	l := g.cfg.Login
	args := strings.Fields(line)
	cmd := "login"
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "login-config":
		out, _ := json.Marshal(map[string]any{"issuer": l.Provider.Issuer(), "client_id": l.ClientID, "device": l.Provider.SupportsDevice()})
		sio.printf("%s\n", out)
		return 0
	case "login", "login-token":
	default:
		sio.errorf("bastion: the login user can only log in (`ssh login@<gateway>`); %q is not available\n", cmd)
		g.auditRefusal(cs, audit.TypeRequestDenied, "exec "+cmd, ReasonLoginOnly, "the login user runs only the login service")
		return 126
	}
	flow := "device"
	if cmd == "login-token" {
		flow = "pkce"
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
		g.record(context.Background(), audit.Event{Type: audit.TypeLoginFailed, Actor: LoginUser, Session: cs.id, Fields: fields(map[string]string{"reason": reason, "detail": err.Error()})})
		sio.errorf("bastion: %s\n", loginFailure(reason, err))
		return 1
	}
	if !g.loginLimiter.allow(cs.remote) {
		return fail(ReasonLoginRateLimited, fmt.Errorf("too many logins from %s; wait a minute", cs.remote))
	}
	if err := g.recordOrRefuse(ctx, audit.Event{Type: audit.TypeLoginStarted, Actor: LoginUser, Session: cs.id, Fields: fields(nil)}); err != nil {
		return fail(ReasonAuditUnavailable, err)
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout())
	defer cancel()

	var ident *oidc.Identity
	var err error
	if flow == "pkce" {
		ident, err = g.readIDToken(ctx, l, sio.stdin)
	} else {
		ident, err = g.deviceFlow(ctx, l, sio)
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
		return fail(reason, err)
	}
	f := ca.CertFields(cert)
	f["subject"], f["email"], f["issuer"] = ident.Subject, ident.Email, ident.Issuer
	g.record(context.Background(), audit.Event{Type: audit.TypeLoginOK, Actor: ident.Username, Session: cs.id, Fields: fields(f)})
	sio.errorf("Signed a certificate for %s (principals %s", ident.Username, strings.Join(cert.ValidPrincipals, ", "))
	if len(ident.Groups) > 0 {
		sio.errorf("; groups %s", strings.Join(ident.Groups, ", "))
	}
	sio.errorf("), valid until %s.\n", ca.FormatCertTime(cert.ValidBefore))
	sio.stdout.Write(gossh.MarshalAuthorizedKey(cert))
	return 0
}

// deviceFlow runs RFC 8628 against the IdP, prompting on stderr.
func (g *Gateway) deviceFlow(ctx context.Context, l *LoginConfig, sio *sessionIO) (*oidc.Identity, error) {
	if !l.Provider.SupportsDevice() {
		return nil, &oidc.Error{Reason: oidc.ReasonDeviceUnsupported, Err: errors.New("the identity provider has no device flow: use `bastion login`, which logs in through your browser")}
	}
	da, err := l.Provider.StartDevice(ctx)
	if err != nil {
		return nil, err
	}
	sio.errorf("To log in, open %s and enter the code %s\n", da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		sio.errorf("  or open: %s\n", da.VerificationURIComplete)
	}
	sio.errorf("Waiting for approval (the code expires at %s)...\n", da.Expiry.UTC().Format(time.RFC3339))
	return l.Provider.WaitDevice(ctx, da)
}

// readIDToken reads "ID_TOKEN\nNONCE\n" from the client and verifies it.
func (g *Gateway) readIDToken(ctx context.Context, l *LoginConfig, stdin io.Reader) (*oidc.Identity, error) {
	r := bufio.NewReader(io.LimitReader(stdin, 64*1024))
	raw, err := r.ReadString('\n')
	if err != nil && raw == "" {
		return nil, &oidc.Error{Reason: oidc.ReasonMalformedToken, Err: errors.New("no ID token on stdin")}
	}
	nonce, _ := r.ReadString('\n')
	return l.Provider.VerifyIDToken(ctx, strings.TrimSpace(raw), strings.TrimSpace(nonce))
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
