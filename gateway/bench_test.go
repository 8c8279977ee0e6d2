package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// The benchmarks run the gateway, an x/crypto client and a tiny target in
// one process, so each figure includes the client's and the target's CPU
// as well as the gateway's; bench/jump.sh measures the gateway alone
// against OpenSSH with real clients.

// benchChunk is what one benchmark op moves through a jump.
const benchChunk = 64 << 10

// BenchmarkJumpThroughput moves bytes through the gateway's relay over an
// open direct-tcpip channel, up (client to target) and down, for each
// cipher the gateway offers.
func BenchmarkJumpThroughput(b *testing.B) {
	target := startBenchTarget(b)
	bg := startBenchGateway(b, target.port)
	for _, cipher := range ciphers {
		name := strings.TrimSuffix(cipher, "@openssh.com")
		b.Run(name+"/up", func(b *testing.B) {
			client := bg.dial(b, gossh.Config{Ciphers: []string{cipher}})
			defer client.Close()
			conn := bg.jump(b, client, target.port)
			if _, err := conn.Write(benchRequest(benchModeDiscard, 0)); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, benchChunk)
			b.SetBytes(benchChunk)
			b.ResetTimer()
			for range b.N {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			// Done when the target has it all, not when it is buffered.
			if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				b.Fatal(err)
			}
			var got [8]byte
			if _, err := io.ReadFull(conn, got[:]); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if n := binary.BigEndian.Uint64(got[:]); n != uint64(b.N)*benchChunk {
				b.Fatalf("the target received %d bytes, want %d", n, b.N*benchChunk)
			}
			conn.Close()
		})
		b.Run(name+"/down", func(b *testing.B) {
			client := bg.dial(b, gossh.Config{Ciphers: []string{cipher}})
			defer client.Close()
			conn := bg.jump(b, client, target.port)
			want := int64(b.N) * benchChunk
			b.SetBytes(benchChunk)
			b.ResetTimer()
			if _, err := conn.Write(benchRequest(benchModeSource, uint64(want))); err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(io.Discard, conn, make([]byte, benchChunk))
			b.StopTimer()
			if err != nil || n != want {
				b.Fatalf("received %d bytes (%v), want %d", n, err, want)
			}
			conn.Close()
		})
	}
}

// BenchmarkAuthenticate is a full connection set-up per op: TCP, key
// exchange, host key check and certificate authentication; "jump" also
// opens a direct-tcpip channel, which makes auth.ok and session.start
// durable in the audit log first, and closes it.
func BenchmarkAuthenticate(b *testing.B) {
	target := startBenchTarget(b)
	bg := startBenchGateway(b, target.port)
	for _, c := range []struct {
		name string
		kex  string
		jump bool
	}{
		{"mlkem768x25519", gossh.KeyExchangeMLKEM768X25519, false},
		{"curve25519", gossh.KeyExchangeCurve25519, false}, // what OpenSSH 9.2 clients pick
		{"curve25519/jump", gossh.KeyExchangeCurve25519, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			cfg := gossh.Config{KeyExchanges: []string{c.kex}}
			for b.Loop() {
				client := bg.dial(b, cfg)
				if c.jump {
					conn := bg.jump(b, client, target.port)
					if _, err := conn.Write(benchRequest(benchModeSource, 1)); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
						b.Fatal(err)
					}
					conn.Close()
				}
				client.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// benchGateway is a gateway in this process with a client certificate.
type benchGateway struct {
	addr    string
	hostKey gossh.PublicKey
	signer  gossh.Signer
}

// benchUser is the principal of the benchmark certificate; the gateway
// needs no account for it.
const benchUser = "bench"

// startBenchGateway starts a gateway on loopback whose policy lets
// benchUser reach 127.0.0.1:port.
func startBenchGateway(b *testing.B, port int) *benchGateway {
	b.Helper()
	return startBenchGatewayWith(b, port, nil)
}

// startBenchGatewayWith is startBenchGateway with a hook that can change
// the configuration (for example turn on the login service) once the CA
// exists.
func startBenchGatewayWith(b *testing.B, port int, configure func(*Config, *ca.Authority), deps ...func(*Deps)) *benchGateway {
	b.Helper()
	layout := ca.Layout{DataDir: b.TempDir()}
	if _, _, err := ca.Init(layout, ca.InitOptions{}); err != nil {
		b.Fatal(err)
	}
	store, err := audit.Open(layout.AuditDB(), audit.Options{})
	if err != nil {
		b.Fatal(err)
	}
	auth, err := ca.New(ca.Config{Layout: layout}, store)
	if err != nil {
		b.Fatal(err)
	}
	limits := DefaultLimits()
	limits.BanAfterFailures = 0
	cfg := Config{
		Listen:      "127.0.0.1:0",
		HostKeyPath: layout.DataDir + "/gateway/ssh_host_ed25519_key",
		HostNames:   []string{"127.0.0.1"},
		Access:      []AccessRule{{Principals: []string{benchUser}, Hosts: []string{"127.0.0.1"}, Ports: []int{port}}},
		Limits:      limits,
	}
	if configure != nil {
		configure(&cfg, auth)
	}
	d := Deps{Authority: auth, Audit: store}
	for _, f := range deps {
		f(&d)
	}
	gw, err := New(cfg, d)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		gw.Shutdown(ctx)
		<-served
		store.Close()
	})

	key := testbed.NewSigner(b)
	cert, err := auth.Sign(b.Context(), ca.Request{Kind: ca.UserCA, Key: key.PublicKey(), KeyID: "bench", Principals: []string{benchUser}})
	if err != nil {
		b.Fatal(err)
	}
	signer, err := gossh.NewCertSigner(cert, key)
	if err != nil {
		b.Fatal(err)
	}
	return &benchGateway{addr: ln.Addr().String(), hostKey: gw.HostKeys()[0].PublicKey(), signer: signer}
}

// dial connects and authenticates to the gateway with algorithms from cfg
// (x/crypto's defaults where empty).
func (bg *benchGateway) dial(b *testing.B, cfg gossh.Config) *gossh.Client {
	b.Helper()
	client, err := gossh.Dial("tcp", bg.addr, &gossh.ClientConfig{
		Config:            cfg,
		User:              benchUser,
		Auth:              []gossh.AuthMethod{gossh.PublicKeys(bg.signer)},
		HostKeyCallback:   gossh.FixedHostKey(bg.hostKey),
		HostKeyAlgorithms: []string{gossh.KeyAlgoED25519},
		Timeout:           10 * time.Second,
	})
	if err != nil {
		b.Fatal(err)
	}
	return client
}

// jump opens a direct-tcpip channel to 127.0.0.1:port through the gateway.
func (bg *benchGateway) jump(b *testing.B, client *gossh.Client, port int) net.Conn {
	b.Helper()
	conn, err := client.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		b.Fatal(err)
	}
	return conn
}

// The benchmark target reads a request, a mode byte and a length, then
// either discards what follows and answers with the byte count once the
// sender half-closes, or sends length bytes and closes.
const (
	benchModeDiscard = 'd'
	benchModeSource  = 's'
)

func benchRequest(mode byte, n uint64) []byte {
	req := make([]byte, 9)
	req[0] = mode
	binary.BigEndian.PutUint64(req[1:], n)
	return req
}

type benchTarget struct{ port int }

func startBenchTarget(b *testing.B) *benchTarget {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go serveBenchTarget(conn)
		}
	}()
	return &benchTarget{port: ln.Addr().(*net.TCPAddr).Port}
}

func serveBenchTarget(conn net.Conn) {
	defer conn.Close()
	var req [9]byte
	if _, err := io.ReadFull(conn, req[:]); err != nil {
		return
	}
	n := binary.BigEndian.Uint64(req[1:])
	switch req[0] {
	case benchModeDiscard:
		got, err := io.CopyBuffer(io.Discard, conn, make([]byte, benchChunk))
		if err != nil && !errors.Is(err, net.ErrClosed) {
			return
		}
		var resp [8]byte
		binary.BigEndian.PutUint64(resp[:], uint64(got))
		conn.Write(resp[:])
	case benchModeSource:
		buf := make([]byte, benchChunk)
		for n > 0 {
			chunk := min(n, uint64(len(buf)))
			if _, err := conn.Write(buf[:chunk]); err != nil {
				return
			}
			n -= chunk
		}
	}
}
