package gateway

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// startClusterLogin starts a 3-member etcd and n gateways of one cluster
// whose login services trust one dev IdP; edit, when set, edits each
// gateway's relying-party configuration (after the cluster's claim hook
// is set, as serve sets it).
func startClusterLogin(t *testing.T, n int, edit func(*oidc.Config)) (*testCluster, []*loginGateway) {
	t.Helper()
	tc := startTestEtcd(t)
	var lgs []*loginGateway
	for i := range n {
		lo := loginOptions{caFrom: tc.caDir}
		if i > 0 {
			lo.sharedIdP = lgs[0].idp
		}
		tc.addGateway(t, i, clusterOptions{}, func(opts ...gatewayOption) *testGateway {
			cl := tc.cls[i]
			lo.oidc = func(oc *oidc.Config) {
				oc.Claim = cl.Claim
				if edit != nil {
					edit(oc)
				}
			}
			lg := startLoginGatewayWith(t, lo, opts...)
			lgs = append(lgs, lg)
			return lg.testGateway
		})
	}
	return tc, lgs
}

// sameDeviceCode is an IdP transport that hands every gateway the device
// code it handed the first: an IdP whose codes collide, or one that
// answers a retried request with the code it already issued. The gateways
// then hold one device code between them, which only the cluster-wide
// claim keeps to one of them.
type sameDeviceCode struct {
	next http.RoundTripper

	mu     sync.Mutex
	status int
	header http.Header
	body   []byte
	served int
}

func (s *sameDeviceCode) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "device_authorization") {
		return s.next.RoundTrip(r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.body == nil {
		resp, err := s.next.RoundTrip(r)
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		s.status, s.header, s.body = resp.StatusCode, resp.Header.Clone(), body
	}
	s.served++
	return &http.Response{StatusCode: s.status, Header: s.header.Clone(), Body: io.NopCloser(bytes.NewReader(s.body)),
		ContentLength: int64(len(s.body)), Request: r, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}, nil
}

// deviceResult is one `ssh login@gateway` device login.
type deviceResult struct {
	stdout, stderr string
	exit           int
	took           time.Duration
}

// TestClusterDeviceCodeClaimedOnce: two gateways of a cluster are handed
// the same device code by the IdP (sameDeviceCode) and two real OpenSSH
// device logins start through them at the same moment. The code is
// approved once at the real dev IdP. Exactly one login yields a
// certificate; the other is refused at once, before it shows a code to
// approve, with device_code_invalid and a message saying the code was
// used on another gateway, and its gateway records login.failed. Without
// the cluster-wide claim both gateways would wait on the code.
func TestClusterDeviceCodeClaimedOnce(t *testing.T) {
	rt := &sameDeviceCode{next: http.DefaultTransport}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: rt}
	_, lgs := startClusterLogin(t, 2, func(oc *oidc.Config) { oc.HTTPClient = hc })

	var approveOnce sync.Once
	approvals := 0
	var wg sync.WaitGroup
	results := make([]deviceResult, len(lgs))
	clients := make([]*testbed.Client, len(lgs))
	start := make(chan struct{})
	for i, lg := range lgs {
		c := testbed.NewClient(t)
		c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			began := time.Now()
			out, errText, exit, _ := lg.deviceLogin(t, c, func(code string) error {
				var err error
				approveOnce.Do(func() { approvals++; err = lgs[0].idp.ApproveDevice(code, "eng") })
				return err
			})
			results[i] = deviceResult{out, errText, exit, time.Since(began)}
		}()
	}
	close(start)
	wg.Wait()

	var won, lost []int
	for i, r := range results {
		if r.exit == 0 {
			won = append(won, i)
		} else {
			lost = append(lost, i)
		}
		t.Logf("gw-%d: exit %d after %s", i, r.exit, r.took.Round(time.Millisecond))
	}
	rt.mu.Lock()
	served := rt.served
	rt.mu.Unlock()
	if served != 2 {
		t.Fatalf("the IdP handed out the device code %d times, want 2 (one per gateway)", served)
	}
	if len(won) != 1 || len(lost) != 1 || approvals != 1 {
		t.Fatalf("one approved device code: %d logins got a certificate, %d failed, %d approvals; results %+v", len(won), len(lost), approvals, results)
	}
	w, l := results[won[0]], results[lost[0]]
	cert := parseCert(t, w.stdout)
	if cert.ValidPrincipals[0] != lgs[won[0]].user || string(cert.Key.Marshal()) != string(clients[won[0]].PublicKey().Marshal()) {
		t.Errorf("the winner's certificate: principals %v, key %s", cert.ValidPrincipals, gossh.FingerprintSHA256(cert.Key))
	}
	if l.stdout != "" || strings.Contains(l.stderr, "enter the code") ||
		!strings.Contains(l.stderr, "login failed ("+oidc.ReasonDeviceCodeInvalid+")") || !strings.Contains(l.stderr, "already used on another gateway") {
		t.Errorf("the second gateway on the same device code:\nstdout: %q\nstderr: %s", l.stdout, l.stderr)
	}
	loser := lgs[lost[0]]
	loser.waitEvent(t, "login.failed", map[string]string{"flow": "device", "reason": oidc.ReasonDeviceCodeInvalid,
		"key_fp": gossh.FingerprintSHA256(clients[lost[0]].PublicKey())})
	issued := 0
	for _, lg := range lgs {
		issued += len(lg.events("login.ok"))
	}
	if issued != 1 {
		t.Errorf("the cluster issued %d certificates for one approved device code", issued)
	}
}

// codeSession is a login-code session held open at the point where the
// browser has brought the code back: the test decides what to send.
type codeSession struct {
	url  chan CodeLoginURL
	send chan *CodeLoginResult
	res  chan testbed.Result
}

// openCodeSession runs `ssh login@gateway login-code` with c in the
// background.
func openCodeSession(t *testing.T, lg *loginGateway, c *testbed.Client) *codeSession {
	s := &codeSession{url: make(chan CodeLoginURL, 1), send: make(chan *CodeLoginResult, 1), res: make(chan testbed.Result, 1)}
	go func() {
		s.res <- lg.codeLogin(t, c, func(u CodeLoginURL) *CodeLoginResult {
			s.url <- u
			return <-s.send
		})
	}()
	return s
}

func (s *codeSession) authURL(t *testing.T) CodeLoginURL {
	t.Helper()
	select {
	case u := <-s.url:
		return u
	case r := <-s.res:
		t.Fatalf("the login-code session ended before it sent the authorization URL: %s", r)
	case <-time.After(30 * time.Second):
		t.Fatal("no authorization URL within 30s")
	}
	return CodeLoginURL{}
}

func (s *codeSession) result(t *testing.T) testbed.Result {
	t.Helper()
	select {
	case r := <-s.res:
		return r
	case <-time.After(60 * time.Second):
		t.Fatal("the login-code session did not end within 60s")
	}
	return testbed.Result{}
}

// TestClusterAuthCodeClaimedOnce: the authorization code of a browser
// (PKCE) login is good once across the cluster. Handed at the same
// moment to A (with A's state) and to B (with B's own state, as an
// attacker who saw the redirect would), exactly one gateway takes it to
// the IdP and the other refuses it as used on another gateway; replayed
// through B after A redeemed it, it is refused the same way, before B
// asks the IdP. Each refusal is a login.failed code_invalid on the
// refusing gateway, and the cluster signs at most one certificate per
// code.
func TestClusterAuthCodeClaimedOnce(t *testing.T) {
	_, lgs := startClusterLogin(t, 2, nil)
	a, b := lgs[0], lgs[1]
	newClient := func() *testbed.Client {
		c := testbed.NewClient(t)
		c.TrustHostCA("*", a.auth.PublicKey(ca.HostCA))
		return c
	}
	issued := func() int { return len(a.events("login.ok")) + len(b.events("login.ok")) }

	// Race: one code, both gateways, released together.
	sa, sb := openCodeSession(t, a, newClient()), openCodeSession(t, b, newClient())
	ua, ub := sa.authURL(t), sb.authURL(t)
	code := approveAs(t, "eng")(ua)
	if code.Code == "" || code.State != ua.State {
		t.Fatalf("the IdP did not redirect with a code for A's state: %+v", code)
	}
	sa.send <- code
	sb.send <- &CodeLoginResult{Code: code.Code, State: ub.State}
	ra, rb := sa.result(t), sb.result(t)
	var refused []testbed.Result
	for _, r := range []testbed.Result{ra, rb} {
		if r.ExitCode != 0 && strings.Contains(r.Stderr, "already used on another gateway") {
			refused = append(refused, r)
		}
	}
	if len(refused) != 1 {
		t.Fatalf("one code sent to two gateways at once: want exactly one refused as used elsewhere\nA: %s\nB: %s", ra, rb)
	}
	if ra.ExitCode == 0 && rb.ExitCode == 0 {
		t.Fatalf("one code signed through both gateways")
	}
	if n := issued(); n > 1 {
		t.Fatalf("one authorization code: %d certificates", n)
	}
	t.Logf("race: A exit %d, B exit %d (B holds the wrong PKCE verifier for the code: if B claimed first, the IdP refused it and A was refused as used elsewhere)", ra.ExitCode, rb.ExitCode)

	// Replay after a redemption: A signs, then B refuses the code without
	// asking the IdP.
	before := issued()
	sa = openCodeSession(t, a, newClient())
	ua = sa.authURL(t)
	code = approveAs(t, "eng")(ua)
	sa.send <- code
	if r := sa.result(t); r.ExitCode != 0 {
		t.Fatalf("browser login through A: %s", r)
	}
	thief := newClient()
	sb = openCodeSession(t, b, thief)
	ub = sb.authURL(t)
	sb.send <- &CodeLoginResult{Code: code.Code, State: ub.State}
	r := sb.result(t)
	if r.ExitCode == 0 || r.Stdout != "" || !strings.Contains(r.Stderr, "login failed ("+oidc.ReasonCodeInvalid+")") || !strings.Contains(r.Stderr, "already used on another gateway") {
		t.Fatalf("A's redeemed code replayed through B: %s", r)
	}
	b.waitEvent(t, "login.failed", map[string]string{"flow": "pkce", "reason": oidc.ReasonCodeInvalid, "key_fp": gossh.FingerprintSHA256(thief.PublicKey())})
	if n := issued() - before; n != 1 {
		t.Errorf("one redeemed code and its replay: %d certificates", n)
	}
	if all := a.dump() + b.dump(); strings.Contains(all, code.Code) {
		t.Error("an audit log holds the authorization code")
	}
}

// TestClusterLoginClaimFailsClosed: with etcd's quorum gone at the
// moment a login's one-time value is claimed, the login is refused (fail
// closed) with cluster_unavailable, a message that says etcd does not
// answer and to try again, and a login.failed record: the browser login
// whose code comes back after the quorum went, and a device login
// started after (refused before it shows a code to approve).
func TestClusterLoginClaimFailsClosed(t *testing.T) {
	tc, lgs := startClusterLogin(t, 1, nil)
	a := lgs[0]
	c := testbed.NewClient(t)
	c.TrustHostCA("*", a.auth.PublicKey(ca.HostCA))
	s := openCodeSession(t, a, c)
	code := approveAs(t, "eng")(s.authURL(t))
	if err := tc.etcd.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := tc.etcd.Stop(2); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	s.send <- code
	r := s.result(t)
	t.Logf("browser login refused %s after the code came back", time.Since(sent).Round(time.Millisecond))
	checkRefusal := func(r testbed.Result, flow string, key gossh.PublicKey) {
		t.Helper()
		want := "login failed (" + oidc.ReasonClusterUnavailable + "): the login cannot be recorded as used across the cluster (etcd does not answer), so it is refused; try again shortly"
		if r.ExitCode == 0 || r.Stdout != "" || !strings.Contains(r.Stderr, want) {
			t.Fatalf("%s login with etcd's quorum gone: %s", flow, r)
		}
		a.waitEvent(t, "login.failed", map[string]string{"flow": flow, "reason": oidc.ReasonClusterUnavailable, "key_fp": gossh.FingerprintSHA256(key)})
	}
	checkRefusal(r, "pkce", c.PublicKey())

	d := testbed.NewClient(t)
	d.TrustHostCA("*", a.auth.PublicKey(ca.HostCA))
	out, errText, exit, _ := a.deviceLogin(t, d, func(string) error { return nil })
	if strings.Contains(errText, "enter the code") {
		t.Errorf("a device code was shown for approval though it could not be claimed:\n%s", errText)
	}
	checkRefusal(testbed.Result{Stdout: out, Stderr: errText, ExitCode: exit}, "device", d.PublicKey())
	if n := len(a.events("login.ok")); n != 0 {
		t.Errorf("%d certificates signed without etcd", n)
	}
}
