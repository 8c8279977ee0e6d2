// Command barejump is the least a jump host built on golang.org/x/crypto/ssh
// can be: certificate check, direct-tcpip, relay, nothing else (no audit,
// no policy, no limits, no gliderlabs). bench/jumpbench measures its memory
// per idle session beside bastion's, so that the figure shows how much of
// bastion's cost is the SSH library's and how much is bastion's own. It is
// a measuring stick, not a product: never run it in front of real hosts.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/gcpace"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	hostKeyPath := flag.String("host-key", "", "private host key file")
	userCAPath := flag.String("user-ca", "", "user CA public key file (authorized_keys format)")
	flag.Parse()
	if err := run(*listen, *hostKeyPath, *userCAPath); err != nil {
		fmt.Fprintln(os.Stderr, "barejump:", err)
		os.Exit(1)
	}
}

func run(listen, hostKeyPath, userCAPath string) error {
	keyPEM, err := os.ReadFile(hostKeyPath)
	if err != nil {
		return fmt.Errorf("host key: %w (pass -host-key with an OpenSSH private key file)", err)
	}
	hostKey, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("host key %s: %w", hostKeyPath, err)
	}
	caText, err := os.ReadFile(userCAPath)
	if err != nil {
		return fmt.Errorf("user CA: %w (pass -user-ca with the CA's .pub file)", err)
	}
	userCA, _, _, _, err := ssh.ParseAuthorizedKey(caText)
	if err != nil {
		return fmt.Errorf("user CA %s: %w", userCAPath, err)
	}
	config := serverConfig(hostKey, userCA)
	// The same collector pacing as bastion serve, so that the two differ
	// only in code.
	if _, set := gcpace.FromEnvironment(); !set {
		defer gcpace.Start(gcpace.Options{}).Stop()
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Printf("barejump: listening on %s\n", ln.Addr())
	return acceptLoop(ln, config)
}

// serverConfig accepts user certificates signed by userCA.
func serverConfig(hostKey ssh.Signer, userCA ssh.PublicKey) *ssh.ServerConfig {
	checker := &ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool {
		return bytes.Equal(k.Marshal(), userCA.Marshal())
	}}
	config := &ssh.ServerConfig{PublicKeyCallback: checker.Authenticate}
	// What bastion's gateway offers (gateway/server.go), so that clients
	// negotiate the same cipher state with both.
	config.KeyExchanges = []string{ssh.KeyExchangeMLKEM768X25519, ssh.KeyExchangeCurve25519}
	config.Ciphers = []string{ssh.CipherAES128GCM, ssh.CipherAES256GCM}
	config.AddHostKey(hostKey)
	return config
}

func acceptLoop(ln net.Listener, config *ssh.ServerConfig) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		go serve(conn, config)
	}
}

// serve runs one connection in one goroutine besides x/crypto's own: it
// takes channels and global requests in one loop.
func serve(conn net.Conn, config *ssh.ServerConfig) {
	defer conn.Close()
	sc, chans, reqs, err := ssh.NewServerConn(conn, config)
	if err != nil {
		return
	}
	defer sc.Close()
	for chans != nil || reqs != nil {
		select {
		case nc, ok := <-chans:
			if !ok {
				chans = nil
				continue
			}
			if nc.ChannelType() != "direct-tcpip" {
				nc.Reject(ssh.UnknownChannelType, "direct-tcpip only")
				continue
			}
			go jump(nc)
		case r, ok := <-reqs:
			if !ok {
				reqs = nil
				continue
			}
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}
}

func jump(nc ssh.NewChannel) {
	var req struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &req); err != nil {
		nc.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	target, err := net.Dial("tcp", net.JoinHostPort(req.Host, fmt.Sprint(req.Port)))
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	defer target.Close()
	ch, chReqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	// x/crypto requires the channel's requests to be read.
	go ssh.DiscardRequests(chReqs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyAdaptive(ch, target)
		ch.CloseWrite()
	}()
	copyAdaptive(target, ch)
	target.(*net.TCPConn).CloseWrite()
	<-done
}

// copyAdaptive copies as bastion's relay does: it waits for data with a
// 1 KiB buffer (the same idle cost) and moves to a 32 KiB one while reads
// keep filling the buffer, so that bulk transfers measure x/crypto's cost,
// not a small buffer's. The wrappers hide net.TCPConn's ReadFrom and
// WriteTo, which would copy through a 32 KiB buffer of their own.
func copyAdaptive(dst io.Writer, src io.Reader) {
	w, r := struct{ io.Writer }{dst}, struct{ io.Reader }{src}
	small := make([]byte, 1024)
	var big []byte
	for {
		buf := small
		if big != nil {
			buf = big
		}
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		switch {
		case big == nil && n == len(buf):
			big = make([]byte, 32<<10)
		case big != nil && n < len(small):
			big = nil
		}
		if err != nil {
			return
		}
	}
}
