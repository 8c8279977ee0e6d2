package sshclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/textbound"
)

// DefaultPort is the gateway's SSH port when an address names none.
const DefaultPort = "2222"

// HostKeyAlgorithms lists host certificate algorithms before plain key
// algorithms. A server presents the first one on the client's list that it
// has, so a bastion gateway presents its host certificate; the plain ones
// stay on the list so that a server without a certificate gets through
// negotiation to HostCheck, which says clearly what is wrong.
func HostKeyAlgorithms() []string {
	return []string{
		ssh.CertAlgoED25519v01, ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
		ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
		ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
		ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
	}
}

// NormalizeAddr checks a gateway address and adds DefaultPort when it
// names no port ("bastion.example.com" → "bastion.example.com:2222").
func NormalizeAddr(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", errors.New("sshclient: the gateway address is empty: give HOST:PORT, e.g. bastion.example.com:2222")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// No port (or an unbracketed IPv6 address): take it as a host.
		host, port = strings.Trim(addr, "[]"), DefaultPort
	}
	n, perr := strconv.Atoi(port)
	if perr != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("sshclient: gateway address %q: port %q is not a number from 1 to 65535", textbound.Cut(addr, 80), textbound.Cut(port, 20))
	}
	if host == "" || strings.ContainsAny(host, " \t\r\n\"'\\#,@%/") {
		return "", fmt.Errorf("sshclient: gateway address %q: %q is not a host name or address", textbound.Cut(addr, 80), textbound.Cut(host, 80))
	}
	return net.JoinHostPort(host, port), nil
}

// ErrAuthRefused means the gateway refused the user and key: for the
// login user, the gateway has no login service; for anyone else, the
// certificate is not accepted (expired, revoked, locked, wrong principal).
var ErrAuthRefused = errors.New("sshclient: the gateway refused the key")

// ErrStoppedAnswering is the error of a command whose gateway held the
// connection open but answered no keepalive for keepAliveCountMax
// intervals.
var ErrStoppedAnswering = errors.New("the gateway stopped answering")

// Conn is an SSH connection to a gateway.
type Conn struct {
	client *ssh.Client
	stop   func() bool
	closed chan struct{} // closed by Close
	once   sync.Once
	gone   chan struct{} // closed when the connection has ended
	lost   atomic.Pointer[error]
}

// Keepalives on every connection, as OpenSSH's ServerAliveInterval 15
// and ServerAliveCountMax 3: a gateway that holds the connection open but
// answers nothing (frozen, overloaded, a half-open path) is given up on
// after about 45 s instead of holding a command forever.
const (
	keepAliveInterval = 15 * time.Second
	keepAliveCountMax = 3
)

// Dial connects to the gateway at addr as user, authenticating with
// signer (a plain key for the login user, a certificate signer for
// everyone else) and checking the host key with hc. ctx bounds the whole
// life of the connection: when it is done, the connection is closed.
func Dial(ctx context.Context, addr, user string, signer ssh.Signer, hc *HostCheck) (*Conn, error) {
	return dialKeepAlive(ctx, addr, user, signer, hc, keepAliveInterval, keepAliveCountMax)
}

// dialKeepAlive is Dial with the keepalive interval and count.
func dialKeepAlive(ctx context.Context, addr, user string, signer ssh.Signer, hc *HostCheck, kaInterval time.Duration, kaCountMax int) (*Conn, error) {
	d := net.Dialer{Timeout: 15 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sshclient: cannot reach the gateway at %s: %w (is the address right and the gateway running?)", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := nc.SetDeadline(deadline); err != nil {
		stop()
		_ = nc.Close()
		return nil, fmt.Errorf("sshclient: connect to %s: %w", addr, err)
	}
	cfg := &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   hc.Callback(),
		HostKeyAlgorithms: HostKeyAlgorithms(),
		ClientVersion:     "SSH-2.0-bastion",
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		stop()
		_ = nc.Close()
		if herr := hc.Err(); herr != nil {
			return nil, herr
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("sshclient: connect to %s: %w", addr, ctx.Err())
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("%w: the gateway at %s refused %s (%v)", ErrAuthRefused, addr, user, err)
		}
		return nil, fmt.Errorf("sshclient: SSH handshake with %s: %w", addr, err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		stop()
		_ = sc.Close()
		return nil, fmt.Errorf("sshclient: connect to %s: %w", addr, err)
	}
	c := &Conn{client: ssh.NewClient(sc, chans, reqs), stop: stop, closed: make(chan struct{}), gone: make(chan struct{})}
	go func() { _ = c.client.Wait(); close(c.gone) }()
	go c.keepAlive(addr, kaInterval, kaCountMax)
	return c, nil
}

// keepAlive sends a keepalive@openssh.com global request every interval
// (any reply counts, a refusal too); when none has been answered for
// countMax intervals it closes the connection, and Exec says why.
func (c *Conn) keepAlive(addr string, interval time.Duration, countMax int) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	answered := make(chan struct{}, 1)
	last, inFlight := time.Now(), false
	for {
		select {
		case <-c.closed:
			return
		case <-c.gone:
			return
		case <-answered:
			last, inFlight = time.Now(), false
		case <-tick.C:
			if silent := time.Since(last); silent > time.Duration(countMax)*interval {
				err := fmt.Errorf("%w: %s sent no reply to keepalives for %s (is it frozen or overloaded, or the network between down?); run the command again, or through another gateway", ErrStoppedAnswering, addr, silent.Round(time.Second))
				c.lost.Store(&err)
				_ = c.client.Close()
				return
			}
			if !inFlight {
				inFlight = true
				go func() {
					if _, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil); err == nil {
						answered <- struct{}{}
					}
				}()
			}
		}
	}
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.stop()
	c.once.Do(func() { close(c.closed) })
	return c.client.Close()
}

// Exec runs command on the gateway with the given stdin (nil for none),
// stdout and stderr, and returns its exit status. An error means the
// command did not run to an exit status (the connection broke, or ctx
// ended).
func (c *Conn) Exec(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	sess, err := c.client.NewSession()
	if err != nil {
		return -1, fmt.Errorf("sshclient: open a session on the gateway: %w", err)
	}
	// Close after Run reports io.EOF (the channel is closed already).
	defer func() { _ = sess.Close() }()
	stop := context.AfterFunc(ctx, func() { _ = sess.Close() })
	defer stop()
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, stderr
	err = sess.Run(command)
	var exit *ssh.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		return exit.ExitStatus(), nil
	case c.lost.Load() != nil:
		return -1, *c.lost.Load()
	case ctx.Err() != nil:
		return -1, fmt.Errorf("sshclient: %s: %w", firstWord(command), ctx.Err())
	}
	return -1, fmt.Errorf("sshclient: %s on the gateway: %w", firstWord(command), err)
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return w
}
