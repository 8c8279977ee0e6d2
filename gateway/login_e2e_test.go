package gateway

import (
	"bufio"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// loginGateway is a gateway whose login service talks to a real OIDC
// provider (devidp, on zitadel's OpenID-certified op package).
type loginGateway struct {
	*testGateway
	idp    *devidp.Server
	issuer string
	user   string
}

// loginOptions vary startLoginGatewayWith.
type loginOptions struct {
	// idp edits the dev IdP's configuration (a confidential client, ...).
	idp func(*devidp.Config)
	// oidc edits the gateway's relying party configuration.
	oidc func(*oidc.Config)
	// noIdP starts no IdP: the issuer is a loopback port where nothing
	// listens (yet); startIdP starts it later.
	noIdP bool
	// sharedIdP, when set, is an IdP already running (gateways of one
	// cluster trust the same one); no new IdP is started.
	sharedIdP *devidp.Server
	// caFrom, when set, is the data directory whose CA the gateway uses
	// (see startGatewayWithCA).
	caFrom string
}

func startLoginGateway(t *testing.T, opts ...gatewayOption) *loginGateway {
	return startLoginGatewayWith(t, loginOptions{}, opts...)
}

// idpUsers are the dev IdP's users for the gateway tests.
func idpUsers(user string) []devidp.User {
	return []devidp.User{
		{Subject: "sub-eng", Username: "eng", Email: user + "@example.com", EmailVerified: true, Groups: []string{"eng"}, Password: "pw"},
		{Subject: "sub-root", Username: "rooty", Email: "root@example.com", EmailVerified: true, Password: "pw"},
		{Subject: "sub-unverified", Username: "unv", Email: "unv@example.com", EmailVerified: false, Password: "pw"},
		{Subject: "sub-dba", Username: "dba", Email: "dbauser@example.com", EmailVerified: true, Groups: []string{"dba"}, Password: "pw"},
		{Subject: "sub-outsider", Username: "outsider", Email: "mallory@elsewhere.test", EmailVerified: true, Password: "pw"},
	}
}

// startIdP starts the dev IdP at issuer (an address chosen earlier).
func (lg *loginGateway) startIdP(t *testing.T, lo loginOptions, issuer string) {
	t.Helper()
	cfg := devidp.Config{PollInterval: time.Second, Users: idpUsers(lg.user), Issuer: issuer}
	if lo.idp != nil {
		lo.idp(&cfg)
	}
	idp, err := devidp.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idp.Close() })
	lg.idp = idp
}

func startLoginGatewayWith(t *testing.T, lo loginOptions, opts ...gatewayOption) *loginGateway {
	t.Helper()
	user := testbed.LoginUser(t)
	lg := &loginGateway{}
	issuer := ""
	clientID, secret := "bastion", ""
	if lo.sharedIdP != nil {
		lg.idp = lo.sharedIdP
		issuer, clientID, secret = lg.idp.Issuer(), lg.idp.ClientID(), lg.idp.ClientSecret()
		lg.issuer = issuer
	} else if lo.noIdP {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		issuer = "http://" + ln.Addr().String()
		ln.Close()
		lg.issuer = issuer
	} else {
		lg.user = user
		lg.startIdP(t, lo, "")
		issuer, clientID, secret = lg.idp.Issuer(), lg.idp.ClientID(), lg.idp.ClientSecret()
		lg.issuer = issuer
	}
	withLogin := func(c *Config, d *Deps) {
		oc := oidc.Config{
			Issuer: issuer, ClientID: clientID, ClientSecret: secret, UsernameClaim: "email",
			GroupPrincipals: map[string][]string{"dba": {"postgres-admin"}},
			Forbidden:       d.Authority.Policy().Forbidden, ValidPrincipal: ca.ValidateUserPrincipal,
			RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, HealthInterval: 200 * time.Millisecond,
		}
		if lo.oidc != nil {
			lo.oidc(&oc)
		}
		prov, err := oidc.Start(t.Context(), oc)
		if err != nil {
			t.Fatal(err)
		}
		c.Login = &LoginConfig{Provider: prov, ClientID: clientID, DefaultValidity: 8 * time.Hour, MaxValidity: 24 * time.Hour,
			GroupMaxValidity: map[string]time.Duration{"dba": time.Hour}, PerMinute: 100}
	}
	lg.testGateway = startGatewayWithCA(t, lo.caFrom, append([]gatewayOption{withLogin}, opts...)...)
	lg.user = lg.testGateway.user
	return lg
}

var userCodeRE = regexp.MustCompile(`enter the code (\S+)`)

// deviceLogin runs `ssh login@gateway` with c's plain key, answers the
// device prompt with approve(userCode), and returns the ssh result.
func (lg *loginGateway) deviceLogin(t *testing.T, c *testbed.Client, approve func(code string) error, command ...string) (stdout string, stderr string, exit int, approvedToCert time.Duration) {
	t.Helper()
	cmd := c.Command(t.Context(), "ssh", lg.gatewayArgs(LoginUser, command...)...)
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var errText strings.Builder
	r := bufio.NewReader(errPipe)
	var approvedAt time.Time
	for {
		line, err := r.ReadString('\n')
		errText.WriteString(line)
		if m := userCodeRE.FindStringSubmatch(line); m != nil {
			approvedAt = time.Now()
			if err := approve(m[1]); err != nil {
				t.Fatalf("approve: %v", err)
			}
		}
		if err != nil {
			break
		}
	}
	io.Copy(&errText, r)
	werr := cmd.Wait()
	exit = 0
	if werr != nil {
		exit = cmd.ProcessState.ExitCode()
	}
	return out.String(), errText.String(), exit, time.Since(approvedAt)
}

// TestDeviceLoginThenJump: a newcomer with nothing but OpenSSH logs in
// with `ssh login@gateway > cert`, approves on the IdP, and jumps with the
// certificate to a real sshd.
func TestDeviceLoginThenJump(t *testing.T) {
	lg := startLoginGateway(t)
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	c.TrustHostKey(lg.target.Addr, lg.target.HostKeyPub)
	c.StrictHostKeyChecking = "yes"

	stdout, stderr, exit, latency := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, "eng") })
	if exit != 0 {
		t.Fatalf("login exit %d\nstderr: %s", exit, stderr)
	}
	t.Logf("approval to certificate on the client: %s", latency.Round(time.Millisecond))
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(stdout))
	if err != nil {
		t.Fatalf("stdout is not a certificate: %v\n%q\nstderr: %s", err, stdout, stderr)
	}
	cert := k.(*gossh.Certificate)
	if string(cert.Key.Marshal()) != string(c.PublicKey().Marshal()) {
		t.Fatal("the certificate is not for the key the client authenticated with")
	}
	if cert.ValidPrincipals[0] != lg.user || cert.Extensions[ca.GroupsExtension] != "eng" || !strings.Contains(cert.KeyId, "sub=sub-eng") {
		t.Errorf("certificate principals %v groups %q key id %q", cert.ValidPrincipals, cert.Extensions[ca.GroupsExtension], cert.KeyId)
	}
	if !strings.Contains(stderr, "To log in, open ") || strings.Contains(stdout, "To log in") {
		t.Errorf("prompts must go to stderr and only the certificate to stdout:\nstdout %q\nstderr %q", stdout, stderr)
	}
	// No `bastion login` writes known_hosts here: the login says the
	// @cert-authority line, on stderr, and with only that line (and the
	// tunnelled target's own key) ssh trusts the gateway strictly.
	caLines := ca.ExportLines(ca.HostCA, lg.auth.TrustedKeys(ca.HostCA), "*")
	if !strings.Contains(stderr, "~/.ssh/known_hosts:\n"+caLines) || strings.Contains(stdout, "cert-authority") {
		t.Errorf("the OpenSSH-only login does not print the host CA line %q on stderr:\nstdout %q\nstderr %q", caLines, stdout, stderr)
	}
	if err := os.WriteFile(c.KnownHosts, []byte(caLines+knownhosts.Line([]string{lg.target.Addr}, lg.target.HostKeyPub)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.SetCertificate([]byte(stdout))
	if res := c.Run(t.Context(), "ssh", lg.jumpArgs(lg.user, "echo", "jumped")...); res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "jumped" {
		t.Fatalf("jump with the login certificate and the printed host CA line: %s", res)
	}
	// `bastion login` runs `login` and writes the line itself: not said.
	if _, stderr2, exit, _ := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, "eng") }, "login"); exit != 0 || strings.Contains(stderr2, "cert-authority") {
		t.Errorf("exec login: exit %d, stderr %q; want success without the host CA line", exit, stderr2)
	}
	lg.waitEvent(t, "login.started", map[string]string{"flow": "device", "key_fp": gossh.FingerprintSHA256(c.PublicKey())})
	ok := lg.waitEvent(t, "login.ok", map[string]string{"subject": "sub-eng", "groups": "eng", "serial": strconv.FormatUint(cert.Serial, 10)})
	if ok.Fields["email"] != lg.user+"@example.com" || ok.Fields["key_fp"] != gossh.FingerprintSHA256(c.PublicKey()) || ok.Fields["remote"] != "127.0.0.1" {
		t.Errorf("login.ok record: %v", ok.Fields)
	}
	// Nothing secret reaches the audit log: no ID token (a JWT starts
	// with eyJ), no key material.
	if all := lg.dump(); strings.Contains(all, "eyJ") || strings.Contains(all, "PRIVATE KEY") {
		t.Errorf("the audit log holds a secret:\n%s", all)
	}
}

// TestDeviceLoginRefusals: refusals at the IdP or by policy leave a
// login.failed record with the reason and sign nothing.
func TestDeviceLoginRefusals(t *testing.T) {
	lg := startLoginGateway(t)
	tests := []struct {
		name    string
		approve func(*loginGateway, string) error
		reason  string
	}{
		{"user denies consent", func(lg *loginGateway, code string) error { return lg.idp.DenyDevice(code) }, oidc.ReasonAccessDenied},
		{"username maps to root", func(lg *loginGateway, code string) error { return lg.idp.ApproveDevice(code, "rooty") }, oidc.ReasonForbiddenPrincipal},
		{"unverified email", func(lg *loginGateway, code string) error { return lg.idp.ApproveDevice(code, "unv") }, oidc.ReasonEmailUnverified},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			issued := len(lg.events("cert.issued"))
			c := testbed.NewClient(t)
			c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			stdout, stderr, exit, _ := lg.deviceLogin(t, c, func(code string) error { return tc.approve(lg, code) })
			if exit == 0 || stdout != "" {
				t.Fatalf("login succeeded: exit %d stdout %q", exit, stdout)
			}
			if !strings.Contains(stderr, tc.reason) {
				t.Errorf("stderr does not name the reason %s: %s", tc.reason, stderr)
			}
			lg.waitEvent(t, "login.failed", map[string]string{"reason": tc.reason, "key_fp": gossh.FingerprintSHA256(c.PublicKey())})
			if n := len(lg.events("cert.issued")); n != issued {
				t.Errorf("a refused login signed %d certificates", n-issued)
			}
		})
	}
}

// TestGroupCapsValidity: a dba's certificate carries the group's extra
// principal and is capped at the group's one hour.
func TestGroupCapsValidity(t *testing.T) {
	lg := startLoginGateway(t)
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	stdout, stderr, exit, _ := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, "dba") })
	if exit != 0 {
		t.Fatalf("login: %d %s", exit, stderr)
	}
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(stdout))
	if err != nil {
		t.Fatal(err)
	}
	cert := k.(*gossh.Certificate)
	if strings.Join(cert.ValidPrincipals, ",") != "dbauser,postgres-admin" {
		t.Errorf("principals %v, want dbauser,postgres-admin", cert.ValidPrincipals)
	}
	if life := time.Until(time.Unix(int64(cert.ValidBefore), 0)); life > time.Hour+time.Minute {
		t.Errorf("dba certificate valid for %s, want at most the group's 1h", life)
	}
}

// TestLoginUserCanOnlyLogIn: the login identity gets no shell, no other
// command, no jump and no forwarding.
func TestLoginUserCanOnlyLogIn(t *testing.T) {
	lg := startLoginGateway(t)
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	c.TrustHostKey(lg.target.Addr, lg.target.HostKeyPub)
	ctx := t.Context()
	res := c.Run(ctx, "ssh", lg.gatewayArgs(LoginUser, "cat", "/etc/passwd")...)
	if res.ExitCode == 0 || strings.Contains(res.Stdout, "root:") {
		t.Fatalf("the login user ran a command: %s", res)
	}
	lg.waitEvent(t, "request.refused", map[string]string{"reason": ReasonLoginOnly, "user": LoginUser})
	// Arguments to a login command are refused, not ignored.
	for _, cmd := range []string{"login", "login-config", "login-code"} {
		res = c.Run(ctx, "ssh", lg.gatewayArgs(LoginUser, cmd, "--user", "root", "--principals", "root")...)
		if res.ExitCode != 2 || !strings.Contains(res.Stderr, "takes no arguments") || strings.Contains(res.Stdout, "cert") {
			t.Errorf("%s with extra arguments: %s", cmd, res)
		}
	}
	lg.waitEvent(t, "request.refused", map[string]string{"reason": ReasonLoginOnly, "request": "exec login --user root --principals root"})
	res = c.Run(ctx, "ssh", "-o", "LogLevel=INFO", "-W", lg.target.Addr, "-p", strconv.Itoa(lg.port), LoginUser+"@127.0.0.1")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "open failed") {
		t.Fatalf("the login user opened a jump: %s", res)
	}
	lg.waitEvent(t, "channel.refused", map[string]string{"reason": ReasonLoginOnly})
	// A plain key is still refused for every other user.
	res = c.Run(ctx, "ssh", lg.gatewayArgs(lg.user, "info")...)
	if res.ExitCode != 255 {
		t.Fatalf("a plain key logged in as %s: %s", lg.user, res)
	}
	// Without an oidc section there is no login user at all.
	plain := startGateway(t)
	res = c.Run(ctx, "ssh", plain.gatewayArgs(LoginUser)...)
	if res.ExitCode != 255 || !strings.Contains(res.Stderr, "Permission denied") {
		t.Fatalf("login without a login service: %s", res)
	}
	plain.waitEvent(t, "auth.failed", map[string]string{"reason": ReasonLoginServiceUnavailable})
}

// TestLoginRateLimit: one source may start only so many logins a minute.
func TestLoginRateLimit(t *testing.T) {
	lg := startLoginGateway(t, func(c *Config, _ *Deps) { c.Login.PerMinute = 2 })
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	for i := range 3 {
		res := c.RunInput(t.Context(), strings.NewReader("not-a-token\n"), "ssh", lg.gatewayArgs(LoginUser, "login-token")...)
		if res.ExitCode == 0 {
			t.Fatalf("login %d succeeded with a bad token", i)
		}
	}
	lg.waitEvent(t, "login.failed", map[string]string{"reason": ReasonLoginRateLimited, "remote": "127.0.0.1"})
	if n := len(lg.events("login.started")); n != 2 {
		t.Errorf("%d logins started, want 2 (the third is refused before it starts)", n)
	}
}
