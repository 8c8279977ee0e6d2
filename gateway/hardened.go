package gateway

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/scan"
)

// ReasonTargetNotHardened refuses a jump to a target that offers password,
// keyboard-interactive or no authentication (require_hardened_targets).
const ReasonTargetNotHardened = "target_not_hardened"

// softAuthFindings are the scan findings that make a target soft: the
// way the breached server was entered.
var softAuthFindings = []string{scan.CodePasswordAuth, scan.CodeKbdInteractiveAuth, scan.CodeNoneAuth}

// hardenedCheck probes a target (cached per address) and returns an
// *accessError when it must not be reached. It fails closed: a target
// that cannot be probed is not reached.
func (g *Gateway) hardenedCheck(ctx context.Context, host string, addr netip.AddrPort) error {
	if g.targets == nil {
		return nil
	}
	res, err := g.targets.Check(ctx, addr.String())
	if err != nil {
		return &accessError{ReasonTargetNotHardened, fmt.Sprintf("cannot verify that %s refuses passwords: %v", addr, err)}
	}
	var soft []string
	for _, f := range res.Findings {
		if slices.Contains(softAuthFindings, f.Code) {
			soft = append(soft, f.Code)
		}
	}
	if len(soft) > 0 {
		return &accessError{ReasonTargetNotHardened, fmt.Sprintf("%s offers %s; bastion only routes to hosts that accept keys alone (see deploy/target)", host, strings.Join(res.AuthMethods, ", "))}
	}
	if res.Err != "" {
		return &accessError{ReasonTargetNotHardened, fmt.Sprintf("cannot verify that %s refuses passwords: %s", addr, res.Err)}
	}
	return nil
}

// newTargetChecker builds the cached prober for require_hardened_targets.
func newTargetChecker(cfg Config, deps Deps) *scan.Checker {
	if !cfg.RequireHardenedTargets {
		return nil
	}
	ttl := cfg.HardenedTargetTTL
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	return scan.NewChecker(scan.Options{
		HostCAs: deps.Authority.TrustedKeys(ca.HostCA),
		Timeout: cfg.DialTimeout,
		Dial:    deps.Dial,
		Now:     cfg.Now,
	}, ttl, cfg.Now)
}
