package alert

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
)

// TestClusterDedupe: a brute force from one source spread over three
// gateways that share etcd makes the alerts one gateway alone would, not
// one set per gateway; without the cluster, each gateway alerts.
func TestClusterDedupe(t *testing.T) {
	e, err := etcdembed.Start(context.Background(), t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	attack := func(gw int) []audit.Event {
		var evs []audit.Event
		for i := range 60 {
			// The same source tries every gateway in turn, once a second.
			if i%3 == gw {
				evs = append(evs, failed(time.Duration(i)*time.Second, "203.0.113.7", "root", "forbidden_user", fmt.Sprint("c", i)))
			}
		}
		return evs
	}
	run := func(clustered bool) int {
		rcv := newReceiver(t, nil)
		var engines []*Engine
		for gw := range 3 {
			cfg := fastConfig(Webhook{URL: rcv.URL, Format: FormatJSON})
			cfg.RuleBurst = 5
			var claimer Claimer
			if clustered {
				cl, err := cluster.Open(context.Background(), cluster.Config{GatewayID: fmt.Sprintf("gw-%d", gw), Endpoints: e.Endpoints(), Prefix: fmt.Sprintf("/t%v/", clustered)}, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { cl.Close() })
				claimer = cl
			}
			eng, err := New(cfg, Deps{Store: openStore(t), Cluster: claimer})
			if err != nil {
				t.Fatal(err)
			}
			engines = append(engines, eng)
		}
		// Each gateway sees its share of the attack, interleaved in time.
		for i := range 20 {
			for gw, eng := range engines {
				eng.Observe(attack(gw)[i])
			}
		}
		for _, eng := range engines {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := eng.Close(ctx); err != nil {
				t.Fatal(err)
			}
			cancel()
		}
		return len(rcv.received())
	}
	alone, together := run(false), run(true)
	t.Logf("one source against 3 gateways: %d alerts without the cluster, %d with", alone, together)
	if together < 1 || together*2 > alone {
		t.Fatalf("clustered gateways sent %d alerts, independent ones %d: want at least one and at most half", together, alone)
	}
}
