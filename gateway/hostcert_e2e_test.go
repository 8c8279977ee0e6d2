package gateway

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// hostCertPath is where tg's gateway keeps its own host certificate.
func (tg *testGateway) hostCertPath() string {
	return filepath.Join(tg.layout.DataDir, "gateway", "ssh_host_ed25519_key-cert.pub")
}

// keygenCert reads the gateway's host certificate with `ssh-keygen -L`:
// its principals and the fingerprint of the CA key that signed it.
func keygenCert(t *testing.T, path string) (principals []string, signingCA string) {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-L", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -L -f %s: %v\n%s", path, err, out)
	}
	inPrincipals := false
	for line := range strings.Lines(string(out)) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "Signing CA:"):
			for f := range strings.FieldsSeq(line) {
				if strings.HasPrefix(f, "SHA256:") {
					signingCA = f
				}
			}
		case line == "Principals:":
			inPrincipals = true
		case inPrincipals && strings.HasSuffix(line, ":"), inPrincipals && strings.HasPrefix(line, "Critical Options:"):
			inPrincipals = false
		case inPrincipals && line != "":
			principals = append(principals, line)
		}
	}
	return principals, signingCA
}

// restartGateway starts another gateway on tg's data dir, CA and audit
// log (as `bastion serve` after a restart), with its configuration
// changed by mutate, and returns its address.
func (tg *testGateway) restartGateway(mutate func(*Config)) (*Gateway, string) {
	t := tg.t
	t.Helper()
	cfg := Config{
		Listen:        "127.0.0.1:0",
		HostKeyPath:   filepath.Join(tg.layout.DataDir, "gateway", "ssh_host_ed25519_key"),
		Limits:        DefaultLimits(),
		ShutdownGrace: 5 * time.Second,
	}
	mutate(&cfg)
	gw, err := New(cfg, Deps{Authority: tg.auth, Audit: tg.store})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		gw.Shutdown(ctx)
		<-served
	})
	return gw, ln.Addr().String()
}

// hostAccepted connects OpenSSH to addr as 127.0.0.1, trusting only the
// host CA key hostCA (StrictHostKeyChecking yes), and reports whether
// ssh got past the host key check (to the refused login: the client has
// no certificate).
func hostAccepted(t *testing.T, addr string, hostCA gossh.PublicKey) (bool, string) {
	t.Helper()
	c := testbed.NewClient(t)
	c.TrustHostCA("*", hostCA)
	c.StrictHostKeyChecking = "yes"
	_, port, _ := net.SplitHostPort(addr)
	r := c.Run(t.Context(), "ssh", "-p", port, "nobody@127.0.0.1", "true")
	switch {
	case strings.Contains(r.Stderr, "Permission denied"):
		return true, r.Stderr
	case strings.Contains(r.Stderr, "Host key verification failed"):
		return false, r.Stderr
	}
	t.Fatalf("ssh to %s: neither refused login nor host key failure: %+v", addr, r)
	return false, ""
}

// TestGatewayHostCertFollowsConfigAndCA: the gateway's own host
// certificate is re-issued when host_names changes (at restart), when the
// host CA key is rotated (on the CA reload SIGHUP does, without a
// restart), and not otherwise; each re-issue is a cert.issued record, and
// real OpenSSH trusting only the @cert-authority line accepts the gateway
// as 127.0.0.1 once 127.0.0.1 is configured.
func TestGatewayHostCertFollowsConfigAndCA(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) { c.HostNames = []string{"localhost"} })
	issued := func() int { return len(tg.events(audit.TypeCertIssued)) }
	if p, _ := keygenCert(t, tg.hostCertPath()); !slices.Equal(p, []string{"localhost"}) {
		t.Fatalf("host certificate principals = %v, want [localhost]", p)
	}
	if ok, stderr := hostAccepted(t, tg.addr, tg.auth.PublicKey(ca.HostCA)); ok {
		t.Fatalf("OpenSSH accepted a certificate for localhost as 127.0.0.1:\n%s", stderr)
	}
	before := issued()

	// host_names changed, gateway restarted: the certificate follows.
	names := func(c *Config) { c.HostNames = []string{"127.0.0.1"} }
	tg.gw.Shutdown(t.Context())
	gw, addr := tg.restartGateway(names)
	if p, _ := keygenCert(t, tg.hostCertPath()); !slices.Equal(p, []string{"127.0.0.1"}) {
		t.Errorf("after host_names: [127.0.0.1] and a restart, ssh-keygen -L lists principals %v", p)
	}
	if ok, stderr := hostAccepted(t, addr, tg.auth.PublicKey(ca.HostCA)); !ok {
		t.Errorf("OpenSSH refused the gateway as 127.0.0.1 after host_names was changed:\n%s", stderr)
	}
	if n := issued(); n != before+1 {
		t.Errorf("%d cert.issued records for the re-issue, want 1", n-before)
	}
	// Same names in another order, same CA: nothing to re-issue.
	before = issued()
	tg.restartGateway(func(c *Config) { c.HostNames = []string{"127.0.0.1", "127.0.0.1"} })
	if n := issued(); n != before {
		t.Errorf("a restart with an unchanged configuration issued %d host certificates, want none", n-before)
	}

	// The host CA is rotated and its files reloaded (SIGHUP): the running
	// gateway presents a certificate from the new key, no restart.
	oldCA := tg.auth.PublicKey(ca.HostCA)
	if _, _, err := tg.auth.Rotate(t.Context(), ca.HostCA, "", "test"); err != nil {
		t.Fatal(err)
	}
	newCA := tg.auth.PublicKey(ca.HostCA)
	before = issued()
	gw.ReloadedCA(t.Context())
	if _, signer := keygenCert(t, tg.hostCertPath()); signer != ca.Fingerprint(newCA) {
		t.Errorf("after the host CA rotation the certificate is signed by %s, want the new key %s (old %s)", signer, ca.Fingerprint(newCA), ca.Fingerprint(oldCA))
	}
	if ok, stderr := hostAccepted(t, addr, newCA); !ok {
		t.Errorf("OpenSSH trusting only the new host CA refused the running gateway after the reload:\n%s", stderr)
	}
	if n := issued(); n != before+1 {
		t.Errorf("%d cert.issued records for the rotation's re-issue, want 1", n-before)
	}
}

// TestGatewayHostCertRenewedWhileRunning: a gateway that runs longer than
// half its host certificate's life re-issues it without a restart, so
// OpenSSH still accepts it after the first certificate expired.
func TestGatewayHostCertRenewedWhileRunning(t *testing.T) {
	const life = 4 * time.Second
	tg := startGateway(t, func(c *Config, d *Deps) {
		c.Limits.ReportInterval = 200 * time.Millisecond
		p := ca.DefaultPolicy()
		p.HostDefaultValidity, p.HostMaxValidity, p.ClockSkew = life, life, 0
		short, err := ca.New(ca.Config{Layout: ca.Layout{DataDir: filepath.Dir(filepath.Dir(c.HostKeyPath))}, Policy: p}, d.Audit.(*audit.Store))
		if err != nil {
			t.Fatal(err)
		}
		d.Authority = short
	})
	first := tg.gw.HostKeys()[1].PublicKey().(*gossh.Certificate)
	time.Sleep(time.Until(time.Unix(int64(first.ValidBefore), 0)) + time.Second)
	if ok, stderr := hostAccepted(t, tg.addr, tg.auth.PublicKey(ca.HostCA)); !ok {
		t.Errorf("OpenSSH refused the gateway after its first host certificate (serial %d) expired:\n%s", first.Serial, stderr)
	}
	now := tg.gw.HostKeys()[1].PublicKey().(*gossh.Certificate)
	if now.Serial == first.Serial || int64(now.ValidBefore) <= time.Now().Unix() {
		t.Errorf("host certificate in use: serial %d valid until %s; want a new one valid now", now.Serial, time.Unix(int64(now.ValidBefore), 0))
	}
	if n := len(tg.events(audit.TypeCertIssued)); n < 2 || n > 2+int(2*life/time.Second) {
		t.Errorf("%d cert.issued records; want the first and about one re-issue per half-life, not one per tick", n)
	}
}
