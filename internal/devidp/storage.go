package devidp

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// Lifetimes of the provider's own records. Access tokens only serve the
// userinfo endpoint; bastion uses the ID token.
const (
	authRequestLifetime = 10 * time.Minute
	accessTokenLifetime = 10 * time.Minute
)

// Errors the pages show and tests match.
var (
	errBadCredentials = errors.New("devidp: unknown user or wrong password")
	errUnknownCode    = errors.New("devidp: no pending login has this code: check the code in your terminal, or start a new login")
	errCodeExpired    = errors.New("devidp: this code has expired: start a new login")
	errCodeDecided    = errors.New("devidp: this code was already approved or denied")
	errUnknownRequest = errors.New("devidp: no pending login with this id: start the login again")
	errUnsupported    = errors.New("devidp: not supported by the development IdP")
)

// storage is the in-memory op.Storage (plus op.DeviceAuthorizationStorage
// and op.CanSetUserinfoFromRequest) behind a Server.
type storage struct {
	now            func() time.Time
	client         *client
	key            *signingKey
	users          []User
	deviceLifetime time.Duration

	mu       sync.Mutex
	authReqs map[string]*authRequest // by id
	codes    map[string]string       // authorization code → auth request id
	tokens   map[string]accessToken  // by id
	devices  map[string]*device      // by device code
	byUser   map[string]string       // normalized user code → device code
	redeemed map[string]time.Time    // device code → when its tombstone may go
}

type accessToken struct {
	subject string
	scopes  []string
	expires time.Time
}

type device struct {
	clientID  string
	scopes    []string
	userCode  string
	opExpires time.Time // what op computed, with the wall clock
	expires   time.Time // what counts, on the provider's clock
	done      bool
	denied    bool
	subject   string
	authTime  time.Time
}

func newStorage(now func() time.Time, c *client, key *signingKey, users []User, deviceLifetime time.Duration) *storage {
	return &storage{
		now: now, client: c, key: key, users: users, deviceLifetime: deviceLifetime,
		authReqs: map[string]*authRequest{},
		codes:    map[string]string{},
		tokens:   map[string]accessToken{},
		devices:  map[string]*device{},
		byUser:   map[string]string{},
		redeemed: map[string]time.Time{},
	}
}

// authenticate checks a username and password in constant time per user.
func (s *storage) authenticate(username, password string) (User, error) {
	for _, u := range s.users {
		if u.Username == username && subtle.ConstantTimeCompare([]byte(u.Password), []byte(password)) == 1 {
			return u, nil
		}
	}
	return User{}, errBadCredentials
}

func (s *storage) userBySubject(sub string) (User, bool) {
	i := slices.IndexFunc(s.users, func(u User) bool { return u.Subject == sub })
	if i < 0 {
		return User{}, false
	}
	return s.users[i], true
}

// --- authorization code flow ---

// authRequest is one authorization request; storage hands out copies, so
// op never sees a value the login page is changing.
type authRequest struct {
	id       string
	req      oidc.AuthRequest
	created  time.Time
	done     bool
	subject  string
	authTime time.Time
}

func (a *authRequest) GetID() string                      { return a.id }
func (a *authRequest) GetACR() string                     { return "" }
func (a *authRequest) GetAMR() []string                   { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string              { return []string{a.req.ClientID} }
func (a *authRequest) GetAuthTime() time.Time             { return a.authTime }
func (a *authRequest) GetClientID() string                { return a.req.ClientID }
func (a *authRequest) GetNonce() string                   { return a.req.Nonce }
func (a *authRequest) GetRedirectURI() string             { return a.req.RedirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType { return a.req.ResponseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode { return a.req.ResponseMode }
func (a *authRequest) GetScopes() []string                { return a.req.Scopes }
func (a *authRequest) GetState() string                   { return a.req.State }
func (a *authRequest) GetSubject() string                 { return a.subject }
func (a *authRequest) Done() bool                         { return a.done }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge {
	if a.req.CodeChallenge == "" {
		return nil
	}
	return &oidc.CodeChallenge{Challenge: a.req.CodeChallenge, Method: a.req.CodeChallengeMethod}
}

func (a *authRequest) clone() *authRequest {
	c := *a
	c.req.Scopes = slices.Clone(a.req.Scopes)
	return &c
}

func (s *storage) CreateAuthRequest(_ context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for id, a := range s.authReqs {
		if now.Sub(a.created) > authRequestLifetime {
			s.deleteAuthRequestLocked(id)
		}
	}
	a := &authRequest{id: rand.Text(), req: *req, created: now}
	a.req.Scopes = slices.Clone(req.Scopes)
	s.authReqs[a.id] = a
	return a.clone(), nil
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authReqs[id]
	if !ok {
		return nil, errUnknownRequest
	}
	return a.clone(), nil
}

func (s *storage) AuthRequestByCode(_ context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authReqs[s.codes[code]]
	if !ok {
		return nil, errUnknownRequest
	}
	return a.clone(), nil
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.authReqs[id]; !ok {
		return errUnknownRequest
	}
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest runs once the code is exchanged, which makes the code
// single-use.
func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deleteAuthRequestLocked(id)
	return nil
}

func (s *storage) deleteAuthRequestLocked(id string) {
	delete(s.authReqs, id)
	for code, rid := range s.codes {
		if rid == id {
			delete(s.codes, code)
		}
	}
}

// completeAuthRequest is what the login page does on a correct password.
func (s *storage) completeAuthRequest(id, username, password string) error {
	u, err := s.authenticate(username, password)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.authReqs[id]
	if !ok {
		return errUnknownRequest
	}
	a.done, a.subject, a.authTime = true, u.Subject, s.now()
	return nil
}

// --- device authorization grant ---

// normalizeUserCode accepts what people type: any case, with or without
// the dash or spaces.
func normalizeUserCode(c string) string {
	return strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return -1
		}
		return r
	}, strings.ToUpper(strings.TrimSpace(c)))
}

func (s *storage) StoreDeviceAuthorization(_ context.Context, clientID, deviceCode, userCode string, expires time.Time, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for dc, d := range s.devices {
		if now.After(d.expires.Add(s.deviceLifetime)) {
			delete(s.devices, dc)
			delete(s.byUser, normalizeUserCode(d.userCode))
		}
	}
	for dc, until := range s.redeemed {
		if now.After(until) {
			delete(s.redeemed, dc)
		}
	}
	uc := normalizeUserCode(userCode)
	if _, dup := s.byUser[uc]; dup {
		return op.ErrDuplicateUserCode
	}
	s.devices[deviceCode] = &device{
		clientID: clientID, scopes: slices.Clone(scopes), userCode: userCode,
		opExpires: expires, expires: now.Add(s.deviceLifetime),
	}
	s.byUser[uc] = deviceCode
	return nil
}

// GetDeviceAuthorizatonState is polled by the token endpoint. Expiry is
// judged on the provider's clock (Config.Now), so tests can expire a code
// without waiting; op compares Expires with the wall clock, so an expired
// code is reported with a zero Expires. A completed code is handed out once
// and then remembered as redeemed, so that a second use gets invalid_grant.
func (s *storage) GetDeviceAuthorizatonState(ctx context.Context, clientID, deviceCode string) (*op.DeviceAuthorizationState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceCode]
	if !ok || d.clientID != clientID {
		return nil, errUnknownCode
	}
	st := &op.DeviceAuthorizationState{
		ClientID: d.clientID,
		Audience: []string{d.clientID},
		Scopes:   slices.Clone(d.scopes),
		Expires:  d.opExpires,
		Done:     d.done,
		Denied:   d.denied,
		Subject:  d.subject,
		AMR:      []string{"pwd"},
		AuthTime: d.authTime,
	}
	switch {
	case d.done:
		delete(s.devices, deviceCode)
		delete(s.byUser, normalizeUserCode(d.userCode))
		s.redeemed[deviceCode] = d.expires.Add(s.deviceLifetime)
	case !d.denied && !s.now().Before(d.expires):
		st.Expires = time.Time{}
	}
	return st, nil
}

// wasRedeemed reports whether deviceCode was already exchanged for tokens.
func (s *storage) wasRedeemed(deviceCode string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.redeemed[deviceCode]
	return ok
}

// decideDevice is what the approval page does: approve as the user whose
// password is given, or deny.
func (s *storage) decideDevice(userCode string, approve bool, username, password string) (User, error) {
	var u User
	if approve {
		var err error
		if u, err = s.authenticate(username, password); err != nil {
			return User{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[s.byUser[normalizeUserCode(userCode)]]
	switch {
	case !ok:
		return User{}, errUnknownCode
	case d.done || d.denied:
		return User{}, errCodeDecided
	case !s.now().Before(d.expires):
		return User{}, errCodeExpired
	}
	if approve {
		d.done, d.subject, d.authTime = true, u.Subject, s.now()
	} else {
		d.denied = true
	}
	return u, nil
}

// --- tokens and claims ---

func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// op measures the token's validity with the wall clock.
	now := time.Now()
	for id, t := range s.tokens {
		if now.After(t.expires) {
			delete(s.tokens, id)
		}
	}
	id := rand.Text()
	exp := now.Add(accessTokenLifetime)
	s.tokens[id] = accessToken{subject: req.GetSubject(), scopes: slices.Clone(req.GetScopes()), expires: exp}
	return id, exp, nil
}

func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errUnsupported
}

func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(_ context.Context, tokenOrID, _, _ string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, tokenOrID)
	return nil
}

func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) { return s.key, nil }

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{s.key.alg}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.key}}, nil
}

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	if id != s.client.id {
		return nil, errors.New("devidp: unknown client id")
	}
	return s.client, nil
}

// AuthorizeClientIDSecret checks a confidential client's secret.
func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	if s.client.secret == "" || id != s.client.id || subtle.ConstantTimeCompare([]byte(secret), []byte(s.client.secret)) != 1 {
		return errors.New("devidp: client authentication failed")
	}
	return nil
}

// SetUserinfoFromScopes is deprecated in op; SetUserinfoFromRequest does the work.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

// SetUserinfoFromRequest fills the ID token's user claims.
func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	return s.setUserinfo(info, req.GetSubject(), scopes)
}

// SetUserinfoFromToken serves the userinfo endpoint.
func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, tokenID, subject, _ string) error {
	s.mu.Lock()
	t, ok := s.tokens[tokenID]
	s.mu.Unlock()
	if !ok || t.subject != subject || time.Now().After(t.expires) {
		return errors.New("devidp: access token is unknown or expired")
	}
	return s.setUserinfo(info, subject, t.scopes)
}

func (s *storage) setUserinfo(info *oidc.UserInfo, subject string, scopes []string) error {
	u, ok := s.userBySubject(subject)
	if !ok {
		return errors.New("devidp: unknown subject")
	}
	info.Subject = u.Subject
	for _, sc := range scopes {
		switch sc {
		case oidc.ScopeProfile:
			info.PreferredUsername = u.Username
			info.Name = u.Username
		case oidc.ScopeEmail:
			info.Email = u.Email
			info.EmailVerified = oidc.Bool(u.EmailVerified)
		case ScopeGroups:
			info.AppendClaims("groups", slices.Clone(u.Groups))
		}
	}
	return nil
}

func (s *storage) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return errUnsupported
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errUnsupported
}

func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errUnsupported
}

func (s *storage) Health(context.Context) error { return nil }
