package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
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
	"github.com/bastion-ssh/bastion/internal/sshclient"
)

// errLoginCancelled is a login interrupted by the user (Ctrl-C).
var errLoginCancelled = errors.New("login cancelled")

// defaultGateway is where `bastion login` goes when nothing else says.
const defaultGateway = "127.0.0.1:2222"

// loginFlags are `bastion login`'s options.
type loginFlags struct {
	gateway   string
	hosts     []string
	pkce      bool
	noBrowser bool
	timeout   time.Duration
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
			err := runLogin(cmd.Context(), a, f, cmd.Flags().Changed("hosts"))
			if err != nil && errors.Is(cmd.Context().Err(), context.Canceled) {
				// Ctrl-C: say so, and exit as a shell reports SIGINT.
				return &exitError{code: 130, err: errLoginCancelled}
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.gateway, "gateway", "", "gateway SSH address HOST[:PORT]; env BASTION_GATEWAY; default the last one used, else "+defaultGateway)
	fl.StringSliceVar(&f.hosts, "hosts", nil, "ssh host patterns reached through the gateway, for ~/.ssh/bastion/config (default the last ones used, else *.internal)")
	fl.BoolVar(&f.pkce, "pkce", false, "log in with a browser redirect to this machine (authorization code + PKCE) even if the IdP has a device flow")
	fl.BoolVar(&f.noBrowser, "no-browser", false, "do not open a browser, only print the URL; env BASTION_NO_BROWSER=1")
	fl.DurationVar(&f.timeout, "timeout", 0, "give up on the login after this long (default: the gateway's login window, usually 10m)")
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

// defaultLoginWindow is the login window of a gateway that does not say.
const defaultLoginWindow = 10 * time.Minute

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
	start := time.Now()
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(f.timeout))
		defer cancel()
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
	var svc gateway.LoginServiceInfo
	if code != 0 || json.Unmarshal(cfgOut.Bytes(), &svc) != nil {
		return fmt.Errorf("login: the gateway at %s has no usable login service (login-config exited %d: %s): is its oidc: section configured?",
			addr, code, strings.TrimSpace(cfgErr.String()))
	}
	// Every wait ends: by --timeout, else by the gateway's login window.
	window := time.Duration(svc.WindowSeconds) * time.Second
	if window <= 0 {
		window = defaultLoginWindow
	}
	limit := f.timeout
	if limit <= 0 {
		limit = window
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(limit))
		defer cancel()
	}
	if !svc.IdPUp && svc.IdPError != "" {
		fmt.Fprintf(a.stderr, "Note: the gateway cannot reach its identity provider %s right now (%s).\n", svc.Issuer, svc.IdPError)
	}

	open := browserOpener(a.stderr, f.noBrowser)
	var certText []byte
	if svc.Device && !f.pkce {
		certText, err = deviceLogin(ctx, a, conn, open)
	} else {
		if !svc.Code {
			return fmt.Errorf("login: the gateway at %s does not run the browser login (login-code): update the gateway, or log in with its device flow (`ssh %s@%s`)", addr, gateway.LoginUser, addr)
		}
		certText, err = codeLogin(ctx, a, conn, open, limit)
	}
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && !strings.Contains(err.Error(), "login window") {
			return fmt.Errorf("login: the login window (%s) expired before the login finished: run bastion login again", limit)
		}
		return err
	}
	cert, err := sshclient.ParseUserCertificate(certText, key.PublicKey())
	if err != nil {
		return err
	}
	if len(cert.ValidPrincipals) == 0 {
		return errors.New("login: the gateway signed a certificate without principals; it would be refused everywhere: report this to your administrators")
	}
	return finishLogin(a, paths, st, addr, hosts, key, cert, hc, svc.Dev)
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

// codeLogin is the browser login the gateway drives (`login-code`): this
// machine listens on a loopback port for the browser's return, the
// gateway builds the authorization URL (its state, nonce and PKCE
// challenge), the browser logs in at the IdP and comes back here with a
// code, which goes to the gateway on the same session; the gateway
// redeems it (with its client secret, when it has one) and signs. The
// browser's tab shows the gateway's verdict, not just that a code came.
func codeLogin(ctx context.Context, a *app, conn *sshclient.Conn, open func(string), limit time.Duration) ([]byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("login: cannot listen on 127.0.0.1 for the browser's return: %w", err)
	}
	defer ln.Close()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	verdictText := &lastLine{w: a.stderr}
	type execResult struct {
		code int
		err  error
	}
	done := make(chan execResult, 1)
	go func() {
		code, err := conn.Exec(ctx, "login-code", inR, outW, verdictText)
		_ = outW.Close()
		_ = inR.Close()
		done <- execResult{code, err}
	}()
	defer inW.Close()
	gatewayEnded := func() error {
		_ = inW.Close()
		r := <-done
		if r.err != nil {
			return r.err
		}
		return fmt.Errorf("login: the gateway ended the login: %s", verdictText.String())
	}
	start, _ := json.Marshal(gateway.CodeLoginStart{RedirectURI: "http://" + ln.Addr().String() + "/callback"})
	if _, err := inW.Write(append(start, '\n')); err != nil {
		return nil, gatewayEnded()
	}
	out := bufio.NewReader(io.LimitReader(outR, 64*1024))
	first, err := out.ReadBytes('\n')
	var au gateway.CodeLoginURL
	if err != nil || json.Unmarshal(first, &au) != nil {
		return nil, gatewayEnded()
	}
	if u, err := url.Parse(au.AuthURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		_ = gatewayEnded()
		return nil, fmt.Errorf("login: the gateway sent an authorization URL that is not http(s): %q", au.AuthURL)
	}

	type callback struct {
		query url.Values
		reply chan string // the page's message; closed without one on failure
	}
	callbacks := make(chan callback)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		q := r.URL.Query()
		if r.URL.Path != "/callback" || subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(au.State)) != 1 {
			// Not this login's return (a stale tab, a forgery): ignore it.
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, loginPage("This is not the return of the login bastion is waiting for. Return to the terminal."))
			return
		}
		cb := callback{query: q, reply: make(chan string, 1)}
		select {
		case callbacks <- cb:
		case <-r.Context().Done():
			return
		case <-ctx.Done():
			w.WriteHeader(http.StatusGone)
			fmt.Fprint(w, loginPage("This login has ended. Run bastion login again."))
			return
		}
		select {
		case msg := <-cb.reply:
			if !strings.HasPrefix(msg, "Login complete") {
				w.WriteHeader(http.StatusForbidden)
			}
			fmt.Fprint(w, loginPage(msg))
		case <-ctx.Done():
			w.WriteHeader(http.StatusGatewayTimeout)
			fmt.Fprint(w, loginPage("The gateway did not answer in time. Return to the terminal."))
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close()
		}
	}()

	fmt.Fprintf(a.stderr, "To log in, open this URL in a browser on this machine:\n  %s\n", au.AuthURL)
	open(au.AuthURL)
	fmt.Fprintf(a.stderr, "Waiting for the login to finish in the browser (up to %s)...\n", limit.Round(time.Second))

	var cb callback
	select {
	case <-ctx.Done():
		_ = gatewayEnded()
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("login: the login window (%s) expired while waiting for the browser: run bastion login again (if the browser stopped at an error page of the identity provider, such as an unknown client or a redirect URI it does not allow, see docs/idp/ for the fix)", limit)
		}
		return nil, fmt.Errorf("login: canceled while waiting for the browser: %w", ctx.Err())
	case r := <-done:
		// The gateway ended the login first (the IdP stopped answering,
		// its window ran out): its reason is above.
		if r.err != nil {
			return nil, r.err
		}
		return nil, fmt.Errorf("login: the gateway ended the login: %s", verdictText.String())
	case cb = <-callbacks:
	}
	res := gateway.CodeLoginResult{Code: cb.query.Get("code"), State: cb.query.Get("state"),
		Error: cb.query.Get("error"), ErrorDescription: cb.query.Get("error_description")}
	msg, _ := json.Marshal(res)
	if _, err := inW.Write(append(msg, '\n')); err != nil {
		cb.reply <- "Login failed: the gateway went away. Return to the terminal."
		return nil, gatewayEnded()
	}
	cert, _ := io.ReadAll(out)
	r := <-done
	switch {
	case r.err != nil:
		cb.reply <- "Login failed: the connection to the gateway broke. Return to the terminal."
		return nil, r.err
	case r.code != 0:
		cb.reply <- "Login failed. " + verdictText.String() + " Return to the terminal."
		return nil, fmt.Errorf("login: the gateway did not sign a certificate: %s", verdictText.String())
	}
	cb.reply <- "Login complete. You can close this tab and return to the terminal."
	return cert, nil
}

// lastLine passes writes through to w and keeps the last non-empty line,
// bounded, for the browser's page.
type lastLine struct {
	w io.Writer

	mu   sync.Mutex
	buf  []byte
	last string
}

func (l *lastLine) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range p {
		if b == '\n' {
			if s := strings.TrimSpace(string(l.buf)); s != "" {
				l.last = s
			}
			l.buf = l.buf[:0]
		} else if len(l.buf) < 512 {
			l.buf = append(l.buf, b)
		}
	}
	return l.w.Write(p)
}

func (l *lastLine) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimPrefix(l.last, "bastion: ")
}

func loginPage(msg string) string {
	return "<!doctype html><meta charset=utf-8><title>bastion login</title><p>" + html.EscapeString(msg) + "</p>\n"
}

// finishLogin pins the host CA, saves the certificate, the state and the
// ssh config, and hands the certificate to ssh-agent.
func finishLogin(a *app, paths sshclient.Paths, st sshclient.State, addr string, hosts []string,
	key *sshclient.Key, cert *gossh.Certificate, hc *sshclient.HostCheck, dev bool) error {
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
	pinned, err := hc.Pin(addr, dev)
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
