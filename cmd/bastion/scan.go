package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/deploy"
	"github.com/bastion-ssh/bastion/internal/scan"
)

// usageError marks a command line that cannot run (exit status 2).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func newScanCommand(a *app) *cobra.Command {
	var (
		jsonOut     bool
		hostCAFile  string
		concurrency int
		timeout     time.Duration
		user        string
		printConfig bool
	)
	cmd := &cobra.Command{
		Use:   "scan [flags] HOST[:PORT]...",
		Short: "Check SSH targets for password logins, host certificates and weak algorithms",
		Long: `Connect to each target the way the gateway would, without ever sending a
credential, and report:

  AUTH METHODS  what the server offers after the "none" method;
                password or keyboard-interactive = FAIL
  HOST CERT     ours (signed by bastion's host CA), foreign, invalid,
                yes (no host CA to check against) or none
  WEAK ALGS     key exchange, host key, cipher and MAC algorithms that
                ssh-audit fails or warns about; SHA-1, MD5, CBC and DSA
                = FAIL, NIST curves and encrypt-and-MAC = WARN
  VERSION       the server's SSH banner

A target passes when nothing FAILs. The host CA comes from --host-ca, or
else from DATA_DIR/ca/host_ca.pub when a CA exists there. Targets are
scanned concurrently (--concurrency at a time). Whether root may log in
cannot be seen from outside; install the hardened sshd snippet
(--print-sshd-config) on every target for that.

Exit status: 0 when every target passes, 1 when any fails or cannot be
probed, 2 on a usage error.`,
		Example: `  bastion scan web1 web2:2222 10.0.0.5
  bastion scan --json --timeout 10s db1.internal > scan.json
  bastion scan --host-ca /etc/ssh/bastion_host_ca.pub --concurrency 32 $(cat hosts.txt)
  bastion scan --print-sshd-config > /etc/ssh/sshd_config.d/bastion.conf`,
		Args: func(cmd *cobra.Command, args []string) error {
			if printConfig {
				if len(args) > 0 {
					return usageError("--print-sshd-config takes no targets")
				}
				return nil
			}
			if len(args) == 0 {
				return usageError("name at least one target: bastion scan HOST[:PORT]...")
			}
			for _, t := range args {
				if _, err := scan.NormalizeTarget(t); err != nil {
					return &exitError{code: 2, err: err}
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if printConfig {
				_, err := io.WriteString(a.stdout, deploy.TargetSSHDConfig())
				return err
			}
			if concurrency < 1 {
				return usageError("--concurrency must be at least 1, not %d", concurrency)
			}
			if timeout <= 0 {
				return usageError("--timeout must be positive, e.g. 5s")
			}
			cas, err := a.scanHostCAs(hostCAFile)
			if err != nil {
				return err
			}
			results := scan.ScanAll(cmd.Context(), args, scan.Options{
				HostCAs: cas, Timeout: timeout, Concurrency: concurrency, User: user,
			})
			if jsonOut {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				err = enc.Encode(results)
			} else {
				err = writeScanTable(a.stdout, results)
			}
			if err != nil {
				return err
			}
			failed := 0
			for _, r := range results {
				if !r.Pass {
					failed++
				}
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d targets failed the scan", failed, len(results))}
			}
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{code: 2, err: err} })
	f := cmd.Flags()
	f.BoolVar(&jsonOut, "json", false, "print the results as a JSON array instead of a table")
	f.StringVar(&hostCAFile, "host-ca", "", "host CA public keys (authorized_keys or @cert-authority known_hosts lines); default DATA_DIR/ca/host_ca.pub")
	f.IntVar(&concurrency, "concurrency", scan.DefaultConcurrency, "targets scanned at once")
	f.DurationVar(&timeout, "timeout", scan.DefaultTimeout, "time allowed for each target")
	f.StringVar(&user, "user", scan.DefaultUser, "login name sent with the \"none\" method (no credential is ever sent)")
	f.BoolVar(&printConfig, "print-sshd-config", false, "print the hardened sshd_config snippet for targets and exit")
	return cmd
}

// scanHostCAs returns the host CA keys to check certificates against: from
// file if given, else from the data dir's CA if there is one. No CA is not
// an error: certificates are then reported without attribution, and a note
// says so.
func (a *app) scanHostCAs(file string) ([]ssh.PublicKey, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, usageError("--host-ca: %w", err)
		}
		keys, err := parseCAKeys(data)
		if err != nil {
			return nil, usageError("--host-ca %s: %w", file, err)
		}
		return keys, nil
	}
	l := a.layout()
	if _, err := os.Stat(l.PublicKey(ca.HostCA)); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(a.stderr, "note: no host CA at %s; host certificates are reported but not checked (use --host-ca or --data-dir)\n", l.PublicKey(ca.HostCA))
		return nil, nil
	}
	return l.TrustedKeys(ca.HostCA)
}

// parseCAKeys reads authorized_keys lines ("ssh-ed25519 AAAA... comment")
// and known_hosts "@cert-authority PATTERN KEY" lines, as `bastion ca
// export --host` and `--user` print them.
func parseCAKeys(data []byte) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var (
			key ssh.PublicKey
			err error
		)
		if strings.HasPrefix(line, "@") {
			var marker string
			marker, _, key, _, _, err = ssh.ParseKnownHosts([]byte(line))
			if err == nil && marker != "cert-authority" {
				err = fmt.Errorf("marker @%s; only @cert-authority lines name a CA", marker)
			}
		} else {
			key, _, _, _, err = ssh.ParseAuthorizedKey([]byte(line))
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		keys = append(keys, key)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("no public keys found; expected the output of `bastion ca export --host`")
	}
	return keys, nil
}

// writeScanTable prints one row per target, then the WARN and FAIL
// findings of each target, so an operator sees what to fix.
func writeScanTable(w io.Writer, results []scan.Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tVERSION\tAUTH METHODS\tHOST CERT\tWEAK ALGS\tRESULT")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Target, dash(strings.TrimPrefix(r.Version, "SSH-2.0-")),
			dash(strings.Join(r.AuthMethods, ",")), hostCertWord(r), weakWord(r), resultWord(r))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		var lines []string
		for _, f := range r.Findings {
			if f.Severity != scan.SeverityInfo || r.Err != "" {
				lines = append(lines, fmt.Sprintf("  %-4s %-22s %s", f.Severity, f.Code, f.Message))
			}
		}
		if len(lines) > 0 {
			if _, err := fmt.Fprintf(w, "\n%s:\n%s\n", r.Target, strings.Join(lines, "\n")); err != nil {
				return err
			}
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func hostCertWord(r scan.Result) string {
	switch {
	case r.HostCertFromOurCA:
		return "ours"
	case r.HasFinding(scan.CodeForeignHostCert):
		return "foreign"
	case r.HasFinding(scan.CodeHostCertInvalid):
		return "invalid"
	case r.HostCert:
		return "yes"
	case r.HostKeyFingerprint != "":
		return "none"
	}
	return "-"
}

func weakWord(r scan.Result) string {
	if len(r.WeakAlgorithms) == 0 {
		if r.Version == "" {
			return "-"
		}
		return "0"
	}
	fails := 0
	for _, f := range r.Findings {
		if f.Severity == scan.SeverityFail && strings.HasPrefix(f.Code, "weak_") {
			fails++
		}
	}
	if fails == 0 {
		return fmt.Sprint(len(r.WeakAlgorithms))
	}
	return fmt.Sprintf("%d (%d FAIL)", len(r.WeakAlgorithms), fails)
}

func resultWord(r scan.Result) string {
	switch {
	case r.Err != "":
		return "ERROR"
	case r.Pass:
		return "PASS"
	}
	return "FAIL"
}
