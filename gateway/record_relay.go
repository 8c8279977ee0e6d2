package gateway

import (
	"context"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// proxy relays one inner SSH connection (client side, a ServerConn the
// gateway serves) to the target (a client connection the gateway made):
// every channel and request both ways, with what the user's certificate
// permits and nothing else.
type proxy struct {
	s      *recordedSession
	client *gossh.ServerConn
	target gossh.Conn
	rec    Recording
	login  string
	input  bool
	// forwarding is the user's certificate's permit-port-forwarding.
	forwarding bool

	up, down  atomic.Int64
	nextCh    atomic.Uint32
	failed    atomic.Bool // a recording write failed and the session was ended
	recMu     sync.Mutex  // serialises recording writes; guards rec
	truncated bool        // recording.truncated written; guarded by recMu

	mu      sync.Mutex
	closing bool
	active  sync.WaitGroup
}

func newProxy(s *recordedSession, client *gossh.ServerConn, target gossh.Conn, rec Recording, login string) *proxy {
	_, fwd := client.Permissions.Extensions["permit-port-forwarding"]
	return &proxy{s: s, client: client, target: target, rec: rec, login: login, input: s.g.rec.cfg.Input, forwarding: fwd}
}

// run relays until either connection ends, then waits for every channel
// to finish.
func (p *proxy) run(chans <-chan gossh.NewChannel, greqs <-chan *gossh.Request, tchans <-chan gossh.NewChannel, treqs <-chan *gossh.Request) {
	go p.clientGlobalRequests(greqs)
	go p.targetGlobalRequests(treqs)
	go func() {
		for nc := range tchans {
			if !p.begin() {
				nc.Reject(gossh.ConnectionFailed, "bastion: session is ending")
				continue
			}
			go func() { defer p.active.Done(); p.targetChannel(nc) }()
		}
	}()
	// When the target ends, let the channels deliver what they hold
	// before the client connection goes.
	targetDone := make(chan struct{})
	go func() {
		p.target.Wait()
		close(targetDone)
		p.drain()
		p.client.Close()
	}()
	for nc := range chans {
		if !p.begin() {
			nc.Reject(gossh.ConnectionFailed, "bastion: session is ending")
			continue
		}
		go func() { defer p.active.Done(); p.clientChannel(nc) }()
	}
	// The client is gone: nothing more is wanted from the target.
	p.target.Close()
	<-targetDone
	p.drain()
}

// begin counts a new channel unless the session is ending.
func (p *proxy) begin() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.active.Add(1)
	return true
}

// drain stops new channels and waits for the open ones.
func (p *proxy) drain() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	p.active.Wait()
}

// write records one entry; a failure ends the session unless the policy
// says to continue, and is audited either way (once).
func (p *proxy) write(ch uint32, kind string, data []byte, stderr io.Writer) {
	p.recMu.Lock()
	defer p.recMu.Unlock()
	if p.rec == nil {
		return
	}
	err := p.rec.Write(ch, kind, p.s.g.now().Sub(p.s.start), data)
	if err == nil {
		if !p.truncated {
			if l, ok := p.rec.(recordingLimit); ok {
				if limited, stored, limit := l.Limited(); limited {
					// Once: from here the session's data is counted,
					// not stored, and the audit stream says so.
					p.truncated = true
					p.s.event(context.Background(), audit.TypeRecordingTruncated, map[string]string{
						"login": p.login, "channel": strconv.Itoa(int(ch)),
						"bytes_stored": strconv.FormatInt(stored, 10), "limit": strconv.FormatInt(limit, 10)})
				}
			}
		}
		return
	}
	p.rec = nil
	p.s.event(context.Background(), audit.TypeRecordingFailed, map[string]string{"detail": bounded(err.Error()), "login": p.login, "policy": p.s.g.rec.cfg.OnFailure})
	if p.s.g.rec.cfg.OnFailure == OnFailureContinue {
		return
	}
	p.failed.Store(true)
	if stderr != nil {
		io.WriteString(stderr, "\r\nbastion: this session can no longer be recorded, so it has been ended.\r\n")
	}
	go func() {
		p.client.Close()
		p.target.Close()
	}()
}

// clientGlobalRequests handles the client's global requests: remote port
// forwards go to the target when the certificate permits them; host key
// rotation and keepalives are answered here; the rest is refused.
func (p *proxy) clientGlobalRequests(reqs <-chan *gossh.Request) {
	for req := range reqs {
		switch req.Type {
		case "tcpip-forward", "cancel-tcpip-forward":
			if !p.forwarding {
				p.refused(req.Type, ReasonForwardingNotAllowed, "the certificate does not permit port forwarding")
				req.Reply(false, nil)
				continue
			}
			if req.Type == "tcpip-forward" {
				var fw struct {
					Addr string
					Port uint32
				}
				gossh.Unmarshal(req.Payload, &fw)
				p.s.event(context.Background(), audit.TypeSessionForward, map[string]string{"login": p.login, "kind": "remote", "listen": bounded(fw.Addr) + ":" + strconv.Itoa(int(fw.Port))})
			}
			ok, payload, err := p.target.SendRequest(req.Type, req.WantReply, req.Payload)
			req.Reply(ok && err == nil, payload)
		case "keepalive@openssh.com", "no-more-sessions@openssh.com", "hostkeys-prove-00@openssh.com":
			req.Reply(false, nil)
		default:
			p.refused(req.Type, "not_supported", "the gateway does not "+describeRequest(req.Type))
			req.Reply(false, nil)
		}
	}
}

// targetGlobalRequests answers the target's global requests itself. In
// particular hostkeys-00@openssh.com, the target's real host keys, never
// reaches the client, which knows the target only by bastion's host
// certificate.
func (p *proxy) targetGlobalRequests(reqs <-chan *gossh.Request) {
	for req := range reqs {
		req.Reply(false, nil)
	}
}

// refused audits a refused request or channel.
func (p *proxy) refused(what, reason, detail string) {
	p.s.refusal(audit.TypeRequestDenied, map[string]string{"request": bounded(what), "reason": reason, "detail": bounded(detail), "login": p.login})
}

// clientChannel proxies a channel the client opened.
func (p *proxy) clientChannel(nc gossh.NewChannel) {
	typ := nc.ChannelType()
	var ch *channelState // set once the channel was relayed
	switch typ {
	case "session":
	case "direct-tcpip":
		var d directTCPIP
		if err := gossh.Unmarshal(nc.ExtraData(), &d); err != nil {
			nc.Reject(gossh.ConnectionFailed, "bastion: malformed direct-tcpip request")
			return
		}
		dest := net2(d.Host, d.Port)
		if !p.forwarding {
			p.s.refusal(audit.TypeChannelDenied, map[string]string{"request": typ, "forward": dest, "reason": ReasonForwardingNotAllowed, "login": p.login})
			nc.Reject(gossh.Prohibited, "bastion: your certificate does not permit port forwarding")
			return
		}
		p.s.event(context.Background(), audit.TypeSessionForward, map[string]string{"login": p.login, "kind": "local", "forward": dest})
		defer func(start time.Time) { p.forwardEnded(start, "local", dest, ch) }(p.s.g.now())
	default:
		p.s.refusal(audit.TypeChannelDenied, map[string]string{"request": bounded(typ), "reason": "not_supported", "login": p.login})
		nc.Reject(gossh.UnknownChannelType, fmt.Sprintf("bastion: %s channels are not allowed", bounded(typ)))
		return
	}
	tch, treqs, err := p.target.OpenChannel(typ, nc.ExtraData())
	if err != nil {
		if oe, ok := err.(*gossh.OpenChannelError); ok {
			nc.Reject(oe.Reason, oe.Message)
		} else {
			nc.Reject(gossh.ConnectionFailed, "bastion: the target refused the channel")
		}
		return
	}
	cch, creqs, err := nc.Accept()
	if err != nil {
		tch.Close()
		go gossh.DiscardRequests(treqs)
		return
	}
	ch = p.pipe(typ, cch, creqs, tch, treqs)
}

// targetChannel proxies a channel the target opened: only the
// connections of a remote forward the client asked for.
func (p *proxy) targetChannel(nc gossh.NewChannel) {
	typ := nc.ChannelType()
	var ch *channelState
	if typ == "forwarded-tcpip" && p.forwarding {
		var f struct {
			Addr       string
			Port       uint32
			OriginAddr string
			OriginPort uint32
		}
		gossh.Unmarshal(nc.ExtraData(), &f)
		dest := net2(f.Addr, f.Port) + " from " + net2(f.OriginAddr, f.OriginPort)
		defer func(start time.Time) { p.forwardEnded(start, "remote", dest, ch) }(p.s.g.now())
	}
	if typ != "forwarded-tcpip" || !p.forwarding {
		// auth-agent@openssh.com and x11 are never asked for, so never
		// legitimately opened.
		p.s.refusal(audit.TypeChannelDenied, map[string]string{"request": bounded(typ), "reason": "not_supported", "by": "target", "login": p.login})
		nc.Reject(gossh.Prohibited, "bastion: channel type not allowed")
		return
	}
	cch, creqs, err := p.client.OpenChannel(typ, nc.ExtraData())
	if err != nil {
		if oe, ok := err.(*gossh.OpenChannelError); ok {
			nc.Reject(oe.Reason, oe.Message)
		} else {
			nc.Reject(gossh.ConnectionFailed, "bastion: the client refused the channel")
		}
		return
	}
	tch, treqs, err := nc.Accept()
	if err != nil {
		cch.Close()
		go gossh.DiscardRequests(creqs)
		return
	}
	ch = p.pipe(typ, cch, creqs, tch, treqs)
}

// forwardEnded audits one forwarded connection closing: its kind, where
// it went (dest, bounded) and the bytes each way (up is client to
// target). ch is nil when it was never relayed.
func (p *proxy) forwardEnded(start time.Time, kind, dest string, ch *channelState) {
	if ch == nil {
		return
	}
	p.s.event(context.Background(), audit.TypeSessionForwardEnd, map[string]string{
		"login": p.login, "kind": kind, "forward": dest, "channel": strconv.Itoa(int(ch.id)),
		"bytes_up": strconv.FormatInt(ch.up.Load(), 10), "bytes_down": strconv.FormatInt(ch.down.Load(), 10),
		"duration_ms": strconv.FormatInt(p.s.g.now().Sub(start).Milliseconds(), 10),
	})
}

// channelState is what one proxied session channel has seen.
type channelState struct {
	id       uint32
	session  bool
	started  chan struct{} // closed once shell, exec or subsystem went to the target
	start    sync.Once
	exitSent chan struct{} // closed once exit-status or exit-signal went to the client
	exitOnce sync.Once
	noRecord atomic.Bool // a file transfer: payload is counted, not recorded
	pty      atomic.Bool // a terminal was asked for: input is typed at it
	sftp     atomic.Pointer[sftpHook]
	command  atomic.Pointer[string]
	kind     atomic.Pointer[string]
	up, down atomic.Int64 // payload bytes each way (up: client to target)
}

type sftpHook struct{ SFTPInspector }

func (c *channelState) begin() { c.start.Do(func() { close(c.started) }) }

// pipe relays one open channel both ways until both sides have closed
// it. cch is the client's side, tch the target's.
func (p *proxy) pipe(typ string, cch gossh.Channel, creqs <-chan *gossh.Request, tch gossh.Channel, treqs <-chan *gossh.Request) *channelState {
	st := &channelState{id: p.nextCh.Add(1), session: typ == "session", started: make(chan struct{}), exitSent: make(chan struct{})}
	if !st.session {
		st.begin()
	} else {
		// A lock or revocation that ends the connection says why here.
		defer p.s.cs.addNotifier(func(msg string) {
			io.WriteString(cch.Stderr(), msg)
			p.write(st.id, "e", []byte(msg), nil)
		})()
	}
	var wg sync.WaitGroup
	// Client to target. For a session, data waits until the program has
	// been asked for, so that it never arrives before its exec.
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-st.started
		err := p.copyData(tch, cch, st, "i")
		if err == nil {
			tch.CloseWrite()
		} else {
			tch.Close()
		}
	}()
	// Target to client: stdout and stderr, then EOF.
	outDone := make(chan struct{})
	wg.Add(2)
	var outWG sync.WaitGroup
	outWG.Add(2)
	go func() {
		defer wg.Done()
		defer outWG.Done()
		if err := p.copyData(cch, tch, st, "o"); err != nil {
			cch.Close()
		}
	}()
	go func() {
		defer wg.Done()
		defer outWG.Done()
		p.copyData(cch.Stderr(), tch.Stderr(), st, "e")
	}()
	targetClosed := make(chan struct{})
	go func() {
		outWG.Wait()
		if st.session {
			// OpenSSH clients close a channel once it is at EOF both
			// ways, and then drop an exit-status that comes after: so
			// the EOF waits for the exit (which sshd sends before its
			// EOF, but which x/crypto hands over apart from the data).
			grace := time.NewTimer(sessionEOFGrace)
			select {
			case <-st.exitSent:
			case <-targetClosed:
			case <-grace.C:
			}
			grace.Stop()
		}
		cch.CloseWrite()
		close(outDone)
	}()
	// Client's channel requests go to the target until the client closes
	// the channel; then the target's side is closed.
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.channelRequests(creqs, tch, cch, st)
		st.begin()
		tch.Close()
	}()
	// The target's requests come back until it closes the channel; the
	// client's side closes once all output has been delivered.
	p.targetRequests(treqs, cch, st)
	close(targetClosed)
	<-outDone
	cch.Close()
	wg.Wait()
	if h := st.sftp.Load(); h != nil {
		h.Close()
	}
	return st
}

// copyData copies src to dst, counting and recording as kind ("i" is
// client to target).
//
// Like copyCounted, it waits for data with a small buffer and reads up to
// bulkReadSize at a time only while reads keep filling the buffer: an idle
// session holds 1 KiB per direction (it held three 32 KiB buffers per
// channel before), and a bulk transfer reads the channel, which makes
// x/crypto send a window adjustment each time, once per several packets.
func (p *proxy) copyData(dst io.Writer, src io.Reader, st *channelState, kind string) error {
	idle := make([]byte, relayIdleBufferSize)
	var big *[]byte
	defer func() {
		if big != nil {
			bulkBuffers.Put(big)
		}
	}()
	for {
		buf := idle
		if big != nil {
			buf = *big
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			data := buf[:n]
			if kind == "i" {
				p.up.Add(int64(n))
				st.up.Add(int64(n))
			} else {
				p.down.Add(int64(n))
				st.down.Add(int64(n))
			}
			if h := st.sftp.Load(); h != nil {
				if kind == "i" {
					h.ClientToServer(data)
				} else {
					h.ServerToClient(data)
				}
			}
			// Input is recorded when it is not typed at a terminal (a
			// script piped to a shell or command: no prompt, no echo, no
			// password typed at it), and at a terminal only with
			// recording.input.
			if st.session && !st.noRecord.Load() && (kind != "i" || p.input || !st.pty.Load()) {
				var errw io.Writer
				if c, ok := dst.(gossh.Channel); ok && kind != "i" {
					errw = c.Stderr()
				}
				p.write(st.id, kind, data, errw)
			}
			if _, werr := dst.Write(data); werr != nil {
				return werr
			}
		}
		switch {
		case big == nil && n == len(buf):
			big = bulkBuffers.Get().(*[]byte)
		case big != nil && n < len(buf):
			bulkBuffers.Put(big)
			big = nil
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// forbiddenEnvPrefixes name variables that change how the target's
// programs load code: they never reach the target.
var forbiddenEnvPrefixes = []string{"LD_", "DYLD_", "BASH_FUNC_"}

// channelRequests relays the client's requests on one channel to the
// target, in order, answering each with the target's answer. Agent and
// X11 forwarding and loader-changing environment variables are refused
// here and audited.
func (p *proxy) channelRequests(reqs <-chan *gossh.Request, tch, cch gossh.Channel, st *channelState) {
	for req := range reqs {
		forward := true
		switch req.Type {
		case "env":
			var e struct{ Name, Value string }
			if err := gossh.Unmarshal(req.Payload, &e); err != nil {
				forward = false
				break
			}
			for _, pre := range forbiddenEnvPrefixes {
				if strings.HasPrefix(strings.ToUpper(e.Name), pre) {
					forward = false
					p.refused("env "+e.Name, ReasonEnvForbidden, "variables that change how programs load code never reach the target")
				}
			}
		case "auth-agent-req@openssh.com", "x11-req":
			forward = false
			p.refused(req.Type, "not_supported", "the gateway does not "+describeRequest(req.Type)+" in recorded sessions")
		case "pty-req":
			var pty struct {
				Term                      string
				Cols, Rows, Width, Height uint32
				Modes                     string
			}
			st.pty.Store(true)
			if gossh.Unmarshal(req.Payload, &pty) == nil {
				p.write(st.id, "r", fmt.Appendf(nil, "%dx%d", termSize(pty.Cols), termSize(pty.Rows)), cch.Stderr())
			}
		case "window-change":
			var wc struct{ Cols, Rows, Width, Height uint32 }
			if gossh.Unmarshal(req.Payload, &wc) == nil {
				p.write(st.id, "r", fmt.Appendf(nil, "%dx%d", termSize(wc.Cols), termSize(wc.Rows)), cch.Stderr())
			}
		case "shell", "exec", "subsystem":
			if !p.startProgram(req, st, cch) {
				forward = false
			}
		case "signal", "break", "eow@openssh.com", "keepalive@openssh.com", "xon-xoff":
		default:
			forward = false
			p.refused(req.Type, "not_supported", "the gateway does not relay "+req.Type+" requests")
		}
		if !forward {
			if req.WantReply {
				req.Reply(false, nil)
			}
			continue
		}
		ok, err := tch.SendRequest(req.Type, req.WantReply, req.Payload)
		if req.WantReply {
			req.Reply(ok && err == nil, nil)
		}
		if req.Type == "shell" || req.Type == "exec" || req.Type == "subsystem" {
			st.begin()
		}
	}
}

// startProgram audits (durably: fail closed) and marks in the recording
// the shell, command or subsystem the client asks for. It reports
// whether the request may go on.
func (p *proxy) startProgram(req *gossh.Request, st *channelState, cch gossh.Channel) bool {
	var line, kind string
	switch req.Type {
	case "shell":
		line, kind = "", "shell"
	case "exec":
		var c struct{ Command string }
		if gossh.Unmarshal(req.Payload, &c) != nil {
			return false
		}
		line, kind = c.Command, commandKind(c.Command)
	case "subsystem":
		var c struct{ Name string }
		if gossh.Unmarshal(req.Payload, &c) != nil {
			return false
		}
		line, kind = c.Name, "subsystem"
		if c.Name == "sftp" {
			kind = "sftp"
		}
	}
	f := map[string]string{"login": p.login, "request": req.Type, "kind": kind, "channel": strconv.Itoa(int(st.id))}
	if req.Type != "shell" {
		f["command"] = bounded(line)
	}
	if p.s.id.ForceCommand != "" {
		f["force_command"] = p.s.id.ForceCommand
	}
	if err := p.s.event(context.Background(), audit.TypeSessionExec, f); err != nil {
		io.WriteString(cch.Stderr(), "bastion: audit log unavailable; refusing to run an unrecorded command\r\n")
		return false
	}
	if kind != "shell" && kind != "exec" && kind != "subsystem" {
		// File transfers are audited with their byte counts (and SFTP
		// through the inspector), not stored byte for byte.
		st.noRecord.Store(true)
	}
	if kind == "sftp" {
		if in := p.s.sftpInspector(st.id); in != nil {
			st.sftp.Store(&sftpHook{in})
		}
	}
	st.command.Store(&line)
	st.kind.Store(&kind)
	p.write(st.id, "x", []byte(strings.TrimSpace(req.Type+" "+line)), cch.Stderr())
	return true
}

// targetRequests relays the target's requests on one channel to the
// client, in the order the target sent them. exit-status may come before
// the last output, as sshd sends it; clients read on until the channel
// closes. It must come before the EOF (see pipe): OpenSSH's
// connection-sharing master drops an exit status that follows EOF.
func (p *proxy) targetRequests(reqs <-chan *gossh.Request, cch gossh.Channel, st *channelState) {
	for req := range reqs {
		switch req.Type {
		case "exit-status", "exit-signal":
			p.exited(req, st)
		case "eow@openssh.com", "keepalive@openssh.com", "xon-xoff":
		default:
			if req.WantReply {
				req.Reply(false, nil)
			}
			continue
		}
		ok, err := cch.SendRequest(req.Type, req.WantReply, req.Payload)
		if req.WantReply {
			req.Reply(ok && err == nil, nil)
		}
		if req.Type == "exit-status" || req.Type == "exit-signal" {
			st.exitOnce.Do(func() { close(st.exitSent) })
		}
	}
}

// sessionEOFGrace is how long a session channel's EOF waits for the
// program's exit status after the target's output ended.
const sessionEOFGrace = 2 * time.Second

// exited audits how a channel's program ended.
func (p *proxy) exited(req *gossh.Request, st *channelState) {
	if !st.session {
		return
	}
	f := map[string]string{"login": p.login, "channel": strconv.Itoa(int(st.id))}
	if k := st.kind.Load(); k != nil {
		f["kind"] = *k
	}
	if c := st.command.Load(); c != nil && *c != "" {
		f["command"] = bounded(*c)
	}
	switch req.Type {
	case "exit-status":
		var e struct{ Status uint32 }
		if gossh.Unmarshal(req.Payload, &e) == nil {
			f["exit_status"] = strconv.FormatUint(uint64(e.Status), 10)
		}
	case "exit-signal":
		var e struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}
		if gossh.Unmarshal(req.Payload, &e) == nil {
			f["exit_signal"] = bounded(e.Signal)
		}
	}
	p.s.event(context.Background(), audit.TypeSessionExit, f)
}

// transferPrograms are the server sides of file transfer tools, by the
// kind they are audited as.
var transferPrograms = map[string]string{
	"scp":                "scp",
	"rsync":              "rsync",
	"git-upload-pack":    "git",
	"git-receive-pack":   "git",
	"git-upload-archive": "git",
	"sftp-server":        "sftp",
}

// commandKind classifies an exec command line: a file transfer tool's
// server side ("scp", "rsync", "git", "sftp") or "exec". A line is a
// transfer only if the shell would run that one program: any shell
// syntax that could run something else makes it "exec", so naming a
// transfer tool cannot keep a command out of the recording.
func commandKind(line string) string {
	if strings.ContainsAny(line, ";&|`$<>(){}\n\r\\*?[]!~#") {
		return "exec"
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return "exec"
	}
	prog := path.Base(fields[0])
	if strings.HasPrefix(fields[0], "/") && !strings.HasPrefix(fields[0], "/usr/") {
		return "exec"
	}
	if strings.Contains(fields[0], "/") && !strings.HasPrefix(fields[0], "/") {
		return "exec"
	}
	kind, ok := transferPrograms[prog]
	if !ok {
		return "exec"
	}
	switch kind {
	case "scp":
		// scp's server side: -t (to) or -f (from), never a remote-to-remote copy.
		if !slicesContainsAny(fields[1:], "-t", "-f") {
			return "exec"
		}
	case "rsync":
		if len(fields) < 2 || fields[1] != "--server" {
			return "exec"
		}
	}
	return kind
}

func slicesContainsAny(list []string, want ...string) bool {
	for _, l := range list {
		for _, w := range want {
			if l == w {
				return true
			}
		}
	}
	return false
}

// termSize clamps a requested terminal dimension as sshd does.
func termSize(n uint32) uint32 {
	return min(n, audit.MaxTermSize)
}

// net2 renders a host and port for audit fields.
func net2(host string, port uint32) string {
	return bounded(host) + ":" + strconv.FormatUint(uint64(port), 10)
}
