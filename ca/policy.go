package ca

import (
	"crypto/rsa"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Policy is the signing policy that every certificate passes, whichever
// path asked for it. The zero value is not useful; start from DefaultPolicy.
type Policy struct {
	// ForbiddenPrincipals are never signed, in addition to "root", which
	// is always forbidden and cannot be removed. Matching ignores case.
	ForbiddenPrincipals []string `yaml:"forbidden_principals"`
	// UserDefaultValidity applies when a user request names no validity.
	UserDefaultValidity time.Duration `yaml:"user_default_validity"`
	// UserMaxValidity caps user certificates (from the signing time).
	UserMaxValidity time.Duration `yaml:"user_max_validity"`
	// HostDefaultValidity applies when a host request names no validity.
	HostDefaultValidity time.Duration `yaml:"host_default_validity"`
	// HostMaxValidity caps host certificates.
	HostMaxValidity time.Duration `yaml:"host_max_validity"`
	// ClockSkew is how far valid_after is backdated when a request starts
	// "now", so a certificate works at once on hosts whose clocks lag.
	ClockSkew time.Duration `yaml:"clock_skew"`
	// MinRSABits is the smallest RSA subject key signed.
	MinRSABits int `yaml:"min_rsa_bits"`
	// ForceCommand, when set, is put on every user certificate; a request
	// cannot remove or change it.
	ForceCommand string `yaml:"force_command"`
	// SourceAddress, when set, is put on every user certificate; a request
	// cannot remove or widen it.
	SourceAddress string `yaml:"source_address"`
}

// Defaults of the signing policy.
const (
	DefaultUserValidity    = 8 * time.Hour
	DefaultUserMaxValidity = 24 * time.Hour
	DefaultHostValidity    = 30 * 24 * time.Hour
	DefaultHostMaxValidity = 365 * 24 * time.Hour
	// DefaultClockSkew is five minutes, as Teleport and smallstep use.
	DefaultClockSkew  = 5 * time.Minute
	DefaultMinRSABits = 2048
)

// alwaysForbidden can never be signed, whatever the configuration says.
var alwaysForbidden = []string{"root"}

// DefaultPolicy returns the policy bastion uses unless configured otherwise.
func DefaultPolicy() Policy {
	return Policy{
		UserDefaultValidity: DefaultUserValidity,
		UserMaxValidity:     DefaultUserMaxValidity,
		HostDefaultValidity: DefaultHostValidity,
		HostMaxValidity:     DefaultHostMaxValidity,
		ClockSkew:           DefaultClockSkew,
		MinRSABits:          DefaultMinRSABits,
	}
}

// Validate checks the policy's own values and names the field to fix.
func (p Policy) Validate() error {
	switch {
	case p.UserMaxValidity <= 0:
		return fmt.Errorf("ca: policy: user_max_validity must be positive (default %s)", DefaultUserMaxValidity)
	case p.HostMaxValidity <= 0:
		return fmt.Errorf("ca: policy: host_max_validity must be positive (default %s)", DefaultHostMaxValidity)
	case p.UserDefaultValidity <= 0 || p.UserDefaultValidity > p.UserMaxValidity:
		return fmt.Errorf("ca: policy: user_default_validity must be positive and at most user_max_validity (%s)", p.UserMaxValidity)
	case p.HostDefaultValidity <= 0 || p.HostDefaultValidity > p.HostMaxValidity:
		return fmt.Errorf("ca: policy: host_default_validity must be positive and at most host_max_validity (%s)", p.HostMaxValidity)
	case p.ClockSkew < 0 || p.ClockSkew > time.Hour:
		return fmt.Errorf("ca: policy: clock_skew must be between 0 and 1h (default %s)", DefaultClockSkew)
	case p.MinRSABits < 2048:
		return fmt.Errorf("ca: policy: min_rsa_bits must be at least 2048")
	}
	for _, f := range p.ForbiddenPrincipals {
		if strings.TrimSpace(f) == "" {
			return fmt.Errorf("ca: policy: forbidden_principals has an empty entry")
		}
	}
	if p.SourceAddress != "" {
		if err := checkSourceAddress(p.SourceAddress); err != nil {
			return fmt.Errorf("ca: policy: source_address: %w", err)
		}
	}
	return nil
}

// Forbidden reports whether principal p may never be signed or used.
func (p Policy) Forbidden(principal string) bool {
	for _, f := range slices.Concat(alwaysForbidden, p.ForbiddenPrincipals) {
		if strings.EqualFold(principal, f) {
			return true
		}
	}
	return false
}

// Refusal rules: stable, machine-readable names used in errors and in
// cert.refused audit records.
const (
	RuleKeyType            = "key_type"
	RuleKeyWeak            = "key_weak"
	RulePrincipalsEmpty    = "principals_empty"
	RulePrincipalSyntax    = "principal_syntax"
	RulePrincipalForbidden = "principal_forbidden"
	RuleKeyID              = "key_id_invalid"
	RuleGroup              = "group_invalid"
	RuleSerial             = "serial_invalid"
	RuleOption             = "option_invalid"
	RuleValidity           = "validity_invalid"
	RuleValidityTooLong    = "validity_too_long"
	// RuleLocked and RuleRevoked: the revocation state bars the identity
	// or the key.
	RuleLocked  = "locked"
	RuleRevoked = "revoked"
)

// RefusedError is a request the policy refused. Rule is one of the Rule*
// constants.
type RefusedError struct {
	Rule   string
	Reason string
}

func (e *RefusedError) Error() string { return "ca: refused by rule " + e.Rule + ": " + e.Reason }

func refuse(rule, format string, args ...any) error {
	return &RefusedError{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// checkSubjectKey refuses certificates as subjects, DSA and short RSA keys.
func (p Policy) checkSubjectKey(k ssh.PublicKey) error {
	if k == nil {
		return refuse(RuleKeyType, "no public key to sign")
	}
	if _, ok := k.(*ssh.Certificate); ok {
		return refuse(RuleKeyType, "the key to sign is already a certificate; pass the plain public key (KEY.pub, not KEY-cert.pub)")
	}
	switch k.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoSKED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoSKECDSA256:
		return nil
	case ssh.KeyAlgoRSA:
		ck, ok := k.(ssh.CryptoPublicKey)
		if !ok {
			return refuse(RuleKeyType, "cannot read the RSA key's size")
		}
		rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
		if !ok {
			return refuse(RuleKeyType, "cannot read the RSA key's size")
		}
		if bits := rk.N.BitLen(); bits < p.MinRSABits {
			return refuse(RuleKeyWeak, "RSA key has %d bits; at least %d are required (generate one with ssh-keygen -t ed25519)", bits, p.MinRSABits)
		}
		return nil
	case ssh.KeyAlgoDSA:
		return refuse(RuleKeyWeak, "DSA keys are broken and not signed; generate one with ssh-keygen -t ed25519")
	}
	return refuse(RuleKeyType, "key type %s is not signed; use ed25519, ecdsa or rsa (≥ %d bits)", k.Type(), p.MinRSABits)
}

// checkPrincipals validates syntax and the forbidden list for kind.
func (p Policy) checkPrincipals(kind Kind, principals []string) error {
	if len(principals) == 0 {
		// x/crypto's CheckCert treats an empty list as "any principal"
		// (Vault's CVE-2024-7594): never sign one.
		return refuse(RulePrincipalsEmpty, "no principals given; name at least one with --principals (an empty list would mean any user)")
	}
	for _, pr := range principals {
		if p.Forbidden(pr) {
			return refuse(RulePrincipalForbidden, "principal %q is forbidden and is never signed", pr)
		}
		var err error
		if kind == HostCA {
			err = ValidateHostPrincipal(pr)
		} else {
			err = ValidateUserPrincipal(pr)
		}
		if err != nil {
			return refuse(RulePrincipalSyntax, "%v", err)
		}
	}
	return nil
}

// checkSourceAddress validates a source-address list as sshd does.
func checkSourceAddress(list string) error {
	_, err := ParseSourceAddress(list)
	return err
}
