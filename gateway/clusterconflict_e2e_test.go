package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
)

// TestRuntimeIDConflictFailsClosed: a gateway that, back under a new
// lease, finds its id held by another live gateway admits no new session
// (auth.failed cluster_id_conflict, the metric at 0, Admit naming the
// conflict) until it holds its membership record again; then jumps work.
func TestRuntimeIDConflictFailsClosed(t *testing.T) {
	tc := startTestCluster(t, clusterOptions{gateways: 1})
	gw, cl := tc.gws[0], tc.cls[0]
	ctx := t.Context()
	if err := cl.Join(ctx, cluster.Member{SSHAddr: gw.addr, Started: time.Now()}); err != nil {
		t.Fatal(err)
	}
	user := gw.client(ca.Request{KeyID: "worker"})
	if res := user.Run(ctx, "ssh", gw.jumpArgs(gw.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("jump before the conflict: %s", res)
	}
	// Another gateway given the same id, live meanwhile.
	other, err := cluster.Open(ctx, cluster.Config{GatewayID: cl.GatewayID(), Endpoints: tc.etcd.Endpoints(), Prefix: "/bastion/", DialTimeout: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	waitFor(t, 5*time.Second, "the other gateway got no lease", func() bool { return other.Lease() != 0 })
	// The gateway is cut off past its lease's TTL (its lease ends under
	// it) and the other takes the id at once.
	if _, err := other.Client().Revoke(ctx, cl.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := other.Join(ctx, cluster.Member{SSHAddr: "10.0.0.9:2222", Started: time.Now()}); err != nil {
		t.Fatalf("the other's Join once the record was gone: %v", err)
	}
	waitFor(t, 10*time.Second, "the gateway never noticed the conflict", func() bool { return cl.IDConflict() != nil })
	if err := cl.Admit(); !errors.Is(err, cluster.ErrIDInUse) {
		t.Fatalf("Admit during an id conflict = %v, want a refusal naming the conflict", err)
	}
	if err := gw.gw.admitCluster(); err == nil {
		t.Fatal("the gateway admits new sessions while another live gateway holds its id")
	}
	if res := user.Run(ctx, "ssh", gw.jumpArgs(gw.user, "true")...); res.ExitCode == 0 {
		t.Fatalf("a jump was admitted during an id conflict: %s", res)
	}
	gw.waitEvent(t, "auth.failed", map[string]string{"key_id": "worker", "reason": ReasonClusterIDConflict})
	// The refused user is told the real reason (etcd answers; the id is
	// held elsewhere), not that etcd is unreachable.
	res := user.Run(ctx, "ssh", append([]string{"-o", "LogLevel=INFO"}, gw.gatewayArgs(gw.user, "info")...)...)
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "another live gateway holds this gateway's cluster id") || strings.Contains(res.Stderr, "cannot reach") {
		t.Errorf("the banner of a refusal during an id conflict: %s", res)
	}

	// The other leaves: the gateway takes its record back and admits again.
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the gateway never took its record back", func() bool { return cl.Admit() == nil && gw.gw.admitCluster() == nil })
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if res := user.Run(rctx, "ssh", gw.jumpArgs(gw.user, "true")...); res.ExitCode != 0 {
		t.Fatalf("jump after the conflict ended: %s", res)
	}
}
