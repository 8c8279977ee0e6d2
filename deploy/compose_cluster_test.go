package deploy_test

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/bastion-ssh/bastion/internal/config"
)

// TestComposeClusterDemo checks the two-gateway compose demo without a
// Docker engine: the file parses strictly; three etcd members form one
// mTLS cluster reachable only on an internal network; each gateway has its
// own data volume, is named by its host name, reads the one CA read-only
// and the shared bastion.yaml, which config.Parse accepts with a cluster:
// block pointing at those members and at the mTLS files `demo etcd-certs`
// makes; the HAProxy load balancer balances over exactly the gateways,
// health-checked on /healthz; every file mounted exists.
func TestComposeClusterDemo(t *testing.T) {
	data, err := os.ReadFile("compose/cluster/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatalf("cluster/docker-compose.yml: %v", err)
	}
	members := []string{"etcd-1", "etcd-2", "etcd-3"}
	gateways := []string{"gw-1", "gw-2"}
	for _, name := range append(append([]string{"setup", "lb", "target1", "target2"}, members...), gateways...) {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("no service %q", name)
		}
	}
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("compose/cluster", src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s uses volume %s, which is not declared", name, src)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("%s depends on unknown service %s", name, dep)
			}
		}
	}
	if !slices.Equal(c.Services["setup"].Command, []string{"cluster-setup"}) {
		t.Errorf("setup runs %v, want demo's cluster-setup", c.Services["setup"].Command)
	}
	if !c.Networks["state"].Internal || !c.Networks["targets"].Internal {
		t.Error("the etcd (state) and targets networks must be internal")
	}

	var initial []string
	for _, m := range members {
		initial = append(initial, fmt.Sprintf("%s=https://%s:2380", m, m))
	}
	for _, m := range members {
		s := c.Services[m]
		for _, want := range []string{
			"--initial-cluster=" + strings.Join(initial, ","),
			"--advertise-client-urls=https://" + m + ":2379",
			"--client-cert-auth", "--peer-client-cert-auth",
			"--trusted-ca-file=/shared/etcd/ca.pem",
			"--cert-file=/shared/etcd/" + m + ".pem",
		} {
			if !slices.Contains(s.Command, want) {
				t.Errorf("%s lacks %s", m, want)
			}
		}
		if !slices.Equal(s.Networks, []string{"state"}) || len(s.Ports) > 0 {
			t.Errorf("%s must be reachable only by the gateways (state network, no ports): %v %v", m, s.Networks, s.Ports)
		}
	}

	cfgText, err := os.ReadFile("compose/cluster/bastion.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse(cfgText)
	if err != nil {
		t.Fatalf("cluster/bastion.yaml: %v", err)
	}
	cc := f.ClusterConfig()
	if cc == nil {
		t.Fatal("cluster/bastion.yaml has no cluster: block")
	}
	var wantEP []string
	for _, m := range members {
		wantEP = append(wantEP, "https://"+m+":2379")
	}
	if !slices.Equal(cc.Endpoints, wantEP) {
		t.Errorf("etcd endpoints %v, want %v", cc.Endpoints, wantEP)
	}
	if regexp.MustCompile(`(?m)^\s*(gateway_id|advertise):`).Match(cfgText) {
		t.Error("bastion.yaml must leave gateway_id to each container's host name")
	}
	// The files `demo etcd-certs` makes, in the volume the gateways mount.
	script, err := os.ReadFile("compose/demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cc.CAFile, cc.CertFile, cc.KeyFile} {
		if path.Dir(p) != "/shared/etcd" {
			t.Errorf("%s is not in /shared/etcd, where demo etcd-certs writes", p)
		}
	}
	if !strings.Contains(string(script), "sign client DNS:bastion clientAuth") || path.Base(cc.CertFile) != "client.pem" || path.Base(cc.KeyFile) != "client-key.pem" || path.Base(cc.CAFile) != "ca.pem" {
		t.Errorf("bastion.yaml's etcd files %s %s %s are not the ones demo etcd-certs makes", cc.CAFile, cc.CertFile, cc.KeyFile)
	}

	dataVolumes := map[string]string{}
	for _, g := range gateways {
		s := c.Services[g]
		if s.Hostname != g {
			t.Errorf("%s has host name %q; it is the gateway id", g, s.Hostname)
		}
		if s.Build == nil || s.Build.Context != "../../.." || s.Build.Dockerfile != "" {
			t.Errorf("%s must be built from the repository's Dockerfile", g)
		}
		if !slices.Contains(s.Volumes, "./bastion.yaml:/etc/bastion/bastion.yaml:ro") {
			t.Errorf("%s does not mount the shared bastion.yaml", g)
		}
		var caMounted bool
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == "/var/lib/bastion" {
				if other, dup := dataVolumes[parts[0]]; dup {
					t.Errorf("%s and %s share the data volume %s: each gateway needs its own (bbolt)", g, other, parts[0])
				}
				dataVolumes[parts[0]] = g
			}
			if len(parts) == 3 && parts[0] == "ca-bootstrap" && strings.HasPrefix(f.CA.Dir, parts[1]+"/") && parts[2] == "ro" {
				caMounted = true
			}
		}
		if !caMounted {
			t.Errorf("%s does not mount the one CA read-only under ca.dir %s", g, f.CA.Dir)
		}
		for _, n := range []string{"state", "targets", "front"} {
			if !slices.Contains(s.Networks, n) {
				t.Errorf("%s is not on the %s network", g, n)
			}
		}
	}
	if len(dataVolumes) != len(gateways) {
		t.Errorf("data volumes %v, want one per gateway", dataVolumes)
	}

	lb := c.Services["lb"]
	if !slices.Contains(lb.Volumes, "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro") || !slices.Contains(lb.Ports, "2222:2222") {
		t.Errorf("lb volumes %v ports %v", lb.Volumes, lb.Ports)
	}
	hp, err := os.ReadFile("compose/cluster/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	var servers []string
	for _, m := range regexp.MustCompile(`(?m)^\s*server\s+(\S+)\s+(\S+)`).FindAllStringSubmatch(string(hp), -1) {
		if m[2] != m[1]+":2222" {
			t.Errorf("haproxy server %s points at %s, want %s:2222", m[1], m[2], m[1])
		}
		servers = append(servers, m[1])
	}
	if !slices.Equal(servers, gateways) {
		t.Errorf("haproxy balances over %v, want %v", servers, gateways)
	}
	for _, want := range []string{"mode tcp", "balance roundrobin", "option httpchk GET /healthz", "http-check expect status 200", "check port 9222"} {
		if !strings.Contains(string(hp), want) {
			t.Errorf("haproxy.cfg lacks %q", want)
		}
	}
}
