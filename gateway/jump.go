package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// directTCPIP is the payload of a direct-tcpip channel open (RFC 4254 §7.2).
type directTCPIP struct {
	Host       string
	Port       uint32
	OriginAddr string
	OriginPort uint32
}

// handleDirectTCPIP is the jump: policy decides the target, the name is
// resolved once and that address dialled, session.start is made durable
// before the channel is accepted, and bytes are relayed until either side
// closes.
func (g *Gateway) handleDirectTCPIP(_ *gliderssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	cs := stateOf(ctx)
	id, err := cs.touch(g, conn)
	if err != nil {
		nc.Reject(gossh.Prohibited, "bastion: "+err.Error())
		return
	}
	if cs.staleOnly.Load() {
		g.auditRefusal(cs, audit.TypeChannelDenied, "direct-tcpip", g.clusterRefusalReason(), "admitted for cluster status only: the gateway admits no new session")
		nc.Reject(gossh.Prohibited, "bastion: "+g.clusterRefusalMessage())
		return
	}
	if id.Login {
		g.auditRefusal(cs, audit.TypeChannelDenied, "direct-tcpip", ReasonLoginOnly, "the login user cannot jump")
		nc.Reject(gossh.Prohibited, "bastion: the login user can only log in; use the certificate it gives you")
		return
	}
	// The certificate's restrictions bind the jump as they bind sshd's
	// port forwarding: without permit-port-forwarding there is none.
	if !id.Permits("permit-port-forwarding") {
		g.auditRefusal(cs, audit.TypeChannelDenied, "direct-tcpip", ReasonForwardingNotPermitted, "the certificate does not permit port forwarding")
		nc.Reject(gossh.Prohibited, "bastion: your certificate does not permit port forwarding (it was signed with no-port-forwarding), so it cannot jump")
		return
	}
	var req directTCPIP
	if err := gossh.Unmarshal(nc.ExtraData(), &req); err != nil || req.Port > 65535 {
		g.auditRefusal(cs, audit.TypeChannelDenied, "direct-tcpip", "bad_request", "malformed direct-tcpip request")
		nc.Reject(gossh.ConnectionFailed, "bastion: malformed direct-tcpip request")
		return
	}
	target := net.JoinHostPort(auditHost(req.Host), strconv.Itoa(int(req.Port)))
	refuse := func(reason, msg string, rejection gossh.RejectionReason) {
		g.metrics.jumps.WithLabelValues("refused", reason).Inc()
		f := id.auditFields()
		f["target"], f["reason"], f["detail"], f["remote"], f["conn"] = target, reason, msg, cs.remote.String(), cs.id
		g.recordRefusal(cs, audit.Event{Type: audit.TypeChannelDenied, Actor: id.User, Session: cs.id, Fields: f})
		nc.Reject(rejection, "bastion: "+msg)
	}

	openCtx, cancel := context.WithTimeout(ctx, g.cfg.DialTimeout)
	defer cancel()
	dest, err := g.access.decide(openCtx, g.deps.Resolver, id, req.Host, int(req.Port))
	if err != nil {
		var ae *accessError
		if errors.As(err, &ae) {
			refuse(ae.reason, ae.msg, gossh.Prohibited)
		} else {
			refuse(ReasonHostNotAllowed, err.Error(), gossh.Prohibited)
		}
		return
	}
	// A force-command certificate may run that command only. In record
	// mode the minted certificate carries it to the target, which enforces
	// it; in tunnel mode the gateway cannot see what runs beyond it.
	if id.ForceCommand != "" && dest.Mode != ModeRecord {
		refuse(ReasonForceCommand, "your certificate is restricted to one command (force-command), so it can jump only to record-mode targets", gossh.Prohibited)
		return
	}
	upstream, addr, failed, err := g.dialTarget(openCtx, dest)
	if err != nil && ctx.Err() != nil {
		// The connection ended while the target was dialled: the client
		// left (SSH cannot withdraw a channel open otherwise), nothing
		// was refused.
		g.metrics.jumps.WithLabelValues("refused", ReasonClientDisconnected).Inc()
		cs.log.Info("client left while its target was dialled", "target", target)
		return
	}
	if err != nil {
		var ae *accessError
		if errors.As(err, &ae) {
			refuse(ae.reason, ae.msg, gossh.Prohibited)
		} else {
			refuse(ReasonDialFailed, fmt.Sprintf("cannot connect to %s: %s", target, failed), gossh.ConnectionFailed)
		}
		return
	}
	dest.Addr = addr
	if dest.Mode == ModeRecord {
		g.recordSession(ctx, cs, id, nc, req, dest, upstream)
		return
	}

	sessionID := newID()
	start := g.now()
	f := id.auditFields()
	f["target"], f["addr"], f["remote"], f["conn"] = target, addr.String(), cs.remote.String(), cs.id
	if failed != "" {
		f["failed_addrs"] = failed
	}
	f["origin"] = net.JoinHostPort(req.OriginAddr, strconv.Itoa(int(req.OriginPort)))
	// Fail closed: no byte flows unless the start of the session is on disk.
	if err := g.recordOrRefuse(ctx, audit.Event{Type: audit.TypeSessionStart, Actor: id.User, Session: sessionID, Fields: f}); err != nil {
		upstream.Close()
		g.metrics.jumps.WithLabelValues("refused", ReasonAuditUnavailable).Inc()
		nc.Reject(gossh.ResourceShortage, "bastion: "+MsgAuditUnavailable)
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		upstream.Close()
		g.endSession(id, cs, sessionID, target, start, 0, 0, "accept_failed")
		return
	}
	g.sessions.Add(1)
	defer g.sessions.Done()
	g.metrics.jumps.WithLabelValues("ok", "").Inc()
	g.metrics.channels.WithLabelValues("direct-tcpip").Inc()
	defer g.metrics.channels.WithLabelValues("direct-tcpip").Dec()
	cs.log.Info("jump started", "session", sessionID, "target", target, "addr", addr.String())

	up, down, why := relay(ctx, ch, reqs, upstream)
	g.metrics.bytesRelayed.WithLabelValues("up").Add(float64(up))
	g.metrics.bytesRelayed.WithLabelValues("down").Add(float64(down))
	if r := cs.reason(); r != "" {
		why = r
	}
	g.endSession(id, cs, sessionID, target, start, up, down, why)
}

// dialTarget tries each of dest's addresses in order, as OpenSSH's ssh
// does, until one connects: the first that refuses or cannot be reached
// does not end the jump while another address may work. ctx's deadline is
// shared: each attempt gets the time left divided among the addresses left
// (at least dialAttemptFloor), as Go's dialer does, so one blackholed
// address cannot eat the whole timeout. It returns the connection, the
// address used, and the failed ones with why ("[::1]:22 connection
// refused, ..."), bounded for the audit log. An error is an *accessError
// when every address was refused by require_hardened_targets.
func (g *Gateway) dialTarget(ctx context.Context, dest Destination) (net.Conn, netip.AddrPort, string, error) {
	var failed []string
	var hardenedErr error
	hardenedRefusals := 0
	for i, addr := range dest.Addrs {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < len(dest.Addrs)-1 {
			share := time.Until(dl) / time.Duration(len(dest.Addrs)-i)
			actx, cancel = context.WithTimeout(ctx, max(share, dialAttemptFloor))
		}
		if err := g.hardenedCheck(actx, dest.Host, addr); err != nil {
			cancel()
			failed = append(failed, addr.String()+" "+err.(*accessError).reason)
			if hardenedErr == nil {
				hardenedErr = err
			}
			hardenedRefusals++
			continue
		}
		c, err := g.deps.Dial(actx, "tcp", addr.String())
		cancel()
		if err == nil {
			return c, addr, strings.Join(failed, ", "), nil
		}
		failed = append(failed, addr.String()+" "+dialReason(err))
		if ctx.Err() != nil {
			break
		}
	}
	summary := strings.Join(failed, ", ")
	if hardenedRefusals == len(failed) {
		return nil, netip.AddrPort{}, summary, hardenedErr
	}
	return nil, netip.AddrPort{}, summary, errors.New(summary)
}

// dialAttemptFloor is the least time one address of several gets.
const dialAttemptFloor = 2 * time.Second

// maxAuditHost bounds the client-supplied host name in audit records and
// logs; no valid host name is longer.
const maxAuditHost = 255

// auditHost is h as it may appear in an audit record: at most
// maxAuditHost bytes, control characters quoted.
func auditHost(h string) string {
	if len(h) > maxAuditHost {
		h = h[:maxAuditHost] + "..."
	}
	if strings.ContainsFunc(h, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		h = strconv.Quote(h)
	}
	return h
}

// endSession writes session.end.
func (g *Gateway) endSession(id *Identity, cs *connState, sessionID, target string, start time.Time, up, down int64, why string) {
	f := id.auditFields()
	f["target"], f["remote"], f["conn"] = target, cs.remote.String(), cs.id
	f["duration_ms"] = strconv.FormatInt(g.now().Sub(start).Milliseconds(), 10)
	f["bytes_up"], f["bytes_down"], f["reason"] = strconv.FormatInt(up, 10), strconv.FormatInt(down, 10), why
	g.record(context.Background(), audit.Event{Type: audit.TypeSessionEnd, Actor: id.User, Session: sessionID, Fields: f})
	cs.log.Info("jump ended", "session", sessionID, "bytes_up", up, "bytes_down", down, "reason", why)
}

// dialReason shortens a dial error for the client.
func dialReason(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// bulkReadSize is the chunk each direction of a relay reads while data
// flows: a read of a backlogged channel takes several of x/crypto's 32 KiB
// packets at once, and each channel read makes x/crypto send the client a
// window adjustment (a packet and a write call), so bigger reads mean
// fewer of those. It is an eighth of x/crypto's 2 MiB channel window,
// which bounds a session's buffering anyway.
const bulkReadSize = 256 * 1024

// relayIdleBufferSize is what each direction holds while it waits for
// data. An idle session would otherwise pin two full buffers for as long
// as it stays open: with thousands of idle sessions that was half of the
// gateway's memory (see bench/README.md).
const relayIdleBufferSize = 1024

// bulkBuffers lend bulkReadSize buffers to relays only while data flows.
var bulkBuffers = sync.Pool{New: func() any { b := make([]byte, bulkReadSize); return &b }}

// relay copies both ways with half-close: when one side finishes sending,
// the other is told (CloseWrite) and the copy the other way goes on. A
// failed copy, the client closing its channel, or the end of the SSH
// connection (ctx) tears both down. It returns the bytes sent up (client
// to target) and down, and why it ended.
//
// An EOF from the client only half-closes; a CLOSE from the client ends
// the relay. x/crypto reads both as io.EOF on the channel, so the close is
// seen where it differs: it also closes the channel's request stream
// (reqs), which relay drains in the goroutine that would otherwise only
// discard requests. Without that, a client whose channel was closed (an
// `ssh -W` killed under a ControlMaster) left the target socket open until
// the target next wrote, or forever.
//
// It costs one goroutine besides the caller's and the request drainer: the
// caller copies up, a goroutine copies down, and the end of ctx is watched
// by a callback rather than by a goroutine, since every goroutine's stack
// is paid for by every idle session.
func relay(ctx context.Context, ch gossh.Channel, reqs <-chan *gossh.Request, target net.Conn) (up, down int64, why string) {
	var upN, downN atomic.Int64
	var upErr, downErr error
	// downEnded is set once the target has finished sending; clientClosed
	// once the client closed its channel before that.
	var downEnded, clientClosed atomic.Bool
	downDone := make(chan struct{})
	go func() {
		for req := range reqs {
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
		if !downEnded.Load() {
			clientClosed.Store(true)
		}
		target.Close()
	}()
	go func() {
		defer close(downDone)
		_, downErr = copyCounted(ch, target, &downN)
		downEnded.Store(true)
		if downErr == nil {
			ch.CloseWrite()
		} else {
			ch.Close()
		}
	}()
	stop := context.AfterFunc(ctx, func() {
		ch.Close()
		target.Close()
	})
	_, upErr = copyCounted(target, ch, &upN)
	if tc, ok := target.(interface{ CloseWrite() error }); ok && upErr == nil {
		tc.CloseWrite()
	} else {
		target.Close()
	}
	<-downDone
	// stop reports false when the connection's end already fired the
	// callback: only then did the connection, not the relay, end it.
	connectionEnded := !stop()
	ch.Close()
	target.Close()
	switch {
	case connectionEnded:
		why = "connection_closed"
	case clientClosed.Load():
		why = "client_closed"
	case upErr != nil:
		why = "client_error"
	case downErr != nil:
		why = "target_error"
	default:
		why = "closed"
	}
	return upN.Load(), downN.Load(), why
}

// copyCounted is io.Copy with a live byte count that holds little memory
// while src has nothing to send. It waits for data with a small buffer of
// its own; when a read fills that, data is flowing, and it borrows a
// bulkReadSize buffer from bulkBuffers until a read comes back short (src
// has been drained for now), then returns it. Each read is written before
// the next read, so nothing waits in a buffer while src is quiet.
func copyCounted(dst io.Writer, src io.Reader, n *atomic.Int64) (int64, error) {
	idle := make([]byte, relayIdleBufferSize)
	var big *[]byte
	defer func() {
		if big != nil {
			bulkBuffers.Put(big)
		}
	}()
	var total int64
	for {
		buf := idle
		if big != nil {
			buf = *big
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			total += int64(nw)
			n.Add(int64(nw))
			if werr != nil {
				return total, werr
			}
		}
		switch {
		case big == nil && nr == len(buf):
			big = bulkBuffers.Get().(*[]byte)
		case big != nil && nr < len(buf):
			bulkBuffers.Put(big)
			big = nil
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}
