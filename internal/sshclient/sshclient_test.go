package sshclient

import (
	"bytes"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"github.com/bastion-ssh/bastion/internal/testbed"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

func mustWrite(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustChmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// signCert signs a certificate of type typ for key with ca.
func signCert(t testing.TB, ca ssh.Signer, key ssh.PublicKey, typ uint32, principals []string, from, to time.Time) *ssh.Certificate {
	t.Helper()
	c := &ssh.Certificate{
		Key: key, CertType: typ, KeyId: "test", ValidPrincipals: principals,
		ValidAfter: uint64(from.Unix()), ValidBefore: uint64(to.Unix()), Serial: 7, // #nosec G115 -- times after 1970
	}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return c
}

// startServer is a real x/crypto SSH server on loopback presenting
// hostKeys; it accepts anyone and runs "echo" sessions.
func startServer(t *testing.T, hostKeys ...ssh.Signer) string {
	t.Helper()
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	for _, k := range hostKeys {
		cfg.AddHostKey(k)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for nch := range chans {
					ch, creqs, err := nch.Accept()
					if err != nil {
						return
					}
					go func() {
						defer ch.Close()
						for r := range creqs {
							var p struct{ Command string }
							if r.Type != "exec" || ssh.Unmarshal(r.Payload, &p) != nil {
								_ = r.Reply(false, nil)
								continue
							}
							_ = r.Reply(true, nil)
							in, _ := io.ReadAll(ch)
							_, _ = io.WriteString(ch, p.Command+"|"+string(in))
							_, _ = io.WriteString(ch.Stderr(), "to stderr\n")
							_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{3}))
							return
						}
					}()
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// hostCertSigner is a host key with a certificate from ca for principals.
func hostCertSigner(t *testing.T, ca ssh.Signer, principals []string, from, to time.Time) ssh.Signer {
	t.Helper()
	host := testbed.NewSigner(t)
	cs, err := ssh.NewCertSigner(signCert(t, ca, host.PublicKey(), ssh.HostCert, principals, from, to), host)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func dial(t *testing.T, addr string, hc *HostCheck) (*Conn, error) {
	t.Helper()
	c, err := Dial(t.Context(), addr, "login", testbed.NewSigner(t), hc)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// TestHostCheckTrustOnFirstUseThenPinned: the first contact pins the host
// CA; later contacts must present a certificate from it, and a gateway
// with another CA on the same address is refused loudly.
func TestHostCheckTrustOnFirstUseThenPinned(t *testing.T) {
	now := time.Now()
	ca1, ca2 := testbed.NewSigner(t), testbed.NewSigner(t)
	good := startServer(t, hostCertSigner(t, ca1, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)))
	other := startServer(t, hostCertSigner(t, ca2, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)))
	kh := filepath.Join(t.TempDir(), "known_hosts")

	hc, err := NewHostCheck(HostCheckConfig{KnownHosts: kh, FirstUse: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, good, hc); err != nil {
		t.Fatalf("first contact: %v", err)
	}
	pinned, err := hc.Pin(good, false)
	if err != nil || pinned == nil || !bytes.Equal(pinned.Marshal(), ca1.PublicKey().Marshal()) {
		t.Fatalf("Pin = %v, %v; want the first gateway's CA", pinned, err)
	}
	data, _ := os.ReadFile(kh) // #nosec G304 -- the test's own file
	want := "@cert-authority * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca1.PublicKey()))) + " "
	if !strings.HasPrefix(string(data), want) || strings.Count(string(data), "\n") != 1 {
		t.Fatalf("known_hosts = %q, want one line starting %q", data, want)
	}

	// Pinned: the same gateway is accepted (on a port other than 22,
	// which x/crypto's knownhosts alone would not match against "*"),
	// and nothing more is pinned.
	hc, err = NewHostCheck(HostCheckConfig{KnownHosts: kh, FirstUse: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, good, hc); err != nil {
		t.Fatalf("pinned contact: %v", err)
	}
	if ca, _ := hc.Pin(good, false); ca != nil {
		t.Error("a pinned contact pinned again")
	}

	// Another CA: refused, with the file to delete named.
	_, err = dial(t, other, hc)
	var changed *HostCAChangedError
	if !errors.As(err, &changed) {
		t.Fatalf("other CA: err = %v, want *HostCAChangedError", err)
	}
	for _, s := range []string{"HOST CA HAS CHANGED", kh, "delete " + kh, ssh.FingerprintSHA256(ca2.PublicKey()), ssh.FingerprintSHA256(ca1.PublicKey())} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q:\n%v", s, err)
		}
	}
	if after, _ := os.ReadFile(kh); !bytes.Equal(after, data) { // #nosec G304 -- the test's own file
		t.Errorf("known_hosts changed after a refusal:\n%s", after)
	}
}

func TestHostCheckRefusals(t *testing.T) {
	now := time.Now()
	ca := testbed.NewSigner(t)
	plain := startServer(t, testbed.NewSigner(t))
	wrongName := startServer(t, hostCertSigner(t, ca, []string{"gw.example.com"}, now.Add(-time.Hour), now.Add(time.Hour)))
	expired := startServer(t, hostCertSigner(t, ca, []string{"127.0.0.1"}, now.Add(-2*time.Hour), now.Add(-time.Hour)))
	userCert := func() ssh.Signer {
		k := testbed.NewSigner(t)
		cs, _ := ssh.NewCertSigner(signCert(t, ca, k.PublicKey(), ssh.UserCert, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)), k)
		return cs
	}()
	userCertHost := startServer(t, userCert)
	good := startServer(t, hostCertSigner(t, ca, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)))

	pinnedFile := filepath.Join(t.TempDir(), "known_hosts")
	mustWrite(t, pinnedFile, []byte("# pinned\n\n@cert-authority * "+string(ssh.MarshalAuthorizedKey(ca.PublicKey()))))

	tests := []struct {
		name     string
		addr     string
		file     string
		firstUse bool
		want     string
	}{
		{"plain host key on first use", plain, "", true, "plain ssh-ed25519 host key"},
		{"plain host key when pinned", plain, pinnedFile, true, "plain ssh-ed25519 host key"},
		{"certificate for another name", wrongName, "", true, `is for gw.example.com, not for "127.0.0.1": connect with one of those names, or add "127.0.0.1" to host_names in the gateway's bastion.yaml and restart the gateway`},
		{"expired host certificate", expired, pinnedFile, true, "expired at"},
		{"user certificate as host key", userCertHost, pinnedFile, true, "user certificate"},
		{"nothing pinned and no first use", good, "", false, "run `bastion login --gateway"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := tc.file
			if file == "" {
				file = filepath.Join(t.TempDir(), "known_hosts")
			}
			hc, err := NewHostCheck(HostCheckConfig{KnownHosts: file, FirstUse: tc.firstUse})
			if err != nil {
				t.Fatal(err)
			}
			_, err = dial(t, tc.addr, hc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "ssh: ") {
				t.Errorf("err = %v: it ends with x/crypto's own wording", err)
			}
			if ca, _ := hc.Pin(tc.addr, false); ca != nil {
				t.Error("a refused gateway was pinned")
			}
		})
	}
}

func TestHostCheckUnreadableFile(t *testing.T) {
	kh := filepath.Join(t.TempDir(), "known_hosts")
	mustWrite(t, kh, []byte("@cert-authority * ssh-ed25519 AAAAnotbase64\n"))
	_, err := NewHostCheck(HostCheckConfig{KnownHosts: kh})
	if err == nil || !strings.Contains(err.Error(), "delete the file") {
		t.Fatalf("err = %v, want advice to fix or delete the file", err)
	}
}

func TestExec(t *testing.T) {
	now := time.Now()
	ca := testbed.NewSigner(t)
	addr := startServer(t, hostCertSigner(t, ca, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)))
	hc, _ := NewHostCheck(HostCheckConfig{KnownHosts: filepath.Join(t.TempDir(), "kh"), FirstUse: true})
	c, err := dial(t, addr, hc)
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code, err := c.Exec(t.Context(), "login-token", strings.NewReader("tok\nnonce\n"), &out, &errb)
	if err != nil || code != 3 || out.String() != "login-token|tok\nnonce\n" || errb.String() != "to stderr\n" {
		t.Fatalf("Exec = %d, %v; stdout %q stderr %q", code, err, out.String(), errb.String())
	}
}

func TestKeys(t *testing.T) {
	p := Paths{Dir: filepath.Join(t.TempDir(), ".ssh", "bastion")}
	if err := p.Ensure(); err != nil {
		t.Fatal(err)
	}
	k, created, err := LoadOrCreateKey(p.Key(), "bastion")
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	for path, mode := range map[string]os.FileMode{p.Dir: 0o700, p.Key(): 0o600, p.PublicKey(): 0o644} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v (%v), want %04o", path, st.Mode().Perm(), err, mode)
		}
	}
	again, created, err := LoadOrCreateKey(p.Key(), "bastion")
	if err != nil || created || !bytes.Equal(again.PublicKey().Marshal(), k.PublicKey().Marshal()) {
		t.Fatalf("reuse: created %v err %v", created, err)
	}
	// OpenSSH reads the key bastion wrote.
	if out, err := exec.Command("ssh-keygen", "-y", "-f", p.Key()).CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "ssh-ed25519 ") {
		t.Fatalf("ssh-keygen -y: %v %s", err, out)
	}

	mustChmod(t, p.Key(), 0o644)
	if _, err := LoadKey(p.Key()); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key: %v", err)
	}
	mustChmod(t, p.Key(), 0o600)

	block, _ := ssh.MarshalPrivateKeyWithPassphrase(k.Private, "", []byte("secret"))
	mustWrite(t, p.Key(), pem.EncodeToMemory(block))
	if _, err := LoadKey(p.Key()); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("a passphrase-protected key: %v", err)
	}

	// A wide directory is narrowed.
	mustChmod(t, p.Dir, 0o755)
	if err := p.Ensure(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p.Dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v after Ensure", st.Mode().Perm())
	}
}

func TestCertificates(t *testing.T) {
	now := time.Now()
	ca, key, other := testbed.NewSigner(t), testbed.NewSigner(t), testbed.NewSigner(t)
	cert := signCert(t, ca, key.PublicKey(), ssh.UserCert, []string{"alice"}, now.Add(-time.Minute), now.Add(time.Hour))
	line := ssh.MarshalAuthorizedKey(cert)
	if _, err := ParseUserCertificate(line, key.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseUserCertificate(line, other.PublicKey()); err == nil || !strings.Contains(err.Error(), "not for this machine's key") {
		t.Errorf("certificate for another key: %v", err)
	}
	if _, err := ParseUserCertificate(ssh.MarshalAuthorizedKey(key.PublicKey()), key.PublicKey()); err == nil {
		t.Error("a plain key was taken for a certificate")
	}
	host := signCert(t, ca, key.PublicKey(), ssh.HostCert, []string{"h"}, now.Add(-time.Minute), now.Add(time.Hour))
	if _, err := ParseUserCertificate(ssh.MarshalAuthorizedKey(host), key.PublicKey()); err == nil {
		t.Error("a host certificate was taken for a user certificate")
	}
	path := filepath.Join(t.TempDir(), "id_ed25519-cert.pub")
	if err := WriteCertificate(path, cert); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("certificate mode %v, want 0600", st.Mode().Perm())
	}
	back, err := ReadCertificate(path)
	if err != nil || !bytes.Equal(back.Marshal(), cert.Marshal()) {
		t.Fatalf("ReadCertificate: %v", err)
	}
	if !ValidAt(cert, now) || ValidAt(cert, now.Add(2*time.Hour)) || ValidAt(cert, now.Add(-time.Hour)) {
		t.Error("ValidAt disagrees with the certificate's window")
	}
	if _, err := ReadCertificate(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "bastion login") {
		t.Errorf("missing certificate: %v", err)
	}
}

func TestState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	if s, err := LoadState(path); err != nil || s.Gateway != "" {
		t.Fatalf("missing state: %+v %v", s, err)
	}
	want := State{Gateway: "gw:2222", Hosts: []string{"*.internal"}, IncludeHintShown: true}
	if err := SaveState(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(path)
	if err != nil || got.Gateway != want.Gateway || got.Hosts[0] != "*.internal" || !got.IncludeHintShown {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	mustWrite(t, path, []byte("{"))
	if _, err := LoadState(path); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Errorf("corrupt state: %v", err)
	}
}

func TestNormalizeAddr(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"127.0.0.1:2222", "127.0.0.1:2222", ""},
		{"bastion.example.com", "bastion.example.com:2222", ""},
		{"[::1]:22", "[::1]:22", ""},
		{"::1", "[::1]:2222", ""},
		{"", "", "empty"},
		{"gw:0", "", "port"},
		{"gw:ssh", "", "port"},
		{"gw x:22", "", "not a host"},
		{"gw\n ProxyCommand x:22", "", "not a host"},
	}
	for _, tc := range tests {
		got, err := NormalizeAddr(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("NormalizeAddr(%q) = %q, %v; want %q, error containing %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestSSHConfig(t *testing.T) {
	c := SSHConfig{
		Gateway: "127.0.0.1:2222", User: "alice", Hosts: []string{"*.internal", "10.0.0.*"},
		IdentityFile: "/h/.ssh/bastion/id_ed25519", CertificateFile: "/h/.ssh/bastion/id_ed25519-cert.pub",
		KnownHosts: "/h/.ssh/bastion/known_hosts", TargetKnownHosts: []string{"/h/.ssh/known_hosts"},
	}
	text, err := c.Render()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\nHost 127.0.0.1\n  ProxyJump none\n  User alice\n  IdentityFile \"/h/.ssh/bastion/id_ed25519\"\n  CertificateFile \"/h/.ssh/bastion/id_ed25519-cert.pub\"\n  IdentitiesOnly yes\n  UserKnownHostsFile \"/h/.ssh/bastion/known_hosts\"\n",
		"\nHost *.internal 10.0.0.*\n  ProxyJump alice@127.0.0.1:2222\n  User alice\n",
		"UserKnownHostsFile \"/h/.ssh/bastion/known_hosts\" \"/h/.ssh/known_hosts\"\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("config lacks %q:\n%s", want, text)
		}
	}
	// Nothing from the command line or the gateway adds options.
	for name, edit := range map[string]func(*SSHConfig){
		"pattern with a space":   func(c *SSHConfig) { c.Hosts = []string{"a b"} },
		"pattern with a newline": func(c *SSHConfig) { c.Hosts = []string{"a\n  ProxyCommand sh"} },
		"user with a space":      func(c *SSHConfig) { c.User = "alice ProxyCommand" },
		"no patterns":            func(c *SSHConfig) { c.Hosts = nil },
		"path with a quote":      func(c *SSHConfig) { c.KnownHosts = `/h/"x` },
	} {
		bad := c
		edit(&bad)
		if _, err := bad.Render(); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
	// OpenSSH parses it.
	dir := t.TempDir()
	path := filepath.Join(dir, "config")
	if err := WriteConfig(path, c); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ssh", "-G", "-F", path, "web1.internal").Output()
	if err != nil {
		t.Fatalf("ssh -G: %v\n%s", err, out)
	}
	lines := strings.Split(string(out), "\n")
	for _, want := range []string{"proxyjump alice@[127.0.0.1]:2222", "user alice", "certificatefile /h/.ssh/bastion/id_ed25519-cert.pub", "identitiesonly yes"} {
		if !slices.Contains(lines, want) {
			t.Errorf("ssh -G web1.internal lacks %q:\n%s", want, out)
		}
	}
}

// TestSSHConfigGatewayMatchesHostPattern: when a --hosts pattern also
// matches the gateway's own name (bastion.internal under *.internal),
// OpenSSH connects to the gateway directly and jumps to other hosts
// through it, instead of jumping through the gateway to reach the gateway
// (which ssh refuses as a jumphost loop).
func TestSSHConfigGatewayMatchesHostPattern(t *testing.T) {
	c := SSHConfig{
		Gateway: "bastion.internal:2222", User: "alice", Hosts: []string{"*.internal"},
		IdentityFile: "/h/i", CertificateFile: "/h/c", KnownHosts: "/h/k",
	}
	path := filepath.Join(t.TempDir(), "config")
	if err := WriteConfig(path, c); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{"bastion.internal": "proxyjump none", "web1.internal": "proxyjump alice@bastion.internal:2222"} {
		out, err := exec.Command("ssh", "-G", "-F", path, host).Output()
		if err != nil {
			t.Fatalf("ssh -G %s: %v", host, err)
		}
		lines := strings.Split(string(out), "\n")
		got := "proxyjump (unset)"
		for _, l := range lines {
			if strings.HasPrefix(l, "proxyjump ") {
				got = l
			}
		}
		if want == "proxyjump none" && got != want && got != "proxyjump (unset)" || want != "proxyjump none" && got != want {
			t.Errorf("ssh -G %s: %s, want %s", host, got, want)
		}
		if host == "bastion.internal" && strings.HasPrefix(got, "proxyjump alice@") {
			t.Errorf("the gateway is reached through itself: %s", got)
		}
	}
}

// recordingAgent is x/crypto's in-memory agent, remembering what it was
// asked to add.
type recordingAgent struct {
	agent.Agent
	mu    sync.Mutex
	added []agent.AddedKey
}

func (r *recordingAgent) Add(k agent.AddedKey) error {
	r.mu.Lock()
	r.added = append(r.added, k)
	r.mu.Unlock()
	return r.Agent.Add(k)
}

func serveAgent(t *testing.T, ag agent.Agent) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _ = agent.ServeAgent(ag, c) }()
		}
	}()
	return sock
}

// TestAddToAgentLifetime: the lifetime sent is the certificate's
// remaining validity, and an earlier certificate for the key is replaced.
func TestAddToAgentLifetime(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	ca := testbed.NewSigner(t)
	p := Paths{Dir: t.TempDir()}
	key, _, err := LoadOrCreateKey(p.Key(), "")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingAgent{Agent: agent.NewKeyring()}
	sock := serveAgent(t, rec)
	old := signCert(t, ca, key.PublicKey(), ssh.UserCert, []string{"alice"}, now.Add(-time.Minute), now.Add(time.Hour))
	if _, err := AddToAgent(sock, key, old, "old", now); err != nil {
		t.Fatal(err)
	}
	cert := signCert(t, ca, key.PublicKey(), ssh.UserCert, []string{"alice"}, now.Add(-time.Minute), now.Add(8*time.Hour+30*time.Second))
	life, err := AddToAgent(sock, key, cert, "bastion alice", now)
	if err != nil {
		t.Fatal(err)
	}
	if life != 8*time.Hour+30*time.Second || rec.added[1].LifetimeSecs != 8*3600+30 {
		t.Errorf("lifetime %s, sent %ds; want 8h0m30s", life, rec.added[1].LifetimeSecs)
	}
	keys, _ := rec.List()
	if len(keys) != 1 || keys[0].Comment != "bastion alice" || !bytes.Equal(keys[0].Blob, cert.Marshal()) {
		t.Fatalf("agent holds %v, want only the new certificate", keys)
	}
	expired := signCert(t, ca, key.PublicKey(), ssh.UserCert, []string{"alice"}, now.Add(-time.Hour), now.Add(-time.Minute))
	if _, err := AddToAgent(sock, key, expired, "", now); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired certificate: %v", err)
	}
}

// TestAddToAgentOpenSSH: OpenSSH's ssh-agent takes the certificate with
// its lifetime and forgets it when the lifetime ends.
func TestAddToAgentOpenSSH(t *testing.T) {
	sock := testbed.StartSSHAgent(t)
	now := time.Now()
	ca := testbed.NewSigner(t)
	key, _, err := LoadOrCreateKey(filepath.Join(t.TempDir(), "id_ed25519"), "")
	if err != nil {
		t.Fatal(err)
	}
	cert := signCert(t, ca, key.PublicKey(), ssh.UserCert, []string{"alice"}, now.Add(-time.Minute), now.Add(3*time.Second))
	if _, err := AddToAgent(sock, key, cert, "bastion", now); err != nil {
		t.Fatal(err)
	}
	ag := agentClient(t, sock)
	if keys, err := ag.List(); len(keys) != 1 || !bytes.Equal(keys[0].Blob, cert.Marshal()) {
		t.Fatalf("ssh-agent holds %v (%v), want the certificate", keys, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		keys, err := ag.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent still holds the certificate long after its lifetime")
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

// TestNormalizeAddrBoundsEcho: an over-long address (from --gateway,
// $BASTION_GATEWAY or the state file) is echoed cut, never in full.
func TestNormalizeAddrBoundsEcho(t *testing.T) {
	long := strings.Repeat("h", 5000)
	for _, addr := range []string{long + " x:2222", "host:" + long, long + ":99999"} {
		_, err := NormalizeAddr(addr)
		if err == nil || len(err.Error()) > 400 || !strings.Contains(err.Error(), "bytes cut") {
			t.Errorf("NormalizeAddr(%d bytes): %.500v", len(addr), err)
		}
	}
}

// TestKeepAliveGivesUpOnSilentGateway: a gateway that completes the
// handshake and then answers nothing (neither the command nor keepalives:
// frozen, or a half-open path) ends Exec with an error saying it stopped
// answering, after the keepalive count, instead of holding it forever.
func TestKeepAliveGivesUpOnSilentGateway(t *testing.T) {
	now := time.Now()
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(hostCertSigner(t, testbed.NewSigner(t), []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(release); _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
		if err != nil {
			return
		}
		// Global requests are read and never answered; the session is
		// accepted, its exec request too, and then nothing.
		go func() {
			for range reqs {
			}
		}()
		for nch := range chans {
			ch, creqs, err := nch.Accept()
			if err != nil {
				return
			}
			go func() {
				for r := range creqs {
					_ = r.Reply(true, nil)
				}
			}()
			defer ch.Close()
			<-release
			return
		}
	}()
	hc, _ := NewHostCheck(HostCheckConfig{KnownHosts: filepath.Join(t.TempDir(), "kh"), FirstUse: true})
	c, err := dialKeepAlive(t.Context(), ln.Addr().String(), "login", testbed.NewSigner(t), hc, 50*time.Millisecond, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(t.Context(), "audit export", nil, io.Discard, io.Discard)
		done <- err
	}()
	select {
	case err := <-done:
		took := time.Since(start)
		if !errors.Is(err, ErrStoppedAnswering) || !strings.Contains(err.Error(), ln.Addr().String()) {
			t.Fatalf("Exec on a silent gateway: %v; want it to say the gateway stopped answering", err)
		}
		if took < 150*time.Millisecond {
			t.Errorf("gave up after %s, before 3 keepalive intervals of silence", took)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exec on a silent gateway still waits after 10s")
	}
}

// TestKeepAliveKeepsAnsweringGateway: a gateway that answers keepalives
// (even with a refusal, as gateways do for requests they do not know)
// keeps a slow command's connection open however long it runs.
func TestKeepAliveKeepsAnsweringGateway(t *testing.T) {
	now := time.Now()
	ca := testbed.NewSigner(t)
	addr := startServer(t, hostCertSigner(t, ca, []string{"127.0.0.1"}, now.Add(-time.Hour), now.Add(time.Hour)))
	hc, _ := NewHostCheck(HostCheckConfig{KnownHosts: filepath.Join(t.TempDir(), "kh"), FirstUse: true})
	c, err := dialKeepAlive(t.Context(), addr, "login", testbed.NewSigner(t), hc, 20*time.Millisecond, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The command's input arrives slowly: 20 keepalive intervals pass
	// before the server can answer.
	pr, pw := io.Pipe()
	go func() {
		time.Sleep(400 * time.Millisecond)
		_, _ = io.WriteString(pw, "late\n")
		_ = pw.Close()
	}()
	var out bytes.Buffer
	code, err := c.Exec(t.Context(), "slow", pr, &out, io.Discard)
	if err != nil || code != 3 || out.String() != "slow|late\n" {
		t.Fatalf("Exec on an answering gateway = %d, %v (%q); want it to run to its end", code, err, out.String())
	}
}
