package gateway

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"
)

// Config configures a Gateway. cmd/bastion builds it from bastion.yaml.
type Config struct {
	// Listen is the SSH address, e.g. 127.0.0.1:2222.
	Listen string
	// HostKeyPath is the gateway's own host key (created if missing); its
	// certificate is HostKeyPath+"-cert.pub", re-signed by the host CA
	// whenever it is missing, foreign or near expiry.
	HostKeyPath string
	// HostNames are the principals of the gateway's host certificate.
	HostNames []string
	// Access rules; the first that matches decides, no match refuses.
	Access []AccessRule
	// Limits against abuse.
	Limits Limits
	// AdminGroups may lock and unlock users through the gateway.
	AdminGroups []string
	// AuditorGroups may read the audit log through the gateway (`audit
	// export`, `audit tail`).
	AuditorGroups []string
	// DialTimeout bounds connecting to a target.
	DialTimeout time.Duration
	// ShutdownGrace is how long live sessions may finish on SIGTERM.
	ShutdownGrace time.Duration
	// KRLFile, when set, is rewritten with the OpenSSH KRL at start and
	// after every revocation through the gateway.
	KRLFile string
	// RequireHardenedTargets probes each target (cached for
	// HardenedTargetTTL, default 10m) and refuses jumps to targets that
	// offer password or keyboard-interactive authentication.
	RequireHardenedTargets bool
	HardenedTargetTTL      time.Duration
	// Record configures record-mode sessions (see AccessRule.Mode).
	Record RecordConfig
	// Login, when set, runs the login service for the reserved user
	// "login".
	Login *LoginConfig
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger receives debug logs (never secrets); default discards.
	Logger *slog.Logger
}

// Limits bound what one source or one connection can do.
type Limits struct {
	// MaxAuthTries per connection (as sshd's MaxAuthTries).
	MaxAuthTries int
	// IdleTimeout closes connections with no traffic.
	IdleTimeout time.Duration
	// DisconnectExpiredCert ends connections when their certificate expires.
	DisconnectExpiredCert bool
	// BanAfterFailures failed attempts within BanWindow from one source
	// address ban it for BanDuration. 0 disables banning.
	BanAfterFailures int
	BanWindow        time.Duration
	BanDuration      time.Duration
	// MaxUnauthenticated caps connections that have not authenticated yet
	// (slow-loris defence); HandshakeTimeout closes those that take longer.
	MaxUnauthenticated int
	HandshakeTimeout   time.Duration
	// UnauthenticatedDropStart and UnauthenticatedDropRate are the start
	// and rate of sshd's MaxStartups start:rate:full (full being
	// MaxUnauthenticated): once UnauthenticatedDropStart connections are
	// unauthenticated, a new one is refused with a probability of
	// UnauthenticatedDropRate percent, rising linearly to 100 % at
	// MaxUnauthenticated. A start at or above MaxUnauthenticated turns
	// early drop off.
	UnauthenticatedDropStart int
	UnauthenticatedDropRate  int
	// MaxUnauthenticatedPerSource caps the unauthenticated connections of
	// one source (an IPv4 address or an IPv6 /64), as sshd's
	// PerSourceMaxStartups, so that one source cannot fill the pool.
	MaxUnauthenticatedPerSource int
	// MaxSessions caps the open channels (sessions and jumps) of one
	// connection, as sshd's MaxSessions; MaxLoginSessions is the cap for
	// the reserved login user.
	MaxSessions      int
	MaxLoginSessions int
	// MaxLoginConnectionsPerSource caps the concurrent connections of the
	// login user from one source.
	MaxLoginConnectionsPerSource int
	// MaxSessionInput bounds the input a session channel on the gateway
	// itself may hold unread (before its command runs, or that its command
	// does not read); past it the channel is closed.
	MaxSessionInput int
	// ReportInterval is how often counts of dropped connections and of
	// repeated refusals are written to the audit log, as one record each
	// rather than one per event.
	ReportInterval time.Duration
}

// DefaultLimits are the limits unless configured otherwise.
func DefaultLimits() Limits {
	return Limits{
		MaxAuthTries:          6,
		IdleTimeout:           15 * time.Minute,
		DisconnectExpiredCert: true,
		BanAfterFailures:      10,
		BanWindow:             10 * time.Minute,
		BanDuration:           30 * time.Minute,
		MaxUnauthenticated:    256,
		HandshakeTimeout:      20 * time.Second,

		UnauthenticatedDropStart:     128,
		UnauthenticatedDropRate:      30,
		MaxUnauthenticatedPerSource:  64,
		MaxSessions:                  64,
		MaxLoginSessions:             4,
		MaxLoginConnectionsPerSource: 8,
		MaxSessionInput:              64 * 1024,
		ReportInterval:               time.Minute,
	}
}

// AccessRule says which identities may reach which hosts and ports.
type AccessRule struct {
	// Principals and Groups: the rule applies to an identity that holds
	// any of these principals or any of these groups.
	Principals []string
	Groups     []string
	// Hosts: exact names ("web1.internal"), name globs ("*.internal"),
	// addresses ("10.0.0.5") or prefixes ("10.0.0.0/8").
	Hosts []string
	// Ports allowed; empty means 22 only.
	Ports []int
	// Mode is ModeRecord (the gateway terminates and records the inner
	// SSH connection) or ModeTunnel (bytes are relayed untouched). Empty
	// means record when the rule's ports are exactly SSH's (22), tunnel
	// otherwise.
	Mode string
	// Logins are inner login names a record-mode session may use besides
	// the certificate's principals (never root or a forbidden name).
	Logins []string
}

// Validate checks the configuration and names the field to fix.
func (c *Config) Validate() error {
	if c.Listen == "" {
		return fmt.Errorf("gateway: listen is empty: set it to host:port, e.g. 127.0.0.1:2222")
	}
	if c.HostKeyPath == "" {
		return fmt.Errorf("gateway: host key path is empty")
	}
	for i, r := range c.Access {
		if err := r.validate(); err != nil {
			return fmt.Errorf("gateway: access[%d]: %w", i, err)
		}
	}
	l := c.Limits
	switch {
	case l.MaxAuthTries < 1:
		return fmt.Errorf("gateway: limits.max_auth_tries must be at least 1")
	case l.BanAfterFailures < 0:
		return fmt.Errorf("gateway: limits.ban_after_failures must be 0 (off) or more")
	case l.BanAfterFailures > 0 && (l.BanWindow <= 0 || l.BanDuration <= 0):
		return fmt.Errorf("gateway: limits.ban_window and limits.ban_duration must be positive when ban_after_failures is set")
	case l.MaxUnauthenticated < 1:
		return fmt.Errorf("gateway: limits.max_unauthenticated must be at least 1")
	case l.HandshakeTimeout <= 0:
		return fmt.Errorf("gateway: limits.handshake_timeout must be positive")
	case l.IdleTimeout < 0:
		return fmt.Errorf("gateway: limits.idle_timeout must not be negative")
	case l.UnauthenticatedDropStart < 1:
		return fmt.Errorf("gateway: limits.unauthenticated_drop_start must be at least 1 (set it to max_unauthenticated to turn early drop off)")
	case l.UnauthenticatedDropRate < 1 || l.UnauthenticatedDropRate > 100:
		return fmt.Errorf("gateway: limits.unauthenticated_drop_rate must be a percentage from 1 to 100")
	case l.MaxUnauthenticatedPerSource < 1:
		return fmt.Errorf("gateway: limits.max_unauthenticated_per_source must be at least 1")
	case l.MaxSessions < 1:
		return fmt.Errorf("gateway: limits.max_sessions must be at least 1")
	case l.MaxLoginSessions < 1:
		return fmt.Errorf("gateway: limits.max_login_sessions must be at least 1")
	case l.MaxLoginConnectionsPerSource < 1:
		return fmt.Errorf("gateway: limits.max_login_connections_per_source must be at least 1")
	case l.MaxSessionInput < 1024:
		return fmt.Errorf("gateway: limits.max_session_input must be at least 1024 (bytes)")
	case l.ReportInterval <= 0:
		return fmt.Errorf("gateway: limits.report_interval must be positive")
	}
	return c.Record.validate()
}

func (r AccessRule) validate() error {
	if len(r.Principals) == 0 && len(r.Groups) == 0 {
		return fmt.Errorf("names no principals and no groups, so it matches nobody: add a principals or groups list")
	}
	if len(r.Hosts) == 0 {
		return fmt.Errorf("names no hosts: add a hosts list")
	}
	for _, h := range r.Hosts {
		if _, err := parseHostPattern(h); err != nil {
			return err
		}
	}
	for _, p := range r.Ports {
		if p < 1 || p > 65535 {
			return fmt.Errorf("port %d is out of range 1-65535", p)
		}
	}
	return r.validateRecord()
}

// hostPattern is one entry of AccessRule.Hosts.
type hostPattern struct {
	raw    string
	prefix netip.Prefix // valid for addresses and CIDRs
	glob   string       // lower-cased name or glob otherwise
}

func parseHostPattern(s string) (hostPattern, error) {
	if s == "" {
		return hostPattern{}, fmt.Errorf("empty host pattern")
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return hostPattern{raw: s, prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return hostPattern{raw: s, prefix: netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())}, nil
	}
	if strings.ContainsAny(s, " ,/\t") {
		return hostPattern{}, fmt.Errorf("host pattern %q is neither a name, a glob such as *.internal, an address nor a CIDR", s)
	}
	return hostPattern{raw: s, glob: strings.ToLower(strings.TrimSuffix(s, "."))}, nil
}
