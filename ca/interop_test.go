package ca

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSSHKeygenReadsOurCertificates has the real `ssh-keygen -L` read every
// kind of certificate we sign and checks it prints exactly what Describe
// (`bastion ca inspect`) prints, which in turn must hold what we asked for.
func TestSSHKeygenReadsOurCertificates(t *testing.T) {
	keygen := requireTool(t, "ssh-keygen")
	dir := t.TempDir()
	tests := []struct {
		name    string
		caType  KeyType
		req     Request
		want    []string
		notWant []string
	}{
		{"ed25519 user", KeyEd25519, Request{Kind: UserCA, KeyID: "alice@example.com", Principals: []string{"alice", "deploy"}, Serial: 77, Groups: []string{"eng"}},
			[]string{"user certificate", `Key ID: "alice@example.com"`, "Serial: 77", "                alice\n", "                deploy\n", "permit-pty", "groups@bastion UNKNOWN OPTION"},
			[]string{"permit-X11-forwarding", "permit-user-rc"}},
		{"ecdsa CA user with options", KeyECDSAP256, Request{Kind: UserCA, KeyID: "deploy", Principals: []string{"deploy"},
			Options: []string{"force-command=/usr/local/bin/deploy --safe", "source-address=10.0.0.0/8,127.0.0.1", "no-pty", "no-port-forwarding"}},
			[]string{"Signing CA: ECDSA", "force-command /usr/local/bin/deploy --safe", "source-address 10.0.0.0/8,127.0.0.1", "permit-agent-forwarding"},
			[]string{"permit-pty", "permit-port-forwarding"}},
		{"rsa CA user", KeyRSA4096, Request{Kind: UserCA, KeyID: "bob", Principals: []string{"bob"}},
			[]string{"Signing CA: RSA", "(using rsa-sha2-512)"}, nil},
		{"host", KeyEd25519, Request{Kind: HostCA, KeyID: "web1", Principals: []string{"web1.internal", "10.0.0.5"}},
			[]string{"host certificate", "                web1.internal\n", "Critical Options: (none)", "Extensions: (none)"}, nil},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCA(t, tc.caType, time.Time{}, Policy{})
			tc.req.Key = newKey(t)
			cert, err := c.auth.Sign(t.Context(), tc.req)
			must(t, err)
			path := writeFile(t, dir, "cert"+string(rune('a'+i))+"-cert.pub", certLine(cert), 0o644)
			out, err := exec.Command(keygen, "-L", "-f", path).CombinedOutput()
			if err != nil {
				t.Fatalf("ssh-keygen -L: %v\n%s", err, out)
			}
			got := string(out)
			if ours := Describe(path, cert); ours != got {
				t.Errorf("Describe differs from ssh-keygen -L\n--- ours\n%s--- ssh-keygen\n%s", ours, got)
			}
			valid := "Valid: from " + time.Unix(int64(cert.ValidAfter), 0).Format("2006-01-02T15:04:05") + " to " + time.Unix(int64(cert.ValidBefore), 0).Format("2006-01-02T15:04:05")
			for _, w := range append(tc.want, valid, "Public key: ") {
				if !strings.Contains(got, w) {
					t.Errorf("ssh-keygen -L output lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(got, w) {
					t.Errorf("ssh-keygen -L output has %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestSSHKeygenVerifiesCAFiles checks ssh-keygen reads our key files: the
// private key (and its passphrase-protected form) and the public key.
func TestSSHKeygenReadsCAKeyFiles(t *testing.T) {
	keygen := requireTool(t, "ssh-keygen")
	l := Layout{DataDir: t.TempDir()}
	_, _, err := Init(l, InitOptions{Passphrase: []byte("s3cret pass")})
	must(t, err)
	out, err := exec.Command(keygen, "-y", "-P", "s3cret pass", "-f", l.PrivateKey(UserCA)).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -y: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(l.PublicKey(UserCA))
	must(t, err)
	if strings.Fields(string(out))[1] != strings.Fields(string(pub))[1] {
		t.Errorf("ssh-keygen derives %q from the private key, the .pub says %q", out, pub)
	}
	// ssh-keygen can sign with our CA key, proving the format is OpenSSH's.
	userKey := filepath.Join(t.TempDir(), "u")
	if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", userKey).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := exec.Command(keygen, "-q", "-s", l.PrivateKey(HostCA), "-P", "s3cret pass", "-h", "-I", "x", "-n", "x", userKey+".pub").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen cannot sign with our CA key: %v %s", err, out)
	}
	data, err := os.ReadFile(userKey + "-cert.pub")
	must(t, err)
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	must(t, err)
	hostPub, err := l.TrustedKeys(HostCA)
	must(t, err)
	if string(k.(*ssh.Certificate).SignatureKey.Marshal()) != string(hostPub[0].Marshal()) {
		t.Error("ssh-keygen's certificate is not signed by our host CA key")
	}
}
