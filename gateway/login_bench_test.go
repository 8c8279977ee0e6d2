package gateway

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/oidc"
)

// BenchmarkConcurrentLogins measures certificates issued per second by the
// login service under concurrent logins: each op is a full SSH connection
// as `login`, an ID token handed over (the PKCE path), verification against
// the IdP's keys, the signing pipeline, durable login.started, cert.issued
// and login.ok records, and the certificate back on stdout. The human part
// of a login (the browser) is not in it.
func BenchmarkConcurrentLogins(b *testing.B) {
	ctx := b.Context()
	idp, err := devidp.Start(ctx, devidp.Config{Users: []devidp.User{
		{Subject: "sub-b", Username: "bench", Email: "bench@example.com", EmailVerified: true, Groups: []string{"eng"}, Password: "x"},
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { idp.Close() })
	layout := ca.Layout{DataDir: b.TempDir()}
	if _, _, err := ca.Init(layout, ca.InitOptions{}); err != nil {
		b.Fatal(err)
	}
	store, err := audit.Open(layout.AuditDB(), audit.Options{})
	if err != nil {
		b.Fatal(err)
	}
	auth, err := ca.New(ca.Config{Layout: layout}, store)
	if err != nil {
		b.Fatal(err)
	}
	revs, _ := ca.LoadRevocations(store, nil)
	locks, _ := LoadLocks(store, nil)
	prov, err := oidc.New(ctx, oidc.Config{Issuer: idp.Issuer(), ClientID: idp.ClientID(), Forbidden: auth.Policy().Forbidden, ValidPrincipal: ca.ValidateUserPrincipal})
	if err != nil {
		b.Fatal(err)
	}
	limits := DefaultLimits()
	limits.BanAfterFailures = 0
	gw, err := New(Config{
		Listen: "127.0.0.1:0", HostKeyPath: layout.DataDir + "/gateway/key", HostNames: []string{"127.0.0.1"}, Limits: limits,
		Login: &LoginConfig{Provider: prov, ClientID: idp.ClientID(), PerMinute: 1 << 30},
	}, Deps{Authority: auth, Revocations: revs, Locks: locks, Audit: store})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
	b.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		gw.Shutdown(sctx)
		<-served
		store.Close()
	})
	claims, err := idp.Claims("bench")
	if err != nil {
		b.Fatal(err)
	}
	token, err := idp.SignToken(claims, nil, "")
	if err != nil {
		b.Fatal(err)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := gossh.NewSignerFromKey(priv)
	hostKey := gw.HostKeys()[0].PublicKey()

	b.SetParallelism(8) // 16 logins at once on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			client, err := gossh.Dial("tcp", ln.Addr().String(), &gossh.ClientConfig{
				User: LoginUser, Auth: []gossh.AuthMethod{gossh.PublicKeys(key)},
				HostKeyCallback: gossh.FixedHostKey(hostKey), HostKeyAlgorithms: []string{gossh.KeyAlgoED25519}, Timeout: 30 * time.Second,
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
			var out, errOut bytes.Buffer
			sess.Stdin, sess.Stdout, sess.Stderr = strings.NewReader(token+"\n\n"), &out, &errOut
			err = sess.Run("login-token")
			client.Close()
			if err != nil || !strings.Contains(out.String(), "-cert-v01@openssh.com ") {
				b.Errorf("login: %v %s", err, errOut.String())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}
