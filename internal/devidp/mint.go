package devidp

import (
	"crypto"
	"fmt"
	"slices"
)

// Claims returns the claims this provider puts in an ID token for
// username, stamped with Config.Now and valid for an hour: the starting
// point for a test that changes one of them (audience, issuer, expiry,
// email_verified, ...) and signs the result with SignToken.
func (s *Server) Claims(username string) (map[string]any, error) {
	i := slices.IndexFunc(s.store.users, func(u User) bool { return u.Username == username })
	if i < 0 {
		return nil, fmt.Errorf("devidp: no user %q: use one of Config.Users", username)
	}
	u := s.store.users[i]
	now := s.now()
	return map[string]any{
		"iss":                s.issuer,
		"sub":                u.Subject,
		"aud":                []string{s.clientID},
		"azp":                s.clientID,
		"iat":                now.Unix(),
		"auth_time":          now.Unix(),
		"exp":                now.Add(idTokenLifetime).Unix(),
		"email":              u.Email,
		"email_verified":     u.EmailVerified,
		"preferred_username": u.Username,
		"name":               u.Username,
		"groups":             slices.Clone(u.Groups),
	}, nil
}

// SignToken signs claims as a JWT. With a nil key it signs with the
// provider's key, as the token endpoint does; with another key it makes a
// forgery. kid is the key id in the header; empty means the provider's own,
// so a forgery points at the published key and must fail on the signature.
// It is for tests of relying parties.
func (s *Server) SignToken(claims map[string]any, key crypto.Signer, kid string) (string, error) {
	k := s.store.key
	if key != nil {
		var err error
		if k, err = newSigningKey(key); err != nil {
			return "", err
		}
	}
	if kid == "" {
		kid = s.store.key.kid
	}
	return sign(claims, &signingKey{priv: k.priv, alg: k.alg, kid: kid})
}
