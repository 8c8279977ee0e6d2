package gateway

import (
	"fmt"
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
	// ReasonNoExpiry: a certificate valid forever (ssh-keygen without -V).
	ReasonNoExpiry = "no_expiry"
	// ReasonValidityTooLong: a certificate whose lifetime exceeds what the
	// CA's policy would sign.
	ReasonValidityTooLong = "validity_too_long"
	// ReasonSourceAddressInvalid: a source-address sshd would not parse.
	ReasonSourceAddressInvalid = "source_address_invalid"
	// ReasonForwardingNotPermitted: a jump or forward with a certificate
	// that lacks permit-port-forwarding.
	ReasonForwardingNotPermitted = "port_forwarding_not_permitted"
	// ReasonForceCommand: a jump with a force-command certificate.
	ReasonForceCommand = "force_command"
	// ReasonPTYNotPermitted: a pty request with a certificate that lacks
	// permit-pty.
	ReasonPTYNotPermitted = "pty_not_permitted"
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
	authority *ca.Authority
	state     *ca.State
	login     *LoginConfig
	now       func() time.Time
}

// verifyKey decides whether key may authenticate as meta.User(). It is
// called by x/crypto for every key a client offers, proven or not; it
// keeps no state and returns a fresh Permissions carrying the Identity.
// The outer connection and record mode's inner hop both authenticate
// through it.
func (c *checker) verifyKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	user := meta.User()
	// root and forbidden names are refused before anything about the key
	// is looked at.
	if c.authority.Policy().Forbidden(user) {
		return nil, &authError{reason: ReasonForbiddenUser, detail: fmt.Sprintf("login as %q is never allowed", bounded(user))}
	}
	if user == LoginUser {
		return c.loginKey(key, c.login, c.now())
	}
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, &authError{reason: ReasonNotACertificate, detail: "plain public keys are not accepted; log in to get a certificate", keyFP: ssh.FingerprintSHA256(key)}
	}
	id, err := c.checkCert(meta, cert)
	if err != nil {
		return nil, err
	}
	perms := &ssh.Permissions{CriticalOptions: map[string]string{}, Extensions: map[string]string{}}
	for k, v := range cert.CriticalOptions {
		perms.CriticalOptions[k] = v
	}
	for k, v := range cert.Extensions {
		perms.Extensions[k] = v
	}
	if err := id.attach(perms); err != nil {
		return nil, certFail(cert, ReasonInvalidCertificate, "%v", err)
	}
	return perms, nil
}

// certFail is a refused certificate with the facts the audit record needs.
func certFail(cert *ssh.Certificate, reason, format string, args ...any) error {
	return &authError{reason: reason, detail: fmt.Sprintf(format, args...), keyFP: ssh.FingerprintSHA256(cert.Key), serial: cert.Serial, keyID: bounded(cert.KeyId)}
}

// checkCert is the one certificate check: every part of a user
// certificate the gateway relies on, in the order sshd checks them (type,
// CA, principals, validity, critical options, source-address, signature),
// then the revocation state. It returns the identity the certificate
// proves for meta.User() from meta.RemoteAddr().
func (c *checker) checkCert(meta ssh.ConnMetadata, cert *ssh.Certificate) (*Identity, error) {
	user := meta.User()
	if cert.CertType != ssh.UserCert {
		return nil, certFail(cert, ReasonNotUserCertificate, "a host certificate cannot log in")
	}
	// Compare CA keys by marshalled bytes; a certificate posing as a CA
	// key is never trusted (IsTrusted refuses it).
	if !c.authority.IsTrusted(ca.UserCA, cert.SignatureKey) {
		return nil, certFail(cert, ReasonUnknownAuthority, "certificate signed by %s, which is not a trusted user CA", ssh.FingerprintSHA256(cert.SignatureKey))
	}
	// x/crypto treats an empty principal list as "any user".
	if len(cert.ValidPrincipals) == 0 {
		return nil, certFail(cert, ReasonNoPrincipals, "certificate has no principals")
	}
	now := c.now()
	if cert.ValidBefore == ssh.CertTimeInfinity {
		return nil, certFail(cert, ReasonNoExpiry, "certificate never expires (valid_before is forever: ssh-keygen -s without -V, or -V ...:forever); bastion accepts only certificates that expire: sign one with a validity, e.g. -V +8h")
	}
	// A certificate valid for centuries is "forever" by another name: the
	// gateway accepts no longer a lifetime than its CA would sign.
	policy := c.authority.Policy()
	if life, max := ca.CertTime(cert.ValidBefore).Sub(ca.CertTime(cert.ValidAfter)), policy.UserMaxValidity+policy.ClockSkew+time.Minute; life > max {
		return nil, certFail(cert, ReasonValidityTooLong, "certificate is valid for %s; this gateway accepts user certificates of at most %s (ca.user_max_validity %s plus clock skew): sign one with a shorter -V", life.Round(time.Hour), max.Round(time.Minute), policy.UserMaxValidity)
	}
	if unix := now.Unix(); unix < 0 || uint64(unix) < cert.ValidAfter {
		return nil, certFail(cert, ReasonNotYetValid, "certificate is valid from %s", ca.FormatCertTime(cert.ValidAfter))
	}
	if uint64(now.Unix()) >= cert.ValidBefore {
		return nil, certFail(cert, ReasonExpired, "certificate expired at %s", ca.FormatCertTime(cert.ValidBefore))
	}
	if !slices.Contains(cert.ValidPrincipals, user) {
		return nil, certFail(cert, ReasonPrincipalMismatch, "certificate principals %q do not include %q", boundedList(cert.ValidPrincipals), bounded(user))
	}
	for name := range cert.CriticalOptions {
		if !slices.Contains(enforcedCriticalOptions, name) {
			return nil, certFail(cert, ReasonUnsupportedCritical, "critical option %q is not enforced by this gateway", bounded(name))
		}
	}
	if list, ok := cert.CriticalOptions["source-address"]; ok {
		sa, err := ca.ParseSourceAddress(list)
		if err != nil {
			// sshd refuses such a certificate outright; so do we.
			return nil, certFail(cert, ReasonSourceAddressInvalid, "certificate's source-address is invalid: %v", err)
		}
		if !sa.Allows(remoteAddr(meta.RemoteAddr())) {
			return nil, certFail(cert, ReasonSourceAddress, "connection from %s is outside the certificate's source-address %s", remoteAddr(meta.RemoteAddr()), bounded(list))
		}
	}
	// CertChecker.Authenticate, not CheckCert alone: it also checks the
	// certificate type, and verifies the CA's signature.
	cc := ssh.CertChecker{
		IsUserAuthority:          func(k ssh.PublicKey) bool { return c.authority.IsTrusted(ca.UserCA, k) },
		Clock:                    c.now,
		SupportedCriticalOptions: enforcedCriticalOptions,
	}
	if _, err := cc.Authenticate(meta, cert); err != nil {
		return nil, certFail(cert, ReasonInvalidCertificate, "%v", err)
	}
	id := identityOfCert(user, cert)
	if err := c.state.Check(id.subject()); err != nil {
		be := err.(*ca.BarredError)
		return nil, certFail(cert, be.Reason, "certificate %s", be.Detail)
	}
	return id, nil
}

// recheck re-runs, for an identity that has authenticated, every part of
// checkCert that can change after authentication: the CA may be retired,
// the certificate may expire, be revoked or its holder locked. It runs on
// every channel and request, and for every connection whenever the
// revocation state changes. The reserved login identity has no
// certificate; only its expiry applies (the signing pipeline checks locks
// and revocations of what it signs).
func (c *checker) recheck(id *Identity) error {
	if !c.now().Before(id.ValidUntil) {
		return &authError{reason: ReasonExpired, detail: fmt.Sprintf("certificate expired at %s", id.ValidUntil.Format(time.RFC3339))}
	}
	if id.Login {
		return nil
	}
	caKey, err := id.caKey()
	if err != nil || !c.authority.IsTrusted(ca.UserCA, caKey) {
		return &authError{reason: ReasonUnknownAuthority, detail: "the CA that signed the certificate is no longer trusted"}
	}
	if err := c.state.Check(id.subject()); err != nil {
		be := err.(*ca.BarredError)
		return &authError{reason: be.Reason, detail: "certificate " + be.Detail}
	}
	return nil
}

// identityOfCert is the identity a checked certificate proves for user.
func identityOfCert(user string, cert *ssh.Certificate) *Identity {
	var groups []string
	if g := cert.Extensions[ca.GroupsExtension]; g != "" {
		groups = strings.Split(g, ",")
	}
	exts := map[string]string{}
	for k, v := range cert.Extensions {
		if k != ca.GroupsExtension {
			exts[k] = v
		}
	}
	return &Identity{
		User:          user,
		KeyID:         cert.KeyId,
		Serial:        cert.Serial,
		KeyFP:         ssh.FingerprintSHA256(cert.Key),
		CAFP:          ssh.FingerprintSHA256(cert.SignatureKey),
		CAKey:         strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert.SignatureKey))),
		Principals:    cert.ValidPrincipals,
		Groups:        groups,
		ValidUntil:    ca.CertTime(cert.ValidBefore),
		ForceCommand:  cert.CriticalOptions["force-command"],
		SourceAddress: cert.CriticalOptions["source-address"],
		Extensions:    exts,
		PublicKey:     strings.TrimSpace(string(ssh.MarshalAuthorizedKey(cert.Key))),
	}
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
