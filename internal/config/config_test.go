package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const sample = `
listen: 127.0.0.1:2222
data_dir: ./data
metrics_listen: 127.0.0.1:9222
access:
  - principals: [alice]
    groups: [eng]
    hosts: ["127.0.0.1", "*.internal", "10.0.0.0/8"]
    ports: [22]
limits:
  max_auth_tries: 6
  idle_timeout: 15m
  disconnect_expired_cert: true
  ban_after_failures: 10
  ban_window: 10m
  ban_duration: 30m
  max_unauthenticated: 200
  unauthenticated_drop_start: 100
  unauthenticated_drop_rate: 40
  max_unauthenticated_per_source: 32
  max_sessions: 50
  max_login_sessions: 3
  max_login_connections_per_source: 5
  max_session_input: 32768
  report_interval: 30s
oidc:
  issuer: https://idp.example.com
  client_id: bastion
  client_secret_file: /etc/bastion/oidc-secret
  scopes: [openid, email, profile, groups]
  username_claim: email
  groups_claim: groups
  allowed_domains: [example.com]
cert:
  default_validity: 8h
  max_validity: 24h
  groups:
    dba: {principals: [postgres-admin], max_validity: 1h}
`

func TestParseSample(t *testing.T) {
	f, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	g := f.Gateway()
	if g.Listen != "127.0.0.1:2222" || len(g.Access) != 1 || g.Access[0].Hosts[1] != "*.internal" || g.Limits.BanAfterFailures != 10 || g.Limits.IdleTimeout != 15*time.Minute {
		t.Errorf("gateway config %+v", g)
	}
	if l := g.Limits; l.MaxUnauthenticated != 200 || l.UnauthenticatedDropStart != 100 || l.UnauthenticatedDropRate != 40 ||
		l.MaxUnauthenticatedPerSource != 32 || l.MaxSessions != 50 || l.MaxLoginSessions != 3 ||
		l.MaxLoginConnectionsPerSource != 5 || l.MaxSessionInput != 32768 || l.ReportInterval != 30*time.Second {
		t.Errorf("limits %+v", l)
	}
	if f.OIDC.Issuer != "https://idp.example.com" || time.Duration(f.Cert.Groups["dba"].MaxValidity) != time.Hour {
		t.Errorf("oidc/cert %+v %+v", f.OIDC, f.Cert)
	}
}

func TestLoadResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bastion.yaml")
	if err := os.WriteFile(p, []byte(sample), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.DataDir != filepath.Join(dir, "data") {
		t.Errorf("data_dir %q, want it relative to the config file", f.DataDir)
	}
}

func TestRefusals(t *testing.T) {
	base := "data_dir: ./d\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", base + "lisen: 1.2.3.4:22\n", `unknown key "lisen"`},
		{"unknown nested key", base + "limits:\n  max_auth_try: 3\n", `unknown key "max_auth_try"`},
		{"password method", base + "auth_methods: [publickey, password]\n", "passwords and keyboard-interactive are never enabled"},
		{"keyboard-interactive", base + "auth_methods: [keyboard-interactive]\n", "auth_methods"},
		{"password option spelled sshd-style", base + "PasswordAuthentication: yes\n", `unknown key "PasswordAuthentication"`},
		{"no data dir", "listen: 127.0.0.1:1\n", "data_dir"},
		{"bad duration", base + "limits:\n  idle_timeout: soon\n", "not a duration"},
		{"bad host pattern", base + "access:\n  - principals: [a]\n    hosts: ['a b']\n", "host pattern"},
		{"rule for nobody", base + "access:\n  - hosts: [web1]\n", "matches nobody"},
		{"port out of range", base + "access:\n  - principals: [a]\n    hosts: [web1]\n    ports: [70000]\n", "out of range"},
		{"max auth tries 0", base + "limits:\n  max_auth_tries: 0\n", "limits.max_auth_tries"},
		{"ban without window", base + "limits:\n  ban_after_failures: 3\n  ban_window: 0s\n", "limits.ban_window"},
		{"drop rate over 100", base + "limits:\n  unauthenticated_drop_rate: 101\n", "limits.unauthenticated_drop_rate"},
		{"drop start 0", base + "limits:\n  unauthenticated_drop_start: 0\n", "limits.unauthenticated_drop_start"},
		{"per-source cap 0", base + "limits:\n  max_unauthenticated_per_source: 0\n", "limits.max_unauthenticated_per_source"},
		{"max sessions 0", base + "limits:\n  max_sessions: 0\n", "limits.max_sessions"},
		{"login sessions 0", base + "limits:\n  max_login_sessions: 0\n", "limits.max_login_sessions"},
		{"login connections 0", base + "limits:\n  max_login_connections_per_source: 0\n", "limits.max_login_connections_per_source"},
		{"session input tiny", base + "limits:\n  max_session_input: 10\n", "limits.max_session_input"},
		{"report interval 0", base + "limits:\n  report_interval: 0s\n", "limits.report_interval"},
		{"oidc without issuer", base + "oidc:\n  client_id: x\n", "oidc.issuer"},
		{"group principal root", base + "oidc:\n  issuer: https://i\n  client_id: c\ncert:\n  groups:\n    ops: {principals: [root]}\n", "forbidden"},
		{"cert over CA max", base + "oidc:\n  issuer: https://i\n  client_id: c\ncert:\n  max_validity: 48h\n", "cert.max_validity"},
		{"cert without oidc", base + "cert:\n  default_validity: 1h\n", "oidc"},
		{"log level", base + "log: {level: loud}\n", "log.level"},
		{"wrong type", base + "access: yes\n", "cannot unmarshal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// FuzzParse: the config parser never panics on any input.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte("data_dir: x\nlimits: {idle_timeout: 1d}\n"))
	f.Add([]byte("data_dir: [\n"))
	f.Add([]byte("access:\n  - principals: [a]\n    hosts: ['10.0.0.0/8', '*']\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		f, err := Parse(data)
		if err == nil && f.DataDir == "" {
			t.Fatal("accepted a config without data_dir")
		}
	})
}

func TestLoginsPerMinuteIsBounded(t *testing.T) {
	for _, n := range []string{"-1", "10001", "1073741824"} {
		_, err := Parse([]byte("listen: 127.0.0.1:2222\ndata_dir: /d\noidc:\n  issuer: https://idp.example.com\n  client_id: bastion\n  logins_per_minute: " + n + "\n"))
		if err == nil || !strings.Contains(err.Error(), "logins_per_minute") {
			t.Errorf("logins_per_minute %s: err = %v", n, err)
		}
	}
}
