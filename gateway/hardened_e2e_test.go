package gateway

import (
	"strconv"
	"strings"
	"testing"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestRequireHardenedTargets: with require_hardened_targets the gateway
// probes each target and refuses those that offer passwords, the way the
// breached server was entered.
func TestRequireHardenedTargets(t *testing.T) {
	testbed.RequireOpenSSH(t)
	soft := testbed.StartSSHD(t, testbed.SSHDConfig{Extra: "PasswordAuthentication yes"})
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.RequireHardenedTargets = true
		c.Access[0].Ports = append(c.Access[0].Ports, soft.Port)
	})
	c := tg.client(ca.Request{KeyID: "hardened"})
	ctx := t.Context()
	if res := c.Run(ctx, "ssh", tg.jumpArgs(tg.user, "echo", "ok")...); res.ExitCode != 0 {
		t.Fatalf("jump to the hardened target refused: %s", res)
	}
	res := c.Run(ctx, "ssh", "-o", "LogLevel=INFO", "-W", "127.0.0.1:"+strconv.Itoa(soft.Port), "-p", strconv.Itoa(tg.port), tg.user+"@127.0.0.1")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "offers") || !strings.Contains(res.Stderr, "password") {
		t.Fatalf("jump to a password-accepting target was not refused with a reason: %s", res)
	}
	tg.waitEvent(t, "channel.refused", map[string]string{"reason": ReasonTargetNotHardened, "target": "127.0.0.1:" + strconv.Itoa(soft.Port)})
	// The verdict is cached: a second jump does not probe again.
	before := strings.Count(soft.Log(), "Connection from")
	c.Run(ctx, "ssh", "-W", "127.0.0.1:"+strconv.Itoa(soft.Port), "-p", strconv.Itoa(tg.port), tg.user+"@127.0.0.1")
	if after := strings.Count(soft.Log(), "Connection from"); after != before {
		t.Errorf("the soft target was probed again within the TTL (%d → %d connections)", before, after)
	}
}
