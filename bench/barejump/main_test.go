package main

import (
	"crypto/rand"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

// The measuring stick must be a working jump host, or its memory figure
// means nothing: bytes go through and come back, and a plain key is
// refused.
func TestBareJumpRelaysForCertificatesOnly(t *testing.T) {
	caSigner, userSigner, hostSigner := testbed.NewSigner(t), testbed.NewSigner(t), testbed.NewSigner(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go acceptLoop(ln, serverConfig(hostSigner, caSigner.PublicKey()))

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	cert := &ssh.Certificate{Key: userSigner.PublicKey(), CertType: ssh.UserCert, KeyId: "t", ValidPrincipals: []string{"alice"},
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	certSigner, err := ssh.NewCertSigner(cert, userSigner)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(s ssh.Signer) (*ssh.Client, error) {
		return ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: "alice", Auth: []ssh.AuthMethod{ssh.PublicKeys(s)},
			HostKeyCallback: ssh.FixedHostKey(hostSigner.PublicKey()), Timeout: 10 * time.Second})
	}

	if c, err := dial(userSigner); err == nil {
		c.Close()
		t.Fatal("a plain key (no certificate) was let in")
	}
	client, err := dial(certSigner)
	if err != nil {
		t.Fatalf("certificate refused: %v", err)
	}
	defer client.Close()
	conn, err := client.Dial("tcp", echo.Addr().String())
	if err != nil {
		t.Fatalf("jump: %v", err)
	}
	payload := strings.Repeat("bastion ", 64<<10) // 512 KiB, many relay buffers
	go func() { io.WriteString(conn, payload); conn.(interface{ CloseWrite() error }).CloseWrite() }()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != payload {
		t.Fatalf("echo through the jump returned %d bytes, want %d identical", len(got), len(payload))
	}
}
