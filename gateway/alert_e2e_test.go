package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bastion-ssh/bastion/audit"
	"github.com/bastion-ssh/bastion/ca"
	"github.com/bastion-ssh/bastion/internal/alert"
)

// hookReceiver is a webhook endpoint on loopback that keeps every JSON
// alert it accepts, with the time it arrived.
type hookReceiver struct {
	*httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	got   []receivedAlert
	// answer, when set, handles call n instead of accepting it; it
	// returns true to accept after all.
	answer func(n int64, w http.ResponseWriter) bool
}

type receivedAlert struct {
	alert.Payload
	at time.Time
}

func newHookReceiver(t *testing.T, answer func(n int64, w http.ResponseWriter) bool) *hookReceiver {
	h := &hookReceiver{answer: answer}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := h.calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		at := time.Now()
		if h.answer != nil && !h.answer(n, w) {
			return
		}
		var p alert.Payload
		if err := json.Unmarshal(body, &p); err != nil {
			t.Errorf("webhook body %q: %v", body, err)
		}
		h.mu.Lock()
		h.got = append(h.got, receivedAlert{p, at})
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hookReceiver) alerts() []receivedAlert {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]receivedAlert(nil), h.got...)
}

// waitRule waits (bounded) for an alert of rule about key ("" for any).
func (h *hookReceiver) waitRule(t *testing.T, rule, key string) receivedAlert {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, a := range h.alerts() {
			if a.Rule == rule && (key == "" || a.Key == key) {
				return a
			}
		}
		if time.Now().After(deadline) {
			var have []string
			for _, a := range h.alerts() {
				have = append(have, a.Rule+" "+a.Key)
			}
			t.Fatalf("no %s alert about %q; have %q", rule, key, have)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitCount waits (bounded) until the receiver holds n alerts.
func (h *hookReceiver) waitCount(t *testing.T, n int) []receivedAlert {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if a := h.alerts(); len(a) >= n {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver holds %d alerts, want %d", len(h.alerts()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startAlerts runs an alert engine on the gateway's audit feed, as
// `bastion serve` does, and stops it before the store closes.
func startAlerts(t *testing.T, tg *testGateway, cfg alert.Config) *alert.Engine {
	t.Helper()
	e, err := alert.New(cfg, alert.Deps{Store: tg.store, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	sub := tg.store.Subscribe(4096)
	ran := make(chan struct{})
	go func() { e.Run(context.Background(), sub); close(ran) }()
	stop := sync.OnceFunc(func() {
		sub.Close()
		<-ran
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	t.Cleanup(stop) // runs before startGateway's cleanup closes the store
	return e
}

// jsonHook is a FormatJSON webhook with quick retries.
func jsonHook(url string) alert.Config {
	return alert.Config{
		Webhooks: []alert.Webhook{{URL: url, Format: alert.FormatJSON}},
		Rules:    alert.DefaultRules(),
		Backoff:  10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 5 * time.Second,
	}
}

// TestAlertsFromRealEvents drives each rule with the real OpenSSH client
// through the real gateway and checks that the receiver gets the right
// alert, and that the attack as a whole stays a handful of alerts.
func TestAlertsFromRealEvents(t *testing.T) {
	tg := startGateway(t, func(c *Config, _ *Deps) {
		c.Limits.BanAfterFailures = 60 // the 20-failure rule fires first; the ban comes later
	})
	rcv := newHookReceiver(t, nil)
	startAlerts(t, tg, jsonHook(rcv.URL))
	ctx := t.Context()
	user := tg.client(ca.Request{KeyID: "alice-laptop"})

	// new_source: the first login sets the baseline; one from another /24
	// (all of 127/8 is loopback) is new.
	if res := user.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode != 0 {
		t.Fatal(res)
	}
	if res := user.Run(ctx, "ssh", append([]string{"-b", "127.0.2.1"}, tg.gatewayArgs(tg.user, "info")...)...); res.ExitCode != 0 {
		t.Fatal(res)
	}
	a := rcv.waitRule(t, alert.RuleNewSource, tg.user+" 127.0.2.0/24")
	if a.Event.Type != audit.TypeAuthOK || a.Event.Fields["remote"] != "127.0.2.1" {
		t.Errorf("new_source alert carries %+v", a.Event)
	}

	// forbidden_user: an attempt as root.
	user.Run(ctx, "ssh", tg.gatewayArgs("root", "info")...)
	a = rcv.waitRule(t, alert.RuleForbiddenUser, "127.0.0.1")
	if a.Event.Fields["reason"] != ReasonForbiddenUser || a.Event.Fields["user"] != "root" {
		t.Errorf("forbidden_user alert carries %+v", a.Event)
	}

	// password_attempt: OpenSSH never sends a method the server does not
	// offer; bots do, and x/crypto reports it to authLog. Drive that hook
	// as x/crypto does.
	botHandshake(tg, "192.0.2.7", "admin", "password", "keyboard-interactive")
	a = rcv.waitRule(t, alert.RulePasswordAttempt, "192.0.2.7")
	if a.Event.Fields["reason"] != ReasonPasswordAttempt {
		t.Errorf("password_attempt alert carries %+v", a.Event)
	}

	// ca_change: an admin revokes a certificate through the gateway.
	admin := tg.client(ca.Request{KeyID: "admin-laptop", Groups: []string{"admins"}})
	if res := admin.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "revoke", "--key-id", "stolen-laptop", "--reason", "stolen")...); res.ExitCode != 0 {
		t.Fatalf("revoke: %s", res)
	}
	a = rcv.waitRule(t, alert.RuleCAChange, "cert.revoked key_id stolen-laptop")
	if a.Event.Type != audit.TypeCertRevoked {
		t.Errorf("ca_change alert carries %+v", a.Event)
	}

	// auth_failures: 20 failed logins from one address (a certificate for
	// another principal, refused each time).
	wrong := tg.client(ca.Request{KeyID: "wrong", Principals: []string{"someone-else"}})
	for range 20 {
		if res := wrong.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode != 255 {
			t.Fatalf("a bad certificate logged in: %s", res)
		}
	}
	a = rcv.waitRule(t, alert.RuleAuthFailures, "127.0.0.1")
	if a.Count < 20 || a.Event.Type != audit.TypeAuthFailed {
		t.Errorf("auth_failures alert: count %d, event %+v", a.Count, a.Event)
	}
	rcv.waitRule(t, alert.RuleLoginRefused, tg.user)

	// ban: keep failing until the source is banned.
	for i := 0; i < 60 && len(tg.events(audit.TypeSourceBanned)) == 0; i++ {
		wrong.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "info")...)
	}
	a = rcv.waitRule(t, alert.RuleBan, "127.0.0.1")
	if a.Event.Type != audit.TypeSourceBanned {
		t.Errorf("ban alert carries %+v", a.Event)
	}

	// The whole attack (80 failures, a root attempt, two password
	// attempts, a ban) is one alert per rule and key.
	time.Sleep(300 * time.Millisecond)
	per := map[string]int{}
	for _, a := range rcv.alerts() {
		per[a.Rule+" "+a.Key]++
	}
	for k, n := range per {
		if n != 1 {
			t.Errorf("%d alerts for %s, want 1", n, k)
		}
	}
	if len(per) > 8 {
		t.Errorf("%d distinct alerts: %v", len(per), per)
	}
	failures := len(tg.events(audit.TypeAuthFailed))
	t.Logf("%d auth.failed events and the rest raised %d alerts: %v", failures, len(rcv.alerts()), per)
	// Every delivery is in the audit log.
	if sent := len(tg.events(audit.TypeAlertSent)); sent != len(rcv.alerts()) {
		t.Errorf("%d alert.sent records for %d deliveries", sent, len(rcv.alerts()))
	}
}

// noDedupe makes every raised alert go out, for measuring.
func noDedupe(cfg alert.Config) alert.Config {
	cfg.Cooldown, cfg.MaxCooldown, cfg.RuleBurst, cfg.RuleEvery = time.Nanosecond, time.Nanosecond, 1<<20, time.Nanosecond
	return cfg
}

// TestAlertLatency measures the time from a triggering audit event to the
// webhook receiving its alert: real root attempts through OpenSSH, and a
// burst of lock changes. The figures are logged, not asserted.
func TestAlertLatency(t *testing.T) {
	tg := startGateway(t, withoutBans)
	rcv := newHookReceiver(t, nil)
	startAlerts(t, tg, noDedupe(jsonHook(rcv.URL)))
	ctx := t.Context()
	c := tg.client(ca.Request{KeyID: "x"})
	const logins = 20
	for range logins {
		c.Run(ctx, "ssh", tg.gatewayArgs("root", "info")...)
	}
	got := rcv.waitCount(t, logins)
	var real []time.Duration
	for _, a := range got {
		real = append(real, a.at.Sub(a.Event.Time))
	}
	const locks = 500
	for i := range locks {
		if err := tg.locks.Lock(ctx, ca.Lock{Target: fmt.Sprint("user", i), By: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	got = rcv.waitCount(t, logins+locks)
	var burst []time.Duration
	for _, a := range got[logins:] {
		burst = append(burst, a.at.Sub(a.Event.Time))
	}
	t.Logf("event to webhook receipt, %d root attempts through OpenSSH: median %s, p99 %s, max %s", logins, pct(real, 50), pct(real, 99), pct(real, 100))
	t.Logf("event to webhook receipt, %d lock changes back to back: median %s, p99 %s, max %s", locks, pct(burst, 50), pct(burst, 99), pct(burst, 100))
}

// pct is the p-th percentile of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(0, min(i, len(s))-1)]
}

// TestAlertDeliveryDoesNotSlowAuthentication measures login latency with
// no webhook, a slow one, a dead one (accepts and never answers) and a
// failing one (500 for its first calls), each while every login is
// accompanied by an alert; it checks that a receiver that recovers within
// the retry budget gets every alert, and that one beyond it leaves dead
// letters recorded as alert.failed. Latencies are logged, not asserted.
func TestAlertDeliveryDoesNotSlowAuthentication(t *testing.T) {
	tg := startGateway(t, withoutBans)
	ctx := t.Context()
	// One alert per root attempt's auth.failed, and nothing else.
	hook := func(url string) alert.Config {
		cfg := noDedupe(jsonHook(url))
		cfg.Rules = alert.Rules{ForbiddenUser: true}
		return cfg
	}
	good := tg.client(ca.Request{KeyID: "alice-laptop"})
	bad := tg.client(ca.Request{KeyID: "bot"})
	const rounds = 12
	// measure runs rounds of (an attempt as root, which raises an alert;
	// a good login, timed) and returns the login times.
	measure := func() []time.Duration {
		t.Helper()
		var ds []time.Duration
		for range rounds {
			bad.Run(ctx, "ssh", tg.gatewayArgs("root", "info")...)
			start := time.Now()
			if res := good.Run(ctx, "ssh", tg.gatewayArgs(tg.user, "info")...); res.ExitCode != 0 {
				t.Fatalf("login: %s", res)
			}
			ds = append(ds, time.Since(start))
		}
		return ds
	}
	none := measure()

	slow := newHookReceiver(t, func(_ int64, _ http.ResponseWriter) bool { time.Sleep(time.Second); return true })
	slowEngine := startAlerts(t, tg, hook(slow.URL))
	withSlow := measure()
	closeEngine(t, slowEngine, 30*time.Second)

	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	go func() { // accept and never answer
		var held []net.Conn
		for {
			c, err := dead.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	}()
	deadCfg := hook("http://" + dead.Addr().String() + "/hook")
	deadCfg.Timeout, deadCfg.MaxAttempts = 2*time.Second, 2
	deadEngine := startAlerts(t, tg, deadCfg)
	withDead := measure()
	closeEngine(t, deadEngine, 10*time.Second)

	// Fails its first k calls, then recovers: within the budget, every
	// alert arrives and nothing is a dead letter.
	const k = 5
	failing := newHookReceiver(t, func(n int64, w http.ResponseWriter) bool {
		if n <= k {
			w.WriteHeader(http.StatusInternalServerError)
			return false
		}
		return true
	})
	failingEngine := startAlerts(t, tg, hook(failing.URL))
	from := tg.settledCount(audit.TypeAuthFailed)
	withFailing := measure()
	tg.settledCount(audit.TypeAuthFailed)
	// Each root attempt is one auth.failed per key the client offers,
	// and each of those one alert: every one must arrive.
	want := tg.events(audit.TypeAuthFailed)[from:]
	failing.waitCount(t, len(want))
	closeEngine(t, failingEngine, 30*time.Second)
	if d := failingEngine.DeadLetters(); d != 0 {
		t.Errorf("%d dead letters from a receiver that recovered within the budget", d)
	}
	arrived, ids := map[string]int{}, map[string]bool{}
	for _, a := range failing.alerts() {
		arrived[a.Event.ID]++
		ids[a.ID] = true
	}
	if len(ids) != len(failing.alerts()) {
		t.Errorf("%d deliveries of %d distinct alerts: duplicates", len(failing.alerts()), len(ids))
	}
	for _, ev := range want {
		if arrived[ev.ID] != 1 {
			t.Errorf("the alert for %s %s arrived %d times, want once", ev.Type, ev.ID, arrived[ev.ID])
		}
	}
	if len(arrived) != len(want) || failing.calls.Load() != int64(len(want)+k) {
		t.Errorf("the recovering receiver got %d alerts in %d calls, want %d in %d", len(arrived), failing.calls.Load(), len(want), len(want)+k)
	}

	// Beyond the budget: dead letters, counted and recorded.
	before := len(tg.events(audit.TypeAlertFailed))
	broken := newHookReceiver(t, func(_ int64, w http.ResponseWriter) bool { w.WriteHeader(http.StatusBadGateway); return false })
	brokenCfg := hook(broken.URL)
	brokenCfg.MaxAttempts = 3
	brokenEngine := startAlerts(t, tg, brokenCfg)
	from = tg.settledCount(audit.TypeAuthFailed)
	for range 3 {
		bad.Run(ctx, "ssh", tg.gatewayArgs("root", "info")...)
	}
	lost := uint64(tg.settledCount(audit.TypeAuthFailed) - from)
	deadline := time.Now().Add(20 * time.Second)
	for brokenEngine.DeadLetters() < lost && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	closeEngine(t, brokenEngine, 10*time.Second)
	if d := brokenEngine.DeadLetters(); d != lost {
		t.Errorf("%d dead letters, want %d", d, lost)
	}
	failed := tg.events(audit.TypeAlertFailed)[before:]
	if uint64(len(failed)) != lost || failed[0].Fields["reason"] != "retries_exhausted" || failed[0].Fields["attempts"] != "3" || failed[0].Fields["rule"] != alert.RuleForbiddenUser {
		t.Errorf("alert.failed records: %+v", failed)
	}

	t.Logf("login latency (median of %d, each with an alert in flight): no webhook %s; slow webhook (1s) %s; dead webhook (never answers) %s; failing webhook (500 x%d) %s",
		rounds, median(none), median(withSlow), median(withDead), k, median(withFailing))
	t.Logf("p90: no webhook %s; slow %s; dead %s; failing %s", pct(none, 90), pct(withSlow, 90), pct(withDead, 90), pct(withFailing, 90))
}

// closeEngine stops an engine started by startAlerts ahead of cleanup.
func closeEngine(t *testing.T, e *alert.Engine, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Logf("closing the engine: %v", err)
	}
}
