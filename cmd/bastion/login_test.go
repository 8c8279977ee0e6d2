package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/sshclient"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// loginEnv is a real gateway with the login service on a loopback port,
// a real OIDC provider (devidp, on zitadel's op) behind it, its own CA and
// audit log, and a real sshd target that trusts the user CA and presents
// a host certificate from the host CA.
type loginEnv struct {
	t      *testing.T
	idp    *devidp.Server
	layout ca.Layout
	store  *audit.Store
	auth   *ca.Authority
	locks  *ca.Locks
	gw     *gateway.Gateway
	addr   string
	target *testbed.SSHD
	// user is the "eng" IdP user's principal, and the target's login user.
	user string

	served  chan error
	stopped bool
}

// loginEnvOptions vary startLoginEnv.
type loginEnvOptions struct {
	// validity of login certificates; default 8h.
	validity time.Duration
	// noDevice hides the IdP's device flow from the gateway, as an IdP
	// without one would.
	noDevice bool
	// addr to listen on; default a free loopback port.
	addr string
	// idp edits the dev IdP's configuration.
	idp func(*devidp.Config)
	// window is the gateway's login window; default 10m.
	window time.Duration
	// banAfter failures bans a source; default 0, banning off.
	banAfter int
}

// IdP users: "eng" maps to the target's login user, "ops" is an admin.
const (
	engPassword = "eng-password"
	opsPassword = "ops-password"
)

// deviceLess is an IdP whose device flow the gateway cannot see.
type deviceLess struct{ *oidc.Provider }

func (deviceLess) SupportsDevice() bool { return false }

func startLoginEnv(t *testing.T, o loginEnvOptions) *loginEnv {
	t.Helper()
	testbed.RequireOpenSSH(t)
	e := &loginEnv{t: t, user: testbed.LoginUser(t), layout: ca.Layout{DataDir: t.TempDir()}, served: make(chan error, 1)}
	var err error
	idpCfg := devidp.Config{
		PollInterval: time.Second,
		Users: []devidp.User{
			{Subject: "sub-eng", Username: "eng", Email: e.user + "@example.com", EmailVerified: true, Groups: []string{"eng"}, Password: engPassword},
			{Subject: "sub-ops", Username: "ops", Email: "ops@example.com", EmailVerified: true, Groups: []string{"admins"}, Password: opsPassword},
			{Subject: "sub-unv", Username: "unv", Email: "unv@example.com", EmailVerified: false, Password: engPassword},
		},
	}
	if o.idp != nil {
		o.idp(&idpCfg)
	}
	e.idp, err = devidp.Start(t.Context(), idpCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.idp.Close() })
	if _, _, err := ca.Init(e.layout, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	if e.store, err = audit.Open(e.layout.AuditDB(), audit.Options{}); err != nil {
		t.Fatal(err)
	}
	if e.auth, err = ca.New(ca.Config{Layout: e.layout}, e.store); err != nil {
		t.Fatal(err)
	}
	e.locks = e.auth.State().Locks
	e.target = testbed.NewSSHD(t, testbed.SSHDConfig{TrustedUserCAKeys: ca.ExportLines(ca.UserCA, e.auth.TrustedKeys(ca.UserCA), "")})
	hostCert, err := e.auth.Sign(t.Context(), ca.Request{Kind: ca.HostCA, Key: e.target.HostKeyPub, KeyID: "target", Principals: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	e.target.Config.HostCertificate = gossh.MarshalAuthorizedKey(hostCert)
	e.target.Start()

	prov, err := oidc.Start(t.Context(), oidc.Config{
		Issuer: e.idp.Issuer(), ClientID: e.idp.ClientID(), ClientSecret: e.idp.ClientSecret(), UsernameClaim: "email",
		Forbidden: e.auth.Policy().Forbidden, ValidPrincipal: ca.ValidateUserPrincipal,
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond, HealthInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	var idp gateway.IdentityProvider = prov
	if o.noDevice {
		idp = deviceLess{prov}
	}
	if o.validity == 0 {
		o.validity = 8 * time.Hour
	}
	limits := gateway.DefaultLimits()
	limits.BanAfterFailures = o.banAfter
	e.gw, err = gateway.New(gateway.Config{
		Listen:      "127.0.0.1:0",
		HostKeyPath: filepath.Join(e.layout.DataDir, "gateway", "ssh_host_ed25519_key"),
		HostNames:   []string{"127.0.0.1", "localhost"},
		Access: []gateway.AccessRule{
			{Principals: []string{e.user}, Hosts: []string{"127.0.0.1"}, Ports: []int{e.target.Port}},
		},
		Limits:        limits,
		AdminGroups:   []string{"admins"},
		ShutdownGrace: 5 * time.Second,
		Login: &gateway.LoginConfig{
			Provider: idp, ClientID: e.idp.ClientID(), DefaultValidity: o.validity, MaxValidity: 24 * time.Hour,
			Timeout: o.window,
		},
	}, gateway.Deps{Authority: e.auth, Audit: e.store})
	if err != nil {
		t.Fatal(err)
	}
	if o.addr == "" {
		o.addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	go func() { e.served <- e.gw.Serve(ln) }()
	t.Cleanup(e.stop)
	return e
}

// stop shuts the gateway down and closes its audit log; it is idempotent.
func (e *loginEnv) stop() {
	if e.stopped {
		return
	}
	e.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.gw.Shutdown(ctx); err != nil {
		e.t.Errorf("gateway shutdown: %v", err)
	}
	if err := <-e.served; err != nil {
		e.t.Errorf("gateway Serve: %v", err)
	}
	if err := e.store.Close(); err != nil {
		e.t.Errorf("close the audit log: %v", err)
	}
}

// events returns the audit events of type typ.
func (e *loginEnv) events(typ string) []audit.Event {
	e.t.Helper()
	var out []audit.Event
	err := e.store.Iterate(context.Background(), audit.Filter{Types: []string{typ}}, func(ev audit.Event) error {
		out = append(out, ev)
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// waitEvent waits (bounded) for an event of typ whose fields include want.
func (e *loginEnv) waitEvent(typ string, want map[string]string) audit.Event {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
	events:
		for _, ev := range e.events(typ) {
			for k, v := range want {
				if ev.Fields[k] != v {
					continue events
				}
			}
			return ev
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no %s event with %v", typ, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newHome returns a fresh home directory and makes it $HOME, with no
// ssh-agent and no gateway in the environment.
func newHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	useHome(t, home)
	return home
}

func useHome(t *testing.T, home string) {
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("BASTION_GATEWAY", "")
	t.Setenv("BASTION_NO_BROWSER", "1")
}

// runLogin runs `bastion login --no-browser --gateway ADDR args...` in
// process with the current $HOME, reading its stderr through a pipe as a
// user would and calling answer for every line (to approve the device
// code or log in at the IdP). It returns stdout, stderr and the error.
func runLoginCLI(t *testing.T, addr string, answer func(line string), args ...string) (string, string, error) {
	t.Helper()
	return runLoginCLIContext(t, t.Context(), addr, answer, args...)
}

// runLoginCLIContext is runLoginCLI under ctx: cancelling ctx is the
// user's Ctrl-C.
func runLoginCLIContext(t *testing.T, ctx context.Context, addr string, answer func(line string), args ...string) (string, string, error) {
	t.Helper()
	pr, pw := io.Pipe()
	var stdout bytes.Buffer
	cmd := newRootCommand(buildInfo{Version: "v-test"}, strings.NewReader(""), &stdout, pw)
	cmd.SetArgs(append([]string{"login", "--no-browser", "--gateway", addr}, args...))
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		err := cmd.ExecuteContext(ctx)
		_ = pw.Close()
		done <- err
	}()
	var stderr strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		stderr.WriteString(sc.Text() + "\n")
		if answer != nil {
			answer(sc.Text())
		}
	}
	_, _ = io.Copy(io.Discard, pr) // a line too long for the scanner
	err := <-done
	return stdout.String(), stderr.String(), err
}

var deviceCodeRE = regexp.MustCompile(`enter the code (\S+)`)

// approveDevice answers the device prompt by approving the code as user.
func (e *loginEnv) approveDevice(t *testing.T, user string) func(string) {
	return func(line string) {
		if m := deviceCodeRE.FindStringSubmatch(line); m != nil {
			if err := e.idp.ApproveDevice(m[1], user); err != nil {
				t.Errorf("approve %s: %v", m[1], err)
			}
		}
	}
}

var authURLRE = regexp.MustCompile(`^\s+(http://\S+code_challenge=\S+)$`)

// browserLogin answers the PKCE prompt like a person at a browser: it
// opens the printed URL with an http.Client that keeps cookies, logs in
// on the IdP's form, and follows the redirect to the CLI's loopback
// listener.
func browserLogin(t *testing.T, user, password string) func(string) {
	return browserDo(t, map[string]string{"username": user, "password": password, "action": "approve"}, func(status int, body string, err error) {
		if err != nil || status != http.StatusOK || !strings.Contains(body, "Login complete") {
			t.Errorf("browser login: status %d, err %v: %s", status, err, body)
		}
	})
}

// browserDo submits the IdP's form with fields when the authorization URL
// is printed, in the background (the CLI's callback answers only after the
// gateway's verdict), and hands the final page to check.
func browserDo(t *testing.T, fields map[string]string, check func(status int, body string, err error)) func(string) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	return func(line string) {
		m := authURLRE.FindStringSubmatch(line)
		if m == nil {
			return
		}
		// The CLI's stderr must keep being read meanwhile.
		wg.Go(func() {
			status, body, err := submitForm(client, m[1], fields)
			check(status, body, err)
		})
	}
}

var (
	formRE  = regexp.MustCompile(`(?s)<form method="post" action="([^"]*)">(.*?)</form>`)
	inputRE = regexp.MustCompile(`<input ([^>]*)>`)
	attrRE  = regexp.MustCompile(`([a-z_-]+)="([^"]*)"`)
)

// submitForm fills the form of the page at pageURL with its own values
// overridden by fields, posts it, and returns the final page.
func submitForm(c *http.Client, pageURL string, fields map[string]string) (int, string, error) {
	resp, err := c.Get(pageURL)
	if err != nil {
		return 0, "", err
	}
	page, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	m := formRE.FindStringSubmatch(string(page))
	if m == nil {
		return resp.StatusCode, string(page), fmt.Errorf("no form at %s", resp.Request.URL)
	}
	vals := url.Values{}
	for _, in := range inputRE.FindAllStringSubmatch(m[2], -1) {
		attrs := map[string]string{}
		for _, a := range attrRE.FindAllStringSubmatch(in[1], -1) {
			attrs[a[1]] = html.UnescapeString(a[2])
		}
		if attrs["name"] != "" {
			vals.Set(attrs["name"], attrs["value"])
		}
	}
	for k, v := range fields {
		vals.Set(k, v)
	}
	action, err := resp.Request.URL.Parse(html.UnescapeString(m[1]))
	if err != nil {
		return 0, "", err
	}
	resp, err = c.PostForm(action.String(), vals)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// writeUserSSHConfig writes ~/.ssh/config as a user following the login
// hint would: the Include line on top, then their own entries: a name for
// the target under *.internal and strict host checking without prompts.
func (e *loginEnv) writeUserSSHConfig(t *testing.T, home string) string {
	t.Helper()
	path := filepath.Join(home, ".ssh", "config")
	text := fmt.Sprintf(`Include %s

Host target.internal
  HostName 127.0.0.1
  Port %d

Host *
  BatchMode yes
  StrictHostKeyChecking yes
  GlobalKnownHostsFile /dev/null
  IdentityAgent none
  ControlPath none
  ConnectTimeout 10
  LogLevel ERROR
`, filepath.Join(home, ".ssh", "bastion", "config"), e.target.Port)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sshVia runs the real OpenSSH client with config at path and HOME set,
// with no agent, and returns its output and exit code.
func sshVia(t *testing.T, home, config string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", append([]string{"-F", config}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "SSH_AUTH_SOCK=", "LC_ALL=C")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("ssh: %v", err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func readCert(t *testing.T, path string) *gossh.Certificate {
	t.Helper()
	cert, err := sshclient.ReadCertificate(path)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestLoginDeviceFlowThenJump is the whole client side end to end:
// `bastion login` against a real gateway and IdP (device flow, approved
// when the prompt appears), the files it leaves, and real ssh through the
// written config to a real sshd behind the gateway.
func TestLoginDeviceFlowThenJump(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	home := newHome(t)
	dir := filepath.Join(home, ".ssh", "bastion")

	start := time.Now()
	stdout, stderr, err := runLoginCLI(t, e.addr, e.approveDevice(t, "eng"))
	if err != nil {
		t.Fatalf("login: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
	}
	t.Logf("login, device flow, approval to saved certificate and config: %s", time.Since(start).Round(time.Millisecond))
	for _, want := range []string{"To log in, open ", "Created your bastion key", "Pinned the gateway's host CA"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	for _, want := range []string{"Logged in to " + e.addr + " as " + e.user, "groups:      eng", "Include " + filepath.Join(dir, "config")} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}

	// The files, and their modes.
	for path, mode := range map[string]os.FileMode{
		dir: 0o700, filepath.Join(dir, "id_ed25519"): 0o600, filepath.Join(dir, "id_ed25519-cert.pub"): 0o600,
		filepath.Join(dir, "config"): 0o600, filepath.Join(dir, "state.json"): 0o600,
	} {
		if got := fileMode(t, path); got != mode {
			t.Errorf("%s: mode %04o, want %04o", path, got, mode)
		}
	}
	key, err := sshclient.LoadKey(filepath.Join(dir, "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	cert := readCert(t, filepath.Join(dir, "id_ed25519-cert.pub"))
	if !bytes.Equal(cert.Key.Marshal(), key.PublicKey().Marshal()) || cert.ValidPrincipals[0] != e.user || cert.Extensions[ca.GroupsExtension] != "eng" {
		t.Errorf("certificate: key %s principals %v groups %q", gossh.FingerprintSHA256(cert.Key), cert.ValidPrincipals, cert.Extensions[ca.GroupsExtension])
	}
	known, _ := os.ReadFile(filepath.Join(dir, "known_hosts"))
	wantPin := "@cert-authority * " + strings.TrimSpace(string(gossh.MarshalAuthorizedKey(e.auth.PublicKey(ca.HostCA)))) + " "
	if !strings.HasPrefix(string(known), wantPin) || strings.Count(string(known), "\n") != 1 {
		t.Errorf("known_hosts = %q, want one line starting %q", known, wantPin)
	}
	config, _ := os.ReadFile(filepath.Join(dir, "config"))
	for _, want := range []string{
		"\nHost 127.0.0.1\n  ProxyJump none\n  User " + e.user + "\n",
		"\nHost *.internal\n  ProxyJump " + e.user + "@" + e.addr + "\n",
		"  IdentityFile \"" + filepath.Join(dir, "id_ed25519") + "\"\n",
		"  CertificateFile \"" + filepath.Join(dir, "id_ed25519-cert.pub") + "\"\n",
		"  UserKnownHostsFile \"" + filepath.Join(dir, "known_hosts") + "\"\n",
		"  IdentitiesOnly yes\n",
	} {
		if !strings.Contains(string(config), want) {
			t.Errorf("config lacks %q:\n%s", want, config)
		}
	}
	var st sshclient.State
	if data, _ := os.ReadFile(filepath.Join(dir, "state.json")); json.Unmarshal(data, &st) != nil || st.Gateway != e.addr {
		t.Errorf("state.json = %s, want gateway %s", data, e.addr)
	}
	e.waitEvent("login.ok", map[string]string{"subject": "sub-eng", "key_fp": gossh.FingerprintSHA256(key.PublicKey()), "flow": "device"})

	// Real OpenSSH, with the config included the way the hint says,
	// reaches the target through the gateway; both host certificates are
	// checked against the pinned host CA (StrictHostKeyChecking yes).
	userConfig := e.writeUserSSHConfig(t, home)
	out, code := sshVia(t, home, userConfig, "target.internal", "echo", "jumped", "as", "$(id -un)")
	if code != 0 || strings.TrimSpace(out) != "jumped as "+e.user {
		t.Fatalf("ssh target.internal through the gateway: exit %d: %s\nsshd log:\n%s", code, out, e.target.Log())
	}
	e.waitEvent("session.start", map[string]string{"user": e.user, "key_fp": gossh.FingerprintSHA256(key.PublicKey())})
	// And the gateway itself, by its own Host block.
	out, code = sshVia(t, home, userConfig, "-p", strconv.Itoa(addrPort(t, e.addr)), "127.0.0.1", "info")
	if code != 0 || !strings.Contains(out, "you are "+e.user) {
		t.Fatalf("ssh to the gateway: exit %d: %s", code, out)
	}

	// A second login reuses the key, is checked against the pin, replaces
	// the certificate and does not repeat the hint.
	stdout, stderr, err = runLoginCLI(t, e.addr, e.approveDevice(t, "eng"))
	if err != nil {
		t.Fatalf("second login: %v\n%s", err, stderr)
	}
	if strings.Contains(stderr, "Created your bastion key") || strings.Contains(stderr, "Pinned") || strings.Contains(stdout, "Include ") {
		t.Errorf("second login made a key, pinned again or repeated the hint:\nstdout: %s\nstderr: %s", stdout, stderr)
	}
	again, _ := sshclient.LoadKey(filepath.Join(dir, "id_ed25519"))
	if !bytes.Equal(again.PublicKey().Marshal(), key.PublicKey().Marshal()) {
		t.Error("second login replaced the key")
	}
	if c2 := readCert(t, filepath.Join(dir, "id_ed25519-cert.pub")); c2.Serial == cert.Serial {
		t.Error("second login did not save the new certificate")
	}
	if known2, _ := os.ReadFile(filepath.Join(dir, "known_hosts")); !bytes.Equal(known2, known) {
		t.Errorf("known_hosts changed on the second login:\n%s", known2)
	}
	if out, code := sshVia(t, home, userConfig, "target.internal", "true"); code != 0 {
		t.Fatalf("ssh with the second certificate: exit %d: %s", code, out)
	}
}

func addrPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestLoginPKCE: authorization code + PKCE with a loopback redirect, the
// browser played by an http.Client with cookies on the IdP's real login
// form; chosen with --pkce, or because the IdP has no device flow.
func TestLoginPKCE(t *testing.T) {
	tests := []struct {
		name     string
		noDevice bool
		args     []string
	}{
		{"--pkce with a device-capable IdP", false, []string{"--pkce"}},
		{"IdP without device flow", true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := startLoginEnv(t, loginEnvOptions{noDevice: tc.noDevice})
			home := newHome(t)
			stdout, stderr, err := runLoginCLI(t, e.addr, browserLogin(t, "eng", engPassword), tc.args...)
			if err != nil {
				t.Fatalf("login: %v\nstdout: %s\nstderr: %s", err, stdout, stderr)
			}
			if !strings.Contains(stderr, "open this URL in a browser on this machine") || strings.Contains(stderr, "enter the code") {
				t.Errorf("stderr does not show the browser login:\n%s", stderr)
			}
			cert := readCert(t, filepath.Join(home, ".ssh", "bastion", "id_ed25519-cert.pub"))
			if cert.ValidPrincipals[0] != e.user || !strings.Contains(cert.KeyId, "sub=sub-eng") {
				t.Errorf("certificate principals %v key id %q", cert.ValidPrincipals, cert.KeyId)
			}
			e.waitEvent("login.ok", map[string]string{"subject": "sub-eng", "flow": "pkce"})
			out, code := sshVia(t, home, e.writeUserSSHConfig(t, home), "target.internal", "echo", "ok")
			if code != 0 || strings.TrimSpace(out) != "ok" {
				t.Fatalf("ssh through the gateway: exit %d: %s", code, out)
			}
		})
	}
}

// TestLoginPinsHostCA: trust on first use, then pinned. A different
// gateway (another host CA) on the same address is refused before anything
// is sent, with an error that names the file to delete; nothing changes.
func TestLoginPinsHostCA(t *testing.T) {
	first := startLoginEnv(t, loginEnvOptions{})
	home := newHome(t)
	dir := filepath.Join(home, ".ssh", "bastion")
	if _, stderr, err := runLoginCLI(t, first.addr, first.approveDevice(t, "eng")); err != nil {
		t.Fatalf("first login: %v\n%s", err, stderr)
	}
	known, _ := os.ReadFile(filepath.Join(dir, "known_hosts"))
	certBefore, _ := os.ReadFile(filepath.Join(dir, "id_ed25519-cert.pub"))

	addr := first.addr
	first.stop()
	impostor := startLoginEnv(t, loginEnvOptions{addr: addr})
	stdout, stderr, err := runLoginCLI(t, addr, impostor.approveDevice(t, "eng"))
	if err == nil {
		t.Fatalf("login to a gateway with another host CA succeeded:\n%s\n%s", stdout, stderr)
	}
	for _, want := range []string{"HOST CA HAS CHANGED", filepath.Join(dir, "known_hosts"), "delete " + filepath.Join(dir, "known_hosts"),
		gossh.FingerprintSHA256(impostor.auth.PublicKey(ca.HostCA)), gossh.FingerprintSHA256(first.auth.PublicKey(ca.HostCA))} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if exitCode(err) != 1 {
		t.Errorf("exit code %d, want 1", exitCode(err))
	}
	if known2, _ := os.ReadFile(filepath.Join(dir, "known_hosts")); !bytes.Equal(known2, known) {
		t.Errorf("known_hosts changed:\n%s", known2)
	}
	if cert2, _ := os.ReadFile(filepath.Join(dir, "id_ed25519-cert.pub")); !bytes.Equal(cert2, certBefore) {
		t.Error("the certificate changed")
	}
	if n := len(impostor.events("login.started")); n != 0 {
		t.Errorf("the impostor saw %d logins", n)
	}
}

// TestLoginAddsCertToAgent: with OpenSSH's ssh-agent running, login adds
// the certificate with a lifetime equal to its remaining validity: it is
// there after login, and gone once the certificate has expired.
func TestLoginAddsCertToAgent(t *testing.T) {
	const validity = 6 * time.Second
	e := startLoginEnv(t, loginEnvOptions{validity: validity})
	home := newHome(t)
	sock := testbed.StartSSHAgent(t)
	t.Setenv("SSH_AUTH_SOCK", sock)
	stdout, stderr, err := runLoginCLI(t, e.addr, e.approveDevice(t, "eng"))
	if err != nil {
		t.Fatalf("login: %v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "added to ssh-agent for ") {
		t.Errorf("stdout does not report the agent:\n%s", stdout)
	}
	cert := readCert(t, filepath.Join(home, ".ssh", "bastion", "id_ed25519-cert.pub"))
	ag := agentClient(t, sock)
	keys, err := ag.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !bytes.Equal(keys[0].Blob, cert.Marshal()) || !strings.Contains(keys[0].Comment, "bastion "+e.user) {
		t.Fatalf("agent holds %v, want the certificate", keys)
	}
	// Without a lifetime the agent would keep it for ever.
	expiry := sshclient.Expiry(cert)
	for {
		keys, err := ag.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			break
		}
		if time.Now().After(expiry.Add(3 * time.Second)) {
			t.Fatalf("the agent still holds the certificate %s after it expired", time.Since(expiry).Round(time.Second))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func agentClient(t *testing.T, sock string) agent.ExtendedAgent {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return agent.NewClient(c)
}

// TestLoginRefusals: what a user sees when the login cannot work.
func TestLoginRefusals(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	t.Run("user denies consent", func(t *testing.T) {
		home := newHome(t)
		_, stderr, err := runLoginCLI(t, e.addr, func(line string) {
			if m := deviceCodeRE.FindStringSubmatch(line); m != nil {
				if err := e.idp.DenyDevice(m[1]); err != nil {
					t.Errorf("deny %s: %v", m[1], err)
				}
			}
		})
		if err == nil || !strings.Contains(stderr, oidc.ReasonAccessDenied) || !strings.Contains(err.Error(), "did not sign") {
			t.Fatalf("err %v\nstderr %s", err, stderr)
		}
		if _, err := os.Stat(filepath.Join(home, ".ssh", "bastion", "id_ed25519-cert.pub")); err == nil {
			t.Error("a certificate file exists after a refused login")
		}
		if _, err := os.Stat(filepath.Join(home, ".ssh", "bastion", "known_hosts")); err == nil {
			t.Error("the host CA was pinned by a login that failed")
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		newHome(t)
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		_ = ln.Close()
		_, _, err := runLoginCLI(t, addr, nil)
		if err == nil || !strings.Contains(err.Error(), "cannot reach the gateway at "+addr) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad --hosts pattern", func(t *testing.T) {
		newHome(t)
		_, _, err := runLoginCLI(t, e.addr, e.approveDevice(t, "eng"), "--hosts", "web1 ProxyCommand=x")
		if err == nil || !strings.Contains(err.Error(), "host pattern") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestLoginPKCEConfidentialClient: `bastion login --pkce` through a
// gateway whose IdP registers it as a confidential client (the secret
// never reaches this machine: the gateway redeems the code).
func TestLoginPKCEConfidentialClient(t *testing.T) {
	for _, method := range []string{"client_secret_basic", "client_secret_post"} {
		t.Run(method, func(t *testing.T) {
			e := startLoginEnv(t, loginEnvOptions{idp: func(c *devidp.Config) { c.ClientSecret = "gw-s3cret"; c.ClientAuthMethod = method }})
			home := newHome(t)
			_, stderr, err := runLoginCLI(t, e.addr, browserLogin(t, "eng", engPassword), "--pkce")
			if err != nil {
				t.Fatalf("login: %v\n%s", err, stderr)
			}
			if strings.Contains(stderr, "gw-s3cret") {
				t.Error("the secret reached the CLI")
			}
			if cert := readCert(t, filepath.Join(home, ".ssh", "bastion", "id_ed25519-cert.pub")); cert.ValidPrincipals[0] != e.user {
				t.Errorf("principals %v", cert.ValidPrincipals)
			}
		})
	}
}

// TestLoginPKCERefusedPage: the browser tab shows the gateway's verdict.
// A login the gateway refuses (here: an unverified email) must not say
// "complete".
func TestLoginPKCERefusedPage(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	newHome(t)
	pages := make(chan string, 1)
	_, stderr, err := runLoginCLI(t, e.addr, browserDo(t, map[string]string{"username": "unv", "password": engPassword, "action": "approve"},
		func(status int, body string, _ error) {
			pages <- fmt.Sprintf("%d %s", status, body)
		}), "--pkce")
	var page string
	select {
	case page = <-pages:
	case <-time.After(10 * time.Second):
		t.Fatal("the browser got no page")
	}
	if err == nil || !strings.Contains(stderr, oidc.ReasonEmailUnverified) {
		t.Fatalf("refused login: err %v\n%s", err, stderr)
	}
	if strings.Contains(page, "complete") || !strings.Contains(page, "Login failed") || !strings.HasPrefix(page, "403 ") {
		t.Errorf("browser page after a refusal: %s", page)
	}
}

// TestLoginWaitsEnd: every wait of `bastion login --pkce` ends, with a
// message that says why: a denial the IdP never reports back (ends at
// --timeout), a gateway window shorter than the login (the default
// deadline is the gateway's window), and an IdP that dies mid-login
// (the gateway notices and ends the login).
func TestLoginWaitsEnd(t *testing.T) {
	deny := func(t *testing.T) func(string) {
		return browserDo(t, map[string]string{"action": "deny"}, func(int, string, error) {})
	}
	t.Run("denial never reported back", func(t *testing.T) {
		e := startLoginEnv(t, loginEnvOptions{idp: func(c *devidp.Config) { c.SilentDeny = true }})
		newHome(t)
		start := time.Now()
		_, _, err := runLoginCLI(t, e.addr, deny(t), "--pkce", "--timeout", "4s")
		if err == nil || !strings.Contains(err.Error(), "login window (4s) expired while waiting for the browser") || !strings.Contains(err.Error(), "run bastion login again") {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("took %s", d)
		}
	})
	t.Run("gateway window shorter than the login", func(t *testing.T) {
		e := startLoginEnv(t, loginEnvOptions{window: 4 * time.Second})
		newHome(t)
		_, _, err := runLoginCLI(t, e.addr, nil, "--pkce") // a slow user
		if err == nil || !strings.Contains(err.Error(), "login window (4s) expired") || !strings.Contains(err.Error(), "run bastion login again") {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "EOF") {
			t.Errorf("bare EOF: %v", err)
		}
	})
	t.Run("IdP dies mid-login", func(t *testing.T) {
		e := startLoginEnv(t, loginEnvOptions{})
		newHome(t)
		_, stderr, err := runLoginCLI(t, e.addr, func(line string) {
			if authURLRE.MatchString(line) {
				_ = e.idp.Close()
			}
		}, "--pkce")
		if err == nil || !strings.Contains(stderr, "stopped answering during the login") {
			t.Fatalf("err %v\nstderr %s", err, stderr)
		}
	})
	t.Run("device flow, never approved", func(t *testing.T) {
		e := startLoginEnv(t, loginEnvOptions{})
		newHome(t)
		_, _, err := runLoginCLI(t, e.addr, nil, "--timeout", "3s")
		if err == nil || !strings.Contains(err.Error(), "login window (3s) expired") {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestLoginGatewayMatchesHostPatterns: a --hosts pattern that also
// matches the gateway's name does not make ssh jump through the gateway
// to reach the gateway (OpenSSH: "jumphost loop").
func TestLoginGatewayMatchesHostPatterns(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	home := newHome(t)
	gw := "localhost:" + strconv.Itoa(addrPort(t, e.addr))
	if _, stderr, err := runLoginCLI(t, gw, e.approveDevice(t, "eng"), "--hosts", "localhost,*.internal"); err != nil {
		t.Fatalf("login: %v\n%s", err, stderr)
	}
	userConfig := e.writeUserSSHConfig(t, home)
	out, code := sshVia(t, home, userConfig, "target.internal", "echo", "ok")
	if code != 0 || strings.TrimSpace(out) != "ok" {
		t.Fatalf("ssh target.internal with the gateway matching --hosts: exit %d: %s", code, out)
	}
}

// TestDevicePageDoesNotClaimTheGatewaysVerdict: a locked user approves a
// device login on the IdP's real page; the gateway refuses to sign. The
// page must not have said the terminal is logged in: it says the IdP
// approved and that the result is in the terminal, where the refusal is.
func TestDevicePageDoesNotClaimTheGatewaysVerdict(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	if err := e.locks.Lock(t.Context(), ca.Lock{Target: e.user, Reason: "incident 7", By: "test"}); err != nil {
		t.Fatal(err)
	}
	newHome(t)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	pages := make(chan string, 1)
	var wg sync.WaitGroup
	_, stderr, err := runLoginCLI(t, e.addr, func(line string) {
		m := deviceURLRE.FindStringSubmatch(line)
		if m == nil {
			return
		}
		// A person at the browser: the page, the code, the password.
		wg.Go(func() {
			status, body, err := submitForm(client, m[1], map[string]string{
				"user_code": deviceCodeRE.FindStringSubmatch(line)[1], "username": "eng", "password": engPassword, "action": "approve"})
			pages <- fmt.Sprintf("%d %v %s", status, err, body)
		})
	})
	wg.Wait()
	page := <-pages
	if err == nil || !strings.Contains(stderr, "is locked: incident 7") {
		t.Fatalf("login of a locked user: err %v\n%s", err, stderr)
	}
	if !strings.HasPrefix(page, "200 <nil>") || strings.Contains(page, "logged in") || !strings.Contains(page, html.EscapeString(devidp.ApprovedMessage("eng"))) ||
		!strings.Contains(page, "result is shown in the terminal") {
		t.Errorf("the IdP's page after approval claims more than the IdP knows:\n%s", page)
	}
}

// TestLoginCtrlC: Ctrl-C while the login waits for the browser says
// "login cancelled" and exits 130, as a shell reports SIGINT, in both
// flows; nothing is saved.
func TestLoginCtrlC(t *testing.T) {
	e := startLoginEnv(t, loginEnvOptions{})
	for _, tc := range []struct {
		name   string
		args   []string
		prompt *regexp.Regexp
	}{{"device", nil, deviceCodeRE}, {"pkce", []string{"--pkce"}, authURLRE}} {
		t.Run(tc.name, func(t *testing.T) {
			home := newHome(t)
			ctx, interrupt := context.WithCancel(t.Context())
			defer interrupt()
			start := time.Now()
			_, stderr, err := runLoginCLIContext(t, ctx, e.addr, func(line string) {
				if tc.prompt.MatchString(line) {
					interrupt()
				}
			}, tc.args...)
			if err == nil || exitCode(err) != 130 || userError(err) != "login cancelled" {
				t.Fatalf("Ctrl-C: exit %d, error %v\n%s", exitCode(err), err, stderr)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s to give up", d)
			}
			if _, err := os.Stat(filepath.Join(home, ".ssh", "bastion", "id_ed25519-cert.pub")); err == nil {
				t.Error("a cancelled login saved a certificate")
			}
		})
	}
}
