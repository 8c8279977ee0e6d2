package config

import (
	"os"
	"path/filepath"
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
		{"cluster:\n  max_staleness: 10ms\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", "out of range: use 1s to 1h"},
		{"cluster:\n  max_staleness: 1000h\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", "out of range: use 1s to 1h"},
		{"cluster:\n  max_staleness: 61m\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n", "out of range: use 1s to 1h"},
		{"cluster:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    prefix: bastion\n", "must start and end with /"},
		{"cluster:\n  etcd:\n    endpoint: [http://127.0.0.1:2379]\n", "unknown key"},
	} {
		_, err := Parse([]byte(base + tc.block))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to say %q", tc.block, err, tc.want)
		}
	}
}

// TestCADir: ca.dir names where the CA key files are, relative to the
// config file like every path; without it the keys stay in DATA_DIR/ca.
func TestCADir(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bastion.yaml")
	if err := os.WriteFile(p, []byte("data_dir: ./gw-1\nca:\n  dir: ./shared-ca\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.CA.Dir != filepath.Join(dir, "shared-ca") {
		t.Errorf("ca.dir %q, want it relative to the config file", f.CA.Dir)
	}
	f, err = Parse([]byte("data_dir: /d\n"))
	if err != nil || f.CA.Dir != "" {
		t.Errorf("without ca.dir: %q, %v", f.CA.Dir, err)
	}
	if _, err := Parse([]byte("data_dir: /d\nca:\n  dirs: /x\n")); err == nil || !strings.Contains(err.Error(), `unknown key "dirs"`) {
		t.Errorf("a misspelt ca.dir: %v", err)
	}
}

// TestClusterIdentityFromEnvironment: one bastion.yaml for every replica;
// BASTION_GATEWAY_ID and BASTION_ADVERTISE fill gateway_id and advertise
// when the file leaves them out, and the file wins when it sets them.
func TestClusterIdentityFromEnvironment(t *testing.T) {
	t.Setenv(EnvGatewayID, "bastion-1")
	t.Setenv(EnvAdvertise, "bastion-1.bastion-internal:2222")
	block := "listen: 0.0.0.0:2222\ndata_dir: /d\ncluster:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n"
	f, err := Parse([]byte(block))
	if err != nil {
		t.Fatal(err)
	}
	if cc := f.ClusterConfig(); cc.GatewayID != "bastion-1" || cc.Advertise != "bastion-1.bastion-internal:2222" {
		t.Errorf("from the environment: id %q advertise %q", cc.GatewayID, cc.Advertise)
	}
	f, err = Parse([]byte(block + "  gateway_id: gw-9\n  advertise: gw9:22\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cc := f.ClusterConfig(); cc.GatewayID != "gw-9" || cc.Advertise != "gw9:22" {
		t.Errorf("the file must win: id %q advertise %q", cc.GatewayID, cc.Advertise)
	}
	t.Setenv(EnvGatewayID, "bad id!")
	if _, err := Parse([]byte(block)); err == nil || !strings.Contains(err.Error(), "cluster.gateway_id") {
		t.Errorf("a bad id from the environment: %v", err)
	}
}

// TestClusterDrain: cluster.drain defaults to 2s and is bounded.
func TestClusterDrain(t *testing.T) {
	block := "data_dir: /d\ncluster:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n"
	f, err := Parse([]byte(block))
	if err != nil || time.Duration(f.Cluster.Drain) != 2*time.Second {
		t.Fatalf("default drain: %v, %v", f.Cluster.Drain, err)
	}
	if f, err := Parse([]byte(block + "  drain: 10s\n")); err != nil || time.Duration(f.Cluster.Drain) != 10*time.Second {
		t.Errorf("drain 10s: %v", err)
	}
	if _, err := Parse([]byte(block + "  drain: 1h\n")); err == nil || !strings.Contains(err.Error(), "cluster.drain") {
		t.Errorf("drain 1h: %v, want an error naming cluster.drain", err)
	}
}

// TestEchoedValuesAreBounded: a configuration or environment value an
// error echoes (an over-long BASTION_GATEWAY_ID, gateway_id, advertise,
// endpoint, prefix, listen address, duration, size, key, ...) is cut to a
// bound keeping both ends, never printed in full.
func TestEchoedValuesAreBounded(t *testing.T) {
	long := "head-" + strings.Repeat("x", 5000) + "-tail"
	cl := "data_dir: /d\ncluster:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n"
	for _, tc := range []struct{ name, yaml, env, want string }{
		{"BASTION_GATEWAY_ID", cl, long, EnvGatewayID},
		{"gateway_id", cl + "  gateway_id: " + long + "\n", "", "cluster.gateway_id"},
		{"advertise", cl + "  advertise: " + long + "\n", "", "cluster.advertise"},
		{"consistency", cl + "  consistency: " + long + "\n", "", "cluster.consistency"},
		{"prefix", cl + "    prefix: " + long + "\n", "", "cluster.etcd.prefix"},
		{"endpoint", "data_dir: /d\ncluster:\n  etcd:\n    endpoints: [" + long + "]\n", "", "cluster.etcd.endpoints"},
		{"listen", "data_dir: /d\nlisten: " + long + "\n", "", "listen"},
		{"log.level", "data_dir: /d\nlog:\n  level: " + long + "\n", "", "log.level"},
		{"duration", "data_dir: /d\nshutdown_grace: " + long + "\n", "", "is not a duration"},
		{"unknown key", "data_dir: /d\n? " + long + "\n: 1\n", "", "unknown key"},
		{"size", "data_dir: /d\nrecording:\n  max_bytes_per_session: " + long + "\n", "", "is not a size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvGatewayID, tc.env)
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if len(msg) > 600 || !strings.Contains(msg, tc.want) || !strings.Contains(msg, "bytes cut") || !strings.Contains(msg, "head-") {
				t.Errorf("%d bytes: %.700s", len(msg), msg)
			}
		})
	}
}
