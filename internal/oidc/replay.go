package oidc

import (
	"crypto/sha256"
	"strings"
	"sync"
	"time"
)

// usedTokens is the one-time-use record of ID tokens: a token is accepted
// for a login once, until it expires. It is keyed by the hash of the JWS
// signing input (header and payload), not of the whole token: the same
// signed content has many valid encodings (the signature's base64 may
// carry different padding bits, and an ECDSA signature (r, s) is as valid
// as (r, n-s)), and a record of the exact string would let each of them
// through.
type usedTokens struct {
	now func() time.Time

	mu   sync.Mutex
	seen map[[32]byte]time.Time
}

func newUsedTokens(now func() time.Time) *usedTokens {
	return &usedTokens{now: now, seen: map[[32]byte]time.Time{}}
}

// tokenKey is what identifies a token for one-time use: the hash of its
// signing input.
func tokenKey(raw string) [32]byte {
	input := raw
	if i := strings.LastIndexByte(raw, '.'); i >= 0 {
		input = raw[:i]
	}
	return sha256.Sum256([]byte(input))
}

// claim records raw as used until exp and reports whether it was new.
func (u *usedTokens) claim(raw string, exp time.Time) bool {
	key := tokenKey(raw)
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	// Expired tokens are refused by verification anyway; forgetting them
	// keeps the record as small as the set of live tokens. The clock may
	// be skewed against the IdP's, so keep a margin.
	for k, until := range u.seen {
		if now.After(until.Add(5 * time.Minute)) {
			delete(u.seen, k)
		}
	}
	if _, ok := u.seen[key]; ok {
		return false
	}
	u.seen[key] = exp
	return true
}
