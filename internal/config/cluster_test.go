package config

import (
	"strings"
	"testing"
	"time"
)

func TestClusterBlock(t *testing.T) {
	base := "listen: 127.0.0.1:2222\ndata_dir: /d\n"
	f, err := Parse([]byte(base + `cluster:
  gateway_id: gw-1
  etcd:
    endpoints: [https://etcd-0:2379, https://etcd-1:2379]
    ca_file: /etc/bastion/etcd-ca.pem
    cert_file: /etc/bastion/etcd-client.pem
    key_file: /etc/bastion/etcd-client-key.pem
  consistency: strict
  max_staleness: 45s
`))
	if err != nil {
		t.Fatal(err)
	}
	cc := f.ClusterConfig()
	if cc.GatewayID != "gw-1" || cc.Consistency != "strict" || cc.MaxStaleness != 45*time.Second || cc.Prefix != "/bastion/" || len(cc.Endpoints) != 2 || cc.Advertise != "127.0.0.1:2222" || cc.DialTimeout != 5*time.Second {
		t.Fatalf("cluster config = %+v", cc)
	}
	f, err = Parse([]byte(base))
	if err != nil || f.ClusterConfig() != nil {
		t.Fatalf("no cluster: block must mean no cluster, got %+v, %v", f.ClusterConfig(), err)
	}
	f, err = Parse([]byte(base + "cluster:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n"))
	if err != nil || f.ClusterConfig().Consistency != "best_effort" || f.ClusterConfig().MaxStaleness != 30*time.Second || f.ClusterConfig().GatewayID == "" {
		t.Fatalf("defaults: %+v, %v", f.ClusterConfig(), err)
	}
	for _, tc := range []struct{ block, want string }{
		{"cluster:\n  etcd:\n    endpoints: []\n", "endpoints is empty"},
		{"cluster:\n  etcd:\n    endpoints: [http://10.0.0.5:2379]\n", "plain http to a non-loopback host"},
		{"cluster:\n  etcd:\n    endpoints: [https://etcd:2379]\n", "need ca_file, cert_file and key_file"},
		{"cluster:\n  etcd:\n    endpoints: [etcd:2379]\n", "is not an http(s)://HOST:PORT URL"},
		{"cluster:\n  consistency: eventual\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", "not best_effort or strict"},
		{"cluster:\n  gateway_id: \"gw 1\"\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", "is not a gateway id"},
		{"cluster:\n  max_staleness: 10ms\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", "too short"},
		{"cluster:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    prefix: bastion\n", "must start and end with /"},
		{"cluster:\n  etcd:\n    endpoint: [http://127.0.0.1:2379]\n", "unknown key"},
	} {
		_, err := Parse([]byte(base + tc.block))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to say %q", tc.block, err, tc.want)
		}
	}
}
