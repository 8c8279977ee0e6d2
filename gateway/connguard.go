package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
)

// Refusal reasons of the per-connection limits.
const (
	ReasonTooManyChannels = "too_many_channels"
	ReasonTooManyLogins   = "too_many_logins"
	ReasonInputLimit      = "input_limit"
	ReasonCommandTooLong  = "command_too_long"
)

// maxRefusalKinds bounds the distinct refusals (type, reason, what) of one
// connection that are recorded at once; repeats, and kinds past this, are
// counted and recorded together (see recordRefusal).
const maxRefusalKinds = 8

// loginRefuseGrace is how long an authenticated login connection over the
// per-source cap stays open: long enough to tell its client why.
const loginRefuseGrace = 5 * time.Second

// connGuard is one connection's share of the gateway's limits: its open
// channels, its login slot, and the refusal records it has pending.
type connGuard struct {
	channels  atomic.Int32
	loginSlot atomic.Bool // holds a slot of loginConns
	overLogin atomic.Bool // authenticated as login over the per-source cap

	mu      sync.Mutex
	written map[string]bool        // refusal kinds recorded at once
	pending map[string]*refusalAgg // repeats waiting for the next flush
	timer   *time.Timer
	ended   bool
}

// refusalAgg is a refusal and how often it repeated since the last write.
type refusalAgg struct {
	ev    audit.Event
	count int
}

func newConnGuard() *connGuard {
	return &connGuard{written: map[string]bool{}, pending: map[string]*refusalAgg{}}
}

// recordRefusal writes a refusal record for cs, bounded per connection:
// the first of each kind (up to maxRefusalKinds kinds) at once, repeats
// as one record with a "count" at most once per ReportInterval and at the
// connection's end. A client that sends thousands of refused requests
// costs a handful of records.
func (g *Gateway) recordRefusal(cs *connState, ev audit.Event) {
	gd := cs.guard
	if gd == nil {
		g.record(context.Background(), ev)
		return
	}
	what := ev.Fields["request"]
	if what == "" {
		what = ev.Fields["target"]
	}
	key := ev.Type + "\x00" + ev.Fields["reason"] + "\x00" + boundString(what, 64)
	gd.mu.Lock()
	if !gd.written[key] && len(gd.written) < maxRefusalKinds && !gd.ended {
		gd.written[key] = true
		gd.mu.Unlock()
		g.record(context.Background(), ev)
		return
	}
	if !gd.written[key] {
		key = ev.Type + "\x00(other)"
	}
	agg := gd.pending[key]
	if agg == nil {
		agg = &refusalAgg{ev: ev}
		gd.pending[key] = agg
	}
	agg.count++
	if gd.timer == nil && !gd.ended {
		gd.timer = time.AfterFunc(g.cfg.Limits.ReportInterval, func() { g.flushRefusals(cs) })
	}
	gd.mu.Unlock()
}

// flushRefusals writes the repeated refusals counted so far.
func (g *Gateway) flushRefusals(cs *connState) {
	gd := cs.guard
	gd.mu.Lock()
	pending := gd.pending
	gd.pending = map[string]*refusalAgg{}
	gd.timer = nil
	gd.mu.Unlock()
	for _, agg := range pending {
		ev := agg.ev
		f := make(map[string]string, len(ev.Fields)+2)
		for k, v := range ev.Fields {
			f[k] = v
		}
		f["count"] = strconv.Itoa(agg.count)
		f["repeated"] = "true"
		ev.Fields = f
		g.record(context.Background(), ev)
	}
}

// connEnded runs once when a connection's socket closes: its login slot is
// freed and its pending refusals are written.
func (g *Gateway) connEnded(cs *connState) {
	gd := cs.guard
	if gd == nil {
		return
	}
	if gd.loginSlot.CompareAndSwap(true, false) {
		g.loginConns.release(cs.remote)
	}
	gd.mu.Lock()
	gd.ended = true
	if gd.timer != nil {
		gd.timer.Stop()
	}
	gd.mu.Unlock()
	g.flushRefusals(cs)
}

// authenticatedAs runs when a connection authenticates: a login
// connection takes a slot of its source's login connections, or, over the
// cap, is refused its channels and closed shortly.
func (g *Gateway) authenticatedAs(cs *connState, user string) {
	if user != LoginUser || cs.guard == nil {
		return
	}
	if g.loginConns.acquire(cs.remote) {
		cs.guard.loginSlot.Store(true)
		return
	}
	cs.guard.overLogin.Store(true)
	g.recordRefusal(cs, audit.Event{Type: audit.TypeRequestDenied, Actor: LoginUser, Session: cs.id, Fields: map[string]string{
		"request": "login", "reason": ReasonTooManyLogins, "remote": cs.remote.String(), "conn": cs.id,
		"detail": fmt.Sprintf("more than %d login connections at once from this source", g.cfg.Limits.MaxLoginConnectionsPerSource),
	}})
	time.AfterFunc(loginRefuseGrace, func() { cs.kill(ReasonTooManyLogins) })
}

// limitChannel wraps a channel handler with the per-connection channel
// cap (MaxSessions; MaxLoginSessions for the login user) and the login
// connection cap. Handlers run for as long as their channel is open.
func (g *Gateway) limitChannel(h gliderssh.ChannelHandler) gliderssh.ChannelHandler {
	return func(srv *gliderssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
		cs := stateOf(ctx)
		if cs == nil || cs.guard == nil {
			h(srv, conn, nc, ctx)
			return
		}
		max := g.cfg.Limits.MaxSessions
		if conn.User() == LoginUser {
			max = g.cfg.Limits.MaxLoginSessions
			if cs.guard.overLogin.Load() {
				nc.Reject(gossh.ResourceShortage, fmt.Sprintf("bastion: too many login connections from %s (at most %d at once): finish or close the others, then try again",
					cs.remote, g.cfg.Limits.MaxLoginConnectionsPerSource))
				return
			}
		}
		if n := cs.guard.channels.Add(1); int(n) > max {
			cs.guard.channels.Add(-1)
			g.recordRefusal(cs, audit.Event{Type: audit.TypeChannelDenied, Actor: conn.User(), Session: cs.id, Fields: map[string]string{
				"request": nc.ChannelType(), "reason": ReasonTooManyChannels, "remote": cs.remote.String(), "conn": cs.id,
				"detail": fmt.Sprintf("more than %d open channels on one connection", max),
			}})
			nc.Reject(gossh.ResourceShortage, fmt.Sprintf("bastion: too many open channels on this connection (at most %d): close some, or open another connection", max))
			return
		}
		defer cs.guard.channels.Add(-1)
		h(srv, conn, nc, ctx)
	}
}

// loginConns counts the live login connections of each source. It holds
// only sources with a live login connection, so it is bounded by them.
type loginConns struct {
	max int

	mu    sync.Mutex
	bySrc map[netip.Prefix]int
}

func newLoginConns(max int) *loginConns {
	return &loginConns{max: max, bySrc: map[netip.Prefix]int{}}
}

func (l *loginConns) acquire(a netip.Addr) bool {
	k := sourceKey(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bySrc[k] >= l.max {
		return false
	}
	l.bySrc[k]++
	return true
}

func (l *loginConns) release(a netip.Addr) {
	k := sourceKey(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.bySrc[k] - 1; n > 0 {
		l.bySrc[k] = n
	} else {
		delete(l.bySrc, k)
	}
}

// errInputLimit ends a session whose unread input passed MaxSessionInput.
var errInputLimit = errors.New("gateway: too much unread input")

// boundedInput is a session channel's input as its command sees it. A
// goroutine drains the channel at once (so x/crypto's 2 MiB window never
// fills with data nobody reads) into a buffer of at most max bytes; input
// past that, before the command runs or that the command does not read,
// ends the session.
type boundedInput struct {
	max int

	mu   sync.Mutex
	cond *sync.Cond
	buf  []byte
	err  error
}

// boundStdin starts draining ch; over is called (once) if the unread
// input passes max.
func boundStdin(ch io.Reader, max int, over func()) *boundedInput {
	b := &boundedInput{max: max}
	b.cond = sync.NewCond(&b.mu)
	go func() {
		tmp := make([]byte, 4096)
		for {
			n, err := ch.Read(tmp)
			b.mu.Lock()
			if n > 0 && len(b.buf)+n > b.max {
				b.err, b.buf = errInputLimit, nil
				b.mu.Unlock()
				b.cond.Broadcast()
				over()
				return
			}
			b.buf = append(b.buf, tmp[:n]...)
			if err != nil {
				b.err = err
			}
			b.mu.Unlock()
			b.cond.Broadcast()
			if err != nil {
				return
			}
		}
	}()
	return b
}

// Read reads what the client sent, waiting for it.
func (b *boundedInput) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.buf) == 0 && b.err == nil {
		b.cond.Wait()
	}
	if len(b.buf) == 0 {
		return 0, b.err
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	if len(b.buf) == 0 {
		b.buf = nil
	}
	return n, nil
}

// sessionInput is the bounded input of a session channel on the gateway:
// past MaxSessionInput unread bytes the channel is closed and the
// refusal recorded.
func (g *Gateway) sessionInput(cs *connState, user string, ch gossh.Channel) io.Reader {
	max := g.cfg.Limits.MaxSessionInput
	return boundStdin(ch, max, func() {
		g.recordRefusal(cs, audit.Event{Type: audit.TypeChannelDenied, Actor: user, Session: cs.id, Fields: map[string]string{
			"request": "session", "reason": ReasonInputLimit, "remote": cs.remote.String(), "conn": cs.id,
			"detail": fmt.Sprintf("more than %d bytes of input nobody read", max),
		}})
		// Tell the client why, unless it does not read (a full window
		// would block the write): the close does not wait for that.
		told := make(chan struct{})
		go func() {
			defer close(told)
			fmt.Fprintf(ch.Stderr(), "bastion: closing the session: more than %d bytes of input that no command reads\r\n", max)
		}()
		select {
		case <-told:
		case <-time.After(time.Second):
		}
		ch.Close()
	})
}
