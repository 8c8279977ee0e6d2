package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/internal/alert"
)

// issueAlerts is the alerts: section exactly as issue 5 writes it.
const issueAlerts = `data_dir: ./data
auditor_groups: [auditors, security]
audit:
  retention: 90d
alerts:
  webhooks:
    - url: https://hooks.example.com/T000/B000/XXX   # Slack-compatible JSON by default
      format: slack            # or: json (the raw audit event + rule name)
      secret_file: /etc/bastion/webhook-secret       # optional HMAC-SHA256 signature header
  rules:                       # built-in rules, each can be tuned or switched off
    auth_failures: {threshold: 20, window: 5m}   # per source address
    forbidden_user: true       # any attempt as root or a forbidden principal
    password_attempt: true     # any client that tries password/keyboard-interactive
    new_source: true           # a user's first successful auth from a new /24 or /64
    ban: true                  # a source was banned
    ca_change: true            # ca rotate/retire, revoke, lock/unlock
    login_refused: {threshold: 5, window: 10m}   # per user
`

func TestAlertsSectionAsInTheIssue(t *testing.T) {
	f, err := Parse([]byte(issueAlerts))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.AlertRules(); got != alert.DefaultRules() {
		t.Errorf("rules %+v, want the defaults %+v", got, alert.DefaultRules())
	}
	w := f.Alerts.Webhooks[0]
	if w.URL != "https://hooks.example.com/T000/B000/XXX" || w.Format != "slack" || w.SecretFile != "/etc/bastion/webhook-secret" {
		t.Errorf("webhook %+v", w)
	}
	if time.Duration(f.Audit.Retention) != 90*24*time.Hour {
		t.Errorf("retention %s", time.Duration(f.Audit.Retention))
	}
	if g := f.Gateway(); strings.Join(g.AuditorGroups, ",") != "auditors,security" {
		t.Errorf("auditor groups %v", g.AuditorGroups)
	}
}

func TestAlertRulesTunedAndSwitchedOff(t *testing.T) {
	f, err := Parse([]byte(`data_dir: ./d
alerts:
  webhooks: [{url: "http://127.0.0.1:9/hook", format: json}]
  rules:
    auth_failures: {threshold: 50}
    login_refused: false
    new_source: false
`))
	if err != nil {
		t.Fatal(err)
	}
	want := alert.DefaultRules()
	want.AuthFailures.Count = 50
	want.LoginRefused = alert.Threshold{}
	want.NewSource = false
	if got := f.AlertRules(); got != want {
		t.Errorf("rules %+v\nwant %+v", got, want)
	}
	f, err = Parse([]byte("data_dir: ./d\n"))
	if err != nil || f.Alerts != nil || f.Audit.Retention != 0 {
		t.Errorf("no alerts: and no audit: must mean no alerts and keep forever: %+v, %v", f, err)
	}
}

func TestAlertRefusals(t *testing.T) {
	base := "data_dir: ./d\n"
	hook := "alerts:\n  webhooks: [{url: https://hooks.example.com/x}]\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"no webhooks", base + "alerts:\n  rules: {ban: true}\n", "alerts.webhooks is empty"},
		{"bad url", base + "alerts:\n  webhooks: [{url: hooks.example.com}]\n", "alerts.webhooks[0].url must be"},
		{"bad format", base + "alerts:\n  webhooks: [{url: https://h/x, format: xml}]\n", `alerts.webhooks[0].format "xml"`},
		{"unknown webhook key", base + "alerts:\n  webhooks: [{url: https://h/x, secret: abc}]\n", `unknown key "secret"`},
		{"unknown rule", base + hook + "  rules: {root_login: true}\n", `unknown key "root_login"`},
		{"unknown threshold key", base + hook + "  rules: {auth_failures: {count: 3}}\n", `unknown key "count"`},
		{"threshold not a number", base + hook + "  rules: {auth_failures: {threshold: many}}\n", "threshold"},
		{"rule not a bool", base + hook + "  rules: {ban: sometimes}\n", "ban"},
		{"threshold rule not a bool", base + hook + "  rules: {login_refused: sometimes}\n", "want true, false or"},
		{"negative threshold", base + hook + "  rules: {auth_failures: {threshold: -1}}\n", "alerts.rules.auth_failures.threshold"},
		{"short retention", base + "audit: {retention: 1h}\n", "audit.retention"},
		{"bad retention", base + "audit: {retention: forever}\n", "not a duration"},
		{"unknown audit key", base + "audit: {keep: 90d}\n", `unknown key "keep"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLoadResolvesSecretFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bastion.yaml")
	if err := os.WriteFile(p, []byte("data_dir: ./d\nalerts:\n  webhooks: [{url: https://h/x, secret_file: hook.secret}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Alerts.Webhooks[0].SecretFile; got != filepath.Join(dir, "hook.secret") {
		t.Errorf("secret_file resolved to %s", got)
	}
}
