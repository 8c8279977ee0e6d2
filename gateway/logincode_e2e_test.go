package gateway

import (
	"bufio"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/testbed"
	"github.com/bastion-ssh/bastion/internal/usertext"
)

var (
	idpFormRE  = regexp.MustCompile(`(?s)<form method="post" action="([^"]*)">(.*?)</form>`)
	idpInputRE = regexp.MustCompile(`<input ([^>]*)>`)
	idpAttrRE  = regexp.MustCompile(`([a-z_-]+)="([^"]*)"`)
)

// browse plays a person at a browser: it opens authURL (following the
// IdP's redirects with cookies), fills in the login form with fields and
// submits it. It stops at the redirect to the loopback callback and
// returns that URL's query ("" values when the IdP never redirected).
func browse(t *testing.T, authURL string, fields map[string]string) url.Values {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := idpFormRE.FindStringSubmatch(string(page))
	if m == nil {
		t.Fatalf("browser: no form at %s: %s", resp.Request.URL, page)
	}
	vals := url.Values{}
	for _, in := range idpInputRE.FindAllStringSubmatch(m[2], -1) {
		attrs := map[string]string{}
		for _, a := range idpAttrRE.FindAllStringSubmatch(in[1], -1) {
			attrs[a[1]] = html.UnescapeString(a[2])
		}
		if attrs["name"] != "" {
			vals.Set(attrs["name"], attrs["value"])
		}
	}
	for k, v := range fields {
		vals.Set(k, v)
	}
	action, _ := resp.Request.URL.Parse(html.UnescapeString(m[1]))
	var back url.Values
	c.CheckRedirect = func(r *http.Request, _ []*http.Request) error {
		if r.URL.Path == "/callback" && r.URL.Query().Get("state") != "" {
			back = r.URL.Query()
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, err = c.PostForm(action.String(), vals)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	resp.Body.Close()
	return back
}

// codeLogin runs `ssh login@gateway login-code` with c: it sends a
// loopback redirect URI, reads the authorization URL, and calls browser
// with it; browser returns the message to send back (nil: send nothing
// and wait for the gateway).
func (lg *loginGateway) codeLogin(t *testing.T, c *testbed.Client, browser func(u CodeLoginURL) *CodeLoginResult) testbed.Result {
	t.Helper()
	return lg.converse(t, c, "login-code", func(out *bufio.Reader, in io.Writer) {
		start, _ := json.Marshal(CodeLoginStart{RedirectURI: "http://127.0.0.1:45678/callback"})
		io.WriteString(in, string(start)+"\n")
		line, err := out.ReadString('\n')
		var u CodeLoginURL
		if err != nil || json.Unmarshal([]byte(line), &u) != nil {
			return // the gateway refused; its reason is on stderr
		}
		if res := browser(u); res != nil {
			msg, _ := json.Marshal(res)
			io.WriteString(in, string(msg)+"\n")
			return
		}
		// Wait for the gateway to end the session.
		_, _ = out.Peek(1)
	})
}

func approveAs(t *testing.T, user string) func(CodeLoginURL) *CodeLoginResult {
	return func(u CodeLoginURL) *CodeLoginResult {
		q := browse(t, u.AuthURL, map[string]string{"username": user, "password": "pw", "action": "approve"})
		return &CodeLoginResult{Code: q.Get("code"), State: q.Get("state")}
	}
}

func parseCert(t *testing.T, text string) *gossh.Certificate {
	t.Helper()
	k, _, _, _, err := gossh.ParseAuthorizedKey([]byte(text))
	if err != nil {
		t.Fatalf("not a certificate: %v: %q", err, text)
	}
	return k.(*gossh.Certificate)
}

// TestConfidentialClientLogins: an IdP that registers the gateway as a
// confidential client and requires client_secret_basic, or
// client_secret_post, on every endpoint that takes client authentication.
// Both logins work through real OpenSSH: the device flow, and the browser
// login whose code the gateway redeems with its secret. Without the
// secret, the device login fails at once, naming the setting.
func TestConfidentialClientLogins(t *testing.T) {
	for _, method := range []string{"client_secret_basic", "client_secret_post"} {
		t.Run(method, func(t *testing.T) {
			lg := startLoginGatewayWith(t, loginOptions{idp: func(c *devidp.Config) { c.ClientSecret = "gw-s3cret"; c.ClientAuthMethod = method }})
			c := testbed.NewClient(t)
			c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			stdout, stderr, exit, _ := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, "eng") })
			if exit != 0 {
				t.Fatalf("device login: exit %d: %s", exit, stderr)
			}
			if cert := parseCert(t, stdout); cert.ValidPrincipals[0] != lg.user {
				t.Errorf("device login principals %v", cert.ValidPrincipals)
			}
			c2 := testbed.NewClient(t)
			c2.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			res := lg.codeLogin(t, c2, approveAs(t, "eng"))
			if res.ExitCode != 0 {
				t.Fatalf("browser login: %s", res)
			}
			if cert := parseCert(t, res.Stdout); string(cert.Key.Marshal()) != string(c2.PublicKey().Marshal()) {
				t.Error("the browser login's certificate is not for the key that asked")
			}
			lg.waitEvent(t, "login.ok", map[string]string{"flow": "pkce", "key_fp": gossh.FingerprintSHA256(c2.PublicKey())})
		})
	}
	t.Run("secret missing", func(t *testing.T) {
		lg := startLoginGatewayWith(t, loginOptions{
			idp:  func(c *devidp.Config) { c.ClientSecret = "gw-s3cret" },
			oidc: func(c *oidc.Config) { c.ClientSecret = "" },
		})
		c := testbed.NewClient(t)
		c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
		res := c.Run(t.Context(), "ssh", lg.gatewayArgs(LoginUser)...)
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "invalid_client") || !strings.Contains(res.Stderr, "oidc.client_secret_file") {
			t.Fatalf("device login without the secret: %s", res)
		}
	})
}

// TestCodeLoginReplay: the browser login is one-time by construction. A
// code handed to a second connection with another key is refused (the
// gateway's state differs, and with that session's state the IdP refuses
// a used code that the session's verifier does not match); a second code
// in one session is refused; and the audit log holds no code or token.
func TestCodeLoginReplay(t *testing.T) {
	lg := startLoginGateway(t)
	issued := len(lg.events("cert.issued"))
	var stolen CodeLoginResult
	first := testbed.NewClient(t)
	first.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	res := lg.codeLogin(t, first, func(u CodeLoginURL) *CodeLoginResult {
		for _, p := range []string{"code_challenge_method=S256", "nonce=", "state=" + u.State, "client_id=bastion"} {
			if !strings.Contains(u.AuthURL, p) {
				t.Errorf("authorization URL lacks %s: %s", p, u.AuthURL)
			}
		}
		r := approveAs(t, "eng")(u)
		stolen = *r
		return r
	})
	if res.ExitCode != 0 {
		t.Fatalf("first login: %s", res)
	}
	for name, tc := range map[string]struct {
		msg    func(u CodeLoginURL) *CodeLoginResult
		reason string
	}{
		"code and state of another login": {func(CodeLoginURL) *CodeLoginResult { return &stolen }, oidc.ReasonBadState},
		"code of another login, this state": {func(u CodeLoginURL) *CodeLoginResult {
			return &CodeLoginResult{Code: stolen.Code, State: u.State}
		}, oidc.ReasonCodeInvalid},
	} {
		t.Run(name, func(t *testing.T) {
			other := testbed.NewClient(t)
			other.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			res := lg.codeLogin(t, other, tc.msg)
			if res.ExitCode == 0 || res.Stdout != "" {
				t.Fatalf("replayed code signed: %s", res)
			}
			lg.waitEvent(t, "login.failed", map[string]string{"flow": "pkce", "reason": tc.reason, "key_fp": gossh.FingerprintSHA256(other.PublicKey())})
		})
	}
	if n := len(lg.events("cert.issued")) - issued; n != 1 {
		t.Errorf("one browser login produced %d certificates", n)
	}
	if all := lg.dump(); strings.Contains(all, stolen.Code) || strings.Contains(all, "eyJ") {
		t.Error("the audit log holds the code or a token")
	}
	// A redirect URI off this machine is refused before anything starts.
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	res = lg.converse(t, c, "login-code", func(_ *bufio.Reader, in io.Writer) {
		io.WriteString(in, `{"redirect_uri":"https://evil.example/callback"}`+"\n")
	})
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, oidc.ReasonBadRedirect) {
		t.Fatalf("non-loopback redirect: %s", res)
	}
}

// TestLoginRefusalRecordsWho: a refusal after the IdP vouched for the
// user (domain not allowed, unverified email, forbidden principal)
// records the verified claims that led to it, so the audit log says who
// was refused.
func TestLoginRefusalRecordsWho(t *testing.T) {
	lg := startLoginGatewayWith(t, loginOptions{oidc: func(c *oidc.Config) { c.AllowedDomains = []string{"example.com"} }})
	for _, tc := range []struct{ user, reason, subject, email string }{
		{"outsider", oidc.ReasonDomainNotAllowed, "sub-outsider", "mallory@elsewhere.test"},
		{"unv", oidc.ReasonEmailUnverified, "sub-unverified", "unv@example.com"},
		{"rooty", oidc.ReasonForbiddenPrincipal, "sub-root", "root@example.com"},
	} {
		t.Run(tc.user, func(t *testing.T) {
			c := testbed.NewClient(t)
			c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
			_, stderr, exit, _ := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, tc.user) })
			if exit == 0 || !strings.Contains(stderr, tc.reason) {
				t.Fatalf("exit %d: %s", exit, stderr)
			}
			ev := lg.waitEvent(t, "login.failed", map[string]string{"reason": tc.reason, "key_fp": gossh.FingerprintSHA256(c.PublicKey())})
			if ev.Fields["subject"] != tc.subject || ev.Fields["email"] != tc.email {
				t.Errorf("login.failed does not say who: %v", ev.Fields)
			}
			if d := ev.Fields["detail"]; d == "" || usertext.Clean(d) != d {
				t.Errorf("login.failed detail is empty or carries internal package prefixes: %q", d)
			}
		})
	}
}

// TestLoginWindowEndsWithMessage: a browser login that outlasts the
// gateway's login window ends with a message saying so (before the
// gateway closes the login connection), not with a bare EOF.
func TestLoginWindowEndsWithMessage(t *testing.T) {
	lg := startLoginGateway(t, func(c *Config, _ *Deps) { c.Login.Timeout = 3 * time.Second })
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	start := time.Now()
	res := lg.codeLogin(t, c, func(CodeLoginURL) *CodeLoginResult { return nil }) // a slow user
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "login window (3s) expired") {
		t.Fatalf("slow login: %s", res)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the login ended after %s, window 3s", d)
	}
	lg.waitEvent(t, "login.failed", map[string]string{"reason": oidc.ReasonLoginExpired, "flow": "pkce"})
}

// TestIdPDownAtStart: the gateway starts while its IdP is down. Holders
// of a certificate jump as usual; logins are refused at once with
// idp_error saying the IdP has not answered; once the IdP comes up
// (discovery and keys retried in the background), logins work. When the
// IdP dies in the middle of a browser login, the login ends with
// idp_error instead of waiting out the window.
func TestIdPDownAtStart(t *testing.T) {
	lo := loginOptions{noIdP: true}
	lg := startLoginGatewayWith(t, lo)
	holder := lg.client(ca.Request{KeyID: "holder"})
	if res := holder.Run(t.Context(), "ssh", lg.jumpArgs(lg.user, "echo", "jumped")...); res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "jumped" {
		t.Fatalf("jump while the IdP is down: %s", res)
	}
	c := testbed.NewClient(t)
	c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	start := time.Now()
	res := c.Run(t.Context(), "ssh", lg.gatewayArgs(LoginUser)...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, oidc.ReasonIDPError) || !strings.Contains(res.Stderr, "has not answered since") {
		t.Fatalf("login while the IdP is down: %s", res)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the refusal took %s", d)
	}
	lg.waitEvent(t, "login.failed", map[string]string{"reason": oidc.ReasonIDPError})

	lg.startIdP(t, lo, lg.issuer)
	deadline := time.Now().Add(15 * time.Second)
	for !lg.gw.cfg.Login.Provider.Status().Up {
		if time.Now().After(deadline) {
			t.Fatal("the gateway did not reach the IdP after it came up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stdout, stderr, exit, _ := lg.deviceLogin(t, c, func(code string) error { return lg.idp.ApproveDevice(code, "eng") })
	if exit != 0 || parseCert(t, stdout).ValidPrincipals[0] != lg.user {
		t.Fatalf("login after the IdP came up: exit %d: %s", exit, stderr)
	}

	// The IdP dies while the user is at the browser.
	c3 := testbed.NewClient(t)
	c3.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
	start = time.Now()
	res = lg.codeLogin(t, c3, func(CodeLoginURL) *CodeLoginResult {
		lg.idp.Close()
		return nil
	})
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "stopped answering during the login") {
		t.Fatalf("IdP died mid-login: %s", res)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("noticing the dead IdP took %s", d)
	}
}
