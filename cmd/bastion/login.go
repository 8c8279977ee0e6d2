package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/oidc"
	"github.com/bastion-ssh/bastion/internal/sshclient"
)

// defaultGateway is where `bastion login` goes when nothing else says.
const defaultGateway = "127.0.0.1:2222"

// loginFlags are `bastion login`'s options.
type loginFlags struct {
	gateway   string
	hosts     []string
	pkce      bool
	noBrowser bool
}

func newLoginCommand(a *app) *cobra.Command {
	var f loginFlags
	cmd := &cobra.Command{
		Use:   "login [--gateway HOST:PORT] [--hosts PATTERNS]",
		Short: "Log in with your identity provider and get a short-lived SSH certificate",
		Long: `bastion login gets you an SSH certificate from the gateway's login service.

It keeps an ed25519 key in ~/.ssh/bastion/ (made on first use; it never
leaves this machine), connects to the gateway as the reserved user "login",
and has you log in with the company's identity provider: in the browser
when one can be opened here, otherwise by printing the URL to open. The
certificate is saved as ~/.ssh/bastion/id_ed25519-cert.pub, added to your
ssh-agent for as long as it is valid, and ~/.ssh/bastion/config is written
so that plain ssh reaches the hosts behind the gateway:

    Include ~/.ssh/bastion/config      (at the top of ~/.ssh/config)
    ssh web1.internal

The gateway's host CA is pinned on the first login (trust on first use)
and checked on every later one.

The gateway defaults to $BASTION_GATEWAY, then the last one used, then
127.0.0.1:2222. The identity provider's device flow is used when it has
one; --pkce (or an IdP without it) logs in with a browser redirect to this
machine instead. BASTION_NO_BROWSER=1 is --no-browser.`,
		Example: `  bastion login --gateway bastion.example.com:2222
  bastion login --hosts '*.internal,10.0.*'
  bastion login --no-browser`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runLogin(cmd.Context(), a, f, cmd.Flags().Changed("hosts"))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.gateway, "gateway", "", "gateway SSH address HOST[:PORT]; env BASTION_GATEWAY; default the last one used, else "+defaultGateway)
	fl.StringSliceVar(&f.hosts, "hosts", nil, "ssh host patterns reached through the gateway, for ~/.ssh/bastion/config (default the last ones used, else *.internal)")
	fl.BoolVar(&f.pkce, "pkce", false, "log in with a browser redirect to this machine (authorization code + PKCE) even if the IdP has a device flow")
	fl.BoolVar(&f.noBrowser, "no-browser", false, "do not open a browser, only print the URL; env BASTION_NO_BROWSER=1")
	return cmd
}

// resolveGateway picks the gateway address: the flag, then
// $BASTION_GATEWAY, then the last one used, then fallback (which may be
// empty: no default).
func resolveGateway(flag string, st sshclient.State, fallback string) (string, error) {
	for _, addr := range []string{flag, os.Getenv("BASTION_GATEWAY"), st.Gateway, fallback} {
		if strings.TrimSpace(addr) != "" {
			return sshclient.NormalizeAddr(addr)
		}
	}
	return "", nil
}

// loginServiceConfig is the answer of the gateway's `login-config`.
type loginServiceConfig struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"client_id"`
	Device   bool   `json:"device"`
}

func runLogin(ctx context.Context, a *app, f loginFlags, hostsGiven bool) error {
	paths, err := sshclient.DefaultPaths()
	if err != nil {
		return err
	}
	if err := paths.Ensure(); err != nil {
		return err
	}
	st, err := sshclient.LoadState(paths.State())
	if err != nil {
		return err
	}
	addr, err := resolveGateway(f.gateway, st, defaultGateway)
	if err != nil {
		return fmt.Errorf("--gateway: %w", err)
	}
	hosts := f.hosts
	if !hostsGiven {
		hosts = st.Hosts
	}
	if len(hosts) == 0 {
		hosts = sshclient.DefaultHostPatterns()
	}
	if err := sshclient.ValidateHostPatterns(hosts); err != nil {
		return fmt.Errorf("--hosts: %w", err)
	}
	key, created, err := sshclient.LoadOrCreateKey(paths.Key(), "bastion login key")
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(a.stderr, "Created your bastion key %s (it never leaves this machine).\n", paths.Key())
	}
	hc, err := sshclient.NewHostCheck(sshclient.HostCheckConfig{KnownHosts: paths.KnownHosts(), FirstUse: true})
	if err != nil {
		return err
	}
	conn, err := sshclient.Dial(ctx, addr, gateway.LoginUser, key.Signer, hc)
	if errors.Is(err, sshclient.ErrAuthRefused) {
		return fmt.Errorf("login: the gateway at %s has no login service (it refused the reserved user %q): ask its administrators to configure its oidc: section, or check --gateway", addr, gateway.LoginUser)
	}
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if ca, first := hc.FirstUse(); first {
		fmt.Fprintf(a.stderr, "First contact with %s: its host CA is %s; it will be pinned once you have logged in.\n", addr, gossh.FingerprintSHA256(ca))
	}

	var cfgOut, cfgErr bytes.Buffer
	code, err := conn.Exec(ctx, "login-config", nil, &cfgOut, &cfgErr)
	if err != nil {
		return err
	}
	var svc loginServiceConfig
	if code != 0 || json.Unmarshal(cfgOut.Bytes(), &svc) != nil {
		return fmt.Errorf("login: the gateway at %s has no usable login service (login-config exited %d: %s): is its oidc: section configured?",
			addr, code, strings.TrimSpace(cfgErr.String()))
	}

	open := browserOpener(a.stderr, f.noBrowser)
	var certText []byte
	if svc.Device && !f.pkce {
		certText, err = deviceLogin(ctx, a, conn, open)
	} else {
		certText, err = pkceLogin(ctx, a, conn, svc, open)
	}
	if err != nil {
		return err
	}
	cert, err := sshclient.ParseUserCertificate(certText, key.PublicKey())
	if err != nil {
		return err
	}
	if len(cert.ValidPrincipals) == 0 {
		return errors.New("login: the gateway signed a certificate without principals; it would be refused everywhere: report this to your administrators")
	}
	return finishLogin(a, paths, st, addr, hosts, key, cert, hc)
}

// deviceLogin runs the gateway's device flow: the gateway prints the URL
// and code on stderr (relayed, and the URL opened in a browser) and the
// certificate on stdout.
func deviceLogin(ctx context.Context, a *app, conn *sshclient.Conn, open func(string)) ([]byte, error) {
	var out bytes.Buffer
	relay := &promptRelay{w: a.stderr, open: open}
	code, err := conn.Exec(ctx, "login", nil, &out, relay)
	relay.flush()
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("login: the gateway did not sign a certificate (exit status %d; its reason is above)", code)
	}
	return out.Bytes(), nil
}

// pkceLogin logs in at the IdP with a browser redirect to a loopback
// listener here (authorization code + PKCE), then hands the ID token to
// the gateway, which verifies it as it would its own and signs.
func pkceLogin(ctx context.Context, a *app, conn *sshclient.Conn, svc loginServiceConfig, open func(string)) ([]byte, error) {
	if svc.Issuer == "" || svc.ClientID == "" {
		return nil, errors.New("login: the gateway did not say which identity provider to use (login-config has no issuer or client_id)")
	}
	prov, err := oidc.New(ctx, oidc.Config{Issuer: svc.Issuer, ClientID: svc.ClientID})
	if err != nil {
		return nil, fmt.Errorf("login: the identity provider %s that the gateway names: %w", svc.Issuer, err)
	}
	raw, nonce, err := prov.LoginPKCE(ctx, func(u string) error {
		fmt.Fprintf(a.stderr, "To log in, open this URL in a browser on this machine:\n  %s\n", u)
		open(u)
		fmt.Fprintln(a.stderr, "Waiting for the login to finish in the browser...")
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	code, err := conn.Exec(ctx, "login-token", strings.NewReader(raw+"\n"+nonce+"\n"), &out, a.stderr)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("login: the gateway did not sign a certificate (exit status %d; its reason is above)", code)
	}
	return out.Bytes(), nil
}

// finishLogin pins the host CA, saves the certificate, the state and the
// ssh config, and hands the certificate to ssh-agent.
func finishLogin(a *app, paths sshclient.Paths, st sshclient.State, addr string, hosts []string,
	key *sshclient.Key, cert *gossh.Certificate, hc *sshclient.HostCheck) error {
	now := time.Now()
	user := cert.ValidPrincipals[0]
	sshCfg := sshclient.SSHConfig{
		Gateway: addr, User: user, Hosts: hosts,
		IdentityFile: paths.Key(), CertificateFile: paths.Certificate(), KnownHosts: paths.KnownHosts(),
		TargetKnownHosts: []string{filepath.Join(filepath.Dir(paths.Dir), "known_hosts")},
	}
	if err := sshCfg.Validate(); err != nil {
		return err
	}
	pinned, err := hc.Pin(addr)
	if err != nil {
		return err
	}
	if pinned != nil {
		fmt.Fprintf(a.stderr, "Pinned the gateway's host CA %s in %s.\n", gossh.FingerprintSHA256(pinned), paths.KnownHosts())
	}
	if err := sshclient.WriteCertificate(paths.Certificate(), cert); err != nil {
		return err
	}
	if err := sshclient.WriteConfig(paths.Config(), sshCfg); err != nil {
		return err
	}
	showHint := !st.IncludeHintShown && !includesBastionConfig(filepath.Join(filepath.Dir(paths.Dir), "config"))
	st.Gateway, st.Hosts, st.IncludeHintShown = addr, hosts, true
	if err := sshclient.SaveState(paths.State(), st); err != nil {
		return err
	}

	agentNote := "no ssh-agent (SSH_AUTH_SOCK is not set); ssh reads the key and certificate from ~/.ssh/bastion"
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		life, err := sshclient.AddToAgent(sock, key, cert, "bastion "+user+" via "+addr, now)
		if err != nil {
			agentNote = fmt.Sprintf("not added to ssh-agent: %v", err)
		} else {
			agentNote = fmt.Sprintf("added to ssh-agent for %s", life.Round(time.Second))
		}
	}
	until := sshclient.Expiry(cert)
	fmt.Fprintf(a.stdout, "Logged in to %s as %s.\n", addr, user)
	fmt.Fprintf(a.stdout, "  principals:  %s\n", strings.Join(cert.ValidPrincipals, ", "))
	if g := cert.Extensions[ca.GroupsExtension]; g != "" {
		fmt.Fprintf(a.stdout, "  groups:      %s\n", strings.ReplaceAll(g, ",", ", "))
	}
	fmt.Fprintf(a.stdout, "  valid until: %s (%s left)\n", until.Local().Format(time.RFC3339), until.Sub(now).Round(time.Minute))
	fmt.Fprintf(a.stdout, "  certificate: %s (%s)\n", paths.Certificate(), agentNote)
	fmt.Fprintf(a.stdout, "  ssh config:  %s (hosts %s through the gateway)\n", paths.Config(), strings.Join(hosts, " "))
	if showHint {
		fmt.Fprintf(a.stdout, "\nTo reach hosts with plain ssh, put this line at the top of ~/.ssh/config (%s):\n\n    Include %s\n\nthen: ssh HOST (for HOST matching %s), or ssh -J %s@%s HOST\n",
			includeWhy, paths.Config(), strings.Join(hosts, " "), user, addr)
	}
	return nil
}

// includesBastionConfig reports whether the ssh config at path already
// includes bastion's.
func includesBastionConfig(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.EqualFold(f[0], "include") && strings.Contains(line, "bastion/config") {
			return true
		}
	}
	return false
}

// browserOpener returns a function that opens a URL in the user's browser
// when one can be opened here (macOS, or a graphical session with
// xdg-open), and otherwise does nothing: the URL is always printed too.
func browserOpener(stderr io.Writer, disabled bool) func(string) {
	if disabled || os.Getenv("BASTION_NO_BROWSER") == "1" {
		return func(string) {}
	}
	var prog string
	switch {
	case runtime.GOOS == "darwin":
		prog = "open"
	case runtime.GOOS == "windows":
		return func(string) {}
	case os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != "":
		prog = "xdg-open"
	default:
		return func(string) {}
	}
	path, err := exec.LookPath(prog)
	if err != nil {
		return func(string) {}
	}
	return func(u string) {
		cmd := exec.Command(path, u)
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(stderr, "(could not open a browser: %v; open the URL yourself)\n", err)
			return
		}
		go cmd.Wait() //nolint:errcheck // the browser's fate is not ours
	}
}

var (
	deviceURLRE      = regexp.MustCompile(`^To log in, open (\S+) and enter the code \S+`)
	deviceCompleteRE = regexp.MustCompile(`^\s+or open: (\S+)`)
)

// promptRelay copies the gateway's device-flow prompts to w as they come
// and opens the verification URL (the complete one, carrying the code,
// when the gateway gives it) once the prompt is complete.
type promptRelay struct {
	w    io.Writer
	open func(string)

	mu                 sync.Mutex
	line               []byte
	verifyURL, fullURL string
	opened             bool
}

func (r *promptRelay) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.w.Write(p); err != nil {
		return 0, err
	}
	for _, b := range p {
		if b != '\n' {
			if len(r.line) < 4096 {
				r.line = append(r.line, b)
			}
			continue
		}
		r.onLine(strings.TrimRight(string(r.line), "\r"))
		r.line = r.line[:0]
	}
	return len(p), nil
}

func (r *promptRelay) onLine(line string) {
	if m := deviceURLRE.FindStringSubmatch(line); m != nil {
		r.verifyURL = m[1]
		return
	}
	if m := deviceCompleteRE.FindStringSubmatch(line); m != nil {
		r.fullURL = m[1]
	}
	// The complete URL, or any line after the first without one, ends
	// the prompt.
	if r.verifyURL != "" && !r.opened {
		r.opened = true
		u := r.fullURL
		if u == "" {
			u = r.verifyURL
		}
		r.open(u)
	}
}

// flush handles a last line without a newline.
func (r *promptRelay) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.line) > 0 {
		r.onLine(string(r.line))
		r.line = r.line[:0]
	}
}
