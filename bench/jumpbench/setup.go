package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// benchUser is the account sessions log in as when the benchmark runs as
// root, as in internal/testbed: sshd never lets root in.
const benchUser = "bastiontest"

// env is everything on loopback that the measurements use.
type env struct {
	dir     string
	bastion string // the bastion binary
	sshd    string
	user    string
	procs   *procs
	// gatewayEnv is added to bastion serve's environment.
	gatewayEnv []string

	dataDir    string // bastion's data dir (CA, audit log)
	key, cert  string // client key and its certificate
	signer     ssh.Signer
	knownHosts string
	// cfgDefault is a client config with OpenSSH's default algorithms;
	// cfgAES forces aes128-gcm on every hop.
	cfgDefault, cfgAES string

	target  *sshdProc // the host everyone jumps to
	jump    *sshdProc // OpenSSH's sshd as a jump host
	gateway *gatewayProc
	bare    *gatewayProc // bench/barejump, if measured

	// recordPort is the target's second port, which bastion serves in
	// record mode (the first, target.port, in tunnel mode).
	recordPort int
	// hostCA is bastion's host CA, which signs the host certificates the
	// gateway presents in record mode.
	hostCA ssh.PublicKey
	// cpuProfile, when set, makes the next bastion serve write a CPU
	// profile there when it stops.
	cpuProfile string
}

type sshdProc struct {
	*daemon
	addr    string
	port    int
	hostKey ssh.PublicKey
}

type gatewayProc struct {
	*daemon
	addr, metrics string
	hostKey       ssh.PublicKey
}

// newEnv prepares the directory, the account, the CA, the client
// credentials and both sshds. The gateway is started separately (see
// startGateway) because the CLI can only sign while it is not running.
func newEnv(ctx context.Context, bastionBin string, gatewayEnv []string) (*env, error) {
	e := &env{bastion: bastionBin, gatewayEnv: gatewayEnv, procs: &procs{}}
	var err error
	if e.dir, err = os.MkdirTemp("", "bastion-bench-"); err != nil {
		return nil, err
	}
	// sshd running as root opens some files as the login user.
	if err := os.Chmod(e.dir, 0o755); err != nil {
		return e, err
	}
	if e.sshd, err = findSSHD(); err != nil {
		return e, err
	}
	if e.user, err = loginUser(); err != nil {
		return e, err
	}
	e.dataDir = filepath.Join(e.dir, "data")
	if _, err := e.run(ctx, e.bastion, "ca", "init", "--data-dir", e.dataDir); err != nil {
		return e, err
	}
	userCA, err := e.run(ctx, e.bastion, "ca", "export", "--user", "--data-dir", e.dataDir)
	if err != nil {
		return e, err
	}
	caPath := filepath.Join(e.dir, "user_ca.pub")
	if err := os.WriteFile(caPath, userCA, 0o644); err != nil {
		return e, err
	}

	// One key and one certificate for both jump paths and the target.
	e.key = filepath.Join(e.dir, "id_ed25519")
	if _, err := e.run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", e.key); err != nil {
		return e, err
	}
	if _, err := e.run(ctx, e.bastion, "ca", "sign", "--data-dir", e.dataDir, "-I", "bench@"+e.user, "-n", e.user, "-V", "+8h", e.key+".pub"); err != nil {
		return e, err
	}
	e.cert = e.key + "-cert.pub"
	if e.signer, err = certSigner(e.key, e.cert); err != nil {
		return e, err
	}

	hostCA, err := e.run(ctx, e.bastion, "ca", "export", "--host", "--data-dir", e.dataDir)
	if err != nil {
		return e, err
	}
	// One line: @cert-authority * KEY.
	if _, _, e.hostCA, _, _, err = ssh.ParseKnownHosts(hostCA); err != nil {
		return e, fmt.Errorf("bastion ca export --host: %w", err)
	}
	// The target listens on a second port for record mode: the gateway's
	// rules choose the mode by port.
	if e.recordPort, err = freePort(); err != nil {
		return e, err
	}
	if e.target, err = e.startSSHD(ctx, "target", caPath, fmt.Sprintf("Port %d\nSubsystem sftp internal-sftp\n", e.recordPort)); err != nil {
		return e, err
	}
	// The gateway verifies the target's host key in record mode.
	if err := os.WriteFile(filepath.Join(e.dir, "target_known_hosts"),
		[]byte(knownHostsLine(net.JoinHostPort("127.0.0.1", strconv.Itoa(e.recordPort)), e.target.hostKey)), 0o644); err != nil {
		return e, err
	}
	// A plain OpenSSH jump host: forwarding allowed, nothing else changed.
	if e.jump, err = e.startSSHD(ctx, "jump", caPath, "AllowTcpForwarding yes\n"); err != nil {
		return e, err
	}

	e.knownHosts = filepath.Join(e.dir, "known_hosts")
	e.cfgDefault = filepath.Join(e.dir, "ssh_config")
	e.cfgAES = filepath.Join(e.dir, "ssh_config_aes128gcm")
	if err := e.writeClientConfig(e.cfgDefault, ""); err != nil {
		return e, err
	}
	return e, e.writeClientConfig(e.cfgAES, "Ciphers aes128-gcm@openssh.com")
}

// run runs a helper program and returns its stdout.
func (e *env) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// startSSHD starts an sshd on a free loopback port that trusts the user CA.
func (e *env) startSSHD(ctx context.Context, name, caPath, extra string) (*sshdProc, error) {
	dir := filepath.Join(e.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	if _, err := e.run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", hostKey); err != nil {
		return nil, err
	}
	pub, err := readPublicKey(hostKey + ".pub")
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		conf := fmt.Sprintf(`%sListenAddress 127.0.0.1
Port %d
HostKey %s
PidFile %s
LogLevel INFO
UsePAM no
StrictModes no
PubkeyAuthentication yes
AuthorizedKeysFile none
TrustedUserCAKeys %s
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 200:30:400
`, extra, port, hostKey, filepath.Join(dir, "sshd.pid"), caPath)
		confPath := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			return nil, err
		}
		d, err := e.procs.start("sshd "+name, filepath.Join(dir, "sshd.log"), nil, e.sshd, "-D", "-e", "-f", confPath)
		if err != nil {
			return nil, err
		}
		listening := fmt.Sprintf("Server listening on 127.0.0.1 port %d", port)
		_, err = d.waitLog(ctx, 15*time.Second, func(l string) bool { return strings.Contains(l, listening) })
		if err == nil {
			return &sshdProc{daemon: d, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port, hostKey: pub}, nil
		}
		d.stop(5 * time.Second)
		if attempt == 5 || !strings.Contains(tail(d.log), "Address already in use") {
			return nil, err
		}
	}
}

// startGateway starts `bastion serve` on a free loopback port with access
// to the target only, and waits until it listens.
func (e *env) startGateway(ctx context.Context) (*gatewayProc, error) {
	conf := fmt.Sprintf(`listen: 127.0.0.1:0
data_dir: %s
metrics_listen: 127.0.0.1:0
access:
  - principals: [%s]
    hosts: ["127.0.0.1"]
    ports: [%d]
    mode: tunnel
  - principals: [%s]
    hosts: ["127.0.0.1"]
    ports: [%d]
    mode: record
recording:
  known_hosts: %s
limits:
  max_unauthenticated: 512
  unauthenticated_drop_start: 512
  max_unauthenticated_per_source: 512
shutdown_grace: 2s
log:
  level: warn
`, e.dataDir, e.user, e.target.port, e.user, e.recordPort, filepath.Join(e.dir, "target_known_hosts"))
	path := filepath.Join(e.dir, "bastion.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	args := []string{"serve", "--config", path}
	if e.cpuProfile != "" {
		args = append(args, "--cpu-profile", e.cpuProfile)
	}
	d, err := e.procs.start("bastion serve", filepath.Join(e.dir, "bastion.log"), e.gatewayEnv, e.bastion, args...)
	if err != nil {
		return nil, err
	}
	const listening, metrics = "bastion: gateway listening on ", "bastion: metrics on http://"
	line, err := d.waitLog(ctx, 15*time.Second, func(l string) bool { return strings.HasPrefix(l, listening) })
	if err != nil {
		return nil, err
	}
	g := &gatewayProc{daemon: d, addr: strings.TrimSpace(strings.TrimPrefix(line, listening))}
	line, err = d.waitLog(ctx, 5*time.Second, func(l string) bool { return strings.HasPrefix(l, metrics) })
	if err != nil {
		return nil, err
	}
	g.metrics = strings.TrimSuffix(strings.TrimSpace(strings.TrimPrefix(line, metrics)), "/metrics")
	// The gateway writes no .pub beside its host key; derive it.
	keyPEM, err := os.ReadFile(filepath.Join(e.dataDir, "gateway", "ssh_host_ed25519_key"))
	if err != nil {
		return nil, err
	}
	hostSigner, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, err
	}
	g.hostKey = hostSigner.PublicKey()
	e.gateway = g
	return g, e.writeKnownHosts()
}

// startBareJump starts bench/barejump, the least jump host x/crypto/ssh
// allows, with the gateway's host key so that the same known_hosts line
// and client settings serve both. Callers stop it.
func (e *env) startBareJump(ctx context.Context, bin string) (*gatewayProc, error) {
	d, err := e.procs.start("barejump", filepath.Join(e.dir, "barejump.log"), nil, bin,
		"-host-key", filepath.Join(e.dataDir, "gateway", "ssh_host_ed25519_key"),
		"-user-ca", filepath.Join(e.dir, "user_ca.pub"))
	if err != nil {
		return nil, err
	}
	const listening = "barejump: listening on "
	line, err := d.waitLog(ctx, 15*time.Second, func(l string) bool { return strings.HasPrefix(l, listening) })
	if err != nil {
		return nil, err
	}
	e.bare = &gatewayProc{daemon: d, addr: strings.TrimSpace(strings.TrimPrefix(line, listening)), hostKey: e.gateway.hostKey}
	return e.bare, e.writeKnownHosts()
}

// writeKnownHosts pins the plain host keys of the target and the jump
// hosts, so clients check them strictly, and trusts bastion's host CA,
// which certifies the target's name in record mode (the @cert-authority
// line `bastion login` writes).
func (e *env) writeKnownHosts() error {
	var b strings.Builder
	hosts := []struct {
		addr string
		key  ssh.PublicKey
	}{{e.target.addr, e.target.hostKey}, {e.jump.addr, e.jump.hostKey}, {e.gateway.addr, e.gateway.hostKey}}
	if e.bare != nil {
		hosts = append(hosts, struct {
			addr string
			key  ssh.PublicKey
		}{e.bare.addr, e.bare.hostKey})
	}
	for _, h := range hosts {
		b.WriteString(knownHostsLine(h.addr, h.key))
	}
	b.WriteString("@cert-authority * " + string(ssh.MarshalAuthorizedKey(e.hostCA)))
	return os.WriteFile(e.knownHosts, []byte(b.String()), 0o600)
}

func knownHostsLine(addr string, key ssh.PublicKey) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("[%s]:%s %s", host, port, ssh.MarshalAuthorizedKey(key))
}

// writeClientConfig writes an ssh_config that uses the bench key and
// certificate and nothing of the invoking user's; extra adds options.
func (e *env) writeClientConfig(path, extra string) error {
	conf := fmt.Sprintf(`Host *
  %s
  BatchMode yes
  IdentitiesOnly yes
  IdentityAgent none
  IdentityFile %s
  CertificateFile %s
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  ControlMaster no
  ControlPath none
  LogLevel ERROR
  ConnectTimeout 10
`, extra, e.key, e.cert, filepath.Join(e.dir, "known_hosts"))
	return os.WriteFile(path, []byte(conf), 0o600)
}

// jumpSpec is the -J argument for a jump host address.
func (e *env) jumpSpec(addr string) string { return e.user + "@" + addr }

// sshArgs are the arguments of `ssh -J jump target cmd...`, to the
// target's port port.
func (e *env) sshArgs(cfg, jumpAddr string, port int, cmd ...string) []string {
	return append([]string{"-F", cfg, "-J", e.jumpSpec(jumpAddr), "-p", strconv.Itoa(port), e.user + "@127.0.0.1"}, cmd...)
}

func (e *env) close(keep bool) {
	e.procs.stopAll()
	if e.dir != "" && !keep {
		_ = os.RemoveAll(e.dir)
	}
}

// loginUser is the account sshd lets the benchmark in as: benchUser as
// root (created like internal/testbed does), otherwise the current user.
func loginUser() (string, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return "", err
		}
		return u.Username, nil
	}
	if _, err := user.Lookup(benchUser); err != nil {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", benchUser).CombinedOutput(); err != nil {
			return "", fmt.Errorf("useradd %s: %w: %s", benchUser, err, out)
		}
	}
	// "*": no password, but not locked, which UsePAM no would refuse.
	if out, err := exec.Command("usermod", "-p", "*", benchUser).CombinedOutput(); err != nil {
		return "", fmt.Errorf("usermod -p '*' %s: %w: %s", benchUser, err, out)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return "", err
	}
	return benchUser, nil
}

// findSSHD finds sshd by absolute path (sshd re-executes itself).
func findSSHD() (string, error) {
	if p, err := exec.LookPath("sshd"); err == nil {
		return filepath.Abs(p)
	}
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("sshd not found; install openssh-server")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func readPublicKey(path string) (ssh.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	return k, err
}

// certSigner is the key with its certificate, for the Go client.
func certSigner(keyPath, certPath string) (ssh.Signer, error) {
	b, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, err
	}
	pub, err := readPublicKey(certPath)
	if err != nil {
		return nil, err
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, fmt.Errorf("%s is not a certificate", certPath)
	}
	return ssh.NewCertSigner(cert, s)
}
