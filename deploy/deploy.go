// Package deploy holds what an operator needs to run bastion in production
// (the Dockerfile's companions: systemd units, Kubernetes manifests, a
// compose demo) and the sshd_config snippet for the hosts behind it. The Go
// code only embeds that snippet, so that `bastion scan --print-sshd-config`
// and the tests use the very file operators install; see README.md.
package deploy

import (
	_ "embed"
	"fmt"
	"slices"
	"strings"
)

//go:embed target/sshd_config.d/bastion.conf
var targetSSHDConfig string

// TargetSSHDConfig returns deploy/target/sshd_config.d/bastion.conf, the
// sshd_config snippet for target hosts.
func TargetSSHDConfig() string { return targetSSHDConfig }

// TargetSSHDConfigWithPaths returns the target snippet with the file
// arguments of the given directives replaced, for example
// {"TrustedUserCAKeys": "/tmp/x/ca.pub"}; keywords match case-insensitively,
// as in sshd. Every other line is kept as it is, so a test of the result
// tests the shipped file. It fails if a keyword is not an active directive
// of the snippet, so that a renamed directive cannot go untested.
func TargetSSHDConfigWithPaths(paths map[string]string) (string, error) {
	lines := strings.SplitAfter(targetSSHDConfig, "\n")
	var done []string
	for i, line := range lines {
		kw, _, ok := Directive(line)
		if !ok {
			continue
		}
		for want, path := range paths {
			if !strings.EqualFold(kw, want) {
				continue
			}
			if strings.ContainsAny(path, " \t\"'#") {
				return "", fmt.Errorf("deploy: path %q for %s needs quoting; use a plain path", path, want)
			}
			lines[i] = kw + " " + path + "\n"
			done = append(done, want)
		}
	}
	for want := range paths {
		if !slices.Contains(done, want) {
			return "", fmt.Errorf("deploy: %s is not an active directive of the target sshd snippet", want)
		}
	}
	return strings.Join(lines, ""), nil
}

// Directive splits an sshd_config line into its keyword and argument. ok is
// false for blank lines and comments.
func Directive(line string) (keyword, arg string, ok bool) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return "", "", false
	}
	keyword, arg, _ = strings.Cut(line, " ")
	if k, a, found := strings.Cut(line, "\t"); found && len(k) < len(keyword) {
		keyword, arg = k, a
	}
	return keyword, strings.TrimSpace(arg), true
}
