package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bastion-ssh/bastion/internal/cluster"
)

// TestClusterDuplicateIDNeverServes: `bastion serve` given the id of a
// live member is refused every time (exit 1, the id-in-use message) and
// serves nobody meanwhile: a client hammering its SSH port from the
// moment it starts never gets an SSH banner, its /healthz never answers
// ok, and it never warns about live-session counts it had no business
// writing. The live member keeps its record.
func TestClusterDuplicateIDNeverServes(t *testing.T) {
	e := startClusterGateways(t, 1)
	live := e.gw[0]
	before := e.members()
	dup := &clusterGateway{env: e, ID: live.ID, Data: filepath.Join(t.TempDir(), "dup"), SSHAddr: freeAddr(t), MetricsAddr: freeAddr(t)}
	dup.Cfg = filepath.Join(t.TempDir(), "dup.yaml")
	mustRun(t, dup.Data, "ca", "init")
	copyCAFiles(t, live.Data, dup.Data)
	dup.writeConfig()
	const runs = 8
	for i := 1; i <= runs; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, e.bin, "serve", "--config", dup.Cfg)
		cmd.Stderr = &stderr
		var banners, healthy, connects atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // an SSH client, from before the process starts
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", dup.SSHAddr, 200*time.Millisecond)
				if err != nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				connects.Add(1)
				_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				buf := make([]byte, 64)
				if n, _ := c.Read(buf); n > 0 {
					banners.Add(1)
				}
				c.Close()
			}
		}()
		go func() { // a load balancer's health check
			defer wg.Done()
			hc := http.Client{Timeout: 300 * time.Millisecond}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if resp, err := hc.Get("http://" + dup.MetricsAddr + "/healthz"); err == nil {
					if resp.StatusCode == http.StatusOK {
						healthy.Add(1)
					}
					resp.Body.Close()
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
		start := time.Now()
		err := cmd.Run()
		took := time.Since(start)
		close(stop)
		wg.Wait()
		cancel()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("run %d: a gateway given live %s's id ran on (%v after %s):\n%s", i, live.ID, err, took, stderr.String())
		}
		if !strings.Contains(stderr.String(), fmt.Sprintf("gateway id %q is already held by a live gateway at %s", live.ID, live.SSHAddr)) {
			t.Errorf("run %d: exit 1 without the id-in-use message:\n%s", i, stderr.String())
		}
		if n := banners.Load(); n > 0 {
			t.Errorf("run %d: the duplicate answered %d SSH connection(s) before it exited", i, n)
		}
		if n := healthy.Load(); n > 0 {
			t.Errorf("run %d: the duplicate's /healthz said ok %d time(s)", i, n)
		}
		for _, bad := range []string{"could not update the live-session count", "ANOTHER LIVE GATEWAY", "gateway listening on"} {
			if strings.Contains(stderr.String(), bad) {
				t.Errorf("run %d: the duplicate logged %q:\n%s", i, bad, stderr.String())
			}
		}
		t.Logf("run %d: refused after %s (%d TCP connects, %d answered)", i, took.Round(10*time.Millisecond), connects.Load(), banners.Load())
	}
	after := e.members()
	if len(after) != 1 || after[0].SSHAddr != live.SSHAddr || !after[0].Started.Equal(before[0].Started) {
		t.Errorf("the live member's record changed: before %+v, after %+v", before, after)
	}
	if out := e.jump(context.Background(), live, "echo", "still-here"); !strings.Contains(out, "still-here") {
		t.Errorf("jump through the live member after the duplicates: %q", out)
	}
}

// TestClusterRuntimeIDConflictFailsClosed: a running `bastion serve`
// that, back under a new lease, finds its id held by another live
// gateway takes itself out (/healthz 503, bastion_cluster_healthy 0,
// bastion_cluster_id_conflict 1) and admits no ssh -J, until the other
// leaves and it holds its record again.
func TestClusterRuntimeIDConflictFailsClosed(t *testing.T) {
	e := startClusterGateways(t, 1)
	g := e.gw[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.jump(ctx, g, "true")
	other, err := cluster.Open(ctx, cluster.Config{GatewayID: g.ID, Endpoints: e.etcd.Endpoints(), Prefix: clusterPrefix}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	waitFor(t, 5*time.Second, "the other gateway's lease", func() bool { return other.Lease() != 0 })
	// The gateway's lease ends under it (as when it is cut off past the
	// TTL) and the other, given the same id, joins at once.
	ms, err := e.observer.Client().Get(ctx, e.observer.Key("members", g.ID))
	if err != nil || len(ms.Kvs) != 1 {
		t.Fatalf("the gateway's record: %v, %v", ms, err)
	}
	if _, err := e.observer.Client().Revoke(ctx, clientv3.LeaseID(ms.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	if err := other.Join(ctx, cluster.Member{SSHAddr: "10.0.0.9:2222", Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	health := func() (int, string) {
		resp, err := http.Get("http://" + g.MetricsAddr + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	metrics := func() string {
		resp, err := http.Get("http://" + g.MetricsAddr + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitFor(t, 15*time.Second, "/healthz never went 503 during the id conflict", func() bool { code, _ := health(); return code == http.StatusServiceUnavailable })
	if _, body := health(); !strings.Contains(body, "already held by a live gateway at 10.0.0.9:2222") {
		t.Errorf("/healthz during the conflict does not say why: %q", body)
	}
	m := metrics()
	if !strings.Contains(m, "bastion_cluster_id_conflict 1") || !strings.Contains(m, "bastion_cluster_healthy 0") {
		t.Errorf("metrics during the conflict:\n%s", grepLines(m, "bastion_cluster_"))
	}
	if out, err := e.jumpCommand(ctx, g, "echo", "admitted").CombinedOutput(); err == nil || strings.Contains(string(out), "admitted") {
		t.Fatalf("ssh -J admitted during the id conflict: %v\n%s", err, out)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "/healthz never came back after the other left", func() bool { code, _ := health(); return code == http.StatusOK })
	e.waitMembers(10*time.Second, g.ID)
	if out := e.jump(ctx, g, "echo", "back"); !strings.Contains(out, "back") {
		t.Errorf("jump after the conflict: %q", out)
	}
	if strings.Contains(g.Log(), "could not update the live-session count") {
		t.Errorf("the gateway warned about its live-session count during the conflict:\n%s", g.Log())
	}
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
