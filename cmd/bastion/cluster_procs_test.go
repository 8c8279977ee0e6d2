package main

// Issue 15's cross-gateway tests against real `bastion serve` processes
// (the cluster harness: a 3-member etcd in the test process, three
// gateways sharing one CA, a real sshd target, the real OpenSSH client):
// a lock, a revocation, a ban and a one-time login value taken on one
// gateway hold on the others. The in-process versions are in
// gateway/cluster_e2e_test.go.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestClusterProcs shares one three-gateway cluster (with per-gateway
// krl_file and the login service on the dev IdP) across subtests; each
// subtest leaves the state as it found it (unlock, unban) or uses a
// certificate of its own (revoke).
func TestClusterProcs(t *testing.T) {
	_, oidcSection := rollingIdP(t)
	e := startClusterGatewaysWith(t, 3, "krl_file: krl-$GATEWAY_ID.krl\n"+oidcSection)
	t.Run("LockCutsJumpElsewhere", func(t *testing.T) { procsLock(t, e) })
	t.Run("RevokeRefusedElsewhere", func(t *testing.T) { procsRevoke(t, e) })
	t.Run("BanHoldsElsewhere", func(t *testing.T) { procsBan(t, e) })
	t.Run("LoginCodeReplayRefused", func(t *testing.T) { procsLoginReplay(t, e) })
}

// procsClient is a fresh OpenSSH client whose key the fleet's user CA
// signed for the jump user with key id keyID (and serial, if not 0),
// trusting the host CA.
func (e *clusterEnv) procsClient(keyID string, serial uint64) *testbed.Client {
	e.t.Helper()
	c := testbed.NewClient(e.t)
	args := []string{"ca", "sign", "-I", keyID, "-n", e.user}
	if serial != 0 {
		args = append(args, "--serial", fmt.Sprint(serial))
	}
	mustRun(e.t, e.signer(), append(args, c.KeyPath+".pub")...)
	if err := os.WriteFile(c.KnownHosts, mustRead(e.t, e.knownHosts), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// admin runs an admin command on g over SSH as the harness's admin
// (carol, groups admins and auditors), as an operator does:
// `ssh -p PORT carol@gateway lock alice --reason ...`.
func (e *clusterEnv) admin(ctx context.Context, g *clusterGateway, command ...string) (string, error) {
	args := append([]string{"-i", e.auditor, "-o", "CertificateFile=" + e.auditor + "-cert.pub", "-o", "IdentitiesOnly=yes",
		"-p", portOf(g.SSHAddr), "carol@127.0.0.1"}, command...)
	out, err := e.client.Command(ctx, "ssh", args...).CombinedOutput()
	return string(out), err
}

// waitEvent waits until g's audit log has an event of typ whose fields
// include want, and returns it.
func (e *clusterEnv) waitEvent(g *clusterGateway, typ string, want map[string]string) audit.Event {
	e.t.Helper()
	var seen []audit.Event
	deadline := time.Now().Add(10 * time.Second)
	for {
		seen = e.remoteEvents(g, typ)
		for _, ev := range seen {
			ok := true
			for k, v := range want {
				if ev.Fields[k] != v {
					ok = false
				}
			}
			if ok {
				return ev
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s has no %s record with %v; its %s records: %+v", g.ID, typ, want, typ, seen)
			return audit.Event{}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// procsLock: an admin locks a user over SSH on gateway A while that
// user holds a live `ssh -J` session through gateway B; the session's
// client exits less than a second after the lock command returns. Run
// five times with A and B rotating over the three gateways. After the
// first, new jumps through the other two gateways are refused, B records
// that it applied A's lock and ended the connection for it; an unlock
// on the third gateway lets the user in through A again.
func procsLock(t *testing.T, e *clusterEnv) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const target = "procs-victim"
	victim := e.procsClient(target, 0)
	// cuts: lock command returned → session client exited (negative when
	// the session ended before the admin's ssh client had exited);
	// fromStart: lock command started → session client exited.
	var cuts, fromStart []time.Duration
	for round := range 5 {
		a, b, c := e.gw[round%3], e.gw[(round+1)%3], e.gw[(round+2)%3]
		sess := e.jumpCommandAs(ctx, victim, b, "echo", "up;", "exec", "sleep", "300")
		stdout, err := sess.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		sess.Stderr = &stderr
		if err := sess.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan time.Time, 1)
		up := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			up <- line
			_, _ = io.Copy(io.Discard, stdout)
			_ = sess.Wait()
			exited <- time.Now()
		}()
		select {
		case line := <-up:
			if strings.TrimSpace(line) != "up" {
				t.Fatalf("round %d: the session through %s did not start: %q\n%s", round, b.ID, line, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the session through %s did not start within 30s", round, b.ID)
		}
		began := time.Now()
		out, err := e.admin(ctx, a, "lock", target, "--reason", fmt.Sprintf("procs-round-%d", round))
		returned := time.Now()
		if err != nil || !strings.Contains(out, "locked "+target) {
			t.Fatalf("round %d: lock over ssh on %s: %v\n%s", round, a.ID, err, out)
		}
		select {
		case at := <-exited:
			cut := at.Sub(returned)
			t.Logf("round %d: lock on %s (command took %s) cut the session through %s %s after the command returned",
				round, a.ID, returned.Sub(began).Round(time.Millisecond), b.ID, cut.Round(time.Millisecond))
			if cut > time.Second {
				t.Errorf("round %d: the session through %s ended %s after the lock on %s returned, want < 1s", round, b.ID, cut, a.ID)
			}
			cuts, fromStart = append(cuts, cut), append(fromStart, at.Sub(began))
		case <-time.After(5 * time.Second):
			_ = sess.Process.Kill()
			<-exited
			t.Fatalf("round %d: the locked user's session through %s still runs 5s after the lock on %s", round, b.ID, a.ID)
		}
		if round == 0 {
			e.waitEvent(a, "user.locked", map[string]string{"target": target, "reason": "procs-round-0"})
			e.waitEvent(b, "state.applied", map[string]string{"kind": "lock", "target": target, "from_gateway": a.ID})
			e.waitEvent(b, "connection.ended", map[string]string{"key_id": target, "reason": gateway.ReasonLocked})
			for _, g := range []*clusterGateway{b, c} {
				out, err := e.jumpCommandAs(ctx, victim, g, "echo", "reached").CombinedOutput()
				if err == nil || strings.Contains(string(out), "reached") {
					t.Fatalf("a user locked on %s jumped through %s: %v\n%s", a.ID, g.ID, err, out)
				}
				e.waitEvent(g, "auth.failed", map[string]string{"key_id": target, "reason": gateway.ReasonLocked})
			}
		}
		if out, err := e.admin(ctx, c, "unlock", target); err != nil || !strings.Contains(out, "unlocked "+target) {
			t.Fatalf("round %d: unlock over ssh on %s: %v\n%s", round, c.ID, err, out)
		}
		waitFor(t, 10*time.Second, "the unlock on "+c.ID+" letting the user through "+a.ID, func() bool {
			out, err := e.jumpCommandAs(ctx, victim, a, "echo", "back").CombinedOutput()
			return err == nil && strings.Contains(string(out), "back")
		})
	}
	for what, ds := range map[string][]time.Duration{"lock command returned": cuts, "lock command started": fromStart} {
		slices.Sort(ds)
		t.Logf("%s → ssh -J client through another gateway exited, over %d rounds: min %s, median %s, max %s",
			what, len(ds), ds[0].Round(time.Millisecond), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
	}
}

// krlRevokes runs ssh-keygen -Q on krl for cert: true when it says
// REVOKED, false when it says ok; anything else fails the test.
func krlRevokes(t *testing.T, krl, cert string) bool {
	t.Helper()
	out, err := exec.Command("ssh-keygen", "-Q", "-f", krl, cert).CombinedOutput()
	switch {
	case err != nil && strings.Contains(string(out), "REVOKED"):
		return true
	case err == nil && strings.Contains(string(out), ": ok"):
		return false
	}
	t.Fatalf("ssh-keygen -Q -f %s %s: %v\n%s", krl, cert, err, out)
	return false
}

// procsRevoke: an admin revokes a certificate by serial over SSH on B;
// the certificate's next jump through C (right after the command
// returns) is refused, C records that it applied B's revocation and the
// refusal, and every gateway's krl_file lists it (ssh-keygen -Q).
func procsRevoke(t *testing.T, e *clusterEnv) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	b, c := e.gw[1], e.gw[2]
	const serial = 7770015
	revokee := e.procsClient("procs-revokee", serial)
	krl := func(g *clusterGateway) string { return filepath.Join(filepath.Dir(g.Cfg), "krl-"+g.ID+".krl") }
	for _, g := range e.gw {
		if krlRevokes(t, krl(g), revokee.CertPath) {
			t.Fatalf("%s's krl_file revokes the certificate before any revocation", g.ID)
		}
	}
	if out, err := e.jumpCommandAs(ctx, revokee, c, "echo", "reached").CombinedOutput(); err != nil || !strings.Contains(string(out), "reached") {
		t.Fatalf("jump through %s before the revocation: %v\n%s", c.ID, err, out)
	}
	out, err := e.admin(ctx, b, "revoke", "--serial", fmt.Sprint(serial), "--reason", "procs-lost")
	if err != nil || strings.Contains(out, "warning") {
		t.Fatalf("revoke over ssh on %s: %v\n%s", b.ID, err, out)
	}
	if out, err := e.jumpCommandAs(ctx, revokee, c, "echo", "reached").CombinedOutput(); err == nil || strings.Contains(string(out), "reached") {
		t.Fatalf("a certificate revoked on %s jumped through %s: %v\n%s", b.ID, c.ID, err, out)
	}
	e.waitEvent(b, "cert.revoked", map[string]string{"kind": "serial", "value": fmt.Sprint(serial)})
	e.waitEvent(c, "state.applied", map[string]string{"kind": "revoke", "target": fmt.Sprintf("serial %d", serial), "from_gateway": b.ID})
	e.waitEvent(c, "auth.failed", map[string]string{"serial": fmt.Sprint(serial), "reason": gateway.ReasonRevoked})
	for _, g := range e.gw {
		waitFor(t, 5*time.Second, g.ID+"'s krl_file listing the certificate revoked on "+b.ID, func() bool {
			return krlRevokes(t, krl(g), revokee.CertPath)
		})
	}
}

// gatewayBans is `bans --json` of g over SSH.
func (e *clusterEnv) gatewayBans(ctx context.Context, g *clusterGateway) []gateway.BanEntry {
	e.t.Helper()
	out, err := e.admin(ctx, g, "bans", "--json")
	if err != nil {
		e.t.Fatalf("bans --json on %s: %v\n%s", g.ID, err, out)
	}
	var bans []gateway.BanEntry
	if err := json.Unmarshal([]byte(out), &bans); err != nil {
		e.t.Fatalf("bans --json on %s: %v\n%s", g.ID, err, out)
	}
	return bans
}

func banUntil(bans []gateway.BanEntry, src string) (time.Time, bool) {
	for _, b := range bans {
		if b.Source == src {
			return b.Until, true
		}
	}
	return time.Time{}, false
}

// procsBan: a source that fails authentication ban_after_failures times
// on A (the real ssh client bound to 127.0.0.7, with a key no CA
// signed) is banned on A and on B, until the same time (bans --json on
// each); B drops that source's connections, even with a valid
// certificate, while another source gets in. unban on B lifts the ban
// on A too.
func procsBan(t *testing.T, e *clusterEnv) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a, b := e.gw[0], e.gw[1]
	const src = "127.0.0.7"
	stranger := testbed.NewClient(t)
	if err := os.WriteFile(stranger.KnownHosts, mustRead(t, e.knownHosts), 0o600); err != nil {
		t.Fatal(err)
	}
	direct := func(c *testbed.Client, from string, g *clusterGateway) (string, error) {
		out, err := c.Command(ctx, "ssh", "-b", from, "-p", portOf(g.SSHAddr), e.user+"@127.0.0.1", "info").CombinedOutput()
		return string(out), err
	}
	// Control: the valid certificate gets in from the source before.
	if out, err := direct(e.client, src, b); err != nil {
		t.Fatalf("info on %s from %s before any ban: %v\n%s", b.ID, src, err, out)
	}
	after := gateway.DefaultLimits().BanAfterFailures
	for i := range after {
		if out, err := direct(stranger, src, a); err == nil {
			t.Fatalf("attempt %d: a key no CA signed logged in to %s: %s", i+1, a.ID, out)
		}
	}
	untilA, banned := banUntil(e.gatewayBans(ctx, a), src)
	if !banned {
		t.Fatalf("%s is not banned on %s after %d failures", src, a.ID, after)
	}
	untilB, banned := banUntil(e.gatewayBans(ctx, b), src)
	if !banned {
		t.Fatalf("%s banned on %s is not banned on %s", src, a.ID, b.ID)
	}
	if d := untilB.Sub(untilA); d < -time.Second || d > time.Second {
		t.Errorf("%s bans %s until %s, %s until %s: not the same window", b.ID, src, untilB, a.ID, untilA)
	}
	e.waitEvent(b, "state.applied", map[string]string{"kind": "ban", "target": src, "from_gateway": a.ID})
	if out, err := direct(e.client, src, b); err == nil {
		t.Fatalf("%s let in a source banned on %s: %s", b.ID, a.ID, out)
	}
	if out, err := direct(e.client, "127.0.0.8", b); err != nil {
		t.Fatalf("%s refused another source while %s is banned: %v\n%s", b.ID, src, err, out)
	}
	if out, err := e.admin(ctx, b, "unban", src); err != nil {
		t.Fatalf("unban %s on %s: %v\n%s", src, b.ID, err, out)
	}
	waitFor(t, 5*time.Second, "the unban on "+b.ID+" lifting the ban on "+a.ID, func() bool {
		_, banned := banUntil(e.gatewayBans(ctx, a), src)
		return !banned
	})
	if out, err := direct(e.client, src, a); err != nil {
		t.Fatalf("info on %s from %s after the unban: %v\n%s", a.ID, src, err, out)
	}
}

// codeLoginSession is `ssh login@g login-code` through the real OpenSSH
// client: it sends a loopback redirect URI, hands the authorization URL
// the gateway answers to result, and sends what result returns as the
// browser's return.
func (e *clusterEnv) codeLoginSession(ctx context.Context, c *testbed.Client, g *clusterGateway, result func(gateway.CodeLoginURL) gateway.CodeLoginResult) (stdout, stderr string, err error) {
	e.t.Helper()
	sc := c.Command(ctx, "ssh", "-p", portOf(g.SSHAddr), gateway.LoginUser+"@127.0.0.1", "login-code")
	in, err := sc.StdinPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	outPipe, err := sc.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	var errb strings.Builder
	sc.Stderr = &errb
	if err := sc.Start(); err != nil {
		e.t.Fatal(err)
	}
	out := bufio.NewReader(outPipe)
	start, _ := json.Marshal(gateway.CodeLoginStart{RedirectURI: "http://127.0.0.1:45678/callback"})
	_, _ = in.Write(append(start, '\n'))
	line, rerr := out.ReadString('\n')
	var u gateway.CodeLoginURL
	if rerr == nil && json.Unmarshal([]byte(line), &u) == nil {
		msg, _ := json.Marshal(result(u))
		_, _ = in.Write(append(msg, '\n'))
	}
	rest, _ := io.ReadAll(out)
	in.Close()
	err = sc.Wait()
	return string(rest), errb.String(), err
}

// approveInBrowser signs in at the dev IdP as eng on the authorization
// URL and returns what the IdP redirects to the loopback callback.
func approveInBrowser(t *testing.T, authURL string) gateway.CodeLoginResult {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	var back url.Values
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if r.URL.Path == "/callback" && r.URL.Query().Get("state") != "" {
			back = r.URL.Query()
			return http.ErrUseLastResponse
		}
		return nil
	}}
	if status, body, err := submitForm(client, authURL, map[string]string{"username": "eng", "password": engPassword, "action": "approve"}); err != nil || back == nil {
		t.Fatalf("browser at the dev IdP: status %d, %v, no redirect to the callback:\n%s", status, err, body)
	}
	return gateway.CodeLoginResult{Code: back.Get("code"), State: back.Get("state")}
}

// procsLoginReplay: a browser login (login-code, the dev IdP) through A
// signs a certificate; the authorization code and state it used, handed
// to B's login service, are refused there as already used on another
// gateway (code_invalid: without the cluster-wide claim B would refuse
// A's state as bad_state instead), B records login.failed and signs
// nothing.
func procsLoginReplay(t *testing.T, e *clusterEnv) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	a, b := e.gw[0], e.gw[1]
	okBefore := len(e.remoteEvents(b, "login.ok"))
	c := testbed.NewClient(t)
	if err := os.WriteFile(c.KnownHosts, mustRead(t, e.knownHosts), 0o600); err != nil {
		t.Fatal(err)
	}
	var used gateway.CodeLoginResult
	stdout, stderr, err := e.codeLoginSession(ctx, c, a, func(u gateway.CodeLoginURL) gateway.CodeLoginResult {
		used = approveInBrowser(t, u.AuthURL)
		return used
	})
	if err != nil || !strings.Contains(stdout, "-cert-v01@openssh.com ") {
		t.Fatalf("browser login through %s: %v\nstdout: %s\nstderr: %s", a.ID, err, stdout, stderr)
	}
	if used.Code == "" {
		t.Fatal("the IdP returned no code")
	}
	replay := testbed.NewClient(t)
	if err := os.WriteFile(replay.KnownHosts, mustRead(t, e.knownHosts), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err = e.codeLoginSession(ctx, replay, b, func(gateway.CodeLoginURL) gateway.CodeLoginResult { return used })
	if err == nil || strings.Contains(stdout, "cert-v01") {
		t.Fatalf("the code used through %s logged in through %s: %v\nstdout: %s\nstderr: %s", a.ID, b.ID, err, stdout, stderr)
	}
	if !strings.Contains(stderr, "already used on another gateway") {
		t.Errorf("%s's refusal of a code used through %s does not say so:\n%s", b.ID, a.ID, stderr)
	}
	e.waitEvent(b, "login.failed", map[string]string{"flow": "pkce", "reason": oidc.ReasonCodeInvalid})
	if n := len(e.remoteEvents(b, "login.ok")); n != okBefore {
		t.Errorf("%s signed %d login certificates during the replay", b.ID, n-okBefore)
	}
}
