package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bastion-ssh/bastion/internal/alert"
)

// Audit configures the audit log.
type Audit struct {
	// Retention prunes events older than this, e.g. 90d; unset keeps
	// every event forever.
	Retention Duration `yaml:"retention"`
}

// minRetention is the shortest retention accepted: anything shorter
// deletes evidence before anyone has read it.
const minRetention = 24 * time.Hour

// Alerts is the alerts: section.
type Alerts struct {
	Webhooks []Webhook `yaml:"webhooks"`
	// Rules tune or switch off the built-in rules; a rule not named is on
	// with its default.
	Rules AlertRules `yaml:"rules"`
}

// Webhook is one alert destination.
type Webhook struct {
	URL string `yaml:"url"`
	// Format is slack (default) or json.
	Format string `yaml:"format"`
	// SecretFile holds the HMAC-SHA256 key that signs each request.
	SecretFile string `yaml:"secret_file"`
}

// AlertRules are the rules: keys. Each may be left out (on, default),
// false (off) or true (on); the threshold rules also take
// {threshold: N, window: DURATION}.
type AlertRules struct {
	AuthFailures    *ThresholdRule `yaml:"auth_failures"`
	ForbiddenUser   *bool          `yaml:"forbidden_user"`
	PasswordAttempt *bool          `yaml:"password_attempt"`
	NewSource       *bool          `yaml:"new_source"`
	Ban             *bool          `yaml:"ban"`
	CAChange        *bool          `yaml:"ca_change"`
	LoginRefused    *ThresholdRule `yaml:"login_refused"`
	IdPDown         *bool          `yaml:"idp_down"`
	// RecordingTruncated is the recording_truncated rule.
	RecordingTruncated *bool `yaml:"recording_truncated"`
}

// UnmarshalYAML decodes the rules: mapping, naming the key in every error
// and refusing unknown ones.
func (r *AlertRules) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: alerts.rules: want a mapping of rule names to settings", n.Line)
	}
	thresholds := map[string]**ThresholdRule{"auth_failures": &r.AuthFailures, "login_refused": &r.LoginRefused}
	switches := map[string]**bool{
		"forbidden_user": &r.ForbiddenUser, "password_attempt": &r.PasswordAttempt, "new_source": &r.NewSource,
		"ban": &r.Ban, "ca_change": &r.CAChange, "idp_down": &r.IdPDown,
		"recording_truncated": &r.RecordingTruncated,
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if dst, ok := thresholds[k.Value]; ok {
			t := &ThresholdRule{}
			if err := t.UnmarshalYAML(v); err != nil {
				return fmt.Errorf("alerts.rules.%s: %w", k.Value, err)
			}
			*dst = t
			continue
		}
		dst, ok := switches[k.Value]
		if !ok {
			return fmt.Errorf("line %d: alerts.rules: unknown key %s: the rules are auth_failures, forbidden_user, password_attempt, new_source, ban, ca_change, login_refused", k.Line, shown(k.Value))
		}
		var on bool
		if err := v.Decode(&on); err != nil {
			return fmt.Errorf("line %d: alerts.rules.%s: want true or false", v.Line, k.Value)
		}
		*dst = &on
	}
	return nil
}

// ThresholdRule is a threshold rule's setting.
type ThresholdRule struct {
	// Off is set by `false`.
	Off bool
	// Threshold and Window; zero keeps the default.
	Threshold int
	Window    Duration
}

// UnmarshalYAML accepts true, false or {threshold: N, window: DURATION},
// refusing unknown keys as the rest of the file does.
func (t *ThresholdRule) UnmarshalYAML(n *yaml.Node) error {
	const want = "want true, false or {threshold: N, window: DURATION}"
	switch n.Kind {
	case yaml.ScalarNode:
		var on bool
		if err := n.Decode(&on); err != nil {
			return fmt.Errorf("line %d: %s", n.Line, want)
		}
		t.Off = !on
		return nil
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			var err error
			switch k.Value {
			case "threshold":
				err = v.Decode(&t.Threshold)
			case "window":
				err = v.Decode(&t.Window)
			default:
				return fmt.Errorf("line %d: unknown key %s: %s", k.Line, shown(k.Value), want)
			}
			if err != nil {
				return fmt.Errorf("line %d: %s: %v", v.Line, k.Value, err)
			}
		}
		return nil
	}
	return fmt.Errorf("line %d: %s", n.Line, want)
}

// validateAudit checks the audit: section.
func (f *File) validateAudit() error {
	if r := time.Duration(f.Audit.Retention); r != 0 && r < minRetention {
		return fmt.Errorf("audit.retention: %s is shorter than a day and would delete evidence before anyone reads it: use 24h or more, e.g. 90d, or leave it unset to keep every event", r)
	}
	return nil
}

// validateAlerts checks the alerts: section.
func (f *File) validateAlerts() error {
	a := f.Alerts
	if a == nil {
		return nil
	}
	if len(a.Webhooks) == 0 {
		return fmt.Errorf("alerts.webhooks is empty: add a webhook (url: https://...), or remove the alerts: section")
	}
	for i, w := range a.Webhooks {
		if err := (alert.Webhook{URL: w.URL, Format: alert.Format(w.Format)}).Validate(); err != nil {
			return fmt.Errorf("alerts.webhooks[%d].%s", i, err)
		}
	}
	for name, r := range map[string]*ThresholdRule{"auth_failures": a.Rules.AuthFailures, "login_refused": a.Rules.LoginRefused} {
		if r == nil || r.Off {
			continue
		}
		if r.Threshold < 0 {
			return fmt.Errorf("alerts.rules.%s.threshold must be 1 or more (use %s: false to switch the rule off)", name, name)
		}
		if r.Window < 0 {
			return fmt.Errorf("alerts.rules.%s.window must be positive, e.g. 5m", name)
		}
	}
	return nil
}

// AlertRules are the rules the alerts: section configures: the defaults,
// tuned or switched off key by key.
func (f *File) AlertRules() alert.Rules {
	r := alert.DefaultRules()
	if f.Alerts == nil {
		return r
	}
	c := f.Alerts.Rules
	threshold := func(dst *alert.Threshold, t *ThresholdRule) {
		switch {
		case t == nil:
		case t.Off:
			*dst = alert.Threshold{}
		default:
			if t.Threshold > 0 {
				dst.Count = t.Threshold
			}
			if t.Window > 0 {
				dst.Window = time.Duration(t.Window)
			}
		}
	}
	flag := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	threshold(&r.AuthFailures, c.AuthFailures)
	threshold(&r.LoginRefused, c.LoginRefused)
	flag(&r.ForbiddenUser, c.ForbiddenUser)
	flag(&r.PasswordAttempt, c.PasswordAttempt)
	flag(&r.NewSource, c.NewSource)
	flag(&r.Ban, c.Ban)
	flag(&r.CAChange, c.CAChange)
	flag(&r.IdPDown, c.IdPDown)
	flag(&r.RecordingTruncated, c.RecordingTruncated)
	return r
}

// webhookSecretPaths are the secret_file paths, for Load to resolve.
func (f *File) webhookSecretPaths() []*string {
	if f.Alerts == nil {
		return nil
	}
	var ps []*string
	for i := range f.Alerts.Webhooks {
		ps = append(ps, &f.Alerts.Webhooks[i].SecretFile)
	}
	return ps
}
