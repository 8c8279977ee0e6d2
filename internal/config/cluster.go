package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bastion-ssh/bastion/internal/cluster"
)

// Cluster is the cluster: block: several gateways sharing revocations,
// locks, bans, one-time login state, membership and the live-session
// registry through etcd. Without it a gateway keeps all of that in its own
// bbolt file.
type Cluster struct {
	// GatewayID names this gateway in every audit event and in the
	// membership list (default: $BASTION_GATEWAY_ID, else the host name).
	GatewayID string `yaml:"gateway_id"`
	// Advertise is the SSH address other members and auditors reach this
	// gateway at (default: $BASTION_ADVERTISE, else listen, with the host
	// name if it has no host).
	Advertise string `yaml:"advertise"`
	Etcd      Etcd   `yaml:"etcd"`
	// Consistency is best_effort (default) or strict.
	Consistency string `yaml:"consistency"`
	// MaxStaleness is how long a best_effort gateway keeps admitting new
	// sessions on the last state it saw while etcd is unreachable
	// (default 30s).
	MaxStaleness Duration `yaml:"max_staleness"`
	// Drain is how long a stopping gateway keeps serving with /healthz
	// answering 503 before it stops accepting connections, so that load
	// balancers send new connections to the other gateways first
	// (default 2s; set it above your balancer's health-check interval
	// times its failure count).
	Drain Duration `yaml:"drain"`
}

// Bounds of cluster.max_staleness. Below a second the quorum probe (once a
// second) cannot keep a healthy gateway admitting; above an hour a gateway
// cut off from etcd would serve for longer than anyone would tolerate a
// lock or revocation not taking effect on it (an hour is the longest an
// on-call engineer should need to restore etcd or take the gateway out of
// the load balancer; choose strict where even that is too long).
const (
	MinMaxStaleness = time.Second
	MaxMaxStaleness = time.Hour
)

// The environment variables that stand in for cluster.gateway_id and
// cluster.advertise when the file leaves them out: one configuration for
// every replica, each told its own name and address by its runtime
// (Kubernetes: the pod name through the downward API).
const (
	EnvGatewayID = "BASTION_GATEWAY_ID"
	EnvAdvertise = "BASTION_ADVERTISE"
)

// Etcd is how a gateway reaches etcd.
type Etcd struct {
	Endpoints []string `yaml:"endpoints"`
	// CAFile, CertFile and KeyFile are the mTLS client files; required
	// unless every endpoint is plain http on loopback.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Prefix is the key prefix of this fleet's state (default /bastion/).
	Prefix string `yaml:"prefix"`
	// DialTimeout bounds each connection attempt (default 5s).
	DialTimeout Duration `yaml:"dial_timeout"`
}

// validateCluster checks the cluster: block and fills its defaults.
func (f *File) validateCluster() error {
	c := f.Cluster
	if c == nil {
		return nil
	}
	idFrom := "cluster.gateway_id"
	if c.GatewayID == "" && os.Getenv(EnvGatewayID) != "" {
		c.GatewayID, idFrom = os.Getenv(EnvGatewayID), EnvGatewayID+" (cluster.gateway_id is not set)"
	}
	if c.Advertise == "" {
		c.Advertise = os.Getenv(EnvAdvertise)
	}
	if c.GatewayID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			return fmt.Errorf("cluster.gateway_id is not set and the host name is unknown: set cluster.gateway_id")
		}
		c.GatewayID = host
	}
	if err := cluster.ValidateGatewayID(c.GatewayID); err != nil {
		return fmt.Errorf("%s: %v", idFrom, err)
	}
	if c.Advertise == "" {
		host, port, _ := net.SplitHostPort(f.Listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			h, err := os.Hostname()
			if err != nil {
				return fmt.Errorf("cluster.advertise is not set and the host name is unknown: set cluster.advertise to this gateway's HOST:PORT")
			}
			host = h
		}
		c.Advertise = net.JoinHostPort(host, port)
	}
	if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
		return fmt.Errorf("cluster.advertise: %s is not HOST:PORT", shown(c.Advertise))
	}
	switch c.Consistency {
	case "":
		c.Consistency = cluster.BestEffort
	case cluster.BestEffort, cluster.Strict:
	default:
		return fmt.Errorf("cluster.consistency: %s is not best_effort or strict", shown(c.Consistency))
	}
	if c.MaxStaleness == 0 {
		c.MaxStaleness = Duration(30 * time.Second)
	}
	if ms := time.Duration(c.MaxStaleness); ms < MinMaxStaleness || ms > MaxMaxStaleness {
		return fmt.Errorf("cluster.max_staleness: %s is out of range: use %s to %s (default 30s); it is how long a gateway cut off from etcd keeps admitting sessions without seeing new locks and revocations", ms, MinMaxStaleness, "1h")
	}
	if c.Drain == 0 {
		c.Drain = Duration(2 * time.Second)
	}
	if c.Drain < 0 || time.Duration(c.Drain) > 5*time.Minute {
		return fmt.Errorf("cluster.drain: %s is out of range: use 0s to 5m (default 2s)", time.Duration(c.Drain))
	}
	e := &c.Etcd
	if len(e.Endpoints) == 0 {
		return fmt.Errorf("cluster.etcd.endpoints is empty: list your etcd members' client URLs, such as https://etcd-0:2379")
	}
	plainOK := true
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("cluster.etcd.endpoints: %s is not an http(s)://HOST:PORT URL", shown(ep))
		}
		if u.Scheme == "http" {
			ip := net.ParseIP(u.Hostname())
			if !(u.Hostname() == "localhost" || (ip != nil && ip.IsLoopback())) {
				return fmt.Errorf("cluster.etcd.endpoints: %s is plain http to a non-loopback host: use https with ca_file, cert_file and key_file (bastion's shared state must not cross a network unauthenticated)", shown(ep))
			}
		} else {
			plainOK = false
		}
	}
	if !plainOK && (e.CAFile == "" || e.CertFile == "" || e.KeyFile == "") {
		return fmt.Errorf("cluster.etcd: https endpoints need ca_file, cert_file and key_file (mutual TLS)")
	}
	if e.Prefix == "" {
		e.Prefix = "/bastion/"
	}
	if !strings.HasPrefix(e.Prefix, "/") || !strings.HasSuffix(e.Prefix, "/") {
		return fmt.Errorf("cluster.etcd.prefix: %s must start and end with /", shown(e.Prefix))
	}
	if e.DialTimeout == 0 {
		e.DialTimeout = Duration(5 * time.Second)
	}
	return nil
}

// ClusterConfig is the cluster configuration the file describes, or nil
// without a cluster: block.
func (f *File) ClusterConfig() *cluster.Config {
	c := f.Cluster
	if c == nil {
		return nil
	}
	return &cluster.Config{
		GatewayID:    c.GatewayID,
		Advertise:    c.Advertise,
		Endpoints:    c.Etcd.Endpoints,
		CAFile:       c.Etcd.CAFile,
		CertFile:     c.Etcd.CertFile,
		KeyFile:      c.Etcd.KeyFile,
		Prefix:       c.Etcd.Prefix,
		DialTimeout:  time.Duration(c.Etcd.DialTimeout),
		Consistency:  c.Consistency,
		MaxStaleness: time.Duration(c.MaxStaleness),
	}
}

// LoadCluster reads only what a CLI needs to reach etcd from the config
// file at path: its cluster: block, checked, with relative TLS file paths
// taken relative to the file's directory. The rest of the file is decoded
// (an unknown key is still an error) but not checked, so a copy of a
// gateway's bastion.yaml without data_dir, or on a host without the
// gateway's files, serves `bastion cluster status --config`. It returns
// nil, nil when the file has no cluster: block.
func LoadCluster(path string) (*cluster.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config: %s: %w", path, explain(err))
	}
	if f.Cluster == nil {
		return nil, nil
	}
	if f.Listen == "" {
		f.Listen = "127.0.0.1:2222"
	}
	if err := f.validateCluster(); err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	base := filepath.Dir(path)
	for _, p := range []*string{&f.Cluster.Etcd.CAFile, &f.Cluster.Etcd.CertFile, &f.Cluster.Etcd.KeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return f.ClusterConfig(), nil
}
