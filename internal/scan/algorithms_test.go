package scan

import (
	"slices"
	"strings"
	"testing"
)

func TestJudgeAlgorithm(t *testing.T) {
	tests := []struct {
		class algoClass
		name  string
		want  string
	}{
		// Key exchange.
		{classKex, "diffie-hellman-group1-sha1", SeverityFail},
		{classKex, "diffie-hellman-group14-sha1", SeverityFail},
		{classKex, "diffie-hellman-group-exchange-sha1", SeverityFail},
		{classKex, "gss-group14-sha1-toWM5Slw5Ew8Mqkay+al2g==", SeverityFail},
		{classKex, "ecdh-sha2-nistp256", SeverityWarn},
		{classKex, "ecdh-sha2-nistp521", SeverityWarn},
		{classKex, "curve25519-sha256", ""},
		{classKex, "curve25519-sha256@libssh.org", ""},
		{classKex, "sntrup761x25519-sha512@openssh.com", ""},
		{classKex, "mlkem768x25519-sha256", ""},
		{classKex, "diffie-hellman-group16-sha512", ""},
		{classKex, "kex-strict-s-v00@openssh.com", ""},
		{classKex, "ext-info-s", ""},
		// Host keys.
		{classHostKey, "ssh-rsa", SeverityFail},
		{classHostKey, "ssh-rsa-cert-v01@openssh.com", SeverityFail},
		{classHostKey, "ssh-dss", SeverityFail},
		{classHostKey, "ssh-dss-cert-v01@openssh.com", SeverityFail},
		{classHostKey, "ecdsa-sha2-nistp256", SeverityWarn},
		{classHostKey, "ecdsa-sha2-nistp384-cert-v01@openssh.com", SeverityWarn},
		{classHostKey, "sk-ecdsa-sha2-nistp256@openssh.com", SeverityWarn},
		{classHostKey, "ssh-ed25519", ""},
		{classHostKey, "ssh-ed25519-cert-v01@openssh.com", ""},
		{classHostKey, "rsa-sha2-512", ""},
		{classHostKey, "rsa-sha2-256-cert-v01@openssh.com", ""},
		// Ciphers.
		{classCipher, "aes128-cbc", SeverityFail},
		{classCipher, "aes256-cbc", SeverityFail},
		{classCipher, "3des-cbc", SeverityFail},
		{classCipher, "arcfour256", SeverityFail},
		{classCipher, "blowfish-cbc", SeverityFail},
		{classCipher, "rijndael-cbc@lysator.liu.se", SeverityFail},
		{classCipher, "none", SeverityFail},
		{classCipher, "aes256-gcm@openssh.com", ""},
		{classCipher, "aes128-ctr", ""},
		{classCipher, "chacha20-poly1305@openssh.com", ""},
		// MACs.
		{classMAC, "hmac-sha1", SeverityFail},
		{classMAC, "hmac-sha1-96", SeverityFail},
		{classMAC, "hmac-sha1-etm@openssh.com", SeverityFail},
		{classMAC, "hmac-md5", SeverityFail},
		{classMAC, "hmac-md5-96-etm@openssh.com", SeverityFail},
		{classMAC, "hmac-ripemd160", SeverityFail},
		{classMAC, "hmac-sha2-256", SeverityWarn},
		{classMAC, "hmac-sha2-512", SeverityWarn},
		{classMAC, "umac-128@openssh.com", SeverityWarn},
		{classMAC, "umac-64-etm@openssh.com", SeverityWarn},
		{classMAC, "hmac-sha2-256-etm@openssh.com", ""},
		{classMAC, "hmac-sha2-512-etm@openssh.com", ""},
		{classMAC, "umac-128-etm@openssh.com", ""},
	}
	for _, tc := range tests {
		t.Run(tc.class.name+"/"+tc.name, func(t *testing.T) {
			got, why := judgeAlgorithm(tc.class, tc.name)
			if got != tc.want {
				t.Fatalf("judgeAlgorithm(%s) = %q (%s), want %q", tc.name, got, why, tc.want)
			}
			if (got == "") != (why == "") {
				t.Fatalf("severity %q with reason %q", got, why)
			}
		})
	}
}

func TestJudgeKexInit(t *testing.T) {
	k := kexInit{
		KexAlgos:            []string{"curve25519-sha256", "ecdh-sha2-nistp256", strictKexServer},
		HostKeyAlgos:        []string{"ssh-ed25519", "ssh-rsa"},
		CiphersClientServer: []string{"aes128-ctr", "aes128-cbc"},
		CiphersServerClient: []string{"aes128-cbc", "3des-cbc"},
		MACsClientServer:    []string{"hmac-sha2-256-etm@openssh.com", "hmac-sha2-256"},
		MACsServerClient:    []string{"hmac-sha2-256"},
	}
	weak, findings := judgeKexInit(k)
	want := []string{"ecdh-sha2-nistp256", "ssh-rsa", "aes128-cbc", "3des-cbc", "hmac-sha2-256"}
	if !slices.Equal(weak, want) {
		t.Fatalf("weak = %v, want %v (each once, in the server's order)", weak, want)
	}
	if len(findings) != len(want) {
		t.Fatalf("findings = %v, want one per weak algorithm and no terrapin (strict kex is on)", findings)
	}
	if findings[2].Code != CodeWeakCipher || findings[2].Severity != SeverityFail {
		t.Errorf("finding for aes128-cbc = %+v", findings[2])
	}
}

func TestJudgeTerrapin(t *testing.T) {
	tests := []struct {
		name string
		k    kexInit
		want bool
	}{
		{"chacha without strict kex", kexInit{KexAlgos: []string{"curve25519-sha256"}, CiphersServerClient: []string{"chacha20-poly1305@openssh.com"}}, true},
		{"chacha with strict kex", kexInit{KexAlgos: []string{"curve25519-sha256", strictKexServer}, CiphersServerClient: []string{"chacha20-poly1305@openssh.com"}}, false},
		{"cbc with etm", kexInit{CiphersClientServer: []string{"aes128-cbc"}, MACsClientServer: []string{"hmac-sha2-256-etm@openssh.com"}}, true},
		{"ctr with etm", kexInit{CiphersClientServer: []string{"aes128-ctr"}, MACsClientServer: []string{"hmac-sha2-256-etm@openssh.com"}}, false},
		{"gcm only", kexInit{CiphersClientServer: []string{"aes256-gcm@openssh.com"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, got := judgeTerrapin(tc.k)
			if got != tc.want {
				t.Fatalf("terrapin = %v, want %v", got, tc.want)
			}
			if got && (f.Code != CodeTerrapin || f.Severity != SeverityWarn) {
				t.Errorf("finding %+v", f)
			}
		})
	}
}

func TestNormalizeTarget(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"web1", "web1:22", ""},
		{"web1:2222", "web1:2222", ""},
		{"10.0.0.5", "10.0.0.5:22", ""},
		{"::1", "[::1]:22", ""},
		{"[::1]", "[::1]:22", ""},
		{"[::1]:2022", "[::1]:2022", ""},
		{" web1 ", "web1:22", ""},
		{"", "", "empty"},
		{"web1:0", "", "port"},
		{"web1:ssh", "", "port"},
		{"web1:70000", "", "port"},
		{"alice@web1", "", "not HOST"},
		{"ssh://web1", "", "not HOST"},
		{":22", "", "no host"},
		{"fe80::1::2", "", "IPv6"},
	}
	for _, tc := range tests {
		got, err := NormalizeTarget(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NormalizeTarget(%q) = %q, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeTarget(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
