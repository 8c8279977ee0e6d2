package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
)

// Authentication failure reasons: stable codes written to auth.failed
// audit records and used as the metrics "reason" label.
const (
	ReasonForbiddenUser           = "forbidden_user"
	ReasonNotACertificate         = "not_a_certificate"
	ReasonNotUserCertificate      = "not_a_user_certificate"
	ReasonUnknownAuthority        = "unknown_authority"
	ReasonNoPrincipals            = "no_principals"
	ReasonExpired                 = "expired"
	ReasonNotYetValid             = "not_yet_valid"
	ReasonPrincipalMismatch       = "principal_mismatch"
	ReasonUnsupportedCritical     = "unsupported_critical_option"
	ReasonSourceAddress           = "source_address"
	ReasonInvalidCertificate      = "invalid_certificate"
	ReasonRevoked                 = "revoked"
	ReasonLocked                  = "locked"
	ReasonBanned                  = "banned"
	ReasonPasswordAttempt         = "password_attempt"
	ReasonKeyboardInteractive     = "keyboard_interactive_attempt"
	ReasonUnsupportedMethod       = "unsupported_method"
	ReasonBadSignature            = "bad_signature"
	ReasonLoginServiceUnavailable = "login_unavailable"
)

// enforcedCriticalOptions are the only critical options the gateway
// enforces; a certificate with any other is refused, as sshd does.
var enforcedCriticalOptions = []string{"force-command", "source-address"}

// authError is a refused public key, with what the audit record needs.
type authError struct {
	reason string
	detail string
	keyFP  string
	serial uint64
	keyID  string
}

func (e *authError) Error() string {
	return "gateway: " + e.reason + ": " + e.detail
}

// fields are the audit fields of the refusal.
func (e *authError) fields() map[string]string {
	f := map[string]string{"reason": e.reason, "detail": e.detail}
	if e.keyFP != "" {
		f["key_fp"] = e.keyFP
	}
	if e.serial != 0 {
		f["serial"] = fmt.Sprint(e.serial)
	}
	if e.keyID != "" {
		f["key_id"] = e.keyID
	}
	return f
}

// checker holds what verifying a key needs.
type checker struct {
	authority   *ca.Authority
	revocations *ca.Revocations
	locks       *Locks
	login       *LoginConfig
	now         func() time.Time
}

// verifyKey decides whether key may authenticate as meta.User(). It is
// called by x/crypto for every key a client offers, proven or not; it
// keeps no state and returns a fresh Permissions carrying the Identity.
func (c *checker) verifyKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	user := meta.User()
	fail := func(reason, format string, args ...any) error {
		e := &authError{reason: reason, detail: fmt.Sprintf(format, args...), keyFP: ssh.FingerprintSHA256(key)}
		if cert, ok := key.(*ssh.Certificate); ok {
			e.serial, e.keyID = cert.Serial, cert.KeyId
			e.keyFP = ssh.FingerprintSHA256(cert.Key)
		}
		return e
	}
	// root and forbidden names are refused before anything about the key
	// is looked at.
	if c.authority.Policy().Forbidden(user) {
		return nil, &authError{reason: ReasonForbiddenUser, detail: fmt.Sprintf("login as %q is never allowed", user)}
	}
	if user == LoginUser {
		return c.loginKey(key, c.login, c.now())
	}
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, fail(ReasonNotACertificate, "plain public keys are not accepted; log in to get a certificate")
	}
	if cert.CertType != ssh.UserCert {
		return nil, fail(ReasonNotUserCertificate, "a host certificate cannot log in")
	}
	// Compare CA keys by marshalled bytes; a certificate posing as a CA
	// key is never trusted (IsTrusted refuses it).
	if !c.authority.IsTrusted(ca.UserCA, cert.SignatureKey) {
		return nil, fail(ReasonUnknownAuthority, "certificate signed by %s, which is not a trusted user CA", ssh.FingerprintSHA256(cert.SignatureKey))
	}
	// x/crypto treats an empty principal list as "any user".
	if len(cert.ValidPrincipals) == 0 {
		return nil, fail(ReasonNoPrincipals, "certificate has no principals")
	}
	now := c.now()
	if after := int64(cert.ValidAfter); after < 0 || now.Unix() < after {
		return nil, fail(ReasonNotYetValid, "certificate is valid from %s", time.Unix(after, 0).UTC().Format(time.RFC3339))
	}
	if before := int64(cert.ValidBefore); cert.ValidBefore != ssh.CertTimeInfinity && (before < 0 || now.Unix() >= before) {
		return nil, fail(ReasonExpired, "certificate expired at %s", time.Unix(before, 0).UTC().Format(time.RFC3339))
	}
	if !slices.Contains(cert.ValidPrincipals, user) {
		return nil, fail(ReasonPrincipalMismatch, "certificate principals %q do not include %q", cert.ValidPrincipals, user)
	}
	for name := range cert.CriticalOptions {
		if !slices.Contains(enforcedCriticalOptions, name) {
			return nil, fail(ReasonUnsupportedCritical, "critical option %q is not enforced by this gateway", name)
		}
	}
	if sa, ok := cert.CriticalOptions["source-address"]; ok {
		if !sourceAllowed(meta.RemoteAddr(), sa) {
			return nil, fail(ReasonSourceAddress, "connection from %s is outside the certificate's source-address %s", meta.RemoteAddr(), sa)
		}
	}
	// CertChecker.Authenticate, not CheckCert alone: it also checks the
	// certificate type, and verifies the CA's signature.
	cc := ssh.CertChecker{
		IsUserAuthority:          func(k ssh.PublicKey) bool { return c.authority.IsTrusted(ca.UserCA, k) },
		Clock:                    c.now,
		SupportedCriticalOptions: enforcedCriticalOptions,
	}
	perms, err := cc.Authenticate(meta, cert)
	if err != nil {
		return nil, fail(ReasonInvalidCertificate, "%v", err)
	}
	if rev, revoked := c.revocations.Check(cert); revoked {
		return nil, fail(ReasonRevoked, "certificate revoked by %s %s", rev.Kind, rev.Value)
	}
	var groups []string
	if g := cert.Extensions[ca.GroupsExtension]; g != "" {
		groups = strings.Split(g, ",")
	}
	id := &Identity{
		User:         user,
		KeyID:        cert.KeyId,
		Serial:       cert.Serial,
		KeyFP:        ssh.FingerprintSHA256(cert.Key),
		CAFP:         ssh.FingerprintSHA256(cert.SignatureKey),
		Principals:   cert.ValidPrincipals,
		Groups:       groups,
		ValidUntil:   time.Unix(int64(cert.ValidBefore), 0).UTC(),
		ForceCommand: cert.CriticalOptions["force-command"],
		PublicKey:    strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert.Key))),
	}
	if lock, locked := c.locks.Find(id); locked {
		return nil, fail(ReasonLocked, "%s is locked: %s", lock.Target, lock.Reason)
	}
	fresh := &ssh.Permissions{CriticalOptions: perms.CriticalOptions, Extensions: map[string]string{}}
	for k, v := range cert.Extensions {
		fresh.Extensions[k] = v
	}
	if err := id.attach(fresh); err != nil {
		return nil, fail(ReasonInvalidCertificate, "%v", err)
	}
	return fresh, nil
}

// sourceAllowed checks addr against a source-address list.
func sourceAllowed(addr net.Addr, list string) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, part := range strings.Split(list, ",") {
		if p, err := netip.ParsePrefix(part); err == nil && p.Contains(ip) {
			return true
		}
		if a, err := netip.ParseAddr(part); err == nil && a.Unmap() == ip {
			return true
		}
	}
	return false
}

// methodReason names a failed non-publickey method.
func methodReason(method string) string {
	switch method {
	case "password":
		return ReasonPasswordAttempt
	case "keyboard-interactive":
		return ReasonKeyboardInteractive
	case "publickey":
		return ReasonBadSignature
	}
	return ReasonUnsupportedMethod
}
