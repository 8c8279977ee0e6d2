package gateway

import (
	"context"
	"maps"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

// newerThanSSHAudit are algorithm names the gateway offers on purpose that
// Debian's ssh-audit 2.5.0 predates, so it can only call them "unknown
// algorithm". Any other unknown name fails the test until someone checks it
// and adds it here.
var newerThanSSHAudit = map[string]bool{
	"mlkem768x25519-sha256":        true, // ML-KEM hybrid kex, OpenSSH 9.9
	"kex-strict-s-v00@openssh.com": true, // strict KEX marker (Terrapin), OpenSSH 9.6
}

// sshAuditMustOffer are names ssh-audit must see in the gateway's offer:
// the post-quantum hybrid kex and the strict-KEX marker against Terrapin.
var sshAuditMustOffer = []string{"mlkem768x25519-sha256", "kex-strict-s-v00@openssh.com"}

// TestSSHAuditRatesGatewayGood runs ssh-audit against a live gateway and
// fails on every [fail] and [warn] it reports, every CVE and every
// algorithm it recommends removing, except "unknown algorithm" for names
// it predates.
func TestSSHAuditRatesGatewayGood(t *testing.T) {
	tg := startGateway(t)
	offered, problems := sshAudit(t, tg.port)
	for _, p := range problems {
		t.Errorf("ssh-audit: %s", p)
	}
	for _, name := range sshAuditMustOffer {
		if !offered[name] {
			t.Errorf("the gateway does not offer %s; ssh-audit saw %v", name, slices.Sorted(maps.Keys(offered)))
		}
	}

	// The same parser must see what ssh-audit objects to in a stock
	// OpenSSH sshd (NIST-curve kex, SHA-1 and encrypt-and-MAC MACs), or a
	// change in ssh-audit's report format would make the check above pass
	// vacuously.
	t.Run("parser catches a stock sshd", func(t *testing.T) {
		d := testbed.StartSSHD(t, testbed.SSHDConfig{})
		offered, problems := sshAudit(t, d.Port)
		count := func(prefix string) (n int) {
			for _, p := range problems {
				if strings.HasPrefix(p, prefix) {
					n++
				}
			}
			return n
		}
		// umac-64@openssh.com draws two notes, the second on a
		// continuation line.
		if !offered["curve25519-sha256"] || count("(kex) ecdh-sha2-nistp256 rated [fail]") != 1 || count("(mac) umac-64@openssh.com rated [warn]") < 2 {
			t.Errorf("ssh-audit against a stock sshd: offered %v, problems %q; want curve25519-sha256 offered, ecdh-sha2-nistp256 [fail] and two warnings for umac-64@openssh.com",
				slices.Sorted(maps.Keys(offered)), problems)
		}
	})
}

var (
	ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)
	// sshAuditAlgo is an algorithm line: "(kex) curve25519-sha256  -- [info] ...".
	sshAuditAlgo = regexp.MustCompile(`^\((kex|key|enc|mac)\)\s+(\S+)`)
	// sshAuditNote is a rating, on an algorithm line ("-- [warn] ...") or
	// on one of its continuation lines ("`- [warn] ...").
	sshAuditNote = regexp.MustCompile("(?:--|`-) \\[(fail|warn|info)\\] (.*)$")
)

// sshAudit runs ssh-audit against 127.0.0.1:port and returns the algorithm
// names it lists and the problems it reports, each naming the algorithm.
// It fails the test if ssh-audit is missing or produces no report.
func sshAudit(t *testing.T, port int) (offered map[string]bool, problems []string) {
	t.Helper()
	bin, err := exec.LookPath("ssh-audit")
	if err != nil {
		t.Fatalf("ssh-audit not found on PATH: %v; install it (Debian: apt-get install ssh-audit; or pip install ssh-audit)", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// -n: no colours (stripped anyway). ssh-audit 2.5.0's JSON output has
	// no ratings, so the text report is parsed. Its exit status is
	// non-zero for any warning, unknown names included, so the report
	// decides, not the status.
	out, err := exec.CommandContext(ctx, bin, "-n", "-t", "10", "-p", strconv.Itoa(port), "127.0.0.1").CombinedOutput()
	report := ansiEscape.ReplaceAllString(string(out), "")
	if ctx.Err() != nil || !strings.Contains(report, "# key exchange algorithms") {
		t.Fatalf("ssh-audit did not produce a report (%v):\n%s", err, report)
	}
	defer func() {
		if t.Failed() {
			t.Logf("ssh-audit report:\n%s", report)
		}
	}()

	offered = map[string]bool{}
	kind, name := "", ""
	for _, line := range strings.Split(report, "\n") {
		line = strings.TrimRight(line, "\r ")
		if m := sshAuditAlgo.FindStringSubmatch(line); m != nil {
			kind, name = m[1], m[2]
			offered[name] = true
		} else if !strings.HasPrefix(line, " ") {
			kind, name = "", "" // only continuation lines belong to the algorithm above
		}
		switch {
		case strings.HasPrefix(line, "(rec) -"):
			problems = append(problems, "recommends removing an offered algorithm: "+line)
			continue
		case strings.HasPrefix(line, "(cve)"):
			problems = append(problems, "reports a vulnerability: "+line)
			continue
		}
		m := sshAuditNote.FindStringSubmatch(line)
		if m == nil || m[1] == "info" {
			continue
		}
		switch {
		case m[2] == "unknown algorithm" && newerThanSSHAudit[name]:
		case name == "":
			problems = append(problems, "["+m[1]+"] "+m[2]+" in "+strconv.Quote(strings.TrimSpace(line)))
		default:
			problems = append(problems, "("+kind+") "+name+" rated ["+m[1]+"]: "+m[2])
		}
	}
	return offered, problems
}
