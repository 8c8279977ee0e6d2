package gateway

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/cluster"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/etcdembed"
	"github.com/bastion-ssh/bastion/internal/oidc"
)

// BenchmarkConcurrentLogins measures certificates issued per second by the
// login service under concurrent logins: each op is a full SSH connection
// as `login`, an ID token handed over (the PKCE path), verification against
// the IdP's keys, the signing pipeline, durable login.started, cert.issued
// and login.ok records, and the certificate back on stdout. The human part
// of a login (the browser) is not in it.
func BenchmarkConcurrentLogins(b *testing.B) { benchmarkLogins(b, nil) }

// BenchmarkConcurrentLoginsCluster is BenchmarkConcurrentLogins through a
// gateway in a cluster (a 3-member etcd in this process): the login's
// one-time values are claimed cluster-wide and new sessions admitted on
// the cluster's freshness. Compare the two in one run for the ratio.
func BenchmarkConcurrentLoginsCluster(b *testing.B) {
	ctx := b.Context()
	e, err := etcdembed.Start(ctx, b.TempDir(), 3)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	cl, err := cluster.Open(ctx, cluster.Config{GatewayID: "gw-bench", Endpoints: e.Endpoints(), Prefix: "/bastion/",
		DialTimeout: 2 * time.Second, Consistency: cluster.BestEffort, MaxStaleness: 30 * time.Second}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cl.Close() })
	benchmarkLogins(b, func(d *Deps) { d.Cluster = cl })
}

func benchmarkLogins(b *testing.B, deps func(*Deps)) {
	ctx := b.Context()
	var withDeps []func(*Deps)
	if deps != nil {
		withDeps = append(withDeps, deps)
	}
	idp, err := devidp.Start(ctx, devidp.Config{Users: []devidp.User{
		{Subject: "sub-b", Username: "bench", Email: "bench@example.com", EmailVerified: true, Groups: []string{"eng"}, Password: "x"},
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { idp.Close() })
	bg := startBenchGatewayWith(b, 22, func(c *Config, auth *ca.Authority) {
		prov, err := oidc.New(ctx, oidc.Config{Issuer: idp.Issuer(), ClientID: idp.ClientID(), Forbidden: auth.Policy().Forbidden, ValidPrincipal: ca.ValidateUserPrincipal})
		if err != nil {
			b.Fatal(err)
		}
		c.Login = &LoginConfig{Provider: prov, ClientID: idp.ClientID(), PerMinute: 1 << 30}
		c.Limits.MaxLoginConnectionsPerSource = 64 // all from 127.0.0.1
	}, withDeps...)
	// Each login gets the gateway's nonce first and hands over a token
	// carrying it (signing it here costs the IdP's part, not the gateway's).
	tokenFor := func(nonce string) (string, error) {
		claims, err := idp.Claims("bench")
		if err != nil {
			return "", err
		}
		claims["nonce"] = nonce
		return idp.SignToken(claims, nil, "")
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := gossh.NewSignerFromKey(priv)

	b.SetParallelism(8) // 16 logins at once on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			client, err := gossh.Dial("tcp", bg.addr, &gossh.ClientConfig{
				User: LoginUser, Auth: []gossh.AuthMethod{gossh.PublicKeys(key)},
				HostKeyCallback: gossh.FixedHostKey(bg.hostKey), HostKeyAlgorithms: []string{gossh.KeyAlgoED25519}, Timeout: 30 * time.Second,
			})
			if err != nil {
				b.Error(err)
				return
			}
			sess, err := client.NewSession()
			if err != nil {
				b.Error(err)
				client.Close()
				return
			}
			var errOut bytes.Buffer
			in, _ := sess.StdinPipe()
			outPipe, _ := sess.StdoutPipe()
			sess.Stderr = &errOut
			if err := sess.Start("login-token"); err != nil {
				b.Error(err)
				client.Close()
				return
			}
			out := bufio.NewReader(outPipe)
			line, _ := out.ReadString('\n')
			var msg struct {
				Nonce string `json:"nonce"`
			}
			_ = json.Unmarshal([]byte(line), &msg)
			token, err := tokenFor(msg.Nonce)
			if err != nil {
				b.Error(err)
				client.Close()
				return
			}
			io.WriteString(in, token+"\n")
			in.Close()
			rest, _ := io.ReadAll(out)
			err = sess.Wait()
			client.Close()
			if err != nil || !strings.Contains(string(rest), "-cert-v01@openssh.com ") {
				b.Errorf("login: %v %s", err, errOut.String())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}
