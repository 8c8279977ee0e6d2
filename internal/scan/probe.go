package scan

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// errProbeDone ends the handshake once the server has listed its
// authentication methods: the probe never tries one.
var errProbeDone = errors.New("scan: probe done")

// clientVersion is the identification string the probe sends; it shows in
// the target's sshd log ("Connection closed by ... [preauth]").
const clientVersion = "SSH-2.0-bastion-scan"

// probe connects to addr once and fills res: the server's identification
// string and KEXINIT (recorded from the bytes x/crypto reads), its host key
// or certificate, and its authentication methods.
func probe(ctx context.Context, addr string, opts Options, res *Result) error {
	conn, err := opts.Dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("scan: connect to %s: %w", addr, err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(d); err != nil {
			return fmt.Errorf("scan: %s: %w", addr, err)
		}
	}
	// Cancellation interrupts a blocked read or write at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	rec := &recordingConn{Conn: conn, limit: maxHelloLen}
	var seen probeState
	cfg := &ssh.ClientConfig{
		User:              opts.User,
		ClientVersion:     clientVersion,
		HostKeyAlgorithms: probeHostKeyAlgorithms(),
		HostKeyCallback:   seen.hostKey,
		AuthCallback:      seen.authMethods,
		Config:            probeAlgorithms(),
	}
	c, chans, reqs, hsErr := ssh.NewClientConn(rec, addr, cfg)
	if hsErr == nil {
		// The server accepted "none": anybody gets in as opts.User.
		go ssh.DiscardRequests(reqs)
		go func() {
			for ch := range chans {
				_ = ch.Reject(ssh.Prohibited, "scan probe")
			}
		}()
		_ = c.Close()
	}

	// What the server sent first is there even when the handshake failed,
	// for example because it offers only algorithms x/crypto refuses.
	ident, kex, helloErr := readServerHello(bufio.NewReader(bytes.NewReader(rec.recorded())))
	res.Version = ident
	if helloErr == nil {
		res.HostKeyAlgos = kex.HostKeyAlgos
		var weakFindings []Finding
		res.WeakAlgorithms, weakFindings = judgeKexInit(kex)
		// Algorithm findings go after those about authentication and the
		// host certificate, which matter more within a severity.
		defer func() { res.Findings = append(res.Findings, weakFindings...) }()
	}

	methods, gotMethods, hostKey := seen.result()
	host, _, _ := net.SplitHostPort(addr)
	judgeHostKey(res, hostKey, kex, host, opts)

	switch {
	case hsErr == nil:
		res.AuthMethods = []string{"none"}
		res.Findings = append(res.Findings, Finding{SeverityFail, CodeNoneAuth,
			fmt.Sprintf("server accepted user %q without any credential (the \"none\" method); check PermitEmptyPasswords and the account's password field", opts.User)})
		return nil
	case gotMethods && errors.Is(hsErr, errProbeDone):
		res.AuthMethods = methods
		judgeAuthMethods(res)
		return nil
	case helloErr != nil && ident == "":
		// Not even an SSH server: the hello error says more than the
		// handshake's.
		return fmt.Errorf("scan: %s: %w", addr, errors.Join(helloErr, hsErr))
	default:
		return fmt.Errorf("scan: %s: %w", addr, hsErr)
	}
}

// probeState collects what x/crypto's callbacks see. The host key callback
// runs on x/crypto's key exchange goroutine, hence the mutex.
type probeState struct {
	mu         sync.Mutex
	key        ssh.PublicKey
	methods    []string
	gotMethods bool
}

// hostKey is the HostKeyCallback: it accepts any key, because the probe
// sends nothing secret, and remembers it.
func (s *probeState) hostKey(_ string, _ net.Addr, key ssh.PublicKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key = key
	return nil
}

// authMethods is the AuthCallback. x/crypto calls it after the "none"
// attempt with the server's list of methods that can continue (RFC 4252
// §5.1); returning an error ends authentication there, before any method
// that could carry a credential is tried.
func (s *probeState) authMethods(actx *ssh.ClientAuthContext) (ssh.AuthMethod, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.methods = slices.Clone(actx.AllowedMethods)
	s.gotMethods = true
	return nil, errProbeDone
}

func (s *probeState) result() ([]string, bool, ssh.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.methods, s.gotMethods, s.key
}

// probeHostKeyAlgorithms lists every host key algorithm x/crypto can check,
// certificate algorithms first, so that a server with a host certificate
// presents it.
func probeHostKeyAlgorithms() []string {
	all := slices.Concat(ssh.SupportedAlgorithms().HostKeys, ssh.InsecureAlgorithms().HostKeys)
	var certs, plain []string
	for _, a := range all {
		if isCertAlgo(a) {
			certs = append(certs, a)
		} else {
			plain = append(plain, a)
		}
	}
	return append(certs, plain...)
}

// probeAlgorithms enables even the insecure algorithms x/crypto implements:
// the probe sends no secret, and a weak server should still have its
// authentication methods reported rather than end in "no common algorithm".
func probeAlgorithms() ssh.Config {
	sup, insec := ssh.SupportedAlgorithms(), ssh.InsecureAlgorithms()
	return ssh.Config{
		KeyExchanges: slices.Concat(sup.KeyExchanges, insec.KeyExchanges),
		Ciphers:      slices.Concat(sup.Ciphers, insec.Ciphers),
		MACs:         slices.Concat(sup.MACs, insec.MACs),
	}
}

func isCertAlgo(name string) bool { return strings.Contains(name, "-cert-v01@") }

// judgeAuthMethods adds a finding for each advertised method that is not
// key-based.
func judgeAuthMethods(res *Result) {
	for _, m := range res.AuthMethods {
		switch m {
		case "password":
			res.Findings = append(res.Findings, Finding{SeverityFail, CodePasswordAuth,
				"server offers password authentication; set PasswordAuthentication no (as the snippet from `bastion scan --print-sshd-config` does)"})
		case "keyboard-interactive":
			res.Findings = append(res.Findings, Finding{SeverityFail, CodeKbdInteractiveAuth,
				"server offers keyboard-interactive authentication, through which PAM asks for passwords; set KbdInteractiveAuthentication no (ChallengeResponseAuthentication no before OpenSSH 8.7)"})
		}
	}
	if !slices.Contains(res.AuthMethods, "publickey") {
		res.Findings = append(res.Findings, Finding{SeverityWarn, CodeNoPublickeyAuth,
			fmt.Sprintf("server offers %v but not publickey, so bastion's certificates cannot log in; set PubkeyAuthentication yes", res.AuthMethods)})
	}
}

// judgeHostKey fills the host certificate fields of res and their findings.
// key is nil when the handshake did not get that far.
func judgeHostKey(res *Result, key ssh.PublicKey, kex kexInit, host string, opts Options) {
	offersCert := slices.ContainsFunc(kex.HostKeyAlgos, isCertAlgo)
	cert, isCert := key.(*ssh.Certificate)
	switch {
	case key == nil && !offersCert:
		return
	case key == nil || !isCert && offersCert:
		// The server lists a certificate type x/crypto cannot verify
		// (DSA, FIDO), or the handshake failed first.
		res.HostCert = true
		res.Findings = append(res.Findings, Finding{SeverityInfo, CodeHostCertUnchecked,
			"server offers a host certificate that the probe could not fetch or check"})
		if key != nil {
			res.HostKeyFingerprint = ssh.FingerprintSHA256(key)
		}
		return
	case !isCert:
		res.HostKeyFingerprint = ssh.FingerprintSHA256(key)
		res.Findings = append(res.Findings, Finding{SeverityWarn, CodeNoHostCert,
			fmt.Sprintf("server presents a plain %s host key, no certificate; sign it with `bastion ca sign --host -n %s` and set HostCertificate", key.Type(), host)})
		return
	}

	res.HostCert = true
	res.HostCertPrincipals = slices.Clone(cert.ValidPrincipals)
	res.HostKeyFingerprint = ssh.FingerprintSHA256(cert.Key)
	problems := certProblems(cert, opts.Now())
	ours := signedByOneOf(cert, opts.HostCAs)
	switch {
	case len(opts.HostCAs) == 0:
		res.Findings = append(res.Findings, Finding{SeverityInfo, CodeHostCertUnchecked,
			fmt.Sprintf("server presents a host certificate signed by %s; no host CA was given to check it against (--host-ca, or DATA_DIR/ca/host_ca.pub)", ssh.FingerprintSHA256(cert.SignatureKey))})
	case !ours:
		res.Findings = append(res.Findings, Finding{SeverityWarn, CodeForeignHostCert,
			fmt.Sprintf("host certificate is signed by %s, not by bastion's host CA; re-sign the host key with `bastion ca sign --host`", ssh.FingerprintSHA256(cert.SignatureKey))})
	}
	if len(problems) > 0 {
		res.Findings = append(res.Findings, Finding{SeverityWarn, CodeHostCertInvalid,
			"host certificate " + strings.Join(problems, ", ") + "; re-sign the host key with `bastion ca sign --host`"})
	}
	res.HostCertFromOurCA = ours && len(problems) == 0
	if host != "" && len(cert.ValidPrincipals) > 0 && !slices.ContainsFunc(cert.ValidPrincipals, func(p string) bool { return strings.EqualFold(p, host) }) {
		res.Findings = append(res.Findings, Finding{SeverityWarn, CodeHostCertPrincipal,
			fmt.Sprintf("host certificate names %v, not %s, so clients connecting to %s refuse it; re-sign with -n including %s", cert.ValidPrincipals, host, host, host)})
	}
}

// certProblems lists what makes cert unusable as a host certificate now.
func certProblems(cert *ssh.Certificate, now time.Time) []string {
	var p []string
	if cert.CertType != ssh.HostCert {
		p = append(p, "is a user certificate, not a host certificate")
	}
	if len(cert.ValidPrincipals) == 0 {
		p = append(p, "has no principals")
	}
	unix := now.Unix()
	if int64(cert.ValidAfter) < 0 || unix < int64(cert.ValidAfter) {
		p = append(p, "is not valid yet")
	}
	if cert.ValidBefore != ssh.CertTimeInfinity && (int64(cert.ValidBefore) < 0 || unix >= int64(cert.ValidBefore)) {
		p = append(p, "has expired")
	}
	if !certSignatureValid(cert) {
		p = append(p, "has a signature that does not verify")
	}
	return p
}

// certSignatureValid verifies the CA's signature over the certificate.
// x/crypto only verifies it inside CertChecker.CheckCert, after principal
// and validity checks the scan reports separately; the signed bytes are the
// certificate without its signature field, as in x/crypto's
// bytesForSigning.
func certSignatureValid(cert *ssh.Certificate) bool {
	if cert.Signature == nil || cert.SignatureKey == nil {
		return false
	}
	if _, isCert := cert.SignatureKey.(*ssh.Certificate); isCert {
		return false
	}
	unsigned := *cert
	unsigned.Signature = nil
	b := unsigned.Marshal()
	return cert.SignatureKey.Verify(b[:len(b)-4], cert.Signature) == nil
}

// signedByOneOf reports whether cert's signing key is one of cas, comparing
// marshalled bytes. A CA "key" that is itself a certificate never matches.
func signedByOneOf(cert *ssh.Certificate, cas []ssh.PublicKey) bool {
	if cert.SignatureKey == nil {
		return false
	}
	signer := cert.SignatureKey.Marshal()
	for _, ca := range cas {
		if _, isCert := ca.(*ssh.Certificate); isCert || ca == nil {
			continue
		}
		if bytes.Equal(ca.Marshal(), signer) {
			return true
		}
	}
	return false
}

// recordingConn keeps a copy of the first limit bytes read from the server,
// so that its identification string and KEXINIT can be parsed after x/crypto
// has consumed them. x/crypto reads on its own goroutine, hence the mutex.
type recordingConn struct {
	net.Conn
	limit int

	mu  sync.Mutex
	buf []byte
}

// Read reads from the connection and records what it read.
func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		if room := c.limit - len(c.buf); room > 0 {
			c.buf = append(c.buf, p[:min(n, room)]...)
		}
		c.mu.Unlock()
	}
	return n, err
}

// recorded returns a copy of the bytes read so far.
func (c *recordingConn) recorded() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.buf)
}
