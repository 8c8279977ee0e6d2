package devidp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
)

// signingKey is the provider's key; it implements op.SigningKey.
type signingKey struct {
	priv crypto.Signer
	alg  jose.SignatureAlgorithm
	kid  string
}

func newSigningKey(k crypto.Signer) (*signingKey, error) {
	var alg jose.SignatureAlgorithm
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("devidp: Config.SigningKey is a %d-bit RSA key: use at least 2048 bits", k.N.BitLen())
		}
		alg = jose.RS256
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		case elliptic.P521():
			alg = jose.ES512
		default:
			return nil, fmt.Errorf("devidp: Config.SigningKey uses curve %s: use P-256, P-384 or P-521", k.Curve.Params().Name)
		}
	case ed25519.PrivateKey:
		alg = jose.EdDSA
	default:
		return nil, fmt.Errorf("devidp: Config.SigningKey is a %T: use an *rsa.PrivateKey, *ecdsa.PrivateKey or ed25519.PrivateKey", k)
	}
	kid, err := keyID(k.Public())
	if err != nil {
		return nil, err
	}
	return &signingKey{priv: k, alg: alg, kid: kid}, nil
}

// keyID is the RFC 7638 thumbprint of pub, so a key keeps its id across
// restarts of the provider.
func keyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("devidp: cannot compute the key id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp[:12]), nil
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return k.alg }
func (k *signingKey) Key() any                                    { return k.priv }
func (k *signingKey) ID() string                                  { return k.kid }

// publicKey is the JWKS entry for a signingKey; it implements op.Key.
type publicKey struct{ k *signingKey }

func (p publicKey) ID() string                         { return p.k.kid }
func (p publicKey) Algorithm() jose.SignatureAlgorithm { return p.k.alg }
func (p publicKey) Use() string                        { return "sig" }
func (p publicKey) Key() any                           { return p.k.priv.Public() }

// sign signs claims as a compact JWS with key, the way op signs ID tokens.
func sign(claims map[string]any, key *signingKey) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: key.alg,
		Key:       &jose.JSONWebKey{Key: key.priv, KeyID: key.kid},
	}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("devidp: cannot build a signer: %w", err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("devidp: claims are not JSON: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devidp: signing failed: %w", err)
	}
	return jws.CompactSerialize()
}
