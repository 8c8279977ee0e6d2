package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/deploy"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
	"github.com/bastion-ssh/bastion/internal/config"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/devtarget"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

func newDevCommand(a *app) *cobra.Command {
	var listen, idpListen, target string
	var gateways int
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole product on loopback: a CA, a development OIDC provider, the gateway and a demo host",
		Long: `bastion dev starts, on loopback, in a temporary data directory unless
--data-dir is given: a fresh CA, a development OIDC provider with two demo
users (alice in group eng, bob in group dba), the gateway with the login
service, and a demo host behind it (a local sshd when one can run as you,
otherwise a built-in SSH host that trusts the user CA and runs commands,
ptys, scp, sftp, rsync and git; as root, both run them as the account
bastion-demo, created on first use). It prints the
commands to try next. Stop it with Ctrl-C.

With --gateways N (N > 1) it also starts an embedded etcd under the data
directory and runs N gateways (gw-1 … gw-N, on consecutive ports from
--listen) that share it, one CA and one identity provider: a cluster on
loopback, where a lock through one gateway ends a session held through
another.`,
		Example: `  bastion dev
  bastion dev --listen 127.0.0.1:2200 --data-dir ./dev-data
  bastion dev --gateways 2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// `bastion dev 2>&1 | tee log` and Ctrl-C: tee dies first, and
			// writing "stopping" to its closed pipe would kill this process
			// with SIGPIPE before it deletes the temporary data directory
			// (CA private keys included). Ignored, such writes just fail.
			signal.Ignore(syscall.SIGPIPE)
			dataDir := a.dataDir
			if !cmd.Flags().Changed("data-dir") && os.Getenv("BASTION_DATA_DIR") == "" {
				dir, err := os.MkdirTemp("", "bastion-dev-")
				if err != nil {
					return err
				}
				defer removeDevDataDir(a.stderr, dir)
				fmt.Fprint(a.stderr, tempDataDirNote(dir))
				dataDir = dir
			}
			env, err := startDev(cmd.Context(), devOptions{DataDir: dataDir, Listen: listen, IdPListen: idpListen, Target: target, Gateways: gateways, Log: a.stderr})
			if err != nil {
				return err
			}
			defer env.Close()
			fmt.Fprint(a.stdout, env.Instructions())
			<-cmd.Context().Done()
			fmt.Fprintln(a.stderr, "bastion dev: stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:2222", "gateway SSH address")
	cmd.Flags().StringVar(&idpListen, "idp-listen", "127.0.0.1:0", "development OIDC provider address (port 0: any free port)")
	cmd.Flags().StringVar(&target, "target", "auto", "demo host: auto, sshd or builtin")
	cmd.Flags().IntVar(&gateways, "gateways", 1, "number of gateways; more than 1 runs a cluster on an embedded etcd")
	return cmd
}

// devOptions configure startDev.
type devOptions struct {
	DataDir, Listen, IdPListen, Target string
	// Log receives the gateway's debug log (JSON); nil discards it.
	Log io.Writer
	// PollInterval of the device flow; default the IdP's.
	PollInterval time.Duration
	// Gateways is how many gateways to run (0 and 1: one, with no
	// cluster: block). More than one share an embedded etcd.
	Gateways int
}

// devEnv is a running `bastion dev`.
type devEnv struct {
	IdP   *devidp.Server
	Users []devidp.User
	// Gateway is the first gateway's SSH address; Gateways all of them
	// (one unless --gateways asked for more).
	Gateway    string
	Gateways   []string
	TargetAddr string
	TargetUser string
	TargetKind string
	DataDir    string
	// Etcd is the embedded etcd's client URLs (--gateways > 1).
	Etcd []string
	// CLI is how the instructions run bastion: see devCLI.
	CLI string
	// HostCAs are the host CA keys the gateways and the demo host's
	// certificates are signed with (current first).
	HostCAs     []gossh.PublicKey
	gatewayDirs []string
	closers     []func() error
}

// Close stops everything startDev started, last first. It is safe on a nil
// or half-built devEnv: startDev calls it on whatever it built before a
// failure.
func (e *devEnv) Close() error {
	if e == nil {
		return nil
	}
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		if e.closers[i] != nil {
			errs = append(errs, e.closers[i]())
		}
	}
	e.closers = nil
	return errors.Join(errs...)
}

// demoAccount is the account the demo host runs commands as when bastion
// runs as root: root must not be handed out by a demo, and sshd refuses
// root logins (PermitRootLogin no).
const demoAccount = "bastion-demo"

// startDev brings up the whole product on loopback.
func startDev(ctx context.Context, o devOptions) (*devEnv, error) {
	env := &devEnv{DataDir: o.DataDir, CLI: devCLI()}
	if err := env.start(ctx, o); err != nil {
		env.Close()
		return nil, err
	}
	return env, nil
}

func (e *devEnv) start(ctx context.Context, o devOptions) error {
	if o.Target != "auto" && o.Target != "" && o.Target != "sshd" && o.Target != "builtin" {
		return fmt.Errorf("--target %q: use auto, sshd or builtin", o.Target)
	}
	layout := ca.Layout{DataDir: o.DataDir}
	// A CA made here gets its audit log with it (initDevCA), so serve
	// finds the log the CA says should exist.
	if !layout.Exists() {
		if err := initDevCA(ctx, layout); err != nil {
			return err
		}
	}
	userCAs, err := layout.TrustedKeys(ca.UserCA)
	if err != nil {
		return err
	}
	e.Users = devidp.DemoUsers()
	e.IdP, err = devidp.Start(ctx, devidp.Config{Listen: o.IdPListen, Users: e.Users, PollInterval: o.PollInterval})
	if err != nil {
		return err
	}
	e.closers = append(e.closers, e.IdP.Close)

	// The demo host's port goes into the gateway's rules, and its host
	// certificate comes from the gateway's CA, so the port is taken first
	// and the host starts after the gateway.
	targetLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	e.closers = append(e.closers, func() error { targetLn.Close(); return nil })
	port := targetLn.Addr().(*net.TCPAddr).Port
	n := max(o.Gateways, 1)
	if n > maxDevGateways {
		return fmt.Errorf("--gateways %d: bastion dev runs at most %d gateways", o.Gateways, maxDevGateways)
	}
	listens, err := devListens(o.Listen, n)
	if err != nil {
		return err
	}
	var endpoints []string
	if n > 1 {
		// One member is enough on one machine: the dev cluster shows
		// what the gateways share, not what etcd survives.
		etcd, err := etcdembed.Start(ctx, filepath.Join(o.DataDir, "etcd"), 1)
		if err != nil {
			return err
		}
		e.closers = append(e.closers, func() error { etcd.Close(); return nil })
		endpoints = etcd.Endpoints()
		e.Etcd = endpoints
	}
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}
	var auth *ca.Authority
	for i, listen := range listens {
		f := &config.File{
			Listen:      listen,
			DataDir:     o.DataDir,
			HostNames:   []string{"127.0.0.1", "localhost"},
			AdminGroups: []string{"eng"},
			// alice (eng) exports the audit log over SSH in the instructions.
			AuditorGroups: []string{"eng"},
			// Record mode, said outright: the demo host is not on port
			// 22, where record is the default, and a newcomer should see
			// recordings. Both demo hosts trust the user CA and present a
			// host certificate from the host CA, which record mode needs.
			Access: []config.Access{
				{Groups: []string{"eng", "dba"}, Hosts: []string{"127.0.0.1", "localhost"}, Ports: []int{port}, Mode: "record", Logins: devLogins()},
			},
			OIDC: &config.OIDC{Issuer: e.IdP.Issuer(), ClientID: e.IdP.ClientID()},
			Cert: config.Cert{Groups: map[string]config.CertGroup{"dba": {MaxValidity: config.Duration(time.Hour)}}},
			Dev:  true,
		}
		if n > 1 {
			// Each gateway has its own data dir (bbolt holds its audit
			// log locked) and reads the one CA from ca.dir.
			id := fmt.Sprintf("gw-%d", i+1)
			f.DataDir = filepath.Join(o.DataDir, id)
			if err := os.MkdirAll(f.DataDir, 0o700); err != nil {
				return err
			}
			f.CA.Dir = layout.Dir()
			// No balancer in front of a dev cluster: nothing to drain.
			f.Cluster = &config.Cluster{GatewayID: id, Etcd: config.Etcd{Endpoints: endpoints}, Drain: config.Duration(time.Millisecond)}
		}
		if err := f.Validate(); err != nil {
			return err
		}
		rt, err := startRuntime(ctx, f, newLogger(logw, config.Log{Level: "warn"}), false, logw)
		if err != nil {
			if holder, ok := audit.InUseBy(err); ok {
				return fmt.Errorf("another bastion (dev or serve) is using %s (%s): stop it, or give this bastion dev another --data-dir (or none, for a temporary one)", o.DataDir, holder)
			}
			if strings.Contains(err.Error(), "address already in use") {
				return fmt.Errorf("%w; is another bastion dev running? pass --listen 127.0.0.1:0 (or another port)", err)
			}
			return err
		}
		e.closers = append(e.closers, rt.stop)
		e.Gateways = append(e.Gateways, rt.sshAddr)
		e.gatewayDirs = append(e.gatewayDirs, f.DataDir)
		if auth == nil {
			auth = rt.auth
		}
	}
	e.Gateway = e.Gateways[0]
	e.HostCAs = auth.TrustedKeys(ca.HostCA)
	return e.startTarget(ctx, o, auth, userCAs, targetLn)
}

// devLogins are the inner logins the dev rule allows besides the
// certificate's principals: the sshd demo host's account (demoAccount as
// root, else the user running bastion dev).
func devLogins() []string {
	logins := []string{demoAccount}
	if u, err := user.Current(); err == nil && u.Username != "root" && u.Username != demoAccount {
		logins = append(logins, u.Username)
	}
	return logins
}

// maxDevGateways bounds --gateways: enough to see a cluster, few enough
// for one laptop.
const maxDevGateways = 9

// devListens are the gateways' listen addresses: listen for the first,
// then the next ports up (each port 0 when listen's is).
func devListens(listen string, n int) ([]string, error) {
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %v; use HOST:PORT, such as 127.0.0.1:2222", listen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port+n-1 > 65535 {
		return nil, fmt.Errorf("--listen %q: the port must be a number from 0 to %d for %d gateways", listen, 65536-n, n)
	}
	out := make([]string, n)
	for i := range out {
		q := port
		if port != 0 {
			q += i
		}
		out[i] = net.JoinHostPort(host, strconv.Itoa(q))
	}
	return out, nil
}

// startTarget starts the demo host on ln: sshd when asked (--target
// sshd), else (auto, builtin) the built-in one. auto does not pick sshd:
// an sshd not running as root cannot hand out a pty (it must chown the
// terminal), so the interactive step would fail for an ordinary user.
func (e *devEnv) startTarget(ctx context.Context, o devOptions, auth *ca.Authority, userCAs []gossh.PublicKey, ln net.Listener) error {
	useSSHD := o.Target == "sshd"
	var acct *user.User
	if os.Geteuid() == 0 {
		var err error
		if acct, err = ensureDemoAccount(); err != nil {
			return err
		}
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	hostKey, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	cert, err := auth.Sign(ctx, ca.Request{Kind: ca.HostCA, Key: hostKey.PublicKey(), KeyID: "bastion-dev-target", Principals: []string{"127.0.0.1", "localhost"}, Requester: "bastion dev", Via: "dev"})
	if err != nil {
		return fmt.Errorf("sign the demo host's certificate: %w", err)
	}
	if useSSHD {
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		return e.startSSHD(priv, cert, userCAs, port, acct)
	}
	certSigner, err := gossh.NewCertSigner(cert, hostKey)
	if err != nil {
		return err
	}
	trusted := func(k gossh.PublicKey) bool {
		for _, c := range userCAs {
			if string(c.Marshal()) == string(k.Marshal()) {
				return true
			}
		}
		return false
	}
	t, err := devtarget.Start(devtarget.Config{Listener: ln, IsUserCA: trusted, HostSigners: []gossh.Signer{certSigner, hostKey}, Account: acct})
	if err != nil {
		return err
	}
	e.closers = append(e.closers, t.Close)
	runsAs := "you"
	if acct != nil {
		runsAs = acct.Username
	}
	e.TargetAddr, e.TargetUser, e.TargetKind = t.Addr(), "", "built-in demo host; commands run as "+runsAs
	return nil
}

// ensureDemoAccount returns demoAccount, creating it when missing (a
// system account with /bin/sh and a home, password field "*": unusable for
// passwords, but not "locked", which sshd with UsePAM no would refuse).
func ensureDemoAccount() (*user.User, error) {
	if u, err := user.Lookup(demoAccount); err == nil {
		return u, nil
	}
	out, err := exec.Command("useradd", "--system", "--create-home", "--shell", "/bin/sh", "--password", "*", demoAccount).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "already exists") {
		return nil, fmt.Errorf("running as root, the demo host runs commands as the account %s, and creating it failed: %v: %s; create it (useradd --system --create-home --shell /bin/sh %s) or run bastion dev as a normal user", demoAccount, err, strings.TrimSpace(string(out)), demoAccount)
	}
	return user.Lookup(demoAccount)
}

// startSSHD runs OpenSSH's sshd on port, trusting the user CA and letting
// the demo users' principals log in as the current user, or as acct when
// bastion runs as root (sshd refuses root). It offers the algorithms of
// deploy/target's snippet and a host certificate, so `bastion scan`
// passes it.
func (e *devEnv) startSSHD(priv ed25519.PrivateKey, cert *gossh.Certificate, userCAs []gossh.PublicKey, port int, acct *user.User) error {
	login := acct
	if login == nil {
		me, err := user.Current()
		if err != nil {
			return err
		}
		login = me
	}
	// The login account must read the principals file (sshd opens it as
	// that account), so the files live in a directory of their own that
	// it can traverse; the host key stays 0600.
	dir, err := os.MkdirTemp("", "bastion-dev-target-")
	if err != nil {
		return err
	}
	e.closers = append(e.closers, func() error { return os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		os.MkdirAll("/run/sshd", 0o755) // privilege separation
	}
	block, err := gossh.MarshalPrivateKey(priv, "bastion-dev-target")
	if err != nil {
		return err
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if err := atomicfile.WriteFile(hostKey, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(hostKey+"-cert.pub", gossh.MarshalAuthorizedKey(cert), 0o644); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "user_ca.pub"), []byte(ca.ExportLines(ca.UserCA, userCAs, "")), 0o644); err != nil {
		return err
	}
	principals := []string{login.Username}
	for _, u := range e.Users {
		principals = append(principals, u.Username)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "principals"), []byte(strings.Join(principals, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	var algos strings.Builder
	for _, line := range strings.Split(deploy.TargetSSHDConfig(), "\n") {
		kw, _, ok := deploy.Directive(line)
		if ok && slices.Contains([]string{"KexAlgorithms", "Ciphers", "MACs", "HostKeyAlgorithms"}, kw) {
			algos.WriteString(strings.TrimSpace(line) + "\n")
		}
	}
	sftp := "internal-sftp"
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
HostCertificate %s-cert.pub
PidFile %s
UsePAM no
StrictModes no
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthenticationMethods publickey
AuthorizedKeysFile none
TrustedUserCAKeys %s
AuthorizedPrincipalsFile %s
Subsystem sftp %s
%s`, port, hostKey, hostKey, filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "user_ca.pub"), filepath.Join(dir, "principals"), sftp, algos.String())
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := atomicfile.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start sshd for the demo host: %w", err)
	}
	e.closers = append(e.closers, func() error {
		cmd.Process.Kill()
		cmd.Wait()
		return logf.Close()
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			return fmt.Errorf("the demo sshd did not start:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	kind := "local sshd running as " + login.Username
	if acct != nil {
		kind = "local sshd; log in as " + acct.Username
	}
	e.TargetAddr, e.TargetUser, e.TargetKind = addr, login.Username, kind
	return nil
}

// Instructions are what `bastion dev` prints for a newcomer. Every step
// works verbatim on a fresh account: the CLI is named the way it can be
// run (see devCLI), the OpenSSH login makes ~/.ssh and a key when there are
// none, and replaces the certificate only when the login succeeds.
func (e *devEnv) Instructions() string {
	host, port, _ := net.SplitHostPort(e.TargetAddr)
	gwHost, gwPort, _ := net.SplitHostPort(e.Gateway)
	var users strings.Builder
	for _, u := range e.Users {
		fmt.Fprintf(&users, "    user %-6s password %s  (groups: %s)\n", u.Username, u.Password, strings.Join(u.Groups, ", "))
	}
	targetUser := e.TargetUser
	if targetUser == "" {
		targetUser = "alice"
	}
	cli := e.CLI
	if cli == "" {
		cli = "bastion"
	}
	gateways := fmt.Sprintf(`  gateway:           ssh -p %s %s
                     host key %s (check it when ssh asks on first contact)
`, gwPort, gwHost, gatewayFingerprint(e.DataDir))
	cluster := ""
	if len(e.Gateways) > 1 {
		gateways, cluster = e.clusterInstructions(cli, targetUser)
	}
	return fmt.Sprintf(`bastion dev is running (data in %s)
%s  identity provider: %s
%s  demo host:         %s (%s)

Try it:
  1. Log in (approve in the browser as alice), either with the CLI:
       %s login --gateway %s
     then, once, put this line at the top of ~/.ssh/config:
       Include ~/.ssh/bastion/config
     (%s)
     or with nothing but OpenSSH (makes ~/.ssh and a key if you have none;
     keeps your old certificate if the login fails):
       %s
       %s
     and, once, trust bastion's host CA for the gateway and the demo host,
     so ssh never asks about them (nor about the host key record mode shows):
       %s
  2. Jump to the demo host through the gateway:
       ssh -J alice@%s -p %s %s@%s
  3. Export the audit log of everything you just did:
       ssh -p %s alice@%s audit export --format jsonl
  4. The jump was recorded (record mode): list the sessions, then replay
     one by the id in its first column:
       ssh -p %s alice@%s audit sessions
       ssh -t -p %s alice@%s audit play SESSION
     (--format text prints it as a transcript; --format asciicast > s.cast
     writes a file for asciinema play)
%s
Press Ctrl-C to stop.
`, e.DataDir, gateways, e.IdP.Issuer(), users.String(), e.TargetAddr, e.TargetKind,
		cli, e.Gateway, includeWhy, devKeyStep, devCertStep(gwPort, gwHost), devKnownHostsStep(e.HostCAs, gwHost, host),
		e.Gateway, port, targetUser, host, gwPort, gwHost, gwPort, gwHost, gwPort, gwHost, cluster)
}

// clusterInstructions are the gateway lines and the extra step of a
// `bastion dev --gateways N`: a session held through the first gateway
// that a lock through the second one ends.
func (e *devEnv) clusterInstructions(cli, targetUser string) (gateways, step string) {
	var b strings.Builder
	for i, gw := range e.Gateways {
		h, p, _ := net.SplitHostPort(gw)
		label := "gateways:"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(&b, "  %-18s gw-%d: ssh -p %s %s\n", label, i+1, p, h)
		fmt.Fprintf(&b, "                           host key %s\n", gatewayFingerprint(e.gatewayDirs[i]))
	}
	fmt.Fprintf(&b, "                     (check each host key when ssh asks on first contact)\n")
	fmt.Fprintf(&b, "  etcd:              %s (embedded; the gateways share locks and revocations there)\n", strings.Join(e.Etcd, ", "))
	host, port, _ := net.SplitHostPort(e.TargetAddr)
	gw2Host, gw2Port, _ := net.SplitHostPort(e.Gateways[1])
	step = fmt.Sprintf(`  5. See the cluster at work. In one terminal, hold a session through gw-1:
       ssh -J alice@%s -p %s %s@%s sleep 600
     In another terminal, lock alice through gw-2:
       ssh -p %s alice@%s lock alice --force --reason cluster-demo
     (or, after the CLI login: %s lock alice --force --gateway %s)
     The session in the first terminal ends within a second, and every
     gateway refuses alice from then on. alice is this demo's only admin,
     hence --force: she locks herself out. A temporary data dir forgets the
     lock when bastion dev stops; with --data-dir DIR, stop bastion dev and
     run `+"`%s unlock alice --data-dir DIR/gw-1`"+` (published at the next start).
`, e.Gateways[0], port, targetUser, host, gw2Port, gw2Host, cli, e.Gateways[1], cli)
	return b.String(), step
}

// initDevCA creates a CA and its audit log together, as `bastion ca init`
// does: from then on the data dir has a CA, so serve insists on the log.
func initDevCA(ctx context.Context, layout ca.Layout) error {
	if err := os.MkdirAll(layout.DataDir, 0o700); err != nil {
		return err
	}
	store, err := audit.Open(layout.AuditDB(), audit.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer store.Close()
	user, host, err := ca.Init(layout, ca.InitOptions{})
	if err != nil {
		return err
	}
	_, err = store.Append(ctx, audit.Event{Type: audit.TypeCAInit, Actor: "bastion dev", Fields: map[string]string{
		"user_ca_fp": ca.Fingerprint(user), "host_ca_fp": ca.Fingerprint(host), "key_type": string(ca.KeyEd25519),
	}})
	return err
}
