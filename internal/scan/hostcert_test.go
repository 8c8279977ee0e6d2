package scan

import (
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestJudgeHostKey covers the host certificate verdicts that a real sshd
// cannot easily be made to produce: wrong type, expired, bad signature,
// missing principal.
func TestJudgeHostKey(t *testing.T) {
	ours, theirs, host := testbed.NewSigner(t), testbed.NewSigner(t), testbed.NewSigner(t)
	now := time.Unix(1_800_000_000, 0)
	certFor := func(mod func(c *ssh.Certificate), signer ssh.Signer) *ssh.Certificate {
		c := &ssh.Certificate{
			Key:             host.PublicKey(),
			CertType:        ssh.HostCert,
			KeyId:           "web1",
			ValidPrincipals: []string{"web1.internal", "10.0.0.5"},
			ValidAfter:      uint64(now.Add(-time.Hour).Unix()),
			ValidBefore:     uint64(now.Add(time.Hour).Unix()),
		}
		if mod != nil {
			mod(c)
		}
		if err := c.SignCert(rand.Reader, signer); err != nil {
			t.Fatal(err)
		}
		return c
	}
	plainCA := []ssh.PublicKey{ours.PublicKey()}
	hostCertAlgos := kexInit{HostKeyAlgos: []string{"ssh-ed25519-cert-v01@openssh.com", "ssh-ed25519"}}

	tests := []struct {
		name     string
		key      ssh.PublicKey
		kex      kexInit
		host     string
		cas      []ssh.PublicKey
		wantCert bool
		wantOurs bool
		want     []string // finding codes, in order
	}{
		{"valid, ours", certFor(nil, ours), hostCertAlgos, "web1.internal", plainCA, true, true, nil},
		{"valid, ours, by IP", certFor(nil, ours), hostCertAlgos, "10.0.0.5", plainCA, true, true, nil},
		{"other CA", certFor(nil, theirs), hostCertAlgos, "web1.internal", plainCA, true, false, []string{CodeForeignHostCert}},
		{"no CA given", certFor(nil, ours), hostCertAlgos, "web1.internal", nil, true, false, []string{CodeHostCertUnchecked}},
		{"user certificate", certFor(func(c *ssh.Certificate) { c.CertType = ssh.UserCert }, ours), hostCertAlgos, "web1.internal", plainCA, true, false, []string{CodeHostCertInvalid}},
		{"expired", certFor(func(c *ssh.Certificate) { c.ValidBefore = uint64(now.Add(-time.Minute).Unix()) }, ours), hostCertAlgos, "web1.internal", plainCA, true, false, []string{CodeHostCertInvalid}},
		{"not yet valid", certFor(func(c *ssh.Certificate) { c.ValidAfter = uint64(now.Add(time.Minute).Unix()) }, ours), hostCertAlgos, "web1.internal", plainCA, true, false, []string{CodeHostCertInvalid}},
		{"wrong host", certFor(nil, ours), hostCertAlgos, "db1.internal", plainCA, true, true, []string{CodeHostCertPrincipal}},
		{"forged signature", func() ssh.PublicKey {
			c := certFor(nil, ours)
			c.ValidPrincipals = append(c.ValidPrincipals, "db1.internal") // changed after signing
			return c
		}(), hostCertAlgos, "db1.internal", plainCA, true, false, []string{CodeHostCertInvalid}},
		{"CA list holding a certificate", certFor(nil, ours), hostCertAlgos, "web1.internal", []ssh.PublicKey{certFor(nil, ours)}, true, false, []string{CodeForeignHostCert}},
		{"plain key", host.PublicKey(), kexInit{HostKeyAlgos: []string{"ssh-ed25519"}}, "web1.internal", plainCA, false, false, []string{CodeNoHostCert}},
		{"cert offered but not fetched", host.PublicKey(), kexInit{HostKeyAlgos: []string{"ssh-dss-cert-v01@openssh.com", "ssh-ed25519"}}, "web1.internal", plainCA, true, false, []string{CodeHostCertUnchecked}},
		{"handshake failed early", nil, kexInit{HostKeyAlgos: []string{"ssh-ed25519"}}, "web1.internal", plainCA, false, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var res Result
			judgeHostKey(&res, tc.key, tc.kex, tc.host, Options{HostCAs: tc.cas, Now: func() time.Time { return now }})
			var got []string
			for _, f := range res.Findings {
				got = append(got, f.Code)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("findings %v, want %v (%+v)", got, tc.want, res.Findings)
			}
			if res.HostCert != tc.wantCert || res.HostCertFromOurCA != tc.wantOurs {
				t.Errorf("HostCert=%v HostCertFromOurCA=%v, want %v %v", res.HostCert, res.HostCertFromOurCA, tc.wantCert, tc.wantOurs)
			}
		})
	}
}
