package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// rrProxy is a TCP load balancer for tests, as HAProxy is configured in
// the compose demo: each connection goes to the next healthy backend
// (GET /healthz answers 200, checked every 100ms) round robin, and to the
// one after when a backend refuses the connection.
type rrProxy struct {
	ln       net.Listener
	backends []string
	health   []string
	healthy  []atomic.Bool
	next     atomic.Uint64
	wg       sync.WaitGroup
}

func startRRProxy(t *testing.T, backends, health []string) *rrProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &rrProxy{ln: ln, backends: backends, health: health, healthy: make([]atomic.Bool, len(backends))}
	done := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		hc := &http.Client{Timeout: time.Second}
		for {
			for i, u := range p.health {
				resp, err := hc.Get("http://" + u + "/healthz")
				p.healthy[i].Store(err == nil && resp.StatusCode == http.StatusOK)
				if err == nil {
					resp.Body.Close()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() { close(done); ln.Close(); p.wg.Wait() })
	return p
}

func (p *rrProxy) serve(c net.Conn) {
	defer c.Close()
	start := p.next.Add(1)
	var up net.Conn
	for _, healthyOnly := range []bool{true, false} {
		for i := range len(p.backends) {
			j := (int(start) + i) % len(p.backends)
			if healthyOnly && !p.healthy[j].Load() {
				continue
			}
			var err error
			if up, err = net.DialTimeout("tcp", p.backends[j], 2*time.Second); err == nil {
				break
			}
		}
		if up != nil {
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// rollingIdP starts the dev IdP for a cluster test: "eng" maps to the
// test login user. It returns the oidc: section for the gateways.
func rollingIdP(t *testing.T) (*devidp.Server, string) {
	t.Helper()
	user := testbed.LoginUser(t)
	idp, err := devidp.Start(t.Context(), devidp.Config{
		PollInterval: time.Second,
		Users: []devidp.User{
			{Subject: "sub-eng", Username: "eng", Email: user + "@example.com", EmailVerified: true, Groups: []string{"eng"}, Password: engPassword},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idp.Close() })
	section := fmt.Sprintf("oidc:\n  issuer: %s\n  client_id: %s\n", idp.Issuer(), idp.ClientID())
	if secret := idp.ClientSecret(); secret != "" {
		path := filepath.Join(t.TempDir(), "oidc-secret")
		if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
			t.Fatal(err)
		}
		section += "  client_secret_file: " + path + "\n"
	}
	return idp, section
}

// TestClusterRollingRestart restarts every gateway of a two-gateway
// cluster (real `bastion serve` processes on a 3-member etcd, with the
// login service on a real dev IdP), one at a time with SIGTERM, behind a
// round-robin TCP balancer that health-checks /healthz. Meanwhile one
// client makes new `ssh -J … true` jumps through the balancer back to
// back, and another runs `bastion login` (device flow, approved at the
// IdP when the code is shown) through the balancer back to back and
// jumps with each certificate it gets: every jump and every login
// succeeds, before, during and after each restart, and each new
// certificate works for a jump. Without cluster.drain (a stopping
// gateway answering 503 before it closes its listener) a jump that
// reached a gateway as it stopped was dropped before the SSH banner.
func TestClusterRollingRestart(t *testing.T) {
	idp, oidcSection := rollingIdP(t)
	env := startClusterGatewaysWith(t, 2, oidcSection)
	var addrs, health []string
	for _, g := range env.gw {
		addrs, health = append(addrs, g.SSHAddr), append(health, g.MetricsAddr)
	}
	lb := startRRProxy(t, addrs, health)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// The login client: bastion login's files in a fresh $HOME, and an
	// OpenSSH client that jumps with the key and certificate it leaves.
	home := newHome(t)
	loginDir := filepath.Join(home, ".ssh", "bastion")
	jumper := testbed.NewClient(t)
	if err := os.WriteFile(jumper.KnownHosts, mustRead(t, env.knownHosts), 0o600); err != nil {
		t.Fatal(err)
	}

	type result struct {
		phase string
		err   error
		out   string
		took  time.Duration
	}
	var (
		mu                   sync.Mutex
		phase                = "before"
		jumps, logins, certs []result
	)
	currentPhase := func() string {
		mu.Lock()
		defer mu.Unlock()
		return phase
	}
	add := func(to *[]result, r result) {
		mu.Lock()
		*to = append(*to, r)
		mu.Unlock()
	}
	stop := make(chan struct{})
	var loops sync.WaitGroup
	loops.Add(2)
	go func() {
		defer loops.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			p, began := currentPhase(), time.Now()
			args := []string{"-J", env.user + "@" + lb.ln.Addr().String(), "-p", fmt.Sprint(env.target.Port), env.user + "@127.0.0.1", "true"}
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			out, err := env.client.Command(cctx, "ssh", args...).CombinedOutput()
			ccancel()
			add(&jumps, result{p, err, string(out), time.Since(began)})
		}
	}()
	go func() {
		defer loops.Done()
		approve := func(line string) {
			if m := deviceCodeRE.FindStringSubmatch(line); m != nil {
				if err := idp.ApproveDevice(m[1], "eng"); err != nil {
					t.Errorf("approve %s: %v", m[1], err)
				}
			}
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			p, began := currentPhase(), time.Now()
			stdout, stderr, err := runLoginCLIContext(t, ctx, lb.ln.Addr().String(), approve)
			add(&logins, result{p, err, stdout + stderr, time.Since(began)})
			if err != nil {
				continue
			}
			// The new certificate, for a jump through the balancer.
			began = time.Now()
			cert := readCert(t, filepath.Join(loginDir, "id_ed25519-cert.pub"))
			for to, data := range map[string][]byte{
				jumper.KeyPath:          mustRead(t, filepath.Join(loginDir, "id_ed25519")),
				jumper.KeyPath + ".pub": gossh.MarshalAuthorizedKey(cert.Key),
				jumper.CertPath:         gossh.MarshalAuthorizedKey(cert),
			} {
				if err := os.WriteFile(to, data, 0o600); err != nil {
					t.Error(err)
				}
			}
			args := []string{"-J", env.user + "@" + lb.ln.Addr().String(), "-p", fmt.Sprint(env.target.Port), env.user + "@127.0.0.1", "true"}
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			out, err := jumper.Command(cctx, "ssh", args...).CombinedOutput()
			ccancel()
			add(&certs, result{p, err, string(out), time.Since(began)})
		}
	}()
	setPhase := func(p string) {
		mu.Lock()
		phase = p
		mu.Unlock()
	}
	time.Sleep(3 * time.Second)
	for _, g := range env.gw {
		setPhase(g.ID + " stopped")
		g.Stop()
		time.Sleep(3 * time.Second)
		setPhase(g.ID + " restarting")
		g.Restart()
		setPhase("after " + g.ID)
		time.Sleep(3 * time.Second)
	}
	close(stop)
	loops.Wait()

	report := func(what string, rs []result) map[string]int {
		counts := map[string]int{}
		var failed []string
		var slowest time.Duration
		for _, r := range rs {
			counts[r.phase]++
			slowest = max(slowest, r.took)
			if r.err != nil {
				failed = append(failed, fmt.Sprintf("[%s] %v: %s", r.phase, r.err, strings.TrimSpace(r.out)))
			}
		}
		t.Logf("%s: %d, %d failed, slowest %s; per phase: %v", what, len(rs), len(failed), slowest.Round(time.Millisecond), counts)
		if len(failed) > 0 {
			t.Errorf("%d of %d %s failed during the rolling restart:\n%s", len(failed), len(rs), what, strings.Join(failed, "\n"))
		}
		return counts
	}
	jumpCounts := report("jumps", jumps)
	loginCounts := report("logins (bastion login, device flow)", logins)
	report("jumps with a certificate fresh from bastion login", certs)
	for _, g := range env.gw {
		if jumpCounts[g.ID+" stopped"] == 0 {
			t.Errorf("no jump ran while %s was stopped", g.ID)
		}
		if loginCounts[g.ID+" stopped"] == 0 {
			t.Errorf("no login ran while %s was stopped", g.ID)
		}
	}
	if len(certs) < 2*len(env.gw) {
		t.Errorf("only %d logins yielded a certificate that was tried for a jump", len(certs))
	}
	// Every gateway signed some of them, and the cluster signed one
	// certificate per login.
	signed := map[string]int{}
	total := 0
	for _, g := range env.gw {
		n := len(env.remoteEvents(g, "login.ok"))
		signed[g.ID], total = n, total+n
		if n == 0 {
			t.Errorf("%s signed no login certificate: the balancer never sent it a login", g.ID)
		}
	}
	t.Logf("login certificates signed per gateway: %v", signed)
	if total != len(logins) {
		t.Errorf("%d logins, %d login.ok records across the cluster", len(logins), total)
	}
}

// TestClusterLoginCutByRestart: a `bastion login` waiting for approval
// on a gateway that is stopped (SIGTERM, as in a rolling restart) cannot
// move to another gateway: the device code is the stopping gateway's,
// which polls the IdP for it, and no other gateway may (it is claimed in
// etcd). So it must fail, at once and clearly: the CLI exits with a
// message that the gateway shut down during the login and to run
// `bastion login` again, and the gateway records the login as failed
// with reason shutdown. The next `bastion login` through the balancer,
// while that gateway is still down, succeeds.
func TestClusterLoginCutByRestart(t *testing.T) {
	idp, oidcSection := rollingIdP(t)
	env := startClusterGatewaysWith(t, 2, oidcSection)
	newHome(t)
	victim := env.gw[0]
	shown := make(chan string, 1)
	type outcome struct {
		stdout, stderr string
		err            error
	}
	done := make(chan outcome, 1)
	go func() {
		stdout, stderr, err := runLoginCLIContext(t, t.Context(), victim.SSHAddr, func(line string) {
			if m := deviceCodeRE.FindStringSubmatch(line); m != nil {
				shown <- m[1]
			}
		})
		done <- outcome{stdout, stderr, err}
	}()
	var code string
	select {
	case code = <-shown:
	case o := <-done:
		t.Fatalf("the login ended before it showed a code: %v\n%s", o.err, o.stderr)
	case <-time.After(30 * time.Second):
		t.Fatal("no device code shown within 30s")
	}
	stopped := time.Now()
	victim.Stop()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("bastion login still waits 30s after its gateway stopped")
	}
	t.Logf("bastion login ended %s after SIGTERM to its gateway: %v\n%s", time.Since(stopped).Round(time.Millisecond), o.err, o.stderr)
	if o.err == nil {
		t.Fatalf("a login whose gateway stopped succeeded:\n%s", o.stderr)
	}
	if msg := o.err.Error() + o.stderr; !strings.Contains(msg, "shutting down") || !strings.Contains(msg, "bastion login") {
		t.Errorf("the CLI does not say the gateway shut down and to log in again:\nerr: %v\nstderr: %s", o.err, o.stderr)
	}
	// The code shown is worthless now: approving it signs nothing
	// anywhere (checked below: one login.ok in the cluster, the next
	// login's).
	_ = idp.ApproveDevice(code, "eng")

	// Through the balancer, with the victim still down, a new login works.
	lb := startRRProxy(t, []string{victim.SSHAddr, env.gw[1].SSHAddr}, []string{victim.MetricsAddr, env.gw[1].MetricsAddr})
	approve := func(line string) {
		if m := deviceCodeRE.FindStringSubmatch(line); m != nil {
			if err := idp.ApproveDevice(m[1], "eng"); err != nil {
				t.Errorf("approve: %v", err)
			}
		}
	}
	if _, stderr, err := runLoginCLI(t, lb.ln.Addr().String(), approve); err != nil {
		t.Fatalf("login through the balancer with %s down: %v\n%s", victim.ID, err, stderr)
	}
	victim.Restart()
	var failed []audit.Event
	for _, ev := range env.remoteEvents(victim, "login.failed") {
		if ev.Fields["flow"] == "device" {
			failed = append(failed, ev)
		}
	}
	if len(failed) != 1 || failed[0].Fields["reason"] != "shutdown" {
		t.Errorf("%s's record of the login it cut: %+v", victim.ID, failed)
	}
	if a, b := len(env.remoteEvents(victim, "login.ok")), len(env.remoteEvents(env.gw[1], "login.ok")); a+b != 1 {
		t.Errorf("login.ok records: %s %d, %s %d; want one in all", victim.ID, a, env.gw[1].ID, b)
	}
}
