package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/bastion-ssh/bastion/internal/auditquery"
	"github.com/bastion-ssh/bastion/internal/sshclient"
)

// remoteFlags select a running gateway and the identity to reach it with,
// for `audit export --gateway` and `audit tail`.
type remoteFlags struct {
	gateway, identity, user, knownHosts string
}

func (r *remoteFlags) register(cmd *cobra.Command, required bool) {
	fl := cmd.Flags()
	help := "ask the running gateway at HOST:PORT over SSH instead of reading --data-dir"
	if required {
		help = "the running gateway, HOST:PORT"
	}
	fl.StringVar(&r.gateway, "gateway", "", help)
	fl.StringVar(&r.identity, "identity", "", "private key `FILE` whose certificate (FILE-cert.pub beside it) identifies you; default ~/.ssh/bastion/id_ed25519 from bastion login when it has a certificate, else ~/.ssh/id_ed25519; a passphrase-protected key is used through ssh-agent")
	// `audit sessions --user` filters by user; there the login name is
	// --gateway-user.
	userFlag := "user"
	if fl.Lookup("user") != nil {
		userFlag = "gateway-user"
	}
	fl.StringVar(&r.user, userFlag, "", "login name on the gateway (default: the certificate's first principal)")
	fl.StringVar(&r.knownHosts, "known-hosts", "", "known_hosts `FILE` with the gateway's @cert-authority line; default ~/.ssh/bastion/known_hosts from bastion login when it exists, else ~/.ssh/known_hosts")
	if required {
		_ = cmd.MarkFlagRequired("gateway")
	}
}

// resolve fills the defaults of the identity and known_hosts paths.
func (r remoteFlags) resolve() (remoteFlags, error) {
	if r.identity != "" && r.knownHosts != "" {
		return r, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return r, fmt.Errorf("cannot find your home directory for the default --identity and --known-hosts: %w (set HOME or pass both flags)", err)
	}
	login := sshclient.Paths{Dir: filepath.Join(home, ".ssh", "bastion")}
	if r.identity == "" {
		r.identity = filepath.Join(home, ".ssh", "id_ed25519")
		if _, err := os.Stat(login.Certificate()); err == nil {
			r.identity = login.Key()
		}
	}
	if r.knownHosts == "" {
		r.knownHosts = filepath.Join(home, ".ssh", "known_hosts")
		if _, err := os.Stat(login.KnownHosts()); err == nil {
			r.knownHosts = login.KnownHosts()
		}
	}
	return r, nil
}

// runRemoteAudit runs `audit SUB` with q's flags on the gateway, streaming
// its output to stdout and its messages to stderr. Its exit status
// becomes ours. An interrupted tail is a normal end.
func (a *app) runRemoteAudit(ctx context.Context, rf remoteFlags, sub string, q auditquery.Query) error {
	err := a.runRemoteAuditArgs(ctx, rf, sub, q.Args())
	if err != nil && sub == "tail" && ctx.Err() != nil {
		return nil // an interrupted tail is a normal end
	}
	return err
}

// remoteAudit runs `audit SUB ARGS...` on the gateway with rf's resolved
// identity.
func (a *app) remoteAudit(ctx context.Context, rf remoteFlags, sub string, args []string) error {
	addr, err := sshclient.NormalizeAddr(rf.gateway)
	if err != nil {
		return fmt.Errorf("--gateway: %w", err)
	}
	signer, cert, closeAgent, err := loadIdentity(rf.identity)
	if err != nil {
		return err
	}
	defer closeAgent()
	user := rf.user
	if user == "" {
		user = cert.ValidPrincipals[0]
	}
	command := "audit " + sub
	for _, arg := range args {
		command += " " + quoteArg(arg)
	}
	return a.gatewayExec(ctx, addr, user, signer, rf.knownHosts, command)
}

// gatewayExec runs command on the gateway at addr as user, checking the
// gateway's host certificate against knownHosts, and relays its output.
// A non-zero exit status becomes ours, with a message naming the command.
func (a *app) gatewayExec(ctx context.Context, addr, user string, signer ssh.Signer, knownHosts, command string) error {
	return a.gatewayExecTo(ctx, addr, user, signer, knownHosts, command, a.stdout, a.stderr)
}

// gatewayExecTo is gatewayExec writing the command's output to stdout and
// stderr.
func (a *app) gatewayExecTo(ctx context.Context, addr, user string, signer ssh.Signer, knownHosts, command string, stdout, stderr io.Writer) error {
	hc, err := sshclient.NewHostCheck(sshclient.HostCheckConfig{KnownHosts: knownHosts})
	if err != nil {
		return err
	}
	// A gateway that accepts the connection and never answers (stopped,
	// overloaded, a half-open load balancer) is given up on after
	// gatewayAnswerTimeout, and named, instead of holding the command.
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(gatewayAnswerTimeout, cancel)
	conn, err := sshclient.Dial(dctx, addr, user, signer, hc)
	if !timer.Stop() && ctx.Err() == nil {
		if conn != nil {
			conn.Close()
		}
		return fmt.Errorf("the gateway at %s did not answer within %s: is it running and reachable from here? check its /healthz (metrics_listen) and the network between", addr, gatewayAnswerTimeout)
	}
	if err != nil {
		return adminDialError(addr, err)
	}
	defer conn.Close()
	status, err := conn.Exec(ctx, command, nil, stdout, stderr)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, sshclient.ErrStoppedAnswering) {
			return err // interrupted here, or says what happened
		}
		return fmt.Errorf("the gateway at %s broke the connection before `%s` finished (%v): it may be stopping or restarting; run the command again, or through another gateway", addr, commandVerb(command), err)
	}
	if status != 0 {
		verb := commandVerb(command)
		return &exitError{code: status, err: fmt.Errorf("%s on the gateway %s as %s failed (exit status %d; the gateway gave its reason on stderr)", verb, addr, user, status)}
	}
	return nil
}

// commandVerb is the first two words of a gateway command line, as
// messages name it: "lock alice", "audit export".
func commandVerb(command string) string {
	words := strings.Fields(command)
	if len(words) > 2 {
		words = words[:2]
	}
	return strings.Join(words, " ")
}

// loadIdentity returns a signer for the certificate FILE-cert.pub and the
// private key FILE. When FILE needs a passphrase the key is used through
// ssh-agent ($SSH_AUTH_SOCK), which must hold it; closeAgent releases it.
func loadIdentity(keyPath string) (signer ssh.Signer, cert *ssh.Certificate, closeAgent func(), err error) {
	closeAgent = func() {}
	certPath := keyPath + "-cert.pub"
	data, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, closeAgent, fmt.Errorf("no certificate at %s (%w): run `bastion login`, or pass --identity with the key whose -cert.pub is beside it", certPath, err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
	cert, ok := pub.(*ssh.Certificate)
	if err != nil || !ok || cert.CertType != ssh.UserCert || len(cert.ValidPrincipals) == 0 {
		return nil, nil, closeAgent, fmt.Errorf("%s is not an SSH user certificate with principals: run `bastion login` for a new one", certPath)
	}
	keyData, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, closeAgent, fmt.Errorf("read the private key %s: %w (pass --identity)", keyPath, err)
	}
	key, err := ssh.ParsePrivateKey(keyData)
	var pme *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &pme):
		key, closeAgent, err = agentSigner(cert.Key, keyPath)
		if err != nil {
			return nil, nil, func() {}, err
		}
	case err != nil:
		return nil, nil, closeAgent, fmt.Errorf("%s is not a private key (%v): pass --identity with the right file", keyPath, err)
	}
	if !bytes.Equal(key.PublicKey().Marshal(), cert.Key.Marshal()) {
		closeAgent()
		return nil, nil, func() {}, fmt.Errorf("the certificate %s is for another key than %s: run `bastion login` again", certPath, keyPath)
	}
	signer, err = ssh.NewCertSigner(cert, key)
	if err != nil {
		closeAgent()
		return nil, nil, func() {}, fmt.Errorf("use the certificate %s: %w", certPath, err)
	}
	return signer, cert, closeAgent, nil
}

// agentSigner finds pub's private half in ssh-agent.
func agentSigner(pub ssh.PublicKey, keyPath string) (ssh.Signer, func(), error) {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return nil, nil, fmt.Errorf("%s needs a passphrase and no ssh-agent is running (SSH_AUTH_SOCK is unset): run `ssh-add %s` in an agent, or use a key without one", keyPath, keyPath)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, nil, fmt.Errorf("%s needs a passphrase and ssh-agent at %s cannot be reached: %w", keyPath, sock, err)
	}
	signers, err := agent.NewClient(conn).Signers()
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("list the keys of ssh-agent at %s: %w", sock, err)
	}
	for _, s := range signers {
		if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
			return s, func() { conn.Close() }, nil
		}
	}
	conn.Close()
	return nil, nil, fmt.Errorf("%s needs a passphrase and ssh-agent does not hold it: run `ssh-add %s`", keyPath, keyPath)
}

// quoteArg quotes s for the gateway's POSIX-style command line parser.
func quoteArg(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// gatewayAnswerTimeout bounds how long the CLI waits for a gateway to
// accept its connection and finish the SSH handshake.
const gatewayAnswerTimeout = 10 * time.Second

// adminDialError says what went wrong reaching the gateway at addr and
// what to do: nothing listening, no answer in time, a name that does not
// resolve, no route; and the two ways a gateway turns an admin's SSH
// connection away, which golang.org/x/crypto/ssh reports only as
// "unable to authenticate" and EOF. Other errors pass through.
func adminDialError(addr string, err error) error {
	msg := err.Error()
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing answers at %s (connection refused): is the gateway running? check its /healthz (metrics_listen) and that %s is its SSH address (listen, or cluster.advertise)", addr, addr)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("the host name of %s does not resolve (%s): check the address", addr, dnsErr.Err)
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("no route to %s: check the address and the network between", addr)
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("the gateway at %s did not answer in time: is it running and reachable from here? check its /healthz (metrics_listen) and the network between", addr)
	}
	switch {
	case strings.Contains(msg, "unable to authenticate"):
		return fmt.Errorf("the gateway %s refused your certificate: it may be locked, revoked, expired or from a retired CA (`bastion status` says which); unlock or re-issue from the data dir with the gateway stopped, or from another admin's session (%w)", addr, err)
	case errors.Is(err, io.EOF) || strings.HasSuffix(msg, ": EOF"):
		return fmt.Errorf("the gateway %s closed the connection before authentication: your address may be banned (bans end after limits.ban_duration); ask another admin to `unban` it, or connect from another address (%w)", addr, err)
	}
	return err
}
