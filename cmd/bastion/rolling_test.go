package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rrProxy is a TCP load balancer for tests, as HAProxy is configured in
// the compose demo: each connection goes to the next healthy backend
// (GET /healthz answers 200, checked every 100ms) round robin, and to the
// one after when a backend refuses the connection.
type rrProxy struct {
	ln       net.Listener
	backends []string
	health   []string
	healthy  []atomic.Bool
	next     atomic.Uint64
	wg       sync.WaitGroup
}

func startRRProxy(t *testing.T, backends, health []string) *rrProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &rrProxy{ln: ln, backends: backends, health: health, healthy: make([]atomic.Bool, len(backends))}
	done := make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		hc := &http.Client{Timeout: time.Second}
		for {
			for i, u := range p.health {
				resp, err := hc.Get("http://" + u + "/healthz")
				p.healthy[i].Store(err == nil && resp.StatusCode == http.StatusOK)
				if err == nil {
					resp.Body.Close()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() { close(done); ln.Close(); p.wg.Wait() })
	return p
}

func (p *rrProxy) serve(c net.Conn) {
	defer c.Close()
	start := p.next.Add(1)
	var up net.Conn
	for _, healthyOnly := range []bool{true, false} {
		for i := range len(p.backends) {
			j := (int(start) + i) % len(p.backends)
			if healthyOnly && !p.healthy[j].Load() {
				continue
			}
			var err error
			if up, err = net.DialTimeout("tcp", p.backends[j], 2*time.Second); err == nil {
				break
			}
		}
		if up != nil {
			break
		}
	}
	if up == nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// TestClusterRollingRestart restarts every gateway of a two-gateway
// cluster (real `bastion serve` processes on a 3-member etcd), one at a
// time with SIGTERM, behind a round-robin TCP balancer that health-checks
// /healthz, while a client makes new `ssh -J … true` jumps through the
// balancer back to back: every jump succeeds, before, during and after
// each restart. Without cluster.drain (a stopping gateway answering 503
// before it closes its listener) a jump that reached a gateway as it
// stopped was dropped before the SSH banner.
func TestClusterRollingRestart(t *testing.T) {
	env := startClusterGateways(t, 2)
	var addrs, health []string
	for _, g := range env.gw {
		addrs, health = append(addrs, g.SSHAddr), append(health, g.MetricsAddr)
	}
	lb := startRRProxy(t, addrs, health)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	type result struct {
		phase string
		err   error
		out   string
	}
	var (
		mu      sync.Mutex
		phase   = "before"
		results []result
	)
	stop := make(chan struct{})
	looped := make(chan struct{})
	go func() {
		defer close(looped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			args := []string{"-J", env.user + "@" + lb.ln.Addr().String(), "-p", fmt.Sprint(env.target.Port), env.user + "@127.0.0.1", "true"}
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			out, err := env.client.Command(cctx, "ssh", args...).CombinedOutput()
			ccancel()
			mu.Lock()
			results = append(results, result{phase, err, string(out)})
			mu.Unlock()
		}
	}()
	setPhase := func(p string) {
		mu.Lock()
		phase = p
		mu.Unlock()
	}
	time.Sleep(2 * time.Second)
	for _, g := range env.gw {
		setPhase(g.ID + " stopped")
		g.Stop()
		time.Sleep(2 * time.Second)
		setPhase(g.ID + " restarting")
		g.Restart()
		setPhase("after " + g.ID)
		time.Sleep(2 * time.Second)
	}
	close(stop)
	<-looped

	counts := map[string]int{}
	var failed []string
	for _, r := range results {
		counts[r.phase]++
		if r.err != nil {
			failed = append(failed, fmt.Sprintf("[%s] %v: %s", r.phase, r.err, strings.TrimSpace(r.out)))
		}
	}
	t.Logf("jumps per phase: %v", counts)
	if len(failed) > 0 {
		t.Errorf("%d of %d jumps failed during the rolling restart:\n%s", len(failed), len(results), strings.Join(failed, "\n"))
	}
	for _, g := range env.gw {
		if counts[g.ID+" stopped"] == 0 {
			t.Errorf("no jump ran while %s was stopped", g.ID)
		}
	}
}
