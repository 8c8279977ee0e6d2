package alert

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Rule names: stable, in alert bodies, metrics labels and audit records.
const (
	RuleAuthFailures    = "auth_failures"
	RuleForbiddenUser   = "forbidden_user"
	RulePasswordAttempt = "password_attempt"
	RuleNewSource       = "new_source"
	RuleBan             = "ban"
	RuleCAChange        = "ca_change"
	RuleLoginRefused    = "login_refused"
	RuleIdPDown         = "idp_down"
	// RuleRecordingTruncated: a session's recording reached
	// max_bytes_per_session and stopped storing.
	RuleRecordingTruncated = "recording_truncated"
)

// Threshold configures a rule that fires when Count events for one key
// (a source address, a user) fall within Window. Count 0 is off.
type Threshold struct {
	Count  int
	Window time.Duration
}

// Rules switch and tune the built-in rules. The zero value has every rule
// off; DefaultRules has all of them on.
type Rules struct {
	// AuthFailures: failed authentications from one source address.
	AuthFailures Threshold
	// ForbiddenUser: any attempt to log in as root or another forbidden
	// principal, at the gateway or through the login service.
	ForbiddenUser bool
	// PasswordAttempt: any client that tries password or
	// keyboard-interactive authentication (never offered; bots try).
	PasswordAttempt bool
	// NewSource: a user's first successful login from a network (/24 for
	// IPv4, /64 for IPv6) other than those seen before. A user's very
	// first login sets the baseline and raises nothing.
	NewSource bool
	// Ban: a source address was banned for repeated failures.
	Ban bool
	// CAChange: a CA key rotated or retired, a certificate revoked, a
	// user locked or unlocked.
	CAChange bool
	// LoginRefused: refusals of one user (auth.failed naming the user,
	// login.failed naming the identity).
	LoginRefused Threshold
	// IdPDown: the identity provider stayed unreachable for the gateway's
	// outage threshold (idp.down): nobody can log in.
	IdPDown bool
	// RecordingTruncated: a session's recording reached
	// max_bytes_per_session (recording.truncated): the rest of the
	// session is not stored.
	RecordingTruncated bool
}

// DefaultRules are the rules on, with the thresholds.
func DefaultRules() Rules {
	return Rules{
		AuthFailures:    Threshold{Count: 20, Window: 5 * time.Minute},
		ForbiddenUser:   true,
		PasswordAttempt: true,
		NewSource:       true,
		Ban:             true,
		CAChange:        true,
		LoginRefused:    Threshold{Count: 5, Window: 10 * time.Minute},
		IdPDown:         true,

		RecordingTruncated: true,
	}
}

// Format is a webhook body format.
type Format string

// Webhook body formats.
const (
	// FormatSlack is {"text": "..."}, which Slack, Mattermost, Rocket.Chat
	// and most chat incoming webhooks accept.
	FormatSlack Format = "slack"
	// FormatJSON is the alert as JSON, with the raw audit event that
	// triggered it and the rule's name (see Payload).
	FormatJSON Format = "json"
)

// Webhook is one alert destination.
type Webhook struct {
	// URL receives a POST per alert. Keep it secret: chat webhook URLs
	// carry their credential in the path, so logs and audit records name
	// only the scheme and host.
	URL string
	// Format of the body; default FormatSlack.
	Format Format
	// Secret, when set, signs each request (see SignatureHeader).
	Secret []byte
}

// Config configures an Engine. Zero durations and counts take the
// defaults named on each field.
type Config struct {
	Webhooks []Webhook
	Rules    Rules
	// Source names this gateway in alert texts (e.g. its host name).
	Source string

	// QueueSize bounds each webhook's queue of undelivered alerts
	// (default 256); an alert that finds it full is a dead letter.
	QueueSize int
	// Workers deliver to one webhook concurrently (default 2), so one
	// alert in backoff does not hold up the next.
	Workers int
	// MaxAttempts per delivery (default 6) with exponential backoff from
	// Backoff (default 1s) doubling up to MaxBackoff (default 1m); the
	// defaults give up after about 31s of retrying.
	MaxAttempts int
	Backoff     time.Duration
	MaxBackoff  time.Duration
	// Timeout bounds one HTTP attempt (default 10s).
	Timeout time.Duration

	// Cooldown is the least time between two alerts of one rule about one
	// key (default 10m); while the key keeps firing the interval doubles
	// up to MaxCooldown (default 1h). A key quiet for MaxCooldown starts
	// afresh.
	Cooldown    time.Duration
	MaxCooldown time.Duration
	// RuleBurst alerts of one rule may go out at once (default 5); after
	// that one more per RuleEvery (default 10m). Together with the
	// cooldown this keeps a botnet's thousand sources to a handful of
	// alerts, each saying how many similar ones it stands for.
	RuleBurst int
	RuleEvery time.Duration

	// Client sends the webhooks; default an http.Client with Timeout.
	Client *http.Client
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
}

// withDefaults returns c with defaults filled in.
func (c Config) withDefaults() Config {
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setInt(&c.QueueSize, 256)
	setInt(&c.Workers, 2)
	setInt(&c.MaxAttempts, 6)
	setInt(&c.RuleBurst, 5)
	setDur(&c.Backoff, time.Second)
	setDur(&c.MaxBackoff, time.Minute)
	setDur(&c.Timeout, 10*time.Second)
	setDur(&c.Cooldown, 10*time.Minute)
	setDur(&c.MaxCooldown, time.Hour)
	setDur(&c.RuleEvery, 10*time.Minute)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: c.Timeout}
	}
	return c
}

// Validate checks the configuration and names the field to fix.
func (c Config) Validate() error {
	for i, w := range c.Webhooks {
		if err := w.Validate(); err != nil {
			return fmt.Errorf("alert: webhooks[%d]: %w", i, err)
		}
	}
	for name, th := range map[string]Threshold{RuleAuthFailures: c.Rules.AuthFailures, RuleLoginRefused: c.Rules.LoginRefused} {
		if th.Count < 0 || (th.Count > 0 && th.Window <= 0) {
			return fmt.Errorf("alert: rules.%s: threshold must be 0 (off) or more, with a positive window", name)
		}
	}
	for name, v := range map[string]int{"queue_size": c.QueueSize, "workers": c.Workers, "max_attempts": c.MaxAttempts, "rule_burst": c.RuleBurst} {
		if v < 0 {
			return fmt.Errorf("alert: %s must not be negative", name)
		}
	}
	for name, v := range map[string]time.Duration{"backoff": c.Backoff, "max_backoff": c.MaxBackoff, "timeout": c.Timeout, "cooldown": c.Cooldown, "max_cooldown": c.MaxCooldown, "rule_every": c.RuleEvery} {
		if v < 0 {
			return fmt.Errorf("alert: %s must not be negative", name)
		}
	}
	return nil
}

// Validate checks one webhook.
func (w Webhook) Validate() error {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("url must be an http:// or https:// URL with a host, such as https://hooks.slack.com/services/T000/B000/XXX")
	}
	switch w.Format {
	case "", FormatSlack, FormatJSON:
	default:
		return fmt.Errorf("format %q is not slack or json", w.Format)
	}
	return nil
}

// Name is the webhook as logs and audit records show it: scheme and host
// only, because chat webhook URLs carry their credential in the path.
func (w Webhook) Name() string {
	u, err := url.Parse(w.URL)
	if err != nil {
		return "(invalid url)"
	}
	return u.Scheme + "://" + u.Host
}

// tokenSegment is the length from which a path segment is taken for a
// credential and shortened by Label: chat webhooks put theirs in the path
// (Slack 24 characters, Discord 68, Teams GUIDs 36, PagerDuty keys 32).
const tokenSegment = 16

// Label is the webhook as `bastion alerts test` shows it to the operator:
// scheme, host and path, so that two webhooks on one host can be told
// apart, with each path segment of tokenSegment characters or more cut to
// its first four and "…". Never the user info or the query, which carry
// credentials.
func (w Webhook) Label() string {
	u, err := url.Parse(w.URL)
	if err != nil {
		return "(invalid url)"
	}
	segs := strings.Split(u.EscapedPath(), "/")
	for i, s := range segs {
		if len(s) >= tokenSegment {
			segs[i] = s[:4] + "…"
		}
	}
	return u.Scheme + "://" + u.Host + strings.Join(segs, "/")
}
