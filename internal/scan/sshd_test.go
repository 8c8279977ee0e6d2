package scan_test

import (
	"context"
	"github.com/bastion-ssh/bastion/internal/catest"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/deploy"
	"github.com/bastion-ssh/bastion/internal/scan"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// hostCAs is what `bastion scan` reads from DATA_DIR.
func hostCAs(t *testing.T, c *catest.BastionCA) []ssh.PublicKey {
	t.Helper()
	keys, err := c.Layout.TrustedKeys(ca.HostCA)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// hostCert signs d's host key for the given names with bastion's host CA.
func hostCert(t *testing.T, c *catest.BastionCA, d *testbed.SSHD, names ...string) []byte {
	t.Helper()
	cert, err := c.Auth.Sign(t.Context(), ca.Request{Kind: ca.HostCA, Key: d.HostKeyPub, KeyID: "scan-test-host", Principals: names})
	if err != nil {
		t.Fatal(err)
	}
	return ssh.MarshalAuthorizedKey(cert)
}

// startHardened starts an sshd configured with exactly the shipped target
// snippet (its file paths pointed at temporary files) and a host
// certificate from bastion's host CA for 127.0.0.1.
func startHardened(t *testing.T, c *catest.BastionCA) *testbed.SSHD {
	t.Helper()
	d := testbed.NewSSHD(t, testbed.SSHDConfig{})
	snippet, err := deploy.TargetSSHDConfigWithPaths(map[string]string{
		"TrustedUserCAKeys": d.WriteFile("bastion_user_ca.pub", []byte(ca.ExportLines(ca.UserCA, c.Auth.TrustedKeys(ca.UserCA), ""))),
		"RevokedKeys":       d.WriteFile("bastion_revoked.krl", nil),
		"HostCertificate":   d.WriteFile("host-cert.pub", hostCert(t, c, d, "127.0.0.1", "target.internal")),
	})
	if err != nil {
		t.Fatal(err)
	}
	d.Config.Extra = snippet
	d.Start()
	return d
}

func codes(r scan.Result) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Severity+" "+f.Code)
	}
	return out
}

// TestScanRealSSHD scans real OpenSSH daemons configured as the issue lists
// and checks each verdict.
func TestScanRealSSHD(t *testing.T) {
	testbed.RequireOpenSSH(t)
	bca := catest.NewBastionCA(t)
	otherCA := testbed.NewCA(t)

	hardened := startHardened(t, bca)
	password := testbed.StartSSHD(t, testbed.SSHDConfig{Extra: "PasswordAuthentication yes\n"})
	// sshd advertises keyboard-interactive whenever it is enabled, also
	// with UsePAM no (where it then has no device to ask with and fails at
	// once): the advertisement is what a scan reports, so no PAM is needed.
	kbd := testbed.StartSSHD(t, testbed.SSHDConfig{Extra: "KbdInteractiveAuthentication yes\n"})
	noCert := testbed.StartSSHD(t, testbed.SSHDConfig{})
	foreign := testbed.NewSSHD(t, testbed.SSHDConfig{})
	foreign.Config.HostCertificate = otherCA.Sign(foreign.HostKeyPub, testbed.CertOptions{Host: true, Principals: []string{"127.0.0.1"}, Validity: "-5m:+1h"})
	foreign.Start()
	weak := testbed.StartSSHD(t, testbed.SSHDConfig{HostKeyType: "rsa", Extra: strings.Join([]string{
		"KexAlgorithms diffie-hellman-group14-sha1,ecdh-sha2-nistp256,curve25519-sha256",
		"Ciphers aes128-cbc,aes256-ctr",
		"MACs hmac-sha1,hmac-sha2-256,hmac-sha2-256-etm@openssh.com",
		"HostKeyAlgorithms ssh-rsa,rsa-sha2-256",
	}, "\n")})

	opts := scan.Options{HostCAs: hostCAs(t, bca), Timeout: 10 * time.Second}
	tests := []struct {
		name      string
		d         *testbed.SSHD
		opts      scan.Options
		wantPass  bool
		wantAuth  []string
		wantCodes []string // findings that must be present ("SEV code")
		wantNot   []string // codes that must be absent
		check     func(t *testing.T, r scan.Result)
	}{
		{
			name: "hardened with the deploy snippet", d: hardened, opts: opts,
			wantPass: true, wantAuth: []string{"publickey"},
			check: func(t *testing.T, r scan.Result) {
				if !r.HostCert || !r.HostCertFromOurCA {
					t.Errorf("HostCert=%v HostCertFromOurCA=%v, want both", r.HostCert, r.HostCertFromOurCA)
				}
				if !slices.Equal(r.HostCertPrincipals, []string{"127.0.0.1", "target.internal"}) {
					t.Errorf("HostCertPrincipals = %v", r.HostCertPrincipals)
				}
				// The snippet's algorithm lists are exactly the good ones.
				if len(r.WeakAlgorithms) != 0 || len(r.Findings) != 0 {
					t.Errorf("weak = %v, findings = %v; the snippet should give a clean report", r.WeakAlgorithms, r.Findings)
				}
				if algos := slices.Sorted(slices.Values(r.HostKeyAlgos)); !slices.Equal(algos, []string{"ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"}) {
					t.Errorf("HostKeyAlgos = %v", r.HostKeyAlgos)
				}
			},
		},
		{
			name: "hardened, no host CA given", d: hardened, opts: scan.Options{},
			wantPass: true, wantAuth: []string{"publickey"}, wantCodes: []string{"INFO host_cert_unchecked"},
			check: func(t *testing.T, r scan.Result) {
				if !r.HostCert || r.HostCertFromOurCA {
					t.Errorf("HostCert=%v HostCertFromOurCA=%v, want a certificate that was not attributed", r.HostCert, r.HostCertFromOurCA)
				}
			},
		},
		{
			name: "PasswordAuthentication yes", d: password, opts: opts,
			wantAuth:  []string{"publickey", "password"},
			wantCodes: []string{"FAIL password_auth", "WARN no_host_cert"},
			wantNot:   []string{"kbd_interactive_auth"},
		},
		{
			name: "KbdInteractiveAuthentication yes", d: kbd, opts: opts,
			wantAuth:  []string{"publickey", "keyboard-interactive"},
			wantCodes: []string{"FAIL kbd_interactive_auth"},
			wantNot:   []string{"password_auth"},
		},
		{
			name: "no host certificate", d: noCert, opts: opts,
			wantAuth:  []string{"publickey"},
			wantCodes: []string{"WARN no_host_cert", "FAIL weak_mac", "WARN weak_kex"}, // OpenSSH's defaults include hmac-sha1 and NIST kex
			check: func(t *testing.T, r scan.Result) {
				if r.HostCert || r.HostKeyFingerprint != ssh.FingerprintSHA256(noCert.HostKeyPub) {
					t.Errorf("HostCert=%v fingerprint=%s, want the plain key %s", r.HostCert, r.HostKeyFingerprint, ssh.FingerprintSHA256(noCert.HostKeyPub))
				}
			},
		},
		{
			name: "host certificate from another CA", d: foreign, opts: opts,
			wantAuth:  []string{"publickey"},
			wantCodes: []string{"WARN foreign_host_cert"},
			wantNot:   []string{"no_host_cert", "host_cert_invalid"},
			check: func(t *testing.T, r scan.Result) {
				if !r.HostCert || r.HostCertFromOurCA {
					t.Errorf("HostCert=%v HostCertFromOurCA=%v", r.HostCert, r.HostCertFromOurCA)
				}
			},
		},
		{
			name: "weak algorithms", d: weak, opts: opts,
			wantAuth:  []string{"publickey"},
			wantCodes: []string{"FAIL weak_kex", "WARN weak_kex", "FAIL weak_cipher", "FAIL weak_mac", "WARN weak_mac", "FAIL weak_host_key"},
			check: func(t *testing.T, r scan.Result) {
				want := []string{"diffie-hellman-group14-sha1", "ecdh-sha2-nistp256", "ssh-rsa", "aes128-cbc", "hmac-sha1", "hmac-sha2-256"}
				if !slices.Equal(r.WeakAlgorithms, want) {
					t.Errorf("WeakAlgorithms = %v, want %v", r.WeakAlgorithms, want)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := scan.Scan(t.Context(), tc.d.Addr, tc.opts)
			if r.Err != "" {
				t.Fatalf("Scan error: %s", r.Err)
			}
			if r.Pass != tc.wantPass {
				t.Errorf("Pass = %v, want %v; findings: %v", r.Pass, tc.wantPass, r.Findings)
			}
			if !slices.Equal(r.AuthMethods, tc.wantAuth) {
				t.Errorf("AuthMethods = %v, want %v", r.AuthMethods, tc.wantAuth)
			}
			if !strings.HasPrefix(r.Version, "SSH-2.0-OpenSSH_") {
				t.Errorf("Version = %q, want OpenSSH's banner", r.Version)
			}
			got := codes(r)
			for _, w := range tc.wantCodes {
				if !slices.Contains(got, w) {
					t.Errorf("findings %v lack %q", got, w)
				}
			}
			for _, n := range tc.wantNot {
				for _, g := range got {
					if strings.HasSuffix(g, " "+n) {
						t.Errorf("findings %v include %q", got, n)
					}
				}
			}
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}

	// The probe never tried a credential: sshd saw no authentication
	// attempt beyond "none", only connections that closed before auth.
	for _, d := range []*testbed.SSHD{hardened, password, kbd} {
		log := d.Log()
		for _, bad := range []string{"Failed password", "Failed keyboard-interactive", "Failed publickey", "Accepted", "Postponed"} {
			if strings.Contains(log, bad) {
				t.Errorf("sshd log contains %q: the probe attempted authentication\n%s", bad, log)
			}
		}
	}
}

// TestScanServerWithoutCommonAlgorithms: a server that offers only MD5
// MACs cannot be negotiated with (x/crypto has no MD5), but what it offers
// is still reported from its KEXINIT.
func TestScanServerWithoutCommonAlgorithms(t *testing.T) {
	testbed.RequireOpenSSH(t)
	d := testbed.StartSSHD(t, testbed.SSHDConfig{Extra: "Ciphers aes128-ctr\nMACs hmac-md5\n"})
	r := scan.Scan(t.Context(), d.Addr, scan.Options{Timeout: 10 * time.Second})
	if r.Pass || r.Err == "" {
		t.Fatalf("Pass=%v Err=%q, want a failed probe", r.Pass, r.Err)
	}
	if !slices.Contains(r.WeakAlgorithms, "hmac-md5") || !slices.Contains(codes(r), "FAIL weak_mac") || !slices.Contains(codes(r), "FAIL probe_failed") {
		t.Errorf("weak=%v findings=%v; want hmac-md5 reported from KEXINIT and the probe failure", r.WeakAlgorithms, codes(r))
	}
	if !strings.HasPrefix(r.Version, "SSH-2.0-OpenSSH_") {
		t.Errorf("Version = %q", r.Version)
	}
}

// TestScanUnreachableAndNotSSH covers targets that are not SSH servers.
func TestScanUnreachableAndNotSSH(t *testing.T) {
	httpish := listen(t, func(c net.Conn) {
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
	})
	closed := listen(t, nil)
	closedAddr := closed.Addr().String()
	closed.Close()

	for name, addr := range map[string]string{"not ssh": httpish.Addr().String(), "connection refused": closedAddr} {
		t.Run(name, func(t *testing.T) {
			r := scan.Scan(t.Context(), addr, scan.Options{Timeout: 3 * time.Second})
			if r.Pass || r.Err == "" || !slices.Contains(codes(r), "FAIL probe_failed") {
				t.Fatalf("Pass=%v Err=%q findings=%v, want a failed probe", r.Pass, r.Err, codes(r))
			}
			if !strings.HasPrefix(r.Err, "scan: ") {
				t.Errorf("error %q lacks the package prefix", r.Err)
			}
		})
	}
}

// TestScanTimeout: a server that never speaks is given up on after
// Options.Timeout, and cancellation ends a scan at once.
func TestScanTimeout(t *testing.T) {
	silent := listen(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }) // never speaks; ends when the probe hangs up
	start := time.Now()
	r := scan.Scan(t.Context(), silent.Addr().String(), scan.Options{Timeout: 300 * time.Millisecond})
	if r.Err == "" || time.Since(start) > 3*time.Second {
		t.Fatalf("Err=%q after %v, want a timeout after about 300ms", r.Err, time.Since(start))
	}

	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	start = time.Now()
	r = scan.Scan(ctx, silent.Addr().String(), scan.Options{Timeout: time.Minute})
	if r.Err == "" || time.Since(start) > 3*time.Second {
		t.Fatalf("Err=%q after %v, want cancellation to end the scan", r.Err, time.Since(start))
	}
}

// TestScanAllOrderAndBound: results come back in input order, and no more
// than Concurrency probes run at once.
func TestScanAllOrderAndBound(t *testing.T) {
	var cur, peak atomic.Int32
	slow := listen(t, func(c net.Conn) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(150 * time.Millisecond)
		cur.Add(-1)
	})
	var targets []string
	for i := 0; i < 6; i++ {
		targets = append(targets, slow.Addr().String())
	}
	targets = append(targets, "bad target with spaces")
	res := scan.ScanAll(t.Context(), targets, scan.Options{Concurrency: 2, Timeout: 2 * time.Second})
	if len(res) != len(targets) {
		t.Fatalf("%d results for %d targets", len(res), len(targets))
	}
	for i, r := range res {
		if r.Target != targets[i] {
			t.Errorf("result %d is for %q, want %q", i, r.Target, targets[i])
		}
		if r.Pass {
			t.Errorf("result %d passed", i)
		}
	}
	if p := peak.Load(); p > 2 || p < 1 {
		t.Errorf("peak concurrency %d, want 1..2", p)
	}
}

// TestCheckerRealSSHD: the gateway's check refuses the soft target and
// allows the hardened one, and answers the second time from its cache.
func TestCheckerRealSSHD(t *testing.T) {
	testbed.RequireOpenSSH(t)
	bca := catest.NewBastionCA(t)
	hardened := startHardened(t, bca)
	soft := testbed.StartSSHD(t, testbed.SSHDConfig{Extra: "PasswordAuthentication yes\n"})
	c := scan.NewChecker(scan.Options{HostCAs: hostCAs(t, bca), Timeout: 10 * time.Second}, time.Minute, nil)

	r, err := c.Check(t.Context(), hardened.Addr)
	if err != nil || !r.Pass {
		t.Fatalf("hardened: Pass=%v err=%v findings=%v", r.Pass, err, r.Findings)
	}
	r, err = c.Check(t.Context(), soft.Addr)
	if err != nil || r.Pass || !r.HasFinding(scan.CodePasswordAuth) {
		t.Fatalf("soft: Pass=%v err=%v findings=%v", r.Pass, err, r.Findings)
	}
	if f := r.Failures(); len(f) == 0 || f[0].Code != scan.CodePasswordAuth && f[0].Code != scan.CodeWeakMAC {
		t.Errorf("Failures() = %v", f)
	}
	// Cached: stopping the target does not change the answer within the TTL.
	hardened.Stop()
	if r, err := c.Check(t.Context(), hardened.Addr); err != nil || !r.Pass {
		t.Fatalf("cached hardened: Pass=%v err=%v", r.Pass, err)
	}
}

// listen serves handle (nil: close at once) on a loopback port until the
// test ends.
func listen(t *testing.T, handle func(net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if handle != nil {
					handle(c)
				}
			}()
		}
	}()
	return l
}
