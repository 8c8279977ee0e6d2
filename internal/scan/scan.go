package scan

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Severities of a Finding. A Result passes when none of its findings is
// SeverityFail.
const (
	SeverityFail = "FAIL"
	SeverityWarn = "WARN"
	SeverityInfo = "INFO"
)

// Finding codes. They are stable and machine-readable: the gateway puts them
// in audit reasons, and scripts match on them in `bastion scan --json`.
const (
	// CodePasswordAuth: the server offers "password" (FAIL).
	CodePasswordAuth = "password_auth"
	// CodeKbdInteractiveAuth: the server offers "keyboard-interactive",
	// which is how PAM asks for passwords (FAIL).
	CodeKbdInteractiveAuth = "kbd_interactive_auth"
	// CodeNoneAuth: the server let the probe in without any credential
	// (FAIL).
	CodeNoneAuth = "none_auth"
	// CodeNoPublickeyAuth: the server does not offer "publickey", so the
	// gateway's certificates cannot log in (WARN).
	CodeNoPublickeyAuth = "no_publickey_auth"
	// CodeNoHostCert: the server presents a plain host key, no certificate
	// (WARN).
	CodeNoHostCert = "no_host_cert"
	// CodeForeignHostCert: the host certificate was not signed by any of
	// Options.HostCAs (WARN).
	CodeForeignHostCert = "foreign_host_cert"
	// CodeHostCertInvalid: the host certificate is not a host certificate,
	// is outside its validity window, has no principals, or its signature
	// does not verify (WARN).
	CodeHostCertInvalid = "host_cert_invalid"
	// CodeHostCertPrincipal: the target's host name is not among the host
	// certificate's principals, so clients checking it would refuse (WARN).
	CodeHostCertPrincipal = "host_cert_principal"
	// CodeHostCertUnchecked: a host certificate was presented but no host
	// CA was given to check it against (INFO).
	CodeHostCertUnchecked = "host_cert_unchecked"
	// CodeWeakKex, CodeWeakHostKey, CodeWeakCipher and CodeWeakMAC: the
	// server offers an algorithm that ssh-audit fails (FAIL) or warns
	// about (WARN).
	CodeWeakKex     = "weak_kex"
	CodeWeakHostKey = "weak_host_key"
	CodeWeakCipher  = "weak_cipher"
	CodeWeakMAC     = "weak_mac"
	// CodeTerrapin: no strict key exchange while offering the algorithms
	// CVE-2023-48795 attacks (WARN).
	CodeTerrapin = "terrapin"
	// CodeProbeFailed: the scan could not complete; Result.Err says why
	// (FAIL: an unchecked target is not a hardened one).
	CodeProbeFailed = "probe_failed"
)

// Defaults for Options.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultConcurrency = 16
	DefaultUser        = "bastion-scan"
	// DefaultPort is used when a target names no port.
	DefaultPort = 22
)

// Options configure a scan. The zero value is usable.
type Options struct {
	// HostCAs are the host CA public keys a host certificate should be
	// signed by (bastion's host CA: ca.Layout.TrustedKeys(ca.HostCA)).
	// Without them, a certificate is reported but not attributed.
	HostCAs []ssh.PublicKey
	// Timeout bounds one target's whole probe (default DefaultTimeout).
	Timeout time.Duration
	// Concurrency bounds how many targets ScanAll probes at once (default
	// DefaultConcurrency).
	Concurrency int
	// User is the login name sent with the "none" method (default
	// DefaultUser). Only the server's list of methods is read; no
	// credential is ever sent. Set it to probe a login that a Match block
	// treats differently.
	User string
	// Now is the clock for host certificate validity (default time.Now).
	Now func() time.Time
	// Dial opens the TCP connection (default: a net.Dialer). The gateway
	// passes its own, so that the probe reaches the same address a jump
	// would.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// withDefaults fills in the zero fields of o.
func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.User == "" {
		o.User = DefaultUser
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	return o
}

// Result is what a scan learned about one target.
type Result struct {
	// Target is the target as given; Addr is the host:port dialled.
	Target string `json:"target"`
	Addr   string `json:"addr"`
	// Version is the server's identification string, e.g.
	// "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3".
	Version string `json:"version"`
	// AuthMethods are the methods the server advertises in reply to the
	// "none" method, in its order.
	AuthMethods []string `json:"auth_methods"`
	// HostCert reports that the server presented a host certificate when
	// asked for one; HostCertFromOurCA that the certificate is a valid host
	// certificate signed by one of Options.HostCAs.
	HostCert           bool     `json:"host_cert"`
	HostCertFromOurCA  bool     `json:"host_cert_from_our_ca"`
	HostCertPrincipals []string `json:"host_cert_principals,omitempty"`
	// HostKeyFingerprint is the SHA256 fingerprint of the host key (the
	// key inside the certificate, if one was presented).
	HostKeyFingerprint string `json:"host_key_fingerprint,omitempty"`
	// HostKeyAlgos is the server's list of host key algorithms.
	HostKeyAlgos []string `json:"host_key_algos"`
	// WeakAlgorithms are the key exchange, host key, cipher and MAC
	// algorithms the server offers that ssh-audit fails or warns about.
	WeakAlgorithms []string `json:"weak_algorithms"`
	// Findings explain every problem, most severe first.
	Findings []Finding `json:"findings"`
	// Pass is true when the probe completed and no finding is a FAIL.
	Pass bool `json:"pass"`
	// Err says why the probe could not complete; empty on success.
	Err string `json:"error,omitempty"`
}

// Finding is one observation about a target.
type Finding struct {
	// Severity is SeverityFail, SeverityWarn or SeverityInfo.
	Severity string `json:"severity"`
	// Code is one of the Code constants.
	Code string `json:"code"`
	// Message says what is wrong and how to fix it.
	Message string `json:"message"`
}

// Failures returns r's FAIL findings, for audit reasons and error messages.
func (r Result) Failures() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity == SeverityFail {
			out = append(out, f)
		}
	}
	return out
}

// HasFinding reports whether r has a finding with the given code.
func (r Result) HasFinding(code string) bool {
	for _, f := range r.Findings {
		if f.Code == code {
			return true
		}
	}
	return false
}

// Scan probes one target, "host", "host:port" or "[v6addr]:port" (port 22
// by default), within opts.Timeout. It never returns an error: a target
// that cannot be probed gets Result.Err and a probe_failed finding, and does
// not pass.
func Scan(ctx context.Context, target string, opts Options) Result {
	opts = opts.withDefaults()
	res := Result{Target: target}
	addr, err := NormalizeTarget(target)
	if err != nil {
		return finish(res, err)
	}
	res.Addr = addr
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	err = probe(ctx, addr, opts, &res)
	return finish(res, err)
}

// finish records err, orders the findings and decides Pass.
func finish(res Result, err error) Result {
	if err != nil {
		res.Err = err.Error()
		res.Findings = append(res.Findings, Finding{Severity: SeverityFail, Code: CodeProbeFailed, Message: res.Err})
	}
	slices.SortStableFunc(res.Findings, func(a, b Finding) int { return severityRank(a.Severity) - severityRank(b.Severity) })
	res.Pass = res.Err == "" && len(res.Failures()) == 0
	if res.AuthMethods == nil {
		res.AuthMethods = []string{}
	}
	if res.HostKeyAlgos == nil {
		res.HostKeyAlgos = []string{}
	}
	if res.WeakAlgorithms == nil {
		res.WeakAlgorithms = []string{}
	}
	if res.Findings == nil {
		res.Findings = []Finding{}
	}
	return res
}

// severityRank orders severities most severe first.
func severityRank(s string) int {
	switch s {
	case SeverityFail:
		return 0
	case SeverityWarn:
		return 1
	}
	return 2
}

// ScanAll scans every target, at most opts.Concurrency at a time, and
// returns the results in the order of targets.
func ScanAll(ctx context.Context, targets []string, opts Options) []Result {
	opts = opts.withDefaults()
	results := make([]Result, len(targets))
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results[i] = finish(Result{Target: t}, fmt.Errorf("scan: %s not probed: %w", t, ctx.Err()))
				return
			}
			defer func() { <-sem }()
			results[i] = Scan(ctx, t, opts)
		}()
	}
	wg.Wait()
	return results
}

// NormalizeTarget turns "host", "host:port", "[v6]:port" or a bare IPv6
// address into "host:port" for dialling, with DefaultPort when no port is
// given.
func NormalizeTarget(target string) (string, error) {
	t := strings.TrimSpace(target)
	if t == "" {
		return "", fmt.Errorf("scan: empty target; give HOST or HOST:PORT")
	}
	if strings.ContainsAny(t, " \t/@") {
		return "", fmt.Errorf("scan: target %q is not HOST[:PORT] (no user@, no URL)", target)
	}
	host, port, err := net.SplitHostPort(t)
	if err != nil {
		// No port: a plain name, an IPv4 address, or an IPv6 address
		// (bracketed or not).
		h := strings.TrimSuffix(strings.TrimPrefix(t, "["), "]")
		if strings.Contains(h, ":") && net.ParseIP(h) == nil {
			return "", fmt.Errorf("scan: target %q is not HOST[:PORT]; write IPv6 addresses as [ADDR]:PORT", target)
		}
		host, port = h, strconv.Itoa(DefaultPort)
	}
	if host == "" {
		return "", fmt.Errorf("scan: target %q has no host", target)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("scan: target %q has port %q; a port is a number from 1 to 65535", target, port)
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), nil
}
