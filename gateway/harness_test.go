package gateway

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// testGateway is a real gateway on a loopback port with its own CA and
// audit log, and a real sshd target that trusts the CA.
type testGateway struct {
	t      *testing.T
	gw     *Gateway
	addr   string
	port   int
	layout ca.Layout
	store  *audit.Store
	auth   *ca.Authority
	revs   *ca.Revocations
	locks  *ca.Locks
	reg    *prometheus.Registry
	target *testbed.SSHD
	user   string // the login user on the target (and principal)
	// onlyCA makes client() trust hosts by the host CA alone (record
	// mode: the gateway presents a host certificate for the target).
	onlyCA bool
}

type gatewayOption func(*Config, *Deps)

// withResolver makes the gateway resolve names from table.
func withResolver(table map[string][]netip.Addr) gatewayOption {
	return func(_ *Config, d *Deps) { d.Resolver = mapResolver(table) }
}

// mapResolver is a Resolver backed by a map.
type mapResolver map[string][]netip.Addr

func (m mapResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := m[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// withoutBans turns banning off, for tests that fail on purpose many times
// from 127.0.0.1.
func withoutBans(c *Config, _ *Deps) { c.Limits.BanAfterFailures = 0 }

// startGateway starts a gateway whose access rules let the test login
// user reach the target sshd.
func startGateway(t *testing.T, opts ...gatewayOption) *testGateway {
	t.Helper()
	return startGatewayWithCA(t, "", opts...)
}

// startGatewayWithCA is startGateway with the CA keys copied from the
// data directory caFrom (gateways of one cluster share a CA), or a new CA
// when caFrom is "".
func startGatewayWithCA(t *testing.T, caFrom string, opts ...gatewayOption) *testGateway {
	t.Helper()
	testbed.RequireOpenSSH(t)
	tg := &testGateway{t: t, user: testbed.LoginUser(t), layout: ca.Layout{DataDir: t.TempDir()}, reg: prometheus.NewRegistry()}
	if caFrom == "" {
		if _, _, err := ca.Init(tg.layout, ca.InitOptions{}); err != nil {
			t.Fatal(err)
		}
	} else {
		copyCA(t, caFrom, tg.layout)
	}
	var err error
	if tg.store, err = audit.Open(tg.layout.AuditDB(), audit.Options{}); err != nil {
		t.Fatal(err)
	}
	if tg.auth, err = ca.New(ca.Config{Layout: tg.layout}, tg.store); err != nil {
		t.Fatal(err)
	}
	tg.revs, tg.locks = tg.auth.State().Revocations, tg.auth.State().Locks
	tg.target = testbed.StartSSHD(t, testbed.SSHDConfig{
		TrustedUserCAKeys: ca.ExportLines(ca.UserCA, tg.auth.TrustedKeys(ca.UserCA), ""),
	})
	cfg := Config{
		Listen:      "127.0.0.1:0",
		HostKeyPath: tg.layout.DataDir + "/gateway/ssh_host_ed25519_key",
		HostNames:   []string{"127.0.0.1", "localhost"},
		Access: []AccessRule{
			{Principals: []string{tg.user}, Hosts: []string{"127.0.0.1"}, Ports: []int{tg.target.Port}},
		},
		Limits:        DefaultLimits(),
		AdminGroups:   []string{"admins"},
		ShutdownGrace: 5 * time.Second,
	}
	deps := Deps{Authority: tg.auth, Audit: tg.store, Registry: tg.reg}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	tg.gw, err = New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg.addr = ln.Addr().String()
	tg.port = ln.Addr().(*net.TCPAddr).Port
	served := make(chan error, 1)
	go func() { served <- tg.gw.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tg.gw.Shutdown(ctx)
		<-served
		tg.store.Close()
	})
	return tg
}

// client returns an OpenSSH client holding a certificate from req (its Key
// is filled in) that trusts the gateway and target host keys.
func (tg *testGateway) client(req ca.Request) *testbed.Client {
	tg.t.Helper()
	c := testbed.NewClient(tg.t)
	c.TrustHostCA("*", tg.auth.PublicKey(ca.HostCA))
	if !tg.onlyCA {
		c.TrustHostKey(tg.target.Addr, tg.target.HostKeyPub)
	}
	c.StrictHostKeyChecking = "yes"
	if req.Kind == "" {
		req.Kind = ca.UserCA
	}
	if len(req.Principals) == 0 && req.Kind == ca.UserCA {
		req.Principals = []string{tg.user}
	}
	req.Key = c.PublicKey()
	cert, err := tg.auth.Sign(tg.t.Context(), req)
	if err != nil {
		tg.t.Fatal(err)
	}
	c.SetCertificate(gossh.MarshalAuthorizedKey(cert))
	return c
}

// jumpArgs are the ssh arguments to reach the target through the gateway
// as user; extra args (the remote command) follow.
func (tg *testGateway) jumpArgs(user string, extra ...string) []string {
	return append([]string{"-J", user + "@" + tg.addr, "-p", strconv.Itoa(tg.target.Port), tg.user + "@127.0.0.1"}, extra...)
}

// gatewayArgs are ssh arguments to run a command on the gateway itself.
func (tg *testGateway) gatewayArgs(user string, extra ...string) []string {
	return append([]string{"-p", strconv.Itoa(tg.port), user + "@127.0.0.1"}, extra...)
}

// events returns the audit events of type typ.
func (tg *testGateway) events(typ string) []audit.Event {
	tg.t.Helper()
	var out []audit.Event
	err := tg.store.Iterate(context.Background(), audit.Filter{Types: []string{typ}}, func(ev audit.Event) error {
		out = append(out, ev)
		return nil
	})
	if err != nil {
		tg.t.Fatal(err)
	}
	return out
}

// waitEvent waits (bounded) for an event of typ whose fields include all
// of want, since some are written as connections wind down.
func (tg *testGateway) waitEvent(t testing.TB, typ string, want map[string]string) audit.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, ev := range tg.events(typ) {
			if fieldsMatch(ev.Fields, want) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event with %v; have:\n%s", typ, want, tg.dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settledCount waits (bounded) until no new event of typ has arrived for
// half a second and returns how many there are: auth.failed records are
// written as a refused connection winds down, after the client has gone.
func (tg *testGateway) settledCount(typ string) int {
	tg.t.Helper()
	n, since := len(tg.events(typ)), time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if m := len(tg.events(typ)); m != n {
			n, since = m, time.Now()
		} else if time.Since(since) > 500*time.Millisecond {
			break
		}
	}
	return n
}

func fieldsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// dump renders the audit log for failure messages.
func (tg *testGateway) dump() string {
	var b strings.Builder
	_ = tg.store.Iterate(context.Background(), audit.Filter{}, func(ev audit.Event) error {
		b.WriteString(ev.Type + " " + ev.Actor + " ")
		for k, v := range ev.Fields {
			b.WriteString(k + "=" + v + " ")
		}
		b.WriteString("\n")
		return nil
	})
	return b.String()
}

// certSigner loads c's private key and pairs it with cert, for x/crypto
// clients that send what OpenSSH would not.
func certSigner(t testing.TB, c *testbed.Client, cert *gossh.Certificate) gossh.Signer {
	t.Helper()
	data, err := os.ReadFile(c.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	if cert == nil {
		return s
	}
	cs, err := gossh.NewCertSigner(cert, s)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// dialGateway logs in with x/crypto's client.
func (tg *testGateway) dialGateway(user string, auth ...gossh.AuthMethod) (*gossh.Client, error) {
	return gossh.Dial("tcp", tg.addr, &gossh.ClientConfig{
		User: user, Auth: auth, Timeout: 10 * time.Second,
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
	})
}

// certOf reads the certificate a testbed client holds.
func (tg *testGateway) certOf(c *testbed.Client) *gossh.Certificate {
	tg.t.Helper()
	data, err := os.ReadFile(c.CertPath)
	if err != nil {
		tg.t.Fatal(err)
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey(data)
	if err != nil {
		tg.t.Fatal(err)
	}
	return k.(*gossh.Certificate)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// liveSession starts a long jumped session for c and returns once it runs;
// the channel reports when the ssh process exits.
func (tg *testGateway) liveSession(t *testing.T, c *testbed.Client) <-chan error {
	t.Helper()
	cmd := c.Command(t.Context(), "ssh", tg.jumpArgs(tg.user, "echo", "started;", "sleep", "60")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); strings.TrimSpace(line) != "started" {
		t.Fatalf("the session did not start: %q", line)
	}
	return exited
}

// copyCA copies the CA files of the data directory from into l, private
// (0600 in a 0700 directory) as ca.Init makes them.
func copyCA(t *testing.T, from string, l ca.Layout) {
	t.Helper()
	src := ca.Layout{DataDir: from}.Dir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(src + "/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(l.Dir()+"/"+e.Name(), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
