package sshclient

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
)

// DefaultHostPatterns are the hosts reached through the gateway when
// `bastion login --hosts` is not given.
func DefaultHostPatterns() []string { return []string{"*.internal"} }

// SSHConfig is the ssh config `bastion login` writes: one Host block for
// the gateway itself and one for the hosts reached through it.
type SSHConfig struct {
	// Gateway is the gateway's host:port.
	Gateway string
	// User is the login name on the gateway and the targets (the
	// certificate's first principal).
	User string
	// Hosts are ssh_config Host patterns reached with ProxyJump.
	Hosts []string
	// IdentityFile, CertificateFile and KnownHosts are bastion's files.
	IdentityFile, CertificateFile, KnownHosts string
	// TargetKnownHosts are further known_hosts files for the jumped-to
	// hosts, after KnownHosts: targets without a certificate from the host
	// CA keep working with keys the user already trusts.
	TargetKnownHosts []string
}

var (
	// hostPatternRE is what an ssh_config Host pattern may contain here:
	// no whitespace, quotes, comment signs or % tokens.
	hostPatternRE = regexp.MustCompile(`^!?[A-Za-z0-9._*?:\[\]-]+$`)
	// userRE matches the CA's user principal syntax.
	userRE = regexp.MustCompile(`^[A-Za-z0-9._][A-Za-z0-9._@+-]*$`)
)

// Validate checks every value that goes into the file, so that nothing
// read from the gateway or the command line can add ssh options.
func (c SSHConfig) Validate() error {
	if _, err := NormalizeAddr(c.Gateway); err != nil {
		return err
	}
	if !userRE.MatchString(c.User) {
		return fmt.Errorf("sshclient: user %q cannot go into an ssh config", c.User)
	}
	if err := ValidateHostPatterns(c.Hosts); err != nil {
		return err
	}
	for _, p := range append([]string{c.IdentityFile, c.CertificateFile, c.KnownHosts}, c.TargetKnownHosts...) {
		if p == "" || strings.ContainsAny(p, "\"\r\n") {
			return fmt.Errorf("sshclient: path %q cannot go into an ssh config", p)
		}
	}
	return nil
}

// ValidateHostPatterns checks ssh_config Host patterns for the config.
func ValidateHostPatterns(hosts []string) error {
	if len(hosts) == 0 {
		return errors.New("sshclient: no host patterns: give --hosts, e.g. --hosts '*.internal'")
	}
	for _, h := range hosts {
		if !hostPatternRE.MatchString(h) {
			return fmt.Errorf("sshclient: host pattern %q: use names, addresses and the wildcards * and ?, such as *.internal or 10.0.0.*", h)
		}
	}
	return nil
}

// Render returns the config text.
func (c SSHConfig) Render() (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	gw, _ := NormalizeAddr(c.Gateway)
	host, port, _ := net.SplitHostPort(gw)
	var b strings.Builder
	opt := func(k string, v ...string) { fmt.Fprintf(&b, "  %s %s\n", k, strings.Join(v, " ")) }
	common := func(knownHosts ...string) {
		opt("User", c.User)
		opt("IdentityFile", quotePath(c.IdentityFile))
		opt("CertificateFile", quotePath(c.CertificateFile))
		opt("IdentitiesOnly", "yes")
		opt("UserKnownHostsFile", knownHosts...)
	}
	fmt.Fprintf(&b, "# Written by `bastion login`; rewritten on every login, so edit ~/.ssh/config instead.\n")
	fmt.Fprintf(&b, "# Use it from an Include line at the top of ~/.ssh/config.\n\n")
	fmt.Fprintf(&b, "# The gateway (`ssh -p %s %s` shows who you are and where you may go).\n", port, host)
	fmt.Fprintf(&b, "Host %s\n", host)
	// Connected to directly, never through itself: the first value ssh
	// reads wins, so this stops a host pattern below that also matches
	// the gateway's name (bastion.internal and *.internal) from making
	// the jump loop.
	opt("ProxyJump", "none")
	common(quotePath(c.KnownHosts))
	fmt.Fprintf(&b, "\n# Hosts reached through the gateway.\n")
	fmt.Fprintf(&b, "Host %s\n", strings.Join(c.Hosts, " "))
	opt("ProxyJump", c.User+"@"+gw)
	files := []string{quotePath(c.KnownHosts)}
	for _, f := range c.TargetKnownHosts {
		files = append(files, quotePath(f))
	}
	common(files...)
	return b.String(), nil
}

// WriteConfig renders c and writes it to path (0600; ssh refuses config
// files others can write).
func WriteConfig(path string, c SSHConfig) error {
	text, err := c.Render()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, []byte(text), 0o600)
}

// quotePath quotes a path for ssh_config, where IdentityFile and friends
// also expand %-tokens.
func quotePath(p string) string {
	return `"` + strings.ReplaceAll(p, "%", "%%") + `"`
}
