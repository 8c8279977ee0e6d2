package ca

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Describe renders a certificate the way `ssh-keygen -L -f name` does, so
// operators see the fields they already know (times in local time).
func Describe(name string, c *ssh.Certificate) string {
	var b strings.Builder
	kind := "user"
	if c.CertType == ssh.HostCert {
		kind = "host"
	}
	fmt.Fprintf(&b, "%s:\n", name)
	fmt.Fprintf(&b, "        Type: %s %s certificate\n", c.Type(), kind)
	fmt.Fprintf(&b, "        Public key: %s-CERT %s\n", keyLabel(c.Key), ssh.FingerprintSHA256(c.Key))
	sigAlg := ""
	if c.Signature != nil {
		sigAlg = c.Signature.Format
	}
	fmt.Fprintf(&b, "        Signing CA: %s %s (using %s)\n", keyLabel(c.SignatureKey), ssh.FingerprintSHA256(c.SignatureKey), sigAlg)
	fmt.Fprintf(&b, "        Key ID: \"%s\"\n", c.KeyId)
	fmt.Fprintf(&b, "        Serial: %d\n", c.Serial)
	fmt.Fprintf(&b, "        Valid: %s\n", formatValidity(c.ValidAfter, c.ValidBefore))
	if len(c.ValidPrincipals) == 0 {
		b.WriteString("        Principals: (none)\n")
	} else {
		b.WriteString("        Principals: \n")
		for _, p := range c.ValidPrincipals {
			fmt.Fprintf(&b, "                %s\n", p)
		}
	}
	writeOptions(&b, "Critical Options", c.CriticalOptions, true)
	writeOptions(&b, "Extensions", c.Extensions, false)
	return b.String()
}

// keyLabel is ssh-keygen's short upper-case key type name.
func keyLabel(k ssh.PublicKey) string {
	if k == nil {
		return "NONE"
	}
	switch k.Type() {
	case ssh.KeyAlgoED25519:
		return "ED25519"
	case ssh.KeyAlgoSKED25519:
		return "ED25519-SK"
	case ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521:
		return "ECDSA"
	case ssh.KeyAlgoSKECDSA256:
		return "ECDSA-SK"
	case ssh.KeyAlgoRSA:
		return "RSA"
	case ssh.KeyAlgoDSA:
		return "DSA"
	}
	return strings.ToUpper(k.Type())
}

// formatValidity follows ssh-keygen's format_validity.
func formatValidity(after, before uint64) string {
	if after == 0 && before == math.MaxUint64 {
		return "forever"
	}
	from, to := "always", "forever"
	if after != 0 {
		from = formatTime(after)
	}
	if before != math.MaxUint64 {
		to = formatTime(before)
	}
	return "from " + from + " to " + to
}

func formatTime(t uint64) string {
	if t > math.MaxInt64 {
		return "forever"
	}
	return time.Unix(int64(t), 0).Format("2006-01-02T15:04:05")
}

// knownFlags are options ssh-keygen prints by name alone.
var knownFlags = map[string]bool{
	"permit-X11-forwarding": true, "permit-agent-forwarding": true, "permit-port-forwarding": true,
	"permit-pty": true, "permit-user-rc": true, "no-touch-required": true, "verify-required": true,
}

func writeOptions(b *strings.Builder, title string, opts map[string]string, critical bool) {
	if len(opts) == 0 {
		fmt.Fprintf(b, "        %s: (none)\n", title)
		return
	}
	fmt.Fprintf(b, "        %s: \n", title)
	names := make([]string, 0, len(opts))
	for n := range opts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v := opts[n]
		switch {
		case knownFlags[n] && v == "":
			fmt.Fprintf(b, "                %s\n", n)
		case critical && (n == "force-command" || n == "source-address"):
			fmt.Fprintf(b, "                %s %s\n", n, v)
		default:
			// ssh-keygen shows an unknown option's raw data: the value
			// as an SSH string (length-prefixed), in hex.
			raw := []byte(nil)
			if v != "" {
				raw = binary.BigEndian.AppendUint32(nil, uint32(len(v)))
				raw = append(raw, v...)
			}
			fmt.Fprintf(b, "                %s UNKNOWN OPTION: %s(len %d)\n", n, hexOrEmpty(raw), len(raw))
		}
	}
}

func hexOrEmpty(raw []byte) string {
	if len(raw) == 0 {
		return ""
	}
	return hex.EncodeToString(raw) + " "
}
