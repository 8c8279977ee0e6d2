package scan

import (
	"fmt"
	"slices"
	"strings"
)

// algoClass is a category of negotiated algorithm.
type algoClass struct {
	code    string // finding code
	name    string // what an operator calls it
	keyword string // the sshd_config keyword that lists it
}

var (
	classKex     = algoClass{CodeWeakKex, "key exchange", "KexAlgorithms"}
	classHostKey = algoClass{CodeWeakHostKey, "host key algorithm", "HostKeyAlgorithms (and the HostKey files)"}
	classCipher  = algoClass{CodeWeakCipher, "cipher", "Ciphers"}
	classMAC     = algoClass{CodeWeakMAC, "MAC", "MACs"}
)

// Pseudo-algorithms that advertise protocol extensions; they are not
// algorithms and never weak.
const (
	extInfoServer   = "ext-info-s"
	strictKexServer = "kex-strict-s-v00@openssh.com"
)

// judgeAlgorithm rates one algorithm name the way ssh-audit does, within
// the project's rule: SHA-1, MD5, CBC, RC4, DES and DSA fail; NIST curves,
// encrypt-and-MAC and 64-bit tags warn (ssh-audit 2.5 fails the NIST
// curves, but they are not broken, so bastion reports them without failing
// the target). It returns "" for an algorithm it has nothing against,
// including names it does not know (newer than this table, such as
// mlkem768x25519-sha256).
func judgeAlgorithm(c algoClass, name string) (severity, why string) {
	switch c {
	case classKex:
		switch {
		case name == extInfoServer || name == "ext-info-c" || strings.HasPrefix(name, "kex-strict-"):
			return "", ""
		case strings.Contains(name, "sha1"):
			return SeverityFail, "uses SHA-1"
		case strings.HasPrefix(name, "ecdh-sha2-nistp"), strings.HasPrefix(name, "gss-nistp"):
			return SeverityWarn, "uses a NIST P-curve"
		}
	case classHostKey:
		switch {
		case strings.Contains(name, "dss"):
			return SeverityFail, "is DSA (1024-bit, SHA-1)"
		case name == "ssh-rsa", name == "ssh-rsa-cert-v01@openssh.com", strings.HasPrefix(name, "x509v3-"):
			return SeverityFail, "signs with SHA-1"
		case strings.Contains(name, "ecdsa-sha2-nistp"):
			return SeverityWarn, "uses a NIST P-curve"
		}
	case classCipher:
		switch {
		case name == "none":
			return SeverityFail, "does not encrypt"
		case strings.HasSuffix(name, "-cbc"), strings.Contains(name, "-cbc@"),
			strings.HasPrefix(name, "3des"), strings.HasPrefix(name, "des"),
			strings.HasPrefix(name, "arcfour"), strings.HasPrefix(name, "rc4"),
			strings.HasPrefix(name, "blowfish"), strings.HasPrefix(name, "cast128"),
			strings.HasPrefix(name, "idea"):
			return SeverityFail, "is a broken or CBC-mode cipher"
		}
	case classMAC:
		var fail, warn []string
		switch {
		case name == "none":
			fail = append(fail, "does not authenticate")
		case strings.Contains(name, "md5"):
			fail = append(fail, "uses MD5")
		case strings.Contains(name, "sha1"):
			fail = append(fail, "uses SHA-1")
		case strings.Contains(name, "ripemd160"):
			fail = append(fail, "uses RIPEMD-160, removed from OpenSSH")
		}
		if strings.HasPrefix(name, "umac-64") {
			warn = append(warn, "has a 64-bit tag")
		}
		if name != "none" && !strings.HasSuffix(name, "-etm@openssh.com") {
			warn = append(warn, "is encrypt-and-MAC, not encrypt-then-MAC")
		}
		switch {
		case len(fail) > 0:
			return SeverityFail, strings.Join(append(fail, warn...), " and ")
		case len(warn) > 0:
			return SeverityWarn, strings.Join(warn, " and ")
		}
	}
	return "", ""
}

// judgeKexInit rates every algorithm the server offers in either direction.
// It returns the weak names (each once, in the server's order) and one
// finding per weak algorithm.
func judgeKexInit(k kexInit) (weak []string, findings []Finding) {
	groups := []struct {
		class algoClass
		names []string
	}{
		{classKex, k.KexAlgos},
		{classHostKey, k.HostKeyAlgos},
		{classCipher, union(k.CiphersClientServer, k.CiphersServerClient)},
		{classMAC, union(k.MACsClientServer, k.MACsServerClient)},
	}
	for _, g := range groups {
		for _, name := range g.names {
			sev, why := judgeAlgorithm(g.class, name)
			if sev == "" || slices.Contains(weak, name) {
				continue
			}
			weak = append(weak, name)
			findings = append(findings, Finding{
				Severity: sev,
				Code:     g.class.code,
				Message:  fmt.Sprintf("%s %s %s; remove it from %s", g.class.name, name, why, g.class.keyword),
			})
		}
	}
	if f, ok := judgeTerrapin(k); ok {
		findings = append(findings, f)
	}
	return weak, findings
}

// judgeTerrapin reports CVE-2023-48795: a server that offers
// chacha20-poly1305 or an encrypt-then-MAC MAC with a CBC cipher, without
// strict key exchange, lets an attacker drop packets at the start of the
// session.
func judgeTerrapin(k kexInit) (Finding, bool) {
	if slices.Contains(k.KexAlgos, strictKexServer) {
		return Finding{}, false
	}
	ciphers := union(k.CiphersClientServer, k.CiphersServerClient)
	macs := union(k.MACsClientServer, k.MACsServerClient)
	chacha := slices.Contains(ciphers, "chacha20-poly1305@openssh.com")
	cbcEtM := slices.ContainsFunc(ciphers, func(c string) bool { return strings.Contains(c, "-cbc") }) &&
		slices.ContainsFunc(macs, func(m string) bool { return strings.HasSuffix(m, "-etm@openssh.com") })
	if !chacha && !cbcEtM {
		return Finding{}, false
	}
	return Finding{
		Severity: SeverityWarn,
		Code:     CodeTerrapin,
		Message:  "no strict key exchange (" + strictKexServer + ") with chacha20-poly1305 or CBC+EtM: open to the Terrapin attack (CVE-2023-48795); upgrade OpenSSH to 9.6 or a patched build",
	}, true
}

// union returns a's names followed by those of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}
