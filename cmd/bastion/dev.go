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
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/atomicfile"
	"github.com/bastion-ssh/bastion/internal/config"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/devtarget"
)

func newDevCommand(a *app) *cobra.Command {
	var listen, idpListen, target string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole product on loopback: a CA, a development OIDC provider, the gateway and a demo host",
		Long: `bastion dev starts, on loopback, in a temporary data directory unless
--data-dir is given: a fresh CA, a development OIDC provider with two demo
users (alice in group eng, bob in group dba), the gateway with the login
service, and a demo host behind it (a local sshd when one can run as you,
otherwise a built-in SSH host that trusts the user CA). It prints the
commands to try next. Stop it with Ctrl-C.`,
		Example: `  bastion dev
  bastion dev --listen 127.0.0.1:2200 --data-dir ./dev-data`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dataDir := a.dataDir
			if !cmd.Flags().Changed("data-dir") && os.Getenv("BASTION_DATA_DIR") == "" {
				dir, err := os.MkdirTemp("", "bastion-dev-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				dataDir = dir
			}
			env, err := startDev(cmd.Context(), devOptions{DataDir: dataDir, Listen: listen, IdPListen: idpListen, Target: target, Log: a.stderr})
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
	return cmd
}

// devOptions configure startDev.
type devOptions struct {
	DataDir, Listen, IdPListen, Target string
	// Log receives the gateway's debug log (JSON); nil discards it.
	Log io.Writer
	// PollInterval of the device flow; default the IdP's.
	PollInterval time.Duration
}

// devEnv is a running `bastion dev`.
type devEnv struct {
	IdP        *devidp.Server
	Users      []devidp.User
	Gateway    string
	TargetAddr string
	TargetUser string
	TargetKind string
	DataDir    string
	closers    []func() error
}

// Close stops everything startDev started, last first.
func (e *devEnv) Close() error {
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		errs = append(errs, e.closers[i]())
	}
	return errors.Join(errs...)
}

// startDev brings up the whole product on loopback.
func startDev(ctx context.Context, o devOptions) (env *devEnv, err error) {
	env = &devEnv{DataDir: o.DataDir}
	defer func() {
		if err != nil {
			env.Close()
		}
	}()
	layout := ca.Layout{DataDir: o.DataDir}
	if !layout.Exists() {
		if _, _, err := ca.Init(layout, ca.InitOptions{}); err != nil {
			return nil, err
		}
	}
	userCAs, err := layout.TrustedKeys(ca.UserCA)
	if err != nil {
		return nil, err
	}
	env.Users = devidp.DemoUsers()
	env.IdP, err = devidp.Start(ctx, devidp.Config{Listen: o.IdPListen, Users: env.Users, PollInterval: o.PollInterval})
	if err != nil {
		return nil, err
	}
	env.closers = append(env.closers, env.IdP.Close)

	if err := env.startTarget(o, userCAs); err != nil {
		return nil, err
	}
	_, portStr, _ := net.SplitHostPort(env.TargetAddr)
	port, _ := strconv.Atoi(portStr)
	f := &config.File{
		Listen:      o.Listen,
		DataDir:     o.DataDir,
		HostNames:   []string{"127.0.0.1", "localhost"},
		AdminGroups: []string{"eng"},
		// alice (eng) exports the audit log over SSH in the instructions.
		AuditorGroups: []string{"eng"},
		Access: []config.Access{
			{Groups: []string{"eng", "dba"}, Hosts: []string{"127.0.0.1", "localhost"}, Ports: []int{port}},
		},
		OIDC: &config.OIDC{Issuer: env.IdP.Issuer(), ClientID: env.IdP.ClientID()},
		Cert: config.Cert{Groups: map[string]config.CertGroup{"dba": {MaxValidity: config.Duration(time.Hour)}}},
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	logw := o.Log
	if logw == nil {
		logw = io.Discard
	}
	rt, err := startRuntime(ctx, f, newLogger(logw, config.Log{Level: "warn"}), false, logw)
	if err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			return nil, fmt.Errorf("%w; pass --listen 127.0.0.1:0 (or another port)", err)
		}
		return nil, err
	}
	env.closers = append(env.closers, rt.stop)
	env.Gateway = rt.sshAddr
	return env, nil
}

// startTarget starts the demo host: sshd running as the current user when
// possible, else the built-in one.
func (e *devEnv) startTarget(o devOptions, userCAs []gossh.PublicKey) error {
	useSSHD := o.Target == "sshd"
	if o.Target == "auto" || o.Target == "" {
		_, err := exec.LookPath("sshd")
		_, errSbin := os.Stat("/usr/sbin/sshd")
		useSSHD = (err == nil || errSbin == nil) && os.Geteuid() != 0
	}
	if o.Target != "auto" && o.Target != "" && o.Target != "sshd" && o.Target != "builtin" {
		return fmt.Errorf("--target %q: use auto, sshd or builtin", o.Target)
	}
	if useSSHD {
		return e.startSSHD(userCAs)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	hostKey, err := gossh.NewSignerFromKey(priv)
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
	t, err := devtarget.Start("127.0.0.1:0", trusted, hostKey)
	if err != nil {
		return err
	}
	e.closers = append(e.closers, t.Close)
	e.TargetAddr, e.TargetUser, e.TargetKind = t.Addr(), "", "built-in demo host"
	return nil
}

// startSSHD runs OpenSSH's sshd as the current (non-root) user, trusting
// the user CA and letting the demo users' principals log in as that user.
func (e *devEnv) startSSHD(userCAs []gossh.PublicKey) error {
	me, err := user.Current()
	if err != nil {
		return err
	}
	dir := filepath.Join(e.DataDir, "dev-target")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := gossh.MarshalPrivateKey(priv, "bastion-dev-target")
	if err != nil {
		return err
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if err := atomicfile.WriteFile(hostKey, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "user_ca.pub"), []byte(ca.ExportLines(ca.UserCA, userCAs, "")), 0o644); err != nil {
		return err
	}
	principals := []string{me.Username}
	for _, u := range e.Users {
		principals = append(principals, u.Username)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "principals"), []byte(strings.Join(principals, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	sftp := "internal-sftp"
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
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
`, port, hostKey, filepath.Join(dir, "sshd.pid"), filepath.Join(dir, "user_ca.pub"), filepath.Join(dir, "principals"), sftp)
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
	e.TargetAddr, e.TargetUser, e.TargetKind = addr, me.Username, "local sshd running as "+me.Username
	return nil
}

// Instructions are what `bastion dev` prints for a newcomer.
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
	return fmt.Sprintf(`bastion dev is running (data in %s)
  gateway:           ssh -p %s %s
  identity provider: %s
%s  demo host:         %s (%s)

Try it:
  1. Log in (approve in the browser as alice):
       bastion login --gateway %s
     or with nothing but OpenSSH:
       ssh -p %s login@%s > ~/.ssh/id_ed25519-cert.pub
  2. Jump to the demo host through the gateway:
       ssh -J alice@%s -p %s %s@%s
  3. Export the audit log of everything you just did:
       ssh -p %s alice@%s audit export --format jsonl

Press Ctrl-C to stop.
`, e.DataDir, gwPort, gwHost, e.IdP.Issuer(), users.String(), e.TargetAddr, e.TargetKind,
		e.Gateway, gwPort, gwHost, e.Gateway, port, targetUser, host, gwPort, gwHost)
}
