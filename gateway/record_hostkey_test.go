package gateway

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// testClock is a clock tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// caFiles opens an Authority (with its own audit store, closed at the end
// of the test or by the returned func) over the CA files of the data
// directory dir, creating them when create is set.
func caFiles(t *testing.T, dir string, create bool) (*ca.Authority, func()) {
	t.Helper()
	l := ca.Layout{DataDir: dir}
	if create {
		if _, _, err := ca.Init(l, ca.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	store, err := audit.Open(l.AuditDB(), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeStore := func() { once.Do(func() { store.Close() }) }
	t.Cleanup(closeStore)
	auth, err := ca.New(ca.Config{Layout: l}, store)
	if err != nil {
		t.Fatal(err)
	}
	return auth, closeStore
}

// presented is the host certificate a recorder presents for name.
func presented(t *testing.T, r *recorder, name string) *gossh.Certificate {
	t.Helper()
	signers, err := r.hostSigners(t.Context(), name, "test")
	if err != nil {
		t.Fatalf("host keys for %s: %v", name, err)
	}
	cert, ok := signers[0].PublicKey().(*gossh.Certificate)
	if !ok {
		t.Fatalf("the first host key for %s is %s, not a certificate", name, signers[0].PublicKey().Type())
	}
	if len(signers) != 2 || !sameKey(signers[1].PublicKey(), cert.Key) {
		t.Fatalf("the host keys for %s are not a certificate and its plain key", name)
	}
	if len(cert.ValidPrincipals) != 1 || cert.ValidPrincipals[0] != name {
		t.Fatalf("the certificate for %s names %v", name, cert.ValidPrincipals)
	}
	return cert
}

func sameKey(a, b gossh.PublicKey) bool { return string(a.Marshal()) == string(b.Marshal()) }

// TestRecordHostKeyStable: the key behind the host certificate a gateway
// presents for a target is the same on two gateways sharing the CA
// files, after the certificate cache expires and after a restart; it
// differs per target and changes when the host CA is rotated (at once,
// whatever the cache holds).
func TestRecordHostKeyStable(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	authA, closeA := caFiles(t, dirA, true)
	copyCA(t, dirA, ca.Layout{DataDir: dirB})
	authB, _ := caFiles(t, dirB, false)
	clock := &testClock{t: time.Now()}
	cfg := RecordConfig{HostCertCache: 5 * time.Minute}
	recA, err := newRecorder(cfg, authA, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	recB, err := newRecorder(cfg, authB, clock.now)
	if err != nil {
		t.Fatal(err)
	}

	web1 := presented(t, recA, "web1")
	if got := presented(t, recB, "web1"); !sameKey(got.Key, web1.Key) {
		t.Errorf("gateway B presents %s for web1, gateway A %s", gossh.FingerprintSHA256(got.Key), gossh.FingerprintSHA256(web1.Key))
	}
	if got := presented(t, recA, "web2"); sameKey(got.Key, web1.Key) {
		t.Error("web1 and web2 are presented with the same key")
	}

	clock.add(cfg.HostCertCache + time.Second)
	again := presented(t, recA, "web1")
	if again.Serial == web1.Serial {
		t.Fatal("the certificate was not re-signed after the cache expired; the test proves nothing")
	}
	if !sameKey(again.Key, web1.Key) {
		t.Errorf("after the cache expired web1 is presented with %s, before with %s", gossh.FingerprintSHA256(again.Key), gossh.FingerprintSHA256(web1.Key))
	}

	// Restart: gateway A's process ends and a new one reads the same files.
	closeA()
	authA2, _ := caFiles(t, dirA, false)
	recA2, err := newRecorder(cfg, authA2, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	if got := presented(t, recA2, "web1"); !sameKey(got.Key, web1.Key) {
		t.Errorf("after a restart web1 is presented with %s, before with %s", gossh.FingerprintSHA256(got.Key), gossh.FingerprintSHA256(web1.Key))
	}

	// A rotated host CA signs, and stands for, other keys, at once: a
	// cached certificate from the old key is not served.
	if _, _, err := authA2.Rotate(t.Context(), ca.HostCA, ca.KeyEd25519, "test"); err != nil {
		t.Fatal(err)
	}
	rotated := presented(t, recA2, "web1")
	if sameKey(rotated.Key, web1.Key) {
		t.Error("after the host CA was rotated web1 is presented with the same key")
	}
	if !sameKey(rotated.SignatureKey, authA2.PublicKey(ca.HostCA)) {
		t.Error("the certificate after rotation is not signed by the new host CA key")
	}
}

// TestRecordModeHostKeyPinnedAcrossGateways: a user without the
// @cert-authority line, who trusted a record-mode target on first use,
// reaches it through another gateway of the same CA with strict host key
// checking (behind a load balancer either may answer).
func TestRecordModeHostKeyPinnedAcrossGateways(t *testing.T) {
	a := startRecordGateway(t, "")
	b := startGatewayWithCA(t, a.layout.DataDir, func(_ *Config, d *Deps) {
		d.Recordings = newMemRecordings(d.Audit.(*audit.Store))
	})
	var err error
	b.gw.access, err = compileAccess([]AccessRule{
		{Principals: []string{a.user}, Hosts: []string{"127.0.0.1"}, Ports: []int{a.target.Port}, Mode: ModeRecord},
	})
	if err != nil {
		t.Fatal(err)
	}

	c := testbed.NewClient(t)
	// No host CA is trusted anywhere. The key pinned from gateway A is
	// pinned for B's address too, as behind a load balancer (one name):
	// fresh gateways of one CA make one host key.
	c.TrustHostKey(a.addr, a.gw.HostKeys()[0].PublicKey())
	c.TrustHostKey(b.addr, a.gw.HostKeys()[0].PublicKey())
	cert, err := a.auth.Sign(t.Context(), ca.Request{Kind: ca.UserCA, Key: c.PublicKey(), KeyID: "rec-tofu", Principals: []string{a.user}, Requester: "test"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetCertificate(gossh.MarshalAuthorizedKey(cert))
	via := func(gw *testGateway) []string {
		return []string{"-J", a.user + "@" + gw.addr, "-p", strconv.Itoa(a.target.Port), a.user + "@127.0.0.1", "echo", "reached"}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// First use: accept-new pins whatever the target presents.
	c.StrictHostKeyChecking = "accept-new"
	if r := c.Run(ctx, "ssh", via(a.testGateway)...); r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "reached" {
		t.Fatalf("first connection through gateway A: %s", r)
	}
	want, err := a.auth.DeriveHostKey("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	kh, err := os.ReadFile(c.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	line := knownhosts.Line([]string{a.target.Addr}, want.PublicKey())
	if !strings.Contains(string(kh), line) {
		t.Fatalf("known_hosts after first use does not pin the derived key %s:\n%s", line, kh)
	}

	c.StrictHostKeyChecking = "yes"
	for i, gw := range []*testGateway{a.testGateway, b, a.testGateway} {
		if r := c.Run(ctx, "ssh", via(gw)...); r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "reached" {
			t.Fatalf("connection %d (through %s) with the key pinned on first use: %s", i+2, gw.addr, r)
		}
	}
	// A client that takes no host certificates gets the plain key.
	if r := c.Run(ctx, "ssh", append([]string{"-o", "HostKeyAlgorithms=ssh-ed25519"}, via(b)...)...); r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "reached" {
		t.Fatalf("through gateway B with HostKeyAlgorithms=ssh-ed25519: %s", r)
	}
}

// TestGatewayHostKeyCreation: a gateway without a host key takes the one
// derived from the host CA (the same on every gateway of that CA), keeps
// one it already has, and makes a random one when the CA cannot derive.
func TestGatewayHostKeyCreation(t *testing.T) {
	auth, _ := caFiles(t, t.TempDir(), true)
	derived, err := auth.DeriveGatewayHostKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fresh, err := loadOrCreateHostKey(dir+"/a/key", auth.DeriveGatewayHostKey)
	if err != nil {
		t.Fatal(err)
	}
	want, err := gossh.NewSignerFromKey(derived)
	if err != nil {
		t.Fatal(err)
	}
	if !sameKey(fresh.PublicKey(), want.PublicKey()) {
		t.Error("a new gateway host key is not the one derived from the host CA")
	}
	if again, err := loadOrCreateHostKey(dir+"/a/key", auth.DeriveGatewayHostKey); err != nil || !sameKey(again.PublicKey(), fresh.PublicKey()) {
		t.Errorf("reloading the host key: %v, same key %v", err, err == nil && sameKey(again.PublicKey(), fresh.PublicKey()))
	}
	// A key the gateway already has stays, whatever the CA derives.
	other := func() (ed25519.PrivateKey, error) {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	if kept, err := loadOrCreateHostKey(dir+"/a/key", other); err != nil || !sameKey(kept.PublicKey(), fresh.PublicKey()) {
		t.Errorf("an existing host key was replaced (err %v)", err)
	}
	underivable := func() (ed25519.PrivateKey, error) { return nil, ca.ErrHostKeyNotDerivable }
	r1, err := loadOrCreateHostKey(dir+"/b/key", underivable)
	if err != nil {
		t.Fatalf("a CA that cannot derive must not stop the gateway: %v", err)
	}
	r2, err := loadOrCreateHostKey(dir+"/c/key", underivable)
	if err != nil {
		t.Fatal(err)
	}
	if sameKey(r1.PublicKey(), r2.PublicKey()) || sameKey(r1.PublicKey(), fresh.PublicKey()) {
		t.Error("without derivation the host keys are not random")
	}
}
