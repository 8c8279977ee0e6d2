package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
)

// includeWhy is the one reason given, in the README and by `bastion login`
// and `bastion dev`, for where the Include line goes.
const includeWhy = "at the top: ssh uses the first value it finds for each option, so lines above the Include would win"

// devKeyStep makes ~/.ssh and an ed25519 key when they are missing and
// leaves existing ones alone.
const devKeyStep = `mkdir -p -m 700 ~/.ssh && { test -f ~/.ssh/id_ed25519 || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; }`

// devCertStep is the OpenSSH-only login: the certificate goes to a new
// file that replaces the old one only when the login succeeded, so a failed
// login does not empty a certificate that is still valid; a failed login
// removes the new file and still fails.
func devCertStep(port, host string) string {
	const cert, next = "~/.ssh/id_ed25519-cert.pub", "~/.ssh/id_ed25519-cert.pub.new"
	return fmt.Sprintf("ssh -p %s login@%s > %s && mv %s %s || { rm -f %s; false; }", port, host, next, next, cert, next)
}

// devKnownHostsStep appends the @cert-authority line(s) for the host CA
// keys to ~/.ssh/known_hosts unless they are there, for the OpenSSH-only
// path, which has no `bastion login` to write them: without them ssh asks
// about the gateway and, in record mode, about each target on first use.
// The pattern names only the demo's hosts (any port), not "*": the dev CA
// is a throwaway whose line outlives it in the user's own known_hosts.
func devKnownHostsStep(hostCAs []gossh.PublicKey, hosts ...string) string {
	var names []string
	for _, h := range hosts {
		if h == "" || slices.Contains(names, h) {
			continue
		}
		names = append(names, h)
	}
	var pattern []string
	for _, h := range names {
		pattern = append(pattern, h, "["+h+"]:*")
	}
	var steps []string
	for _, line := range strings.Split(strings.TrimSpace(ca.ExportLines(ca.HostCA, hostCAs, strings.Join(pattern, ","))), "\n") {
		if line == "" {
			continue
		}
		steps = append(steps, fmt.Sprintf("grep -qsxF '%s' ~/.ssh/known_hosts || echo '%s' >> ~/.ssh/known_hosts", line, line))
	}
	return strings.Join(steps, " && ")
}

// devCLI is how the printed steps run bastion: "bastion" when it is on
// $PATH, else "go run ./cmd/bastion" (what started `bastion dev`, from the
// same directory).
func devCLI() string {
	if _, err := exec.LookPath("bastion"); err == nil {
		return "bastion"
	}
	return "go run ./cmd/bastion"
}

// gatewayFingerprint is the SHA256 fingerprint of the gateway's host key,
// which ssh shows on first contact, or a note saying why there is none.
func gatewayFingerprint(dataDir string) string {
	data, err := os.ReadFile(filepath.Join(dataDir, "gateway", "ssh_host_ed25519_key-cert.pub"))
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey(data)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	if c, ok := k.(*gossh.Certificate); ok {
		k = c.Key
	}
	return gossh.FingerprintSHA256(k)
}

// tempDataDirNote is said at the start of a `bastion dev` without
// --data-dir: its data, the audit log included, goes when it stops.
func tempDataDirNote(dir string) string {
	return fmt.Sprintf("bastion dev: data in the temporary directory %s, deleted (audit log included) when bastion dev stops; pass --data-dir DIR to keep it\n", dir)
}

// removeDevDataDir deletes the temporary data directory of `bastion dev`
// and says so.
func removeDevDataDir(w io.Writer, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintf(w, "bastion dev: could not delete the temporary data directory: %v\n", err)
		return
	}
	fmt.Fprintf(w, "bastion dev: deleted the temporary data directory %s (audit log included); pass --data-dir DIR to keep it\n", dir)
}
