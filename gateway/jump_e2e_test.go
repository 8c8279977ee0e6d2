package gateway

import (
	"strings"
	"testing"

	"github.com/bastion-ssh/bastion/ca"
)

func TestJumpWithOpenSSH(t *testing.T) {
	tg := startGateway(t)
	c := tg.client(ca.Request{KeyID: "alice@example.com"})
	ctx := t.Context()

	res := c.Run(ctx, "ssh", tg.jumpArgs(tg.user, "echo", "hello-from-$(id -un)")...)
	if res.ExitCode != 0 || strings.TrimSpace(res.Stdout) != "hello-from-"+tg.user {
		t.Fatalf("ssh -J: %s\ngateway audit:\n%s", res, tg.dump())
	}
	res = c.Run(ctx, "ssh", tg.jumpArgs(tg.user, "exit", "42")...)
	if res.ExitCode != 42 {
		t.Errorf("exit status through the jump: %d, want 42 (%s)", res.ExitCode, res)
	}
	start := tg.waitEvent(t, "session.start", map[string]string{"key_id": "alice@example.com"})
	end := tg.waitEvent(t, "session.end", map[string]string{"key_id": "alice@example.com"})
	if start.Session == "" || start.Session != end.Session {
		t.Errorf("session.start %q and session.end %q do not share a session id", start.Session, end.Session)
	}
	if end.Fields["bytes_up"] == "0" || end.Fields["bytes_down"] == "0" || end.Fields["duration_ms"] == "" {
		t.Errorf("session.end lacks byte counts or duration: %v", end.Fields)
	}
	ok := tg.waitEvent(t, "auth.ok", map[string]string{"key_id": "alice@example.com"})
	if ok.Fields["remote"] != "127.0.0.1" || ok.Fields["serial"] == "" || !strings.HasPrefix(ok.Fields["key_fp"], "SHA256:") {
		t.Errorf("auth.ok lacks remote, serial or key fingerprint: %v", ok.Fields)
	}
}
