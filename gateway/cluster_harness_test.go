package gateway

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

// testCluster is several real gateways (startGateway) sharing one CA and
// a real 3-member etcd running in this process.
type testCluster struct {
	etcd  *etcdembed.Cluster
	caDir string
	gws   []*testGateway
	cls   []*cluster.Cluster
}

// clusterOptions vary startTestCluster.
type clusterOptions struct {
	gateways     int
	consistency  string        // default best_effort
	maxStaleness time.Duration // default 30s
	// gateway options for every gateway (after the cluster's own).
	opts []gatewayOption
}

// startTestEtcd starts a 3-member etcd and a shared CA.
func startTestEtcd(t *testing.T) *testCluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), etcdembed.ReadyTimeout)
	defer cancel()
	e, err := etcdembed.Start(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	tc := &testCluster{etcd: e, caDir: t.TempDir()}
	if _, _, err := ca.Init(ca.Layout{DataDir: tc.caDir}, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	return tc
}

// startTestCluster starts etcd and co.gateways gateways, gw-0, gw-1, ...
func startTestCluster(t *testing.T, co clusterOptions) *testCluster {
	t.Helper()
	tc := startTestEtcd(t)
	for i := range co.gateways {
		tc.addGateway(t, i, co, func(opts ...gatewayOption) *testGateway {
			return startGatewayWithCA(t, tc.caDir, opts...)
		})
	}
	return tc
}

// openMember opens gateway i's connection to the cluster; it is closed
// after the gateway stops (cleanups run last registered first).
func (tc *testCluster) openMember(t *testing.T, i int, co clusterOptions) *cluster.Cluster {
	t.Helper()
	if co.consistency == "" {
		co.consistency = cluster.BestEffort
	}
	if co.maxStaleness == 0 {
		co.maxStaleness = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cl, err := cluster.Open(ctx, cluster.Config{
		GatewayID: "gw-" + string(rune('0'+i)), Endpoints: tc.etcd.Endpoints(), Prefix: "/bastion/",
		DialTimeout: 2 * time.Second, Consistency: co.consistency, MaxStaleness: co.maxStaleness,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	tc.cls = append(tc.cls, cl)
	return cl
}

// addGateway opens member i and starts its gateway with start, each with
// its own krl_file.
func (tc *testCluster) addGateway(t *testing.T, i int, co clusterOptions, start func(...gatewayOption) *testGateway) *testGateway {
	t.Helper()
	cl := tc.openMember(t, i, co)
	krl := filepath.Join(t.TempDir(), "revoked.krl")
	withCluster := func(c *Config, d *Deps) {
		d.Cluster = cl
		c.KRLFile = krl
	}
	tg := start(append([]gatewayOption{withCluster}, co.opts...)...)
	tc.gws = append(tc.gws, tg)
	return tg
}

// krlFile is gateway i's krl_file.
func (tc *testCluster) krlFile(i int) string { return tc.gws[i].gw.cfg.KRLFile }

// waitFor polls cond (bounded) and fails with what when it never holds.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fileChanged reports whether path's content differs from before.
func fileChanged(path string, before []byte) bool {
	now, err := os.ReadFile(path)
	return err == nil && string(now) != string(before)
}
