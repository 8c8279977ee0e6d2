package ca

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// GroupsExtension is the certificate extension that carries the holder's
// groups (comma-separated) for the gateway's access rules. OpenSSH ignores
// extensions it does not know, so target hosts are unaffected.
const GroupsExtension = "groups@bastion"

// Default extensions of a user certificate. X11 forwarding and user rc
// files are left off; `-O permit-X11-forwarding` / `permit-user-rc` turn
// them on explicitly.
var defaultUserExtensions = []string{"permit-pty", "permit-port-forwarding", "permit-agent-forwarding"}

// Request asks the Authority for a certificate.
type Request struct {
	// Kind is UserCA for a user certificate, HostCA for a host certificate.
	Kind Kind
	// Key is the subject's public key (never a certificate).
	Key ssh.PublicKey
	// KeyID is the certificate's key id; default: the first principal.
	KeyID string
	// Principals are the user names or host names the certificate is for.
	Principals []string
	// Groups go into the groups extension (user certificates only).
	Groups []string
	// Validity is the requested window; zero means the policy default.
	Validity Validity
	// Serial is the requested serial; 0 means a random non-zero one.
	Serial uint64
	// Options are ssh-keygen -O words: force-command=CMD,
	// source-address=CIDR[,CIDR], no-pty, no-port-forwarding,
	// no-agent-forwarding, no-x11-forwarding, no-user-rc,
	// permit-X11-forwarding, permit-user-rc, permit-pty,
	// permit-port-forwarding, permit-agent-forwarding, clear.
	Options []string
	// Requester says who asked (an operator's OS user, an IdP subject);
	// it becomes the audit record's actor.
	Requester string
	// Via says which path asked: "cli", "login", "gateway".
	Via string
	// Purpose says what the certificate is for when it is not a person's
	// or a host's own: "session" for the per-session certificates the
	// gateway mints in record mode. It lands in the audit record as
	// "purpose".
	Purpose string
}

// signing is the state the pipeline steps share.
type signing struct {
	req  Request
	now  time.Time
	cert *ssh.Certificate
}

// step is one stage of the signing pipeline.
type step func(a *Authority, s *signing) error

// pipeline is the fixed order every certificate passes through:
// key checks → template → request options → policy defaults → validators.
// Signing and the audit record follow in Sign.
var pipeline = []step{
	stepCheckKey,
	stepCheckPrincipals,
	stepCheckKeyID,
	stepCheckState,
	stepTemplate,
	stepRequestOptions,
	stepGroups,
	stepPolicyDefaults,
	stepValidateWindow,
	stepValidateOptions,
}

// Sign runs req through the signing pipeline, signs the certificate and
// records cert.issued; a refusal is recorded as cert.refused and returned
// as a *RefusedError. The certificate is returned only once its audit
// record is durable.
func (a *Authority) Sign(ctx context.Context, req Request) (*ssh.Certificate, error) {
	if req.Kind != UserCA && req.Kind != HostCA {
		return nil, fmt.Errorf("ca: request kind must be %q or %q", UserCA, HostCA)
	}
	s := &signing{req: req, now: a.now()}
	for _, st := range pipeline {
		if err := st(a, s); err != nil {
			a.recordRefusal(ctx, req, err)
			return nil, err
		}
	}
	signer := a.signer(req.Kind)
	if err := s.cert.SignCert(a.rand, signer); err != nil {
		return nil, fmt.Errorf("ca: sign: %w", err)
	}
	if _, err := a.rec.Append(ctx, issuedEvent(req, s.cert)); err != nil {
		return nil, fmt.Errorf("ca: the certificate was not issued because its audit record could not be written: %w", err)
	}
	return s.cert, nil
}

func stepCheckKey(a *Authority, s *signing) error { return a.policy.checkSubjectKey(s.req.Key) }

func stepCheckPrincipals(a *Authority, s *signing) error {
	return a.policy.checkPrincipals(s.req.Kind, s.req.Principals)
}

func stepCheckKeyID(_ *Authority, s *signing) error {
	id := s.req.KeyID
	if len(id) > 256 {
		return refuse(RuleKeyID, "key id is %d bytes; at most 256", len(id))
	}
	for _, r := range id {
		if r < ' ' || r == 0x7f {
			return refuse(RuleKeyID, "key id contains the control character %q", r)
		}
	}
	return nil
}

// stepCheckState refuses a key or key id that is revoked, or an identity
// that is locked: whoever asks, the CA never issues a credential the
// gateway would refuse.
func stepCheckState(a *Authority, s *signing) error {
	keyID := s.req.KeyID
	if keyID == "" && len(s.req.Principals) > 0 {
		keyID = s.req.Principals[0]
	}
	sub := Subject{Principals: s.req.Principals, KeyID: keyID, KeyFP: ssh.FingerprintSHA256(s.req.Key)}
	if err := a.state.Check(sub); err != nil {
		be := err.(*BarredError)
		rule := RuleRevoked
		if be.Reason == BarredLocked {
			rule = RuleLocked
		}
		return refuse(rule, "%s", be.Detail)
	}
	return nil
}

// stepTemplate builds the certificate from the request and the policy's
// default validity.
func stepTemplate(a *Authority, s *signing) error {
	serial := s.req.Serial
	if serial == 0 {
		var err error
		if serial, err = randomSerial(a.rand); err != nil {
			return err
		}
	}
	keyID := s.req.KeyID
	if keyID == "" {
		keyID = s.req.Principals[0]
	}
	v := s.req.Validity
	if v.IsZero() {
		d := a.policy.UserDefaultValidity
		if s.req.Kind == HostCA {
			d = a.policy.HostDefaultValidity
		}
		v = Validity{To: d, set: true}
	}
	from, to := v.window(s.now)
	if v.AbsFrom.IsZero() && v.From == 0 {
		from = from.Add(-a.policy.ClockSkew)
	}
	if from.Before(time.Unix(0, 0)) || to.Before(time.Unix(0, 0)) {
		return refuse(RuleValidity, "validity window starts or ends before 1970")
	}
	certType := uint32(ssh.UserCert)
	var exts map[string]string
	if s.req.Kind == HostCA {
		certType = ssh.HostCert
	} else {
		exts = map[string]string{}
		for _, e := range defaultUserExtensions {
			exts[e] = ""
		}
	}
	s.cert = &ssh.Certificate{
		Key:             s.req.Key,
		Serial:          serial,
		CertType:        certType,
		KeyId:           keyID,
		ValidPrincipals: dedupe(s.req.Principals),
		ValidAfter:      uint64(from.Unix()),
		ValidBefore:     uint64(to.Unix()),
		Permissions: ssh.Permissions{
			CriticalOptions: map[string]string{},
			Extensions:      exts,
		},
	}
	return nil
}

// stepRequestOptions applies ssh-keygen -O words.
func stepRequestOptions(_ *Authority, s *signing) error {
	if len(s.req.Options) > 0 && s.req.Kind == HostCA {
		return refuse(RuleOption, "host certificates take no -O options (got %q)", s.req.Options)
	}
	p := &s.cert.Permissions
	for _, o := range s.req.Options {
		name, value, hasValue := strings.Cut(o, "=")
		switch strings.ToLower(name) {
		case "clear":
			clear(p.Extensions)
		case "force-command":
			if !hasValue || value == "" {
				return refuse(RuleOption, "force-command needs a command: -O force-command=/usr/bin/true")
			}
			p.CriticalOptions["force-command"] = value
		case "source-address":
			if err := checkSourceAddress(value); err != nil {
				return refuse(RuleOption, "source-address: %v", err)
			}
			p.CriticalOptions["source-address"] = value
		case "no-pty":
			delete(p.Extensions, "permit-pty")
		case "no-port-forwarding":
			delete(p.Extensions, "permit-port-forwarding")
		case "no-agent-forwarding":
			delete(p.Extensions, "permit-agent-forwarding")
		case "no-x11-forwarding":
			delete(p.Extensions, "permit-X11-forwarding")
		case "no-user-rc":
			delete(p.Extensions, "permit-user-rc")
		case "permit-pty", "permit-port-forwarding", "permit-agent-forwarding", "permit-user-rc":
			p.Extensions[strings.ToLower(name)] = ""
		case "permit-x11-forwarding":
			p.Extensions["permit-X11-forwarding"] = ""
		default:
			return refuse(RuleOption, "unknown option %q; known: force-command=, source-address=, no-pty, no-port-forwarding, no-agent-forwarding, no-x11-forwarding, no-user-rc, permit-*, clear", o)
		}
	}
	return nil
}

// stepGroups puts the groups extension on user certificates.
func stepGroups(_ *Authority, s *signing) error {
	if len(s.req.Groups) == 0 {
		return nil
	}
	if s.req.Kind == HostCA {
		return refuse(RuleGroup, "host certificates carry no groups")
	}
	for _, g := range s.req.Groups {
		if err := ValidateGroup(g); err != nil {
			return refuse(RuleGroup, "%v", err)
		}
	}
	s.cert.Permissions.Extensions[GroupsExtension] = strings.Join(dedupe(s.req.Groups), ",")
	return nil
}

// stepPolicyDefaults applies the policy's forced options last, so no
// request can remove or loosen them.
func stepPolicyDefaults(a *Authority, s *signing) error {
	if s.req.Kind != UserCA {
		return nil
	}
	if a.policy.ForceCommand != "" {
		s.cert.Permissions.CriticalOptions["force-command"] = a.policy.ForceCommand
	}
	if a.policy.SourceAddress != "" {
		s.cert.Permissions.CriticalOptions["source-address"] = a.policy.SourceAddress
	}
	return nil
}

// stepValidateWindow enforces the validity cap on the finished template.
func stepValidateWindow(a *Authority, s *signing) error {
	from := CertTime(s.cert.ValidAfter)
	to := CertTime(s.cert.ValidBefore)
	if !to.After(from) {
		return refuse(RuleValidity, "validity ends (%s) before it starts (%s)", to.UTC().Format(time.RFC3339), from.UTC().Format(time.RFC3339))
	}
	if !to.After(s.now) {
		return refuse(RuleValidity, "validity ended already (%s)", to.UTC().Format(time.RFC3339))
	}
	limit := a.policy.UserMaxValidity
	if s.req.Kind == HostCA {
		limit = a.policy.HostMaxValidity
	}
	// The cap counts from the later of now and the start, plus the
	// backdating the policy itself adds.
	start := from
	if s.now.After(start) {
		start = s.now
	}
	if to.Sub(start) > limit+time.Second || to.Sub(from) > limit+a.policy.ClockSkew+time.Second {
		// Certificate times are whole seconds: measure from now's second,
		// so -V 48h is reported as 48h0m0s, not 47h59m59s.
		return refuse(RuleValidityTooLong, "requested validity %s exceeds the %s certificate maximum of %s", to.Sub(start.Truncate(time.Second)), s.req.Kind, limit)
	}
	return nil
}

// stepValidateOptions checks the final critical options: only those the
// gateway and sshd both enforce are ever signed.
func stepValidateOptions(_ *Authority, s *signing) error {
	for name, value := range s.cert.Permissions.CriticalOptions {
		switch name {
		case "force-command":
			if value == "" {
				return refuse(RuleOption, "force-command is empty")
			}
		case "source-address":
			if err := checkSourceAddress(value); err != nil {
				return refuse(RuleOption, "source-address: %v", err)
			}
		default:
			return refuse(RuleOption, "critical option %q is not supported", name)
		}
	}
	return nil
}

// randomSerial returns a uniformly random non-zero serial, so that
// serial-based revocation can name any certificate.
func randomSerial(r io.Reader) (uint64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, fmt.Errorf("ca: read random serial: %w", err)
		}
		if s := binary.BigEndian.Uint64(b[:]); s != 0 {
			return s, nil
		}
	}
}

func dedupe(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// issuedEvent is the audit record of a signed certificate. It holds only
// public facts: no key material beyond fingerprints.
func issuedEvent(req Request, c *ssh.Certificate) audit.Event {
	f := CertFields(c)
	f["via"] = req.Via
	if req.Purpose != "" {
		f["purpose"] = req.Purpose
	}
	return audit.Event{Type: audit.TypeCertIssued, Actor: actorOf(req), Fields: f}
}

// CertFields are the audit fields that describe a certificate.
func CertFields(c *ssh.Certificate) map[string]string {
	kind := "user"
	if c.CertType == ssh.HostCert {
		kind = "host"
	}
	f := map[string]string{
		"cert_type":    kind,
		"serial":       strconv.FormatUint(c.Serial, 10),
		"key_id":       c.KeyId,
		"principals":   strings.Join(c.ValidPrincipals, ","),
		"valid_after":  FormatCertTime(c.ValidAfter),
		"valid_before": FormatCertTime(c.ValidBefore),
		"key_fp":       ssh.FingerprintSHA256(c.Key),
	}
	if c.SignatureKey != nil {
		f["ca_fp"] = ssh.FingerprintSHA256(c.SignatureKey)
	}
	if g, ok := c.Permissions.Extensions[GroupsExtension]; ok {
		f["groups"] = g
	}
	if fc, ok := c.Permissions.CriticalOptions["force-command"]; ok {
		f["force_command"] = fc
	}
	if sa, ok := c.Permissions.CriticalOptions["source-address"]; ok {
		f["source_address"] = sa
	}
	return f
}

func (a *Authority) recordRefusal(ctx context.Context, req Request, err error) {
	f := map[string]string{
		"cert_type":  string(req.Kind),
		"principals": strings.Join(req.Principals, ","),
		"key_id":     req.KeyID,
		"via":        req.Via,
		"reason":     err.Error(),
	}
	if re, ok := err.(*RefusedError); ok {
		f["rule"] = re.Rule
	}
	if req.Key != nil {
		f["key_fp"] = ssh.FingerprintSHA256(req.Key)
	}
	// A refusal signs nothing, so a failure to record it is not fatal to
	// the caller, who already gets an error.
	_, _ = a.rec.Append(ctx, audit.Event{Type: audit.TypeCertRefused, Actor: actorOf(req), Fields: f})
}

func actorOf(req Request) string {
	if req.Requester != "" {
		return req.Requester
	}
	return "unknown"
}
