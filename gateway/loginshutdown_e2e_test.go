package gateway

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/testbed"
)

// TestLoginEndsAtShutdown: logins still running when the gateway's
// shutdown grace ends (a device login waiting for approval, a browser
// login waiting for the code) are not dropped: each client gets "login
// failed (shutdown)" and to run bastion login again, with exit status 1,
// and each is recorded as login.failed with reason shutdown. Before,
// the connection was closed under them ("remote command exited without
// exit status") and the record said the client had canceled.
func TestLoginEndsAtShutdown(t *testing.T) {
	lg := startLoginGateway(t, func(c *Config, _ *Deps) { c.ShutdownGrace = 300 * time.Millisecond })
	newClient := func() *testbed.Client {
		c := testbed.NewClient(t)
		c.TrustHostCA("*", lg.auth.PublicKey(ca.HostCA))
		return c
	}
	var wg sync.WaitGroup
	var device, code testbed.Result
	wg.Add(2)
	go func() {
		defer wg.Done()
		out, errText, exit, _ := lg.deviceLogin(t, newClient(), func(string) error { return nil })
		device = testbed.Result{Stdout: out, Stderr: errText, ExitCode: exit}
	}()
	go func() {
		defer wg.Done()
		code = lg.codeLogin(t, newClient(), func(CodeLoginURL) *CodeLoginResult { return nil })
	}()
	waitFor(t, 20*time.Second, "two logins under way", func() bool { return len(lg.events("login.started")) == 2 })
	time.Sleep(300 * time.Millisecond) // the device login reaches its prompt
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	began := time.Now()
	if err := lg.gw.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	took := time.Since(began)
	wg.Wait()
	t.Logf("shutdown with two logins waiting took %s (grace 300ms)", took.Round(time.Millisecond))
	if took > 300*time.Millisecond+loginEndWait {
		t.Errorf("shutdown took %s", took)
	}
	for name, r := range map[string]testbed.Result{"device": device, "browser": code} {
		if r.ExitCode != 1 || r.Stdout != "" || !strings.Contains(r.Stderr, "login failed ("+ReasonShutdown+"): this gateway is shutting down") ||
			!strings.Contains(r.Stderr, "run `bastion login` again") {
			t.Errorf("%s login cut by the shutdown: %s", name, r)
		}
	}
	for _, flow := range []string{"device", "pkce"} {
		lg.waitEvent(t, "login.failed", map[string]string{"flow": flow, "reason": ReasonShutdown})
	}
	if n := len(lg.events("login.failed")); n != 2 {
		t.Errorf("%d login.failed records, want 2", n)
	}
}
