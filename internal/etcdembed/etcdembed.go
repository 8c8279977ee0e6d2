// Package etcdembed runs etcd members inside this process
// (go.etcd.io/etcd/server/v3/embed) on loopback: the shared store of
// `bastion dev --gateways N` and of the cluster tests. Production clusters
// run etcd as its own service; bastion only connects to it.
package etcdembed

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// ReadyTimeout bounds how long a member may take to start (or to rejoin
// its peers after a restart).
const ReadyTimeout = 30 * time.Second

// Cluster is a set of etcd members running in this process.
type Cluster struct {
	dir     string
	mu      sync.Mutex
	members []*member
}

type member struct {
	name      string
	dir       string
	peerURL   url.URL
	clientURL url.URL
	etcd      *embed.Etcd
}

// Start starts an n-member cluster (n ≥ 1) with its data under dir, on
// loopback ports picked at random. It returns once every member serves
// clients, or with an error that names the member and its log after
// ReadyTimeout.
func Start(ctx context.Context, dir string, n int) (*Cluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("etcd: want at least one member, got %d", n)
	}
	c := &Cluster{dir: dir}
	var initial []string
	for i := range n {
		peer, err := freeLoopbackURL()
		if err != nil {
			return nil, err
		}
		client, err := freeLoopbackURL()
		if err != nil {
			return nil, err
		}
		m := &member{name: fmt.Sprintf("etcd-%d", i), dir: filepath.Join(dir, fmt.Sprintf("etcd-%d", i)), peerURL: peer, clientURL: client}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+peer.String())
	}
	errs := make(chan error, n)
	for _, m := range c.members {
		go func() { errs <- m.start(ctx, strings.Join(initial, ","), "new") }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		c.Close()
		return nil, first
	}
	return c, nil
}

// freeLoopbackURL picks a free loopback port. Another process may take
// it before etcd binds it; start then fails with "address in use".
func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("etcd: find a free loopback port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return url.URL{Scheme: "http", Host: addr}, nil
}

func (m *member) logFile() string { return filepath.Join(m.dir, "etcd.log") }

func (m *member) start(ctx context.Context, initial, state string) error {
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = filepath.Join(m.dir, "data")
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	cfg.InitialCluster = initial
	cfg.InitialClusterToken = "bastion-embedded"
	cfg.ClusterState = state
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{m.logFile()}
	// Loopback peers: short heartbeats elect a leader fast.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd: start member %s: %w (log: %s)", m.name, err, m.logFile())
	}
	t := time.NewTimer(ReadyTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		m.etcd = e
		return nil
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd: member %s failed: %w (log: %s)", m.name, err, m.logFile())
	case <-t.C:
		e.Close()
		return fmt.Errorf("etcd: member %s was not ready after %s: it may be waiting for its peers (log: %s)", m.name, ReadyTimeout, m.logFile())
	case <-ctx.Done():
		e.Close()
		return fmt.Errorf("etcd: start member %s: %w", m.name, ctx.Err())
	}
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.clientURL.String()
	}
	return out
}

// Size is the number of members, running or stopped.
func (c *Cluster) Size() int { return len(c.members) }

// Stop stops member i (the others keep running), as a crash would as far
// as its peers can tell.
func (c *Cluster) Stop(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("etcd: no member %d", i)
	}
	m := c.members[i]
	if m.etcd == nil {
		return fmt.Errorf("etcd: member %s is not running", m.name)
	}
	m.etcd.Close()
	m.etcd = nil
	return nil
}

// Restart starts stopped member i again on its old data and ports. With
// too few other members running for a quorum it waits up to ReadyTimeout
// for them.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	if i < 0 || i >= len(c.members) {
		c.mu.Unlock()
		return fmt.Errorf("etcd: no member %d", i)
	}
	m := c.members[i]
	if m.etcd != nil {
		c.mu.Unlock()
		return fmt.Errorf("etcd: member %s is running", m.name)
	}
	var initial []string
	for _, o := range c.members {
		initial = append(initial, o.name+"="+o.peerURL.String())
	}
	c.mu.Unlock()
	return m.start(ctx, strings.Join(initial, ","), "existing")
}

// Close stops every member. The data stays under the directory given to
// Start.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.etcd != nil {
			m.etcd.Close()
			m.etcd = nil
		}
	}
}
