package scan_test

import (
	"context"
	"github.com/bastion-ssh/bastion/internal/catest"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/scan"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// sshAuditVerdicts runs ssh-audit against addr and returns, for each
// algorithm it rates [fail] or [warn], the notes it gave.
func sshAuditVerdicts(t *testing.T, addr string) map[string][]string {
	t.Helper()
	testbed.RequireCommand(t, "ssh-audit")
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// ssh-audit exits non-zero when it finds problems; its output is
	// what matters.
	out, _ := exec.CommandContext(ctx, "ssh-audit", "-n", "-p", port, host).CombinedOutput()
	head := regexp.MustCompile(`^\((kex|key|enc|mac)\) (\S+)`)
	note := regexp.MustCompile(`\[(fail|warn)\] (.*)$`)
	verdicts := map[string][]string{}
	current := ""
	for _, line := range strings.Split(string(out), "\n") {
		if m := head.FindStringSubmatch(line); m != nil {
			current = m[2]
		} else if !strings.Contains(line, "`- [") {
			current = ""
		}
		if current == "" {
			continue
		}
		if m := note.FindStringSubmatch(line); m != nil {
			verdicts[current] = append(verdicts[current], m[1]+": "+m[2])
		}
	}
	if !strings.Contains(string(out), "(kex)") {
		t.Fatalf("ssh-audit printed no key exchange section:\n%s", out)
	}
	return verdicts
}

// sshAuditOutdated reports whether ssh-audit's only complaint about name
// comes from its age: Debian 12 ships ssh-audit 2.5.0, which does not know
// names newer than itself (the post-quantum sntrup761x25519-sha512 that
// OpenSSH offers first, kex-strict-*, which is not an algorithm but the
// Terrapin fix) or calls them experimental. Current ssh-audit rates them
// good, and so does bastion.
func sshAuditOutdated(name string, notes []string) bool {
	for _, n := range notes {
		if !strings.Contains(n, "unknown algorithm") && !strings.Contains(n, "experimental") {
			return false
		}
	}
	return strings.HasPrefix(name, "sntrup761x25519-sha512") || strings.HasPrefix(name, "kex-strict-")
}

// TestWeakAlgorithmsMatchSSHAudit enables every algorithm Debian's sshd
// still has and checks that the scan flags exactly what ssh-audit fails or
// warns about.
func TestWeakAlgorithmsMatchSSHAudit(t *testing.T) {
	testbed.RequireOpenSSH(t)
	d := testbed.NewSSHD(t, testbed.SSHDConfig{HostKeyType: "rsa"})
	ecdsa := filepath.Join(d.Dir, "ssh_host_ecdsa_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", ecdsa).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	d.Config.Extra = strings.Join([]string{
		"HostKey " + ecdsa,
		"Ciphers +aes128-cbc,aes256-cbc,3des-cbc",
		"MACs +hmac-md5,hmac-sha1-96,hmac-md5-etm@openssh.com",
		"KexAlgorithms +diffie-hellman-group1-sha1,diffie-hellman-group14-sha1,diffie-hellman-group-exchange-sha1",
		"HostKeyAlgorithms +ssh-rsa",
	}, "\n")
	d.Start()

	res := scan.Scan(t.Context(), d.Addr, scan.Options{Timeout: 10 * time.Second})
	if res.Err != "" {
		t.Fatalf("scan: %s", res.Err)
	}
	var audited []string
	for name, notes := range sshAuditVerdicts(t, d.Addr) {
		if !sshAuditOutdated(name, notes) {
			audited = append(audited, name)
		}
	}
	slices.Sort(audited)
	ours := slices.Sorted(slices.Values(res.WeakAlgorithms))
	if !slices.Equal(ours, audited) {
		t.Fatalf("scan flags %v\nssh-audit flags %v", ours, audited)
	}
	if len(ours) < 15 {
		t.Fatalf("only %d weak algorithms enabled; the sshd config did not take", len(ours))
	}
}

// TestTargetSnippetPassesSSHAudit: the shipped target snippet leaves
// ssh-audit nothing to fail or warn about (beyond its own age).
func TestTargetSnippetPassesSSHAudit(t *testing.T) {
	testbed.RequireOpenSSH(t)
	d := startHardened(t, catest.NewBastionCA(t))
	for name, notes := range sshAuditVerdicts(t, d.Addr) {
		if !sshAuditOutdated(name, notes) {
			t.Errorf("ssh-audit on the target snippet: %s: %v", name, notes)
		}
	}
}
