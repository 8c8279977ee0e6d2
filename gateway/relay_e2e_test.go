package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// upstream is a plain TCP target for relay tests: it hands each accepted
// connection to the test.
type upstream struct {
	ln    net.Listener
	conns chan net.Conn
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln, conns: make(chan net.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return u
}

func (u *upstream) port() int { return u.ln.Addr().(*net.TCPAddr).Port }

// accepted waits (bounded) for the gateway's connection to the target.
func (u *upstream) accepted(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-u.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway never connected to the target")
		return nil
	}
}

// closedWithin checks that the gateway fully closes its socket to the
// target within d of the client going away: the relay records session.end
// with reason, the target reads EOF, and data it then sends is refused
// (a half-closed socket would still take it).
func closedWithin(t *testing.T, tg *testGateway, c net.Conn, d time.Duration, reason string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var end bool
		for _, ev := range tg.events("session.end") {
			if ev.Fields["reason"] == reason {
				end = true
			}
		}
		if end {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session.end with reason %s within %v of the client going away; the target socket outlived its channel:\n%s", reason, d, tg.dump())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !strings.Contains(err.Error(), "reset by peer") {
		t.Fatalf("the target saw no end of the stream: %v", err)
	}
	c.Write([]byte("late"))
	_, err := c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the gateway's socket to the target is still open (read after a late write: %v)", err)
	}
}

// waitFlowing sends a byte from the client and waits for the target to
// read it, so the channel is open end to end.
func waitFlowing(t *testing.T, client io.Writer, target net.Conn) {
	t.Helper()
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	target.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(target, make([]byte, 1)); err != nil {
		t.Fatalf("no data reached the target: %v", err)
	}
}

// withAccess adds a rule for the test's login user.
func withAccess(hosts []string, ports ...int) gatewayOption {
	return func(c *Config, _ *Deps) {
		c.Access = append(c.Access, AccessRule{Principals: []string{c.Access[0].Principals[0]}, Hosts: hosts, Ports: ports})
	}
}

// TestRelayClientChannelCloseClosesUpstream: a client that closes its
// direct-tcpip channel (SSH_MSG_CHANNEL_CLOSE, no EOF first) while the
// target stays silent must not leave the target socket open.
func TestRelayClientChannelCloseClosesUpstream(t *testing.T) {
	up := startUpstream(t)
	tg := startGateway(t, withAccess([]string{"127.0.0.1"}, up.port()))
	c := tg.client(ca.Request{})
	client, err := tg.dialGateway(tg.user, gossh.PublicKeys(certSigner(t, c, tg.certOf(c))))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	payload := gossh.Marshal(directTCPIP{Host: "127.0.0.1", Port: uint32(up.port()), OriginAddr: "127.0.0.1", OriginPort: 1})
	ch, reqs, err := client.OpenChannel("direct-tcpip", payload)
	if err != nil {
		t.Fatal(err)
	}
	go gossh.DiscardRequests(reqs)
	target := up.accepted(t)
	if _, err := ch.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	target.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(target, buf); err != nil {
		t.Fatal(err)
	}
	// Close the channel while the connection stays up and the target
	// never writes.
	if err := ch.Close(); err != nil {
		t.Fatal(err)
	}
	closedWithin(t, tg, target, time.Second, "client_closed")
	tg.waitEvent(t, "session.end", map[string]string{"reason": "client_closed", "bytes_up": "5"})
}

// TestRelayControlMasterKilled: `ssh -W` through a ControlMaster, and the
// master dies with SIGKILL; the target socket is closed within a second
// and session.end says the connection ended.
func TestRelayControlMasterKilled(t *testing.T) {
	m := startMuxJump(t)
	if err := m.master.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	closedWithin(t, m.tg, m.target, time.Second, "connection_closed")
}

// TestRelayMuxClientKilled: the `ssh -W` process of a ControlMaster is
// killed; the master sends EOF and CLOSE on the channel but keeps the
// connection, and the gateway must close the target socket (an EOF alone
// would only half-close it).
func TestRelayMuxClientKilled(t *testing.T) {
	m := startMuxJump(t)
	tg, c, sock, ctx, target := m.tg, m.c, m.sock, m.ctx, m.target
	m.w.Process.Kill()
	m.w.Wait()
	// The master notices the dead client but sends the channel's EOF and
	// CLOSE only on its next turn of the event loop (OpenSSH 9/10); a
	// control command gives it one, as any traffic on a busy master would.
	if res := c.Run(ctx, "ssh", append([]string{"-o", "ControlPath=" + sock, "-O", "check"}, tg.gatewayArgs(tg.user)...)...); res.ExitCode != 0 {
		t.Fatalf("ssh -O check: %s", res)
	}
	closedWithin(t, tg, target, time.Second, "client_closed")
}

// TestRelayHalfClose: `ssh -W` whose stdin ends at once still gets
// everything the target sends afterwards.
func TestRelayHalfClose(t *testing.T) {
	up := startUpstream(t)
	tg := startGateway(t, withAccess([]string{"127.0.0.1"}, up.port()))
	c := tg.client(ca.Request{})
	go func() {
		select {
		case conn := <-up.conns:
			defer conn.Close()
			got, _ := io.ReadAll(conn) // until the client's EOF
			time.Sleep(200 * time.Millisecond)
			conn.Write([]byte("after-eof " + string(got) + " " + strings.Repeat("x", 100000) + "\n"))
		case <-time.After(20 * time.Second):
		}
	}()
	res := c.RunInput(t.Context(), strings.NewReader("ping"), "ssh", append([]string{"-W", "127.0.0.1:" + strconv.Itoa(up.port())}, tg.gatewayArgs(tg.user)...)...)
	if res.ExitCode != 0 || !strings.HasPrefix(res.Stdout, "after-eof ping xxx") || len(res.Stdout) != len("after-eof ping ")+100001 {
		t.Fatalf("half-closed ssh -W: exit %d, %d bytes, stderr %s", res.ExitCode, len(res.Stdout), res.Stderr)
	}
	tg.waitEvent(t, "session.end", map[string]string{"reason": "closed", "bytes_up": "4"})
}

// muxJump is an `ssh -W` to an upstream through a ControlMaster to the
// gateway, with data flowing.
type muxJump struct {
	tg        *testGateway
	c         *testbed.Client
	sock      string
	ctx       context.Context
	master, w *exec.Cmd
	target    net.Conn
}

// startMuxJump starts a ControlMaster to a fresh gateway and an `ssh -W`
// through it to a fresh upstream, and waits until bytes flow; everything
// is stopped in t.Cleanup.
func startMuxJump(t *testing.T) *muxJump {
	t.Helper()
	up := startUpstream(t)
	tg := startGateway(t, withAccess([]string{"127.0.0.1"}, up.port()))
	c := tg.client(ca.Request{})
	sock := filepath.Join(c.Dir, "mux")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	master := c.Command(ctx, "ssh", append([]string{"-o", "ControlMaster=yes", "-o", "ControlPath=" + sock, "-N"}, tg.gatewayArgs(tg.user)...)...)
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = master.Process.Kill(); _ = master.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the control master never came up")
		}
	}
	w := c.Command(ctx, "ssh", append([]string{"-o", "ControlPath=" + sock, "-W", "127.0.0.1:" + strconv.Itoa(up.port())}, tg.gatewayArgs(tg.user)...)...)
	stdin, err := w.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = w.Process.Kill(); _ = w.Wait() })
	target := up.accepted(t)
	waitFlowing(t, stdin, target)
	return &muxJump{tg: tg, c: c, sock: sock, ctx: ctx, master: master, w: w, target: target}
}
