package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// dialFrom opens a TCP connection to addr from the loopback address src
// (127.0.0.0/8 is all local on Linux).
func dialFrom(t testing.TB, src, addr string) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}

// certClient logs in to the gateway with x/crypto as tg.user, holding a
// fresh certificate.
func (tg *testGateway) certClient(t testing.TB, keyID string) *gossh.Client {
	t.Helper()
	c := tg.client(ca.Request{KeyID: keyID})
	cl, err := tg.dialGateway(tg.user, gossh.PublicKeys(certSigner(t, c, tg.certOf(c))))
	if err != nil {
		t.Fatalf("log in as %s: %v", tg.user, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// sumField adds up a numeric field over events.
func sumField(evs []audit.Event, key string) int {
	n := 0
	for _, ev := range evs {
		v, _ := strconv.Atoi(ev.Fields[key])
		n += v
	}
	return n
}

// TestOneSourceCannotFillThePool: an attacker holding 300 idle TCP
// connections from 127.0.0.2 (no handshake, nothing ever fails, so
// nothing is banned) gets at most max_unauthenticated_per_source of them
// into the pool, and a user from 127.0.0.1 still logs in with OpenSSH.
// Before, 256 idle connections from one address locked everyone out until
// the handshake timeout. The drops are audited as aggregated
// connections.dropped records, not one per connection.
func TestOneSourceCannotFillThePool(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Limits.HandshakeTimeout = 60 * time.Second // the attacker's connections outlive the test
		c.Limits.ReportInterval = time.Second
	})
	const held = 300
	var conns []net.Conn
	for range held {
		conn, err := dialFrom(t, "127.0.0.2", tg.addr)
		if err != nil {
			t.Fatalf("attacker dial: %v", err)
		}
		conns = append(conns, conn)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	perSource := DefaultLimits().MaxUnauthenticatedPerSource
	deadline := time.Now().Add(10 * time.Second)
	for gaugeValue(t, tg, "bastion_connections_unauthenticated") < float64(perSource) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := gaugeValue(t, tg, "bastion_connections_unauthenticated"); n != float64(perSource) {
		t.Fatalf("%v unauthenticated connections from one source in the pool, want the per-source cap %d", n, perSource)
	}
	c := tg.client(ca.Request{KeyID: "legit"})
	res := c.Run(t.Context(), "ssh", tg.gatewayArgs(tg.user, "info")...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "you are "+tg.user) {
		t.Fatalf("a user from another source was locked out by one source's idle connections: %s", res)
	}
	// Every drop is counted, in a few records.
	deadline = time.Now().Add(10 * time.Second)
	var evs []audit.Event
	for {
		evs = tg.events(audit.TypeConnectionsDropped)
		if sumField(evs, DropPerSource) >= held-perSource || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := sumField(evs, DropPerSource); n != held-perSource {
		t.Errorf("connections.dropped counts %d per-source drops, want %d:\n%s", n, held-perSource, tg.dump())
	}
	if len(evs) > 5 {
		t.Errorf("%d connections.dropped records for one burst, want a few", len(evs))
	}
	if !strings.Contains(evs[0].Fields["sources"], "127.0.0.2=") {
		t.Errorf("the drop report does not name the source: %v", evs[0].Fields)
	}
}

// gaugeValue reads a gauge from the gateway's registry.
func gaugeValue(t testing.TB, tg *testGateway, name string) float64 {
	t.Helper()
	mfs, err := tg.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestFiftyParallelJumpsFromOneAddress: ansible with 50 forks, or 50
// scripts at once, all jump through the gateway from one address with the
// default limits.
func TestFiftyParallelJumpsFromOneAddress(t *testing.T) {
	var target *testbed.SSHD
	tg := startGateway(t, func(c *Config, d *Deps) {
		// A target whose own MaxStartups does not drop 50 at once.
		target = testbed.StartSSHD(t, testbed.SSHDConfig{
			TrustedUserCAKeys: ca.ExportLines(ca.UserCA, d.Authority.TrustedKeys(ca.UserCA), ""),
			Extra:             "MaxStartups 200\n",
		})
		c.Access = append(c.Access, AccessRule{Principals: []string{testbed.LoginUser(t)}, Hosts: []string{"127.0.0.1"}, Ports: []int{target.Port}})
	})
	c := tg.client(ca.Request{KeyID: "ansible"})
	c.TrustHostKey(target.Addr, target.HostKeyPub)
	const parallel = 50
	results := make([]testbed.Result, parallel)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	for i := range parallel {
		wg.Go(func() {
			results[i] = c.Run(ctx, "ssh", "-J", tg.user+"@"+tg.addr, "-p", strconv.Itoa(target.Port), tg.user+"@127.0.0.1", "echo", "ok-"+strconv.Itoa(i))
		})
	}
	wg.Wait()
	failed := 0
	for i, res := range results {
		if res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "ok-"+strconv.Itoa(i) {
			failed++
			if failed <= 3 {
				t.Errorf("jump %d of %d failed: %s", i, parallel, res)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d parallel jumps from one address failed", failed, parallel)
	}
}

// TestStartupsEarlyDrop: past start, new connections are refused with a
// probability rising from rate % to 100 % at full, as sshd's MaxStartups.
func TestStartupsEarlyDrop(t *testing.T) {
	l := DefaultLimits()
	l.UnauthenticatedDropStart, l.UnauthenticatedDropRate, l.MaxUnauthenticated, l.MaxUnauthenticatedPerSource = 10, 30, 20, 100
	s := newStartups(l)
	roll := 0
	s.roll = func() int { return roll }
	src := func(i int) (a [4]byte) { return [4]byte{192, 0, 2, byte(i)} }
	for i := range 10 {
		if r := s.admit(v4addr(src(i))); r != "" {
			t.Fatalf("connection %d refused (%s) below start", i, r)
		}
	}
	// At start the probability is rate: a roll of 29 drops, 30 passes.
	roll = 29
	if r := s.admit(v4addr(src(10))); r != DropEarly {
		t.Fatalf("roll 29 at start: %q, want an early drop", r)
	}
	roll = 30
	if r := s.admit(v4addr(src(10))); r != "" {
		t.Fatalf("roll 30 at start: refused %q", r)
	}
	// Halfway to full (15 of 20): 30 + 70*5/10 = 65 %.
	for i := 11; i < 15; i++ {
		roll = 99
		if r := s.admit(v4addr(src(i))); r != "" {
			t.Fatalf("roll 99 refused at %d", i)
		}
	}
	roll = 64
	if r := s.admit(v4addr(src(15))); r != DropEarly {
		t.Fatalf("roll 64 at 15/20: %q, want a drop", r)
	}
	roll = 65
	if r := s.admit(v4addr(src(15))); r != "" {
		t.Fatalf("roll 65 at 15/20: refused %q", r)
	}
	for i := 16; i < 20; i++ {
		roll = 99
		s.admit(v4addr(src(i)))
	}
	roll = 99
	if r := s.admit(v4addr(src(30))); r != DropFull {
		t.Fatalf("at full: %q, want %q", r, DropFull)
	}
	s.release(v4addr(src(0)))
	if r := s.admit(v4addr(src(0))); r == DropFull {
		t.Fatal("a released slot was not freed")
	}
	f := s.report()
	if f["total"] != "3" || f[DropEarly] != "2" || f[DropFull] != "1" {
		t.Errorf("report %v", f)
	}
	if s.report() != nil {
		t.Error("a second report repeats the counts")
	}
}

func v4addr(b [4]byte) netip.Addr { return netip.AddrFrom4(b) }

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestChannelsPerConnection: one connection may hold MaxSessions open
// channels (64 by default: ControlMaster users multiplex dozens) and no
// more; the login user holds MaxLoginSessions. Before, a connection could
// open channels without limit.
func TestChannelsPerConnection(t *testing.T) {
	lg := startLoginGateway(t)
	tg := lg.testGateway
	cl := tg.certClient(t, "many-channels")
	max := DefaultLimits().MaxSessions
	for i := range max {
		ch, reqs, err := cl.OpenChannel("session", nil)
		if err != nil {
			t.Fatalf("channel %d of %d refused: %v", i+1, max, err)
		}
		go gossh.DiscardRequests(reqs)
		defer ch.Close()
	}
	_, _, err := cl.OpenChannel("session", nil)
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage || !strings.Contains(oce.Message, "too many open channels") {
		t.Fatalf("channel %d: %v, want a refusal naming the cap", max+1, err)
	}
	tg.waitEvent(t, audit.TypeChannelDenied, map[string]string{"reason": ReasonTooManyChannels})

	// The login user: a plain key, a handful of channels.
	signer := testbed.NewSigner(t)
	lc, err := tg.dialGateway(LoginUser, gossh.PublicKeys(signer))
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	maxLogin := DefaultLimits().MaxLoginSessions
	for i := range maxLogin {
		if _, _, err := lc.OpenChannel("session", nil); err != nil {
			t.Fatalf("login channel %d of %d refused: %v", i+1, maxLogin, err)
		}
	}
	if _, _, err := lc.OpenChannel("session", nil); !errors.As(err, &oce) || oce.Reason != gossh.ResourceShortage {
		t.Fatalf("login channel %d: %v, want a refusal", maxLogin+1, err)
	}
}

// TestLoginConnectionsPerSource: one source holds at most
// MaxLoginConnectionsPerSource login connections at once; the next is told
// why and closed, and another source is unaffected.
func TestLoginConnectionsPerSource(t *testing.T) {
	lg := startLoginGateway(t)
	tg := lg.testGateway
	max := DefaultLimits().MaxLoginConnectionsPerSource
	dialLogin := func(src string) (*gossh.Client, error) {
		conn, err := dialFrom(t, src, tg.addr)
		if err != nil {
			return nil, err
		}
		c, chans, reqs, err := gossh.NewClientConn(conn, tg.addr, &gossh.ClientConfig{
			User: LoginUser, Auth: []gossh.AuthMethod{gossh.PublicKeys(testbed.NewSigner(t))},
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
		})
		if err != nil {
			conn.Close()
			return nil, err
		}
		cl := gossh.NewClient(c, chans, reqs)
		t.Cleanup(func() { cl.Close() })
		return cl, nil
	}
	for i := range max {
		cl, err := dialLogin("127.0.0.3")
		if err != nil {
			t.Fatalf("login connection %d: %v", i+1, err)
		}
		if _, _, err := cl.OpenChannel("session", nil); err != nil {
			t.Fatalf("login connection %d's session: %v", i+1, err)
		}
	}
	cl, err := dialLogin("127.0.0.3")
	if err != nil {
		t.Fatalf("login connection %d: %v", max+1, err)
	}
	_, _, err = cl.OpenChannel("session", nil)
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || !strings.Contains(oce.Message, "too many login connections") {
		t.Fatalf("login connection %d's session: %v, want a refusal naming the cap", max+1, err)
	}
	done := make(chan error, 1)
	go func() { done <- cl.Wait() }()
	select {
	case <-done:
	case <-time.After(loginRefuseGrace + 5*time.Second):
		t.Fatal("the login connection over the cap was not closed")
	}
	tg.waitEvent(t, audit.TypeRequestDenied, map[string]string{"reason": ReasonTooManyLogins, "remote": "127.0.0.3"})
	other, err := dialLogin("127.0.0.4")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.OpenChannel("session", nil); err != nil {
		t.Fatalf("another source's login was refused: %v", err)
	}
}

// TestSessionInputIsBounded: a connection opens 64 session channels and
// writes 2 MiB into each before any exec (x/crypto's window lets it). The
// gateway must not hold that: each channel is closed once its unread input
// passes MaxSessionInput. Before, the gateway held all of it (about
// 130 MiB of heap for one connection).
func TestSessionInputIsBounded(t *testing.T) {
	tg := startGateway(t)
	cl := tg.certClient(t, "flood")
	const channels, perChannel = 64, 2 << 20
	data := make([]byte, perChannel)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var closed sync.WaitGroup
	var chans []gossh.Channel
	for range channels {
		ch, reqs, err := cl.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		go gossh.DiscardRequests(reqs)
		chans = append(chans, ch)
		wg.Go(func() { ch.Write(data) })
		closed.Go(func() {
			buf := make([]byte, 1024)
			for {
				if _, err := ch.Read(buf); err != nil {
					return
				}
			}
		})
	}
	ended := make(chan struct{})
	go func() { wg.Wait(); closed.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(60 * time.Second):
		// Today's gateway accepts every byte and keeps the channels open.
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap after %d channels x %d bytes of unread input: %+d KiB", channels, perChannel, grew/1024)
	if grew > 24<<20 {
		t.Errorf("the gateway holds %d MiB of input nobody reads", grew>>20)
	}
	select {
	case <-ended:
	default:
		t.Error("the flooded session channels were not closed")
	}
	for _, ch := range chans {
		ch.Close()
	}
	ev := tg.waitEvent(t, audit.TypeChannelDenied, map[string]string{"reason": ReasonInputLimit})
	_ = ev
}

// TestRepeatedRefusalsAggregate: 2000 tcpip-forward requests on one
// connection write a few records, the repeats as one with a count.
// Before, each was an fsync'd record (2000 in under 2 s).
func TestRepeatedRefusalsAggregate(t *testing.T) {
	tg := startGateway(t)
	cl := tg.certClient(t, "forwarder")
	const n = 2000
	for i := range n {
		payload := gossh.Marshal(struct {
			Addr string
			Port uint32
		}{"127.0.0.1", uint32(10000 + i%100)})
		if ok, _, err := cl.SendRequest("tcpip-forward", true, payload); err != nil || ok {
			t.Fatalf("tcpip-forward %d: ok=%v err=%v", i, ok, err)
		}
	}
	got := len(tg.events(audit.TypeRequestDenied))
	t.Logf("%d tcpip-forward requests: %d request.refused records while the connection is open", n, got)
	if got > 5 {
		t.Errorf("%d request.refused records while the connection is open, want a few", got)
	}
	cl.Close()
	deadline := time.Now().Add(10 * time.Second)
	for sumRefused(tg) < n && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := sumRefused(tg); got != n {
		t.Errorf("the records count %d refusals, want %d:\n%s", got, n, tg.dump())
	}
	if evs := tg.events(audit.TypeRequestDenied); len(evs) > 5 {
		t.Errorf("%d request.refused records for %d refusals", len(evs), n)
	}
}

// sumRefused counts the refusals request.refused records stand for.
func sumRefused(tg *testGateway) int {
	n := 0
	for _, ev := range tg.events(audit.TypeRequestDenied) {
		if c, err := strconv.Atoi(ev.Fields["count"]); err == nil {
			n += c
		} else {
			n++
		}
	}
	return n
}

// TestHugeNamesAreBounded: 100 kB user names, request types, channel
// types, exec command lines, env names and jump host names reach the
// audit log and the debug log cut to a bounded length, so audit.db grows
// by kilobytes, not megabytes. Before, 200 requests with a 100 kB type
// grew audit.db by 32 MiB.
func TestHugeNamesAreBounded(t *testing.T) {
	var logs syncBuffer
	tg := startGateway(t, withoutBans, func(c *Config, _ *Deps) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	huge := func(c byte) string { return strings.Repeat(string(c), 100_000) }
	sizeBefore := fileSize(t, tg.layout.AuditDB())

	// A user name (refused: no such certificate principal).
	c := tg.client(ca.Request{KeyID: "huge"})
	signer := certSigner(t, c, tg.certOf(c))
	for range 5 {
		if cl, err := tg.dialGateway(huge('u'), gossh.PublicKeys(signer)); err == nil {
			cl.Close()
			t.Fatal("a 100 kB user name logged in")
		}
	}
	for range 20 {
		cl := tg.certClient(t, "huge-ok")
		for i := range 10 {
			name := huge('r') + strconv.Itoa(i)
			cl.SendRequest(name, true, nil)
			cl.OpenChannel(huge('c')+strconv.Itoa(i), nil)
			cl.OpenChannel("direct-tcpip", gossh.Marshal(directTCPIP{Host: huge('h') + strconv.Itoa(i), Port: 22, OriginAddr: huge('o'), OriginPort: 1}))
		}
		ch, reqs, err := cl.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		go gossh.DiscardRequests(reqs)
		ch.SendRequest("env", true, gossh.Marshal(struct{ Name, Value string }{huge('e'), huge('v')}))
		ch.SendRequest("subsystem", true, gossh.Marshal(struct{ Name string }{huge('s')}))
		ch.SendRequest("exec", true, gossh.Marshal(struct{ Command string }{"info " + huge('x')}))
		ch2, reqs2, err := cl.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		go gossh.DiscardRequests(reqs2)
		ch2.SendRequest("exec", true, gossh.Marshal(struct{ Command string }{"info " + huge('x')[:7000]}))
		ch2.Close()
		ch.Close()
		cl.Close()
	}
	time.Sleep(500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tg.gw.Shutdown(ctx) // every pending record is written
	grew := fileSize(t, tg.layout.AuditDB()) - sizeBefore
	t.Logf("audit.db grew by %d KiB", grew/1024)
	if grew > 2<<20 {
		t.Errorf("audit.db grew by %d KiB for refused 100 kB names", grew/1024)
	}
	var longest int
	var where string
	_ = tg.store.Iterate(context.Background(), audit.Filter{}, func(ev audit.Event) error {
		for k, v := range ev.Fields {
			if len(v) > longest {
				longest, where = len(v), ev.Type+" "+k
			}
		}
		if len(ev.Actor) > longest {
			longest, where = len(ev.Actor), ev.Type+" actor"
		}
		return nil
	})
	if longest > maxRecordedString+32 {
		t.Errorf("a %d-byte string reached the audit log (%s)", longest, where)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if len(line) > 8*maxRecordedString {
			t.Errorf("a %d-byte log line: %.200s...", len(line), line)
			break
		}
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

var _ = fmt.Sprint
