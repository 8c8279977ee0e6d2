// Package config reads bastion.yaml, the gateway's configuration file.
//
// Decoding is strict: an unknown key or a value of the wrong shape stops
// the start with an error that names the key and says how to fix it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/gateway"
	"github.com/bastion-ssh/bastion/internal/textbound"
)

// File is bastion.yaml.
type File struct {
	// Path is the file Load read, for messages that name it; "" for a
	// File built in memory.
	Path string `yaml:"-"`
	// Dev marks the configuration `bastion dev` builds: its login service
	// tells clients so (see gateway.LoginConfig.Dev).
	Dev           bool     `yaml:"-"`
	Listen        string   `yaml:"listen"`
	DataDir       string   `yaml:"data_dir"`
	MetricsListen string   `yaml:"metrics_listen"`
	HostNames     []string `yaml:"host_names"`
	// AuthMethods exists only so that a config asking for password or
	// keyboard-interactive authentication is refused loudly.
	AuthMethods []string `yaml:"auth_methods"`
	Access      []Access `yaml:"access"`
	Limits      Limits   `yaml:"limits"`
	AdminGroups []string `yaml:"admin_groups"`
	// AuditorGroups may read the audit log through the gateway
	// (ssh auditor@bastion audit export|tail).
	AuditorGroups []string `yaml:"auditor_groups"`
	// Audit configures the audit log (retention).
	Audit Audit `yaml:"audit"`
	// Alerts, when present, sends alerts on suspicious activity to
	// webhooks.
	Alerts *Alerts `yaml:"alerts"`
	// RequireHardenedTargets refuses jumps to targets that offer password
	// or keyboard-interactive authentication (probed, cached for
	// HardenedTargetTTL).
	// KRLFile is rewritten with the OpenSSH KRL at start and after every
	// revocation made through the gateway.
	KRLFile                string   `yaml:"krl_file"`
	RequireHardenedTargets bool     `yaml:"require_hardened_targets"`
	HardenedTargetTTL      Duration `yaml:"hardened_target_ttl"`
	DialTimeout            Duration `yaml:"dial_timeout"`
	// ShutdownGrace is how long sessions may finish after SIGTERM.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	CA            CA       `yaml:"ca"`
	Log           Log      `yaml:"log"`
	// OIDC, when present, turns on the login service (ssh login@bastion).
	OIDC *OIDC `yaml:"oidc"`
	// Cert configures certificates issued at login.
	Cert Cert `yaml:"cert"`
	// Recording configures record-mode sessions.
	Recording Recording `yaml:"recording"`
	// Cluster, when present, shares state with other gateways through
	// etcd (see cluster.go).
	Cluster *Cluster `yaml:"cluster"`
}

// OIDC is the company identity provider.
type OIDC struct {
	Issuer           string   `yaml:"issuer"`
	ClientID         string   `yaml:"client_id"`
	ClientSecretFile string   `yaml:"client_secret_file"`
	Scopes           []string `yaml:"scopes"`
	UsernameClaim    string   `yaml:"username_claim"`
	GroupsClaim      string   `yaml:"groups_claim"`
	// GroupMap maps IdP group values (Entra ID object ids, Keycloak
	// paths) to bastion group names; unlisted values are dropped.
	GroupMap       map[string]string `yaml:"group_map"`
	AllowedDomains []string          `yaml:"allowed_domains"`
	// LoginsPerMinute limits logins per source address (default 10).
	LoginsPerMinute int `yaml:"logins_per_minute"`
	// OutageAlertAfter is how long the IdP may be unreachable before the
	// gateway records idp.down (default 2m).
	OutageAlertAfter Duration `yaml:"outage_alert_after"`
}

// Cert configures login certificates.
type Cert struct {
	DefaultValidity Duration             `yaml:"default_validity"`
	MaxValidity     Duration             `yaml:"max_validity"`
	Groups          map[string]CertGroup `yaml:"groups"`
}

// CertGroup adds principals to, and caps the validity of, a group's
// certificates.
type CertGroup struct {
	Principals  []string `yaml:"principals"`
	MaxValidity Duration `yaml:"max_validity"`
}

// Access is one access rule.
type Access struct {
	Principals []string `yaml:"principals"`
	Groups     []string `yaml:"groups"`
	Hosts      []string `yaml:"hosts"`
	Ports      []int    `yaml:"ports"`
	// Mode is record or tunnel; empty means record for rules that reach
	// port 22 only, tunnel otherwise.
	Mode string `yaml:"mode"`
	// Logins are extra inner login names for record mode.
	Logins []string `yaml:"logins"`
}

// Recording configures record-mode sessions and how their recordings
// are stored.
type Recording struct {
	// MaxBytesPerSession bounds what one session's recording stores
	// (default 64MiB); past it a marker says where storage stopped.
	MaxBytesPerSession ByteSize `yaml:"max_bytes_per_session"`
	// KnownHosts is a known_hosts file of target host keys trusted
	// besides host certificates from bastion's host CA.
	KnownHosts string `yaml:"known_hosts"`
	// Input records what users type (off by default).
	Input bool `yaml:"input"`
	// OnFailure is close (default) or continue.
	OnFailure string `yaml:"on_failure"`
	// HostCertCache is how long a minted host certificate is reused.
	HostCertCache Duration `yaml:"host_cert_cache"`
}

// Limits mirror gateway.Limits; nil means the default.
type Limits struct {
	MaxAuthTries          *int      `yaml:"max_auth_tries"`
	IdleTimeout           *Duration `yaml:"idle_timeout"`
	DisconnectExpiredCert *bool     `yaml:"disconnect_expired_cert"`
	BanAfterFailures      *int      `yaml:"ban_after_failures"`
	BanWindow             *Duration `yaml:"ban_window"`
	BanDuration           *Duration `yaml:"ban_duration"`
	MaxUnauthenticated    *int      `yaml:"max_unauthenticated"`
	HandshakeTimeout      *Duration `yaml:"handshake_timeout"`

	UnauthenticatedDropStart     *int      `yaml:"unauthenticated_drop_start"`
	UnauthenticatedDropRate      *int      `yaml:"unauthenticated_drop_rate"`
	MaxUnauthenticatedPerSource  *int      `yaml:"max_unauthenticated_per_source"`
	MaxSessions                  *int      `yaml:"max_sessions"`
	MaxLoginSessions             *int      `yaml:"max_login_sessions"`
	MaxLoginConnectionsPerSource *int      `yaml:"max_login_connections_per_source"`
	MaxSessionInput              *int      `yaml:"max_session_input"`
	ReportInterval               *Duration `yaml:"report_interval"`
}

// CA configures the certificate authority the gateway signs with.
type CA struct {
	// Dir, when set, is the directory of the CA key files (user_ca,
	// user_ca.pub, host_ca, host_ca.pub and their .previous.pub) instead
	// of DATA_DIR/ca: the gateways of a cluster each have their own
	// data_dir and read the same keys from here.
	Dir                 string   `yaml:"dir"`
	PassphraseFile      string   `yaml:"passphrase_file"`
	ForbiddenPrincipals []string `yaml:"forbidden_principals"`
	UserMaxValidity     Duration `yaml:"user_max_validity"`
	UserDefaultValidity Duration `yaml:"user_default_validity"`
	HostMaxValidity     Duration `yaml:"host_max_validity"`
	ClockSkew           Duration `yaml:"clock_skew"`
	ForceCommand        string   `yaml:"force_command"`
	SourceAddress       string   `yaml:"source_address"`
}

// Log configures the debug log (audit records are separate).
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or text
}

// Duration is a time.Duration written as "15m", "24h" or "90d".
type Duration time.Duration

var dayRE = regexp.MustCompile(`^(\d+)d$`)

// UnmarshalYAML accepts Go durations plus whole days ("90d").
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 15m, 8h or 90d", n.Line)
	}
	if m := dayRE.FindStringSubmatch(s); m != nil {
		days, err := strconv.Atoi(m[1])
		if err != nil || days > 100*366 {
			return fmt.Errorf("line %d: %s is too long", n.Line, shown(s))
		}
		*d = Duration(time.Duration(days) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %s is not a duration: use forms such as 15m, 8h or 90d", n.Line, shown(s))
	}
	*d = Duration(v)
	return nil
}

// Load reads and validates a config file. Relative paths in it are taken
// relative to the file's directory.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	f.Path = path
	base := filepath.Dir(path)
	paths := append([]*string{&f.DataDir, &f.CA.Dir, &f.CA.PassphraseFile, &f.KRLFile}, f.webhookSecretPaths()...)
	if f.OIDC != nil {
		paths = append(paths, &f.OIDC.ClientSecretFile)
	}
	if f.Cluster != nil {
		paths = append(paths, &f.Cluster.Etcd.CAFile, &f.Cluster.Etcd.CertFile, &f.Cluster.Etcd.KeyFile)
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return f, nil
}

// Parse decodes and validates config text.
func Parse(data []byte) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, explain(err)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type \S+`)

// explain rewrites yaml's errors into ones that name the key to fix.
func explain(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
	msg = unknownFieldRE.ReplaceAllStringFunc(msg, func(m string) string {
		key := unknownFieldRE.FindStringSubmatch(m)[1]
		return "unknown key " + shown(key) + " (check its spelling and indentation; the README lists every key)"
	})
	return errors.New(strings.TrimSpace(msg))
}

// Validate checks values that decoding alone does not, and fills defaults.
func (f *File) Validate() error {
	if f.Listen == "" {
		f.Listen = "127.0.0.1:2222"
	}
	if f.DataDir == "" {
		return fmt.Errorf("data_dir is not set: point it at the directory `bastion ca init --data-dir` created")
	}
	for _, m := range f.AuthMethods {
		if m != "publickey" {
			return fmt.Errorf("auth_methods: %s is not allowed: bastion accepts only publickey (certificates); passwords and keyboard-interactive are never enabled", shown(m))
		}
	}
	switch f.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log.level: %s is not one of debug, info, warn, error", shown(f.Log.Level))
	}
	switch f.Log.Format {
	case "", "json", "text":
	default:
		return fmt.Errorf("log.format: %s is not json or text", shown(f.Log.Format))
	}
	if err := validateListen("listen", f.Listen); err != nil {
		return err
	}
	if f.MetricsListen != "" {
		if err := validateListen("metrics_listen", f.MetricsListen); err != nil {
			return err
		}
	}
	gc := f.Gateway()
	if err := gc.Validate(); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "gateway: "))
	}
	if err := f.validateAudit(); err != nil {
		return err
	}
	if err := f.validateRecording(); err != nil {
		return err
	}
	if err := f.validateAlerts(); err != nil {
		return err
	}
	if err := f.validateCluster(); err != nil {
		return err
	}
	policy, err := f.Policy()
	if err != nil {
		return err
	}
	return f.validateLogin(policy)
}

// maxLoginsPerMinute bounds oidc.logins_per_minute: the limiter keeps one
// timestamp per login per source for a minute.
const maxLoginsPerMinute = 10000

// validateLogin checks the oidc: and cert: sections.
func (f *File) validateLogin(policy ca.Policy) error {
	if f.OIDC == nil {
		if len(f.Cert.Groups) > 0 || f.Cert.DefaultValidity != 0 || f.Cert.MaxValidity != 0 {
			return fmt.Errorf("cert: is set but oidc: is not; cert: configures login certificates, which need an oidc: section")
		}
		return nil
	}
	o := f.OIDC
	if o.Issuer == "" {
		return fmt.Errorf("oidc.issuer is empty: set it to your identity provider's issuer URL")
	}
	if o.ClientID == "" {
		return fmt.Errorf("oidc.client_id is empty: set it to the client registered for bastion at your identity provider")
	}
	switch o.UsernameClaim {
	case "", "email", "preferred_username", "sub":
	default:
		return fmt.Errorf("oidc.username_claim: %s is not one of email, preferred_username, sub", shown(o.UsernameClaim))
	}
	if o.LoginsPerMinute < 0 || o.LoginsPerMinute > maxLoginsPerMinute {
		return fmt.Errorf("oidc.logins_per_minute: %d is out of range: use 1 to %d logins per source per minute (default 10)", o.LoginsPerMinute, maxLoginsPerMinute)
	}
	max := time.Duration(f.Cert.MaxValidity)
	if max > policy.UserMaxValidity {
		return fmt.Errorf("cert.max_validity %s exceeds the CA's user maximum %s (ca.user_max_validity)", max, policy.UserMaxValidity)
	}
	if def := time.Duration(f.Cert.DefaultValidity); max > 0 && def > max {
		return fmt.Errorf("cert.default_validity %s exceeds cert.max_validity %s", def, max)
	}
	for g, cg := range f.Cert.Groups {
		for _, p := range cg.Principals {
			if policy.Forbidden(p) {
				return fmt.Errorf("cert.groups.%s.principals: %s is forbidden and is never signed", textbound.Cut(g, maxShown), shown(p))
			}
			if err := ca.ValidateUserPrincipal(p); err != nil {
				return fmt.Errorf("cert.groups.%s.principals: %v", g, err)
			}
		}
	}
	return nil
}

// Policy is the CA signing policy the file configures.
func (f *File) Policy() (ca.Policy, error) {
	p := ca.DefaultPolicy()
	p.ForbiddenPrincipals = f.CA.ForbiddenPrincipals
	set := func(dst *time.Duration, v Duration) {
		if v != 0 {
			*dst = time.Duration(v)
		}
	}
	set(&p.UserMaxValidity, f.CA.UserMaxValidity)
	set(&p.UserDefaultValidity, f.CA.UserDefaultValidity)
	set(&p.HostMaxValidity, f.CA.HostMaxValidity)
	set(&p.ClockSkew, f.CA.ClockSkew)
	p.ForceCommand = f.CA.ForceCommand
	p.SourceAddress = f.CA.SourceAddress
	if err := p.Validate(); err != nil {
		return p, errors.New("ca." + strings.TrimPrefix(err.Error(), "ca: policy: "))
	}
	return p, nil
}

// Gateway is the gateway configuration the file describes (without the
// runtime hooks cmd/bastion adds).
func (f *File) Gateway() gateway.Config {
	l := gateway.DefaultLimits()
	setInt := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	setDur := func(dst *time.Duration, v *Duration) {
		if v != nil {
			*dst = time.Duration(*v)
		}
	}
	setInt(&l.MaxAuthTries, f.Limits.MaxAuthTries)
	setDur(&l.IdleTimeout, f.Limits.IdleTimeout)
	if v := f.Limits.DisconnectExpiredCert; v != nil {
		l.DisconnectExpiredCert = *v
	}
	setInt(&l.BanAfterFailures, f.Limits.BanAfterFailures)
	setDur(&l.BanWindow, f.Limits.BanWindow)
	setDur(&l.BanDuration, f.Limits.BanDuration)
	setInt(&l.MaxUnauthenticated, f.Limits.MaxUnauthenticated)
	setDur(&l.HandshakeTimeout, f.Limits.HandshakeTimeout)
	setInt(&l.UnauthenticatedDropStart, f.Limits.UnauthenticatedDropStart)
	setInt(&l.UnauthenticatedDropRate, f.Limits.UnauthenticatedDropRate)
	setInt(&l.MaxUnauthenticatedPerSource, f.Limits.MaxUnauthenticatedPerSource)
	setInt(&l.MaxSessions, f.Limits.MaxSessions)
	setInt(&l.MaxLoginSessions, f.Limits.MaxLoginSessions)
	setInt(&l.MaxLoginConnectionsPerSource, f.Limits.MaxLoginConnectionsPerSource)
	setInt(&l.MaxSessionInput, f.Limits.MaxSessionInput)
	setDur(&l.ReportInterval, f.Limits.ReportInterval)
	var rules []gateway.AccessRule
	for _, a := range f.Access {
		rules = append(rules, gateway.AccessRule{Principals: a.Principals, Groups: a.Groups, Hosts: a.Hosts, Ports: a.Ports, Mode: a.Mode, Logins: a.Logins})
	}
	return gateway.Config{
		Listen:        f.Listen,
		HostKeyPath:   filepath.Join(f.DataDir, "gateway", "ssh_host_ed25519_key"),
		HostNames:     f.HostNames,
		Access:        rules,
		Limits:        l,
		AdminGroups:   f.AdminGroups,
		AuditorGroups: f.AuditorGroups,

		KRLFile:                f.KRLFile,
		RequireHardenedTargets: f.RequireHardenedTargets,
		HardenedTargetTTL:      time.Duration(f.HardenedTargetTTL),
		DialTimeout:            time.Duration(f.DialTimeout),
		ShutdownGrace:          time.Duration(f.ShutdownGrace),
		Record: gateway.RecordConfig{
			KnownHostsFile: f.Recording.KnownHosts,
			Input:          f.Recording.Input,
			OnFailure:      f.Recording.OnFailure,
			HostCertCache:  time.Duration(f.Recording.HostCertCache),
		},
	}
}

// validateListen checks a listen address's form and port before anything
// tries to listen on it, so a bad port is named as such rather than
// reported as a port in use.
func validateListen(key, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s: %s is not HOST:PORT, such as 127.0.0.1:2222 or :2222", key, shown(addr))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s: %s has invalid port %s: use 1-65535 (0 picks a free one)", key, shown(addr), shown(port))
	}
	return nil
}

// maxShown bounds a configuration or environment value an error echoes:
// enough to recognise it, never a screenful.
const maxShown = 80

// shown is s as an error shows it: quoted, and cut to maxShown bytes
// keeping both ends.
func shown(s string) string { return strconv.Quote(textbound.Cut(s, maxShown)) }
