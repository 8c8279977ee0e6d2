package devidp

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// User is a person who can log in to the development IdP.
type User struct {
	// Subject is the stable id in the sub claim.
	Subject string
	// Username is what the login form asks for and the preferred_username claim.
	Username string
	// Email and EmailVerified become the email and email_verified claims.
	Email         string
	EmailVerified bool
	// Groups become the groups claim.
	Groups []string
	// Password is what the login form checks.
	Password string
}

// DemoUsers returns the users of `bastion dev`: alice in group eng and bob
// in group dba, both with verified emails at example.com and fresh random
// passwords (the caller prints them).
func DemoUsers() []User {
	return []User{
		{Subject: "demo-alice", Username: "alice", Email: "alice@example.com", EmailVerified: true, Groups: []string{"eng"}, Password: newPassword()},
		{Subject: "demo-bob", Username: "bob", Email: "bob@example.com", EmailVerified: true, Groups: []string{"dba"}, Password: newPassword()},
	}
}

// newPassword returns 16 characters (80 bits) from crypto/rand: short
// enough to type, too long to guess, even for a provider on loopback.
func newPassword() string { return strings.ToLower(rand.Text()[:16]) }

// Config configures a development IdP.
type Config struct {
	// Issuer is the URL clients discover, e.g. http://127.0.0.1:PORT. It
	// has no path. Default: http:// plus the listener's address.
	Issuer string
	// Listen is the loopback address to serve on. Default: the issuer's
	// host:port, or 127.0.0.1:0 when Issuer is empty.
	Listen string
	// ClientID is the client's id; default "bastion".
	ClientID string
	// ClientSecret, when set, makes the client confidential, as most
	// company IdPs register a gateway: the device authorization and token
	// endpoints then answer 401 invalid_client to a request without it.
	ClientSecret string
	// ClientAuthMethod is how a confidential client must authenticate:
	// "client_secret_basic" (default) or "client_secret_post". The
	// discovery document advertises only this method, and the endpoints
	// refuse the other, as strict IdPs do.
	ClientAuthMethod string
	// SilentDeny makes the login page's Deny button end at a page of its
	// own instead of redirecting access_denied back to the client, as some
	// IdPs do: the client never hears of the denial.
	SilentDeny bool
	// Users who can log in; DemoUsers() for bastion dev.
	Users []User
	// Now is the clock for device code expiry and minted tokens; default
	// time.Now. (op stamps the tokens of the real endpoints with the wall
	// clock.)
	Now func() time.Time
	// SigningKey signs ID tokens: *rsa.PrivateKey (RS256),
	// *ecdsa.PrivateKey (ES256/384/512) or ed25519.PrivateKey (EdDSA).
	// Default: a fresh P-256 key.
	SigningKey crypto.Signer
	// DeviceLifetime is how long a device code lasts; default 10 minutes.
	DeviceLifetime time.Duration
	// PollInterval is the device polling interval given to clients, in
	// whole seconds; default 5s. Tests use 1s.
	PollInterval time.Duration
}

// Paths of the pages this package adds to op's endpoints.
const (
	loginPath  = "/login"
	devicePath = "/device"
)

// Server is a running development IdP.
type Server struct {
	issuer     string
	clientID   string
	secret     string
	authMethod oidc.AuthMethod
	silentDeny bool
	now        func() time.Time
	store      *storage
	op         *op.Provider
	pages      *pages
	srv        *http.Server
	ln         net.Listener
	stop       func() bool
	close      sync.Once
	closeErr   error
}

// Start validates cfg, listens and serves until Close or until ctx is done.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.ClientID == "" {
		cfg.ClientID = "bastion"
	}
	authMethod := oidc.AuthMethodNone
	if cfg.ClientSecret != "" {
		switch cfg.ClientAuthMethod {
		case "", string(oidc.AuthMethodBasic):
			authMethod = oidc.AuthMethodBasic
		case string(oidc.AuthMethodPost):
			authMethod = oidc.AuthMethodPost
		default:
			return nil, fmt.Errorf("devidp: Config.ClientAuthMethod %q: use client_secret_basic or client_secret_post", cfg.ClientAuthMethod)
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DeviceLifetime == 0 {
		cfg.DeviceLifetime = 10 * time.Minute
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 5 * time.Second
	}
	if cfg.PollInterval < time.Second || cfg.PollInterval%time.Second != 0 {
		return nil, fmt.Errorf("devidp: Config.PollInterval %s is not a whole number of seconds: RFC 8628 counts the interval in seconds", cfg.PollInterval)
	}
	if err := validateUsers(cfg.Users); err != nil {
		return nil, err
	}
	listen, err := listenAddr(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.SigningKey == nil {
		if cfg.SigningKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("devidp: generating a signing key: %w", err)
		}
	}
	key, err := newSigningKey(cfg.SigningKey)
	if err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("devidp: cannot listen on %s: %w; pick a free port or leave Config.Listen empty", listen, err)
	}
	issuer := cfg.Issuer
	if issuer == "" {
		issuer = "http://" + ln.Addr().String()
	}

	s := &Server{issuer: issuer, clientID: cfg.ClientID, secret: cfg.ClientSecret, authMethod: authMethod, silentDeny: cfg.SilentDeny, now: cfg.Now, ln: ln}
	s.store = newStorage(cfg.Now, &client{id: cfg.ClientID, secret: cfg.ClientSecret, authMethod: authMethod}, key, slices.Clone(cfg.Users), cfg.DeviceLifetime)
	var cryptoKey [32]byte
	_, _ = rand.Read(cryptoKey[:])
	s.op, err = op.NewProvider(&op.Config{
		CryptoKey:       cryptoKey,
		CodeMethodS256:  true,
		AuthMethodPost:  authMethod == oidc.AuthMethodPost,
		SupportedScopes: []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail, ScopeGroups},
		SupportedClaims: append(slices.Clone(op.DefaultSupportedClaims), "groups"),
		DeviceAuthorization: op.DeviceAuthorizationConfig{
			Lifetime:     cfg.DeviceLifetime,
			PollInterval: cfg.PollInterval,
			UserFormPath: devicePath,
			UserCode:     op.UserCodeBase20,
		},
	}, s.store, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("devidp: %w", err)
	}
	if s.pages, err = newPages(); err != nil {
		ln.Close()
		return nil, err
	}

	mux := http.NewServeMux()
	mux.HandleFunc(loginPath, s.handleLogin)
	mux.HandleFunc(devicePath, s.handleDevice)
	mux.Handle(s.op.TokenEndpoint().Relative(), http.HandlerFunc(s.handleToken))
	mux.Handle(s.op.DeviceAuthorizationEndpoint().Relative(), s.clientAuth(s.op))
	mux.HandleFunc(oidc.DiscoveryEndpoint, s.handleDiscovery)
	mux.Handle("/", s.op)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	s.stop = context.AfterFunc(ctx, func() { _ = s.Close() })
	return s, nil
}

// Issuer returns the issuer URL, for oidc.Config.Issuer.
func (s *Server) Issuer() string { return s.issuer }

// ClientSecret returns the client's secret ("" for a public client).
func (s *Server) ClientSecret() string { return s.secret }

// ClientID returns the client's id, for oidc.Config.ClientID.
func (s *Server) ClientID() string { return s.clientID }

// Close stops serving at once. It is safe to call more than once.
func (s *Server) Close() error {
	s.close.Do(func() {
		s.stop()
		if err := s.srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = fmt.Errorf("devidp: close: %w", err)
		}
	})
	return s.closeErr
}

// ApproveDevice approves the pending device login with userCode as
// username, exactly as the approval page does after that user logs in with
// the right password.
func (s *Server) ApproveDevice(userCode, username string) error {
	i := slices.IndexFunc(s.store.users, func(u User) bool { return u.Username == username })
	if i < 0 {
		return fmt.Errorf("devidp: no user %q: use one of Config.Users", username)
	}
	_, err := s.store.decideDevice(userCode, true, username, s.store.users[i].Password)
	return err
}

// DenyDevice denies the pending device login with userCode, as the
// approval page's Deny button does; the client then gets access_denied.
func (s *Server) DenyDevice(userCode string) error {
	_, err := s.store.decideDevice(userCode, false, "", "")
	return err
}

// clientAuth refuses a request to an endpoint that takes client
// authentication unless a confidential client authenticates with its
// registered method (RFC 6749 section 2.3): 401 invalid_client, as IdPs
// answer. op itself would let a confidential client use the device
// endpoint with its client_id alone.
func (s *Server) clientAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.secret == "" || r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		var id, secret string
		var ok bool
		switch s.authMethod {
		case oidc.AuthMethodBasic:
			if id, secret, ok = r.BasicAuth(); ok {
				id, _ = url.QueryUnescape(id)
				secret, _ = url.QueryUnescape(secret)
			}
			ok = ok && r.PostForm.Get("client_secret") == ""
		case oidc.AuthMethodPost:
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
			_, _, basic := r.BasicAuth()
			ok = secret != "" && !basic
		}
		if !ok || id != s.clientID || subtle.ConstantTimeCompare([]byte(secret), []byte(s.secret)) != 1 {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("WWW-Authenticate", `Basic realm="devidp"`)
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{
				"error":             "invalid_client",
				"error_description": "client authentication failed: this client must use " + string(s.authMethod),
			})
			return
		}
		if r.PostForm.Get("grant_type") == string(oidc.GrantTypeDeviceCode) && s.authMethod == oidc.AuthMethodBasic {
			// op's device token endpoint takes a Basic-authenticated
			// request to come from a web application; this client is a
			// native one. The secret is checked above; pass it on as
			// the client_id that op expects from a native client.
			r.Header.Del("Authorization")
			r.PostForm.Set("client_id", id)
			r.Form.Set("client_id", id)
		}
		next.ServeHTTP(w, r)
	})
}

// handleDiscovery serves op's discovery document, advertising only the
// client authentication method the client is registered with (op always
// lists client_secret_basic).
func (s *Server) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	s.op.ServeHTTP(rec, r)
	var doc map[string]any
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &doc) != nil {
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	if s.secret != "" {
		doc["token_endpoint_auth_methods_supported"] = []string{string(s.authMethod)}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(doc)
}

// handleToken answers invalid_grant (RFC 6749 section 5.2) for a device code
// that was already exchanged, before op, which would say access_denied and
// make a replay look like a user's refusal. Everything else goes to op.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	s.clientAuth(http.HandlerFunc(s.handleTokenAuthenticated)).ServeHTTP(w, r)
}

func (s *Server) handleTokenAuthenticated(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
		if err := r.ParseForm(); err == nil &&
			r.PostForm.Get("grant_type") == string(oidc.GrantTypeDeviceCode) &&
			s.store.wasRedeemed(r.PostForm.Get("device_code")) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]string{
				"error":             "invalid_grant",
				"error_description": "device code already used",
			})
			return
		}
	}
	s.op.ServeHTTP(w, r)
}

// callbackURL is where the login page sends the browser back into op.
func (s *Server) callbackURL(ctx context.Context, authRequestID string) string {
	return op.AuthCallbackURL(s.op)(op.ContextWithIssuer(ctx, s.issuer), authRequestID)
}

func validateUsers(users []User) error {
	if len(users) == 0 {
		return errors.New("devidp: Config.Users is empty: pass DemoUsers() or your own users")
	}
	seen := map[string]bool{}
	for i, u := range users {
		if u.Subject == "" || u.Username == "" || u.Password == "" {
			return fmt.Errorf("devidp: Config.Users[%d] (%q) needs a Subject, a Username and a Password", i, u.Username)
		}
		if seen["u:"+u.Username] || seen["s:"+u.Subject] {
			return fmt.Errorf("devidp: Config.Users[%d]: username %q or subject %q is used twice", i, u.Username, u.Subject)
		}
		seen["u:"+u.Username], seen["s:"+u.Subject] = true, true
	}
	return nil
}

// listenAddr picks the address and refuses anything but loopback: the
// provider knows every password and serves plain http.
func listenAddr(cfg Config) (string, error) {
	listen := cfg.Listen
	if cfg.Issuer != "" {
		u, err := url.Parse(cfg.Issuer)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("devidp: Config.Issuer %q is not an http(s) URL: write it like http://127.0.0.1:8080", cfg.Issuer)
		}
		if u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
			return "", fmt.Errorf("devidp: Config.Issuer %q has a path, query or fragment: the provider serves at the root", cfg.Issuer)
		}
		if listen == "" {
			listen = u.Host
			if u.Port() == "" {
				return "", fmt.Errorf("devidp: Config.Issuer %q has no port: add one, or set Config.Listen", cfg.Issuer)
			}
		}
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("devidp: Config.Listen %q is not host:port: %w", listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", fmt.Errorf("devidp: Config.Listen %q is not a loopback address: the development IdP serves plain http and must stay on 127.0.0.1 or ::1", listen)
	}
	return listen, nil
}
