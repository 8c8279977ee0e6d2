package alert

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/bastion-ssh/bastion/audit"
)

var epoch = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func openStore(t *testing.T) *audit.Store {
	t.Helper()
	s, err := audit.Open(filepath.Join(t.TempDir(), "audit.db"), audit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// receiver is a webhook endpoint on loopback that records what it gets.
type receiver struct {
	*httptest.Server
	mu    sync.Mutex
	got   []received
	calls atomic.Int64
	// respond decides the answer to call n (1-based); nil answers 200.
	respond func(n int64, w http.ResponseWriter) bool
}

type received struct {
	body   []byte
	header http.Header
	at     time.Time
}

func newReceiver(t *testing.T, respond func(n int64, w http.ResponseWriter) bool) *receiver {
	r := &receiver{respond: respond}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := r.calls.Add(1)
		body, _ := io.ReadAll(req.Body)
		if r.respond != nil && !r.respond(n, w) {
			return
		}
		r.mu.Lock()
		r.got = append(r.got, received{body: body, header: req.Header.Clone(), at: time.Now()})
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) received() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

// wait waits (bounded) until the receiver has n deliveries.
func (r *receiver) wait(t *testing.T, n int) []received {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got := r.received(); len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver got %d deliveries, want %d", len(r.received()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fastConfig retries quickly, for tests.
func fastConfig(hooks ...Webhook) Config {
	return Config{
		Webhooks: hooks, Rules: DefaultRules(), Source: "gw-test",
		Backoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Timeout: 5 * time.Second,
		RuleBurst: 1000, // these tests count deliveries, not de-duplication
	}
}

func newEngine(t *testing.T, cfg Config, store Store, reg prometheus.Registerer) *Engine {
	t.Helper()
	e, err := New(cfg, Deps{Store: store, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.Close(ctx)
	})
	return e
}

// ev builds an event at epoch+at.
func ev(typ string, at time.Duration, actor, session string, kv ...string) audit.Event {
	f := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		f[kv[i]] = kv[i+1]
	}
	return audit.Event{ID: fmt.Sprintf("ev%d", at), Type: typ, Time: epoch.Add(at), Actor: actor, Session: session, Fields: f}
}

func failed(at time.Duration, remote, user, reason, conn string) audit.Event {
	return ev(audit.TypeAuthFailed, at, user, conn, "remote", remote, "user", user, "reason", reason, "method", "publickey")
}

func authOK(at time.Duration, remote, user, conn string) audit.Event {
	return ev(audit.TypeAuthOK, at, user, conn, "remote", remote, "user", user, "key_id", user+"-laptop")
}

// TestRules feeds each rule its events and checks what it raises, before
// de-duplication.
func TestRules(t *testing.T) {
	type raised struct{ rule, key string }
	tests := []struct {
		name  string
		rules Rules
		evs   []audit.Event
		want  []raised // in order, across all events
	}{
		{"auth failures reach the threshold", Rules{AuthFailures: Threshold{Count: 20, Window: 5 * time.Minute}}, func() []audit.Event {
			var evs []audit.Event
			for i := range 20 {
				evs = append(evs, failed(time.Duration(i)*time.Second, "203.0.113.7", "alice", "expired", fmt.Sprint("c", i/6)))
			}
			return evs
		}(), []raised{{RuleAuthFailures, "203.0.113.7"}}},
		{"login refused with the defaults", DefaultRules(), func() []audit.Event {
			var evs []audit.Event
			for i := range 5 {
				evs = append(evs, failed(time.Duration(i)*time.Second, "203.0.113.7", "alice", "expired", fmt.Sprint("c", i)))
			}
			return evs
		}(), []raised{{RuleLoginRefused, "alice"}}},
		{"auth failures outside the window", Rules{AuthFailures: Threshold{Count: 3, Window: time.Minute}}, []audit.Event{
			failed(0, "203.0.113.7", "x", "expired", "c1"), failed(70*time.Second, "203.0.113.7", "x", "expired", "c2"),
			failed(80*time.Second, "203.0.113.7", "x", "expired", "c3"), failed(100*time.Second, "203.0.113.7", "x", "expired", "c4"),
		}, []raised{{RuleAuthFailures, "203.0.113.7"}}},
		{"a connection that authenticates is forgiven", Rules{AuthFailures: Threshold{Count: 3, Window: time.Minute}}, []audit.Event{
			failed(0, "198.51.100.1", "alice", "not_a_certificate", "c1"), failed(1, "198.51.100.1", "alice", "not_a_certificate", "c1"),
			authOK(2, "198.51.100.1", "alice", "c1"),
			failed(3, "198.51.100.1", "alice", "not_a_certificate", "c2"), failed(4, "198.51.100.1", "alice", "not_a_certificate", "c2"),
		}, nil},
		{"forbidden user and password attempts", Rules{ForbiddenUser: true, PasswordAttempt: true}, []audit.Event{
			failed(0, "192.0.2.1", "root", "forbidden_user", "c1"),
			ev(audit.TypeAuthFailed, 1, "admin", "c2", "remote", "192.0.2.2", "user", "admin", "reason", "password_attempt", "method", "password"),
			ev(audit.TypeAuthFailed, 2, "admin", "c3", "remote", "192.0.2.3", "user", "admin", "reason", "keyboard_interactive_attempt", "method", "keyboard-interactive"),
			ev(audit.TypeLoginFailed, 3, "login", "c4", "remote", "192.0.2.4", "reason", "forbidden_principal", "key_fp", "SHA256:x"),
			failed(4, "192.0.2.5", "alice", "expired", "c5"),
		}, []raised{{RuleForbiddenUser, "192.0.2.1"}, {RulePasswordAttempt, "192.0.2.2"}, {RulePasswordAttempt, "192.0.2.3"}, {RuleForbiddenUser, "192.0.2.4"}}},
		{"login refused per user, not for bots' guesses", Rules{LoginRefused: Threshold{Count: 3, Window: time.Minute}}, []audit.Event{
			failed(0, "192.0.2.1", "root", "forbidden_user", "c1"), failed(1, "192.0.2.1", "root", "forbidden_user", "c2"), failed(2, "192.0.2.1", "root", "forbidden_user", "c3"),
			failed(3, "192.0.2.9", "bob", "revoked", "c4"), failed(4, "192.0.2.9", "bob", "revoked", "c5"), failed(5, "192.0.2.8", "bob", "locked", "c6"),
			ev(audit.TypeLoginFailed, 6, "login", "c7", "remote", "192.0.2.4", "reason", "bad_audience", "email", "eve@example.com"),
			ev(audit.TypeLoginFailed, 7, "login", "c8", "remote", "192.0.2.4", "reason", "canceled", "email", "eve@example.com"),
			ev(audit.TypeLoginFailed, 8, "login", "c9", "remote", "192.0.2.4", "reason", "bad_audience", "email", "eve@example.com"),
			ev(audit.TypeLoginFailed, 9, "login", "c10", "remote", "192.0.2.4", "reason", "idp_error", "email", "eve@example.com"),
		}, []raised{{RuleLoginRefused, "bob"}, {RuleLoginRefused, "eve@example.com"}}},
		{"new source", Rules{NewSource: true}, []audit.Event{
			authOK(0, "10.0.0.5", "alice", "c1"),  // baseline
			authOK(1, "10.0.0.77", "alice", "c2"), // same /24
			authOK(2, "10.0.1.5", "alice", "c3"),  // new
			authOK(3, "10.0.1.6", "alice", "c4"),  // known now
			authOK(4, "2001:db8:1:2::5", "alice", "c5"),
			authOK(5, "2001:db8:1:2:ffff::1", "alice", "c6"), // same /64
			authOK(6, "10.0.1.5", "bob", "c7"),               // bob's baseline
			authOK(7, "10.0.0.5", "login", "c8"),             // the login user
		}, []raised{{RuleNewSource, "alice 10.0.1.0/24"}, {RuleNewSource, "alice 2001:db8:1:2::/64"}}},
		{"bans and CA changes", Rules{Ban: true, CAChange: true}, []audit.Event{
			ev(audit.TypeSourceBanned, 0, "203.0.113.9", "", "remote", "203.0.113.9", "until", "2026-11-27T13:00:00Z", "after_failures", "10"),
			ev(audit.TypeCARotated, 1, "operator:alice", "", "ca", "user", "old_fp", "SHA256:old", "new_fp", "SHA256:new"),
			ev(audit.TypeCARetired, 2, "operator:alice", "", "ca", "user", "retired_fp", "SHA256:old"),
			ev(audit.TypeCertRevoked, 3, "operator:alice", "", "kind", "serial", "value", "42", "reason", "laptop stolen"),
			ev(audit.TypeUserLocked, 4, "admin", "", "target", "mallory", "reason", "left"),
			ev(audit.TypeUserUnlocked, 5, "admin", "", "target", "mallory"),
			ev(audit.TypeCertIssued, 6, "operator:alice", ""),
		}, []raised{{RuleBan, "203.0.113.9"}, {RuleCAChange, "ca.rotated user SHA256:new"}, {RuleCAChange, "ca.retired user SHA256:old"},
			{RuleCAChange, "cert.revoked serial 42"}, {RuleCAChange, "user.locked mallory"}, {RuleCAChange, "user.unlocked mallory"}}},
		{"every rule off", Rules{}, []audit.Event{
			failed(0, "192.0.2.1", "root", "forbidden_user", "c1"), authOK(1, "10.0.0.1", "a", "c2"), authOK(2, "10.9.0.1", "a", "c3"),
			ev(audit.TypeSourceBanned, 3, "x", "", "remote", "x"), ev(audit.TypeUserLocked, 4, "x", "", "target", "y"),
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sources, err := loadSources(openStore(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			e := newEvaluator(tc.rules, sources)
			var got []raised
			for _, ev := range tc.evs {
				for _, c := range e.evaluate(ev) {
					got = append(got, raised{c.rule, c.key})
					if c.text == "" || c.ev.ID != ev.ID {
						t.Errorf("alert %+v lacks text or its event", c)
					}
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("raised %v\nwant   %v", got, tc.want)
			}
		})
	}
}

// TestNewSourcePersists: the set of known networks survives a restart,
// in the audit file, next to an alert.source_seen event for each.
func TestNewSourcePersists(t *testing.T) {
	store := openStore(t)
	for round, want := range []int{1, 0} {
		sources, err := loadSources(store, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := newEvaluator(Rules{NewSource: true}, sources)
		n := 0
		for i, remote := range []string{"10.0.0.5", "10.0.3.5", "10.0.3.9"} {
			n += len(e.evaluate(authOK(time.Duration(i), remote, "alice", "c")))
		}
		if n != want {
			t.Errorf("round %d: %d new_source alerts, want %d", round, n, want)
		}
	}
	var seen []string
	err := store.Iterate(context.Background(), audit.Filter{Types: []string{audit.TypeSourceSeen}}, func(ev audit.Event) error {
		seen = append(seen, ev.Fields["network"]+" baseline="+ev.Fields["baseline"])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[10.0.0.0/24 baseline=true 10.0.3.0/24 baseline=false]" {
		t.Errorf("alert.source_seen records: %v", seen)
	}
}

// TestDedupeBoundsAnAttack: a five-hour brute force from one source and a
// botnet trying root from a thousand sources each produce a handful of
// alerts, and together they account for every event held back.
func TestDedupeBoundsAnAttack(t *testing.T) {
	cfg := Config{Rules: DefaultRules()}.withDefaults()
	count := func(evs []audit.Event) (alerts, suppressed, raised int) {
		sources, _ := loadSources(openStore(t), nil)
		e := newEvaluator(cfg.Rules, sources)
		d := newDedupe(cfg)
		for _, ev := range evs {
			for _, c := range e.evaluate(ev) {
				raised++
				if ok, s := d.allow(c.rule, c.key, ev.Time); ok {
					alerts++
					suppressed += s
				}
			}
		}
		for _, r := range d.rules {
			suppressed += r.suppressed // held back since the last alert
		}
		return alerts, suppressed, raised
	}
	// The breach: five hours, one failed root login a second.
	var bruteForce []audit.Event
	for i := range 5 * 3600 {
		bruteForce = append(bruteForce, ev(audit.TypeAuthFailed, time.Duration(i)*time.Second, "root", fmt.Sprint("c", i/6), "remote", "203.0.113.7", "user", "root", "reason", "forbidden_user"))
	}
	alerts, suppressed, raised := count(bruteForce)
	t.Logf("5h brute force, %d events: %d alerts, %d held back", len(bruteForce), alerts, suppressed)
	if alerts > 20 || alerts < 2 || alerts+suppressed != raised {
		t.Errorf("brute force: %d alerts and %d held back of %d raised; want a handful, all accounted for", alerts, suppressed, raised)
	}
	// A botnet: 1000 sources, one root attempt each, within ten minutes.
	var botnet []audit.Event
	for i := range 1000 {
		botnet = append(botnet, failed(time.Duration(i)*600*time.Millisecond, fmt.Sprintf("198.51.%d.%d", i/250, i%250), "root", "forbidden_user", fmt.Sprint("c", i)))
	}
	alerts, suppressed, raised = count(botnet)
	t.Logf("botnet, %d sources: %d alerts, %d held back", len(botnet), alerts, suppressed)
	if alerts > cfg.RuleBurst+2 || alerts+suppressed != raised {
		t.Errorf("botnet: %d alerts and %d held back of %d raised; want at most %d", alerts, suppressed, raised, cfg.RuleBurst+2)
	}
}

// TestDeliveryFormatsAndSignature: a Slack webhook gets {"text": ...}; a
// json webhook gets the raw event and the rule, signed as documented.
func TestDeliveryFormatsAndSignature(t *testing.T) {
	store := openStore(t)
	slack, raw := newReceiver(t, nil), newReceiver(t, nil)
	secret := []byte("s3cret-for-hmac")
	e := newEngine(t, fastConfig(Webhook{URL: slack.URL + "/services/T0/B0/XXX"}, Webhook{URL: raw.URL + "/hook", Format: FormatJSON, Secret: secret}), store, nil)
	trigger := ev(audit.TypeSourceBanned, 0, "203.0.113.9", "", "remote", "203.0.113.9", "until", "2026-11-27T13:00:00Z", "after_failures", "10")
	e.Observe(trigger)

	got := slack.wait(t, 1)[0]
	var sp map[string]any
	if err := json.Unmarshal(got.body, &sp); err != nil || len(sp) != 1 {
		t.Fatalf("slack body %s: want exactly {\"text\": ...}", got.body)
	}
	if text, _ := sp["text"].(string); !strings.Contains(text, "[ban]") || !strings.Contains(text, "203.0.113.9") || !strings.Contains(text, "gw-test") {
		t.Errorf("slack text %q", text)
	}
	if got.header.Get(SignatureHeader) != "" {
		t.Error("an unsigned webhook got a signature")
	}

	got = raw.wait(t, 1)[0]
	var p Payload
	if err := json.Unmarshal(got.body, &p); err != nil {
		t.Fatal(err)
	}
	if p.Rule != RuleBan || p.Key != "203.0.113.9" || p.Event.Type != audit.TypeSourceBanned || p.Event.Fields["until"] != "2026-11-27T13:00:00Z" || p.ID != got.header.Get(AlertIDHeader) {
		t.Errorf("json payload %+v", p)
	}
	ts, err := strconv.ParseInt(got.header.Get(TimestampHeader), 10, 64)
	if err != nil {
		t.Fatalf("timestamp header %q", got.header.Get(TimestampHeader))
	}
	want := Sign(secret, time.Unix(ts, 0), got.body)
	if !hmac.Equal([]byte(got.header.Get(SignatureHeader)), []byte(want)) || !strings.HasPrefix(want, "sha256=") {
		t.Errorf("signature %q, want %q", got.header.Get(SignatureHeader), want)
	}
	// Both deliveries are in the audit log, naming the webhook by host only.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var sent []audit.Event
		if err := store.Iterate(context.Background(), audit.Filter{Types: []string{audit.TypeAlertSent}}, func(ev audit.Event) error {
			sent = append(sent, ev)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(sent) == 2 {
			for _, s := range sent {
				if strings.Contains(s.Fields["webhook"], "/services") || s.Fields["rule"] != RuleBan || s.Fields["attempts"] != "1" {
					t.Errorf("alert.sent %v", s.Fields)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d alert.sent records, want 2", len(sent))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRetriesWithinBudgetLoseNothing: a receiver that fails its first k
// calls gets every alert once it recovers; nothing is a dead letter.
func TestRetriesWithinBudgetLoseNothing(t *testing.T) {
	store := openStore(t)
	const k = 4
	r := newReceiver(t, func(n int64, w http.ResponseWriter) bool {
		if n <= k {
			w.WriteHeader(http.StatusInternalServerError)
			return false
		}
		return true
	})
	reg := prometheus.NewRegistry()
	cfg := fastConfig(Webhook{URL: r.URL})
	cfg.Workers = 1
	e := newEngine(t, cfg, store, reg)
	const n = 10
	for i := range n {
		e.Observe(ev(audit.TypeUserLocked, time.Duration(i), "admin", "", "target", fmt.Sprint("user", i)))
	}
	got := r.wait(t, n)
	keys := map[string]bool{}
	for _, g := range got {
		var sp struct{ Text string }
		if err := json.Unmarshal(g.body, &sp); err != nil {
			t.Fatal(err)
		}
		keys[sp.Text] = true
	}
	if len(keys) != n {
		t.Errorf("%d distinct alerts arrived, want %d", len(keys), n)
	}
	if d := e.DeadLetters(); d != 0 {
		t.Errorf("%d dead letters within the retry budget", d)
	}
	if v := value(t, e.metrics.attempts.WithLabelValues("failed")); v != k {
		t.Errorf("%v failed attempts, want %d", v, k)
	}
}

// TestDeadLetters: past the retry budget, or on a permanent error, an
// alert is counted as a dead letter and recorded as alert.failed.
func TestDeadLetters(t *testing.T) {
	for _, tc := range []struct {
		name     string
		status   int
		attempts string
		reason   string
	}{
		{"retries exhausted", http.StatusServiceUnavailable, "3", "retries_exhausted"},
		{"permanent", http.StatusForbidden, "1", "permanent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := openStore(t)
			r := newReceiver(t, func(_ int64, w http.ResponseWriter) bool { w.WriteHeader(tc.status); return false })
			reg := prometheus.NewRegistry()
			cfg := fastConfig(Webhook{URL: r.URL + "/secret-path"})
			cfg.MaxAttempts = 3
			e := newEngine(t, cfg, store, reg)
			e.Observe(ev(audit.TypeUserLocked, 0, "admin", "", "target", "mallory"))
			e.Observe(ev(audit.TypeUserLocked, 1, "admin", "", "target", "trudy"))
			var failed []audit.Event
			deadline := time.Now().Add(10 * time.Second)
			for len(failed) < 2 {
				if time.Now().After(deadline) {
					t.Fatalf("%d alert.failed records, want 2", len(failed))
				}
				time.Sleep(5 * time.Millisecond)
				failed = failed[:0]
				if err := store.Iterate(context.Background(), audit.Filter{Types: []string{audit.TypeAlertFailed}}, func(ev audit.Event) error {
					failed = append(failed, ev)
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range failed {
				if f.Fields["reason"] != tc.reason || f.Fields["attempts"] != tc.attempts || f.Fields["rule"] != RuleCAChange || strings.Contains(f.Fields["detail"]+f.Fields["webhook"], "secret-path") {
					t.Errorf("alert.failed %v", f.Fields)
				}
			}
			if e.DeadLetters() != 2 || value(t, e.metrics.deadLetters) != 2 {
				t.Errorf("dead letters %d, want 2", e.DeadLetters())
			}
			if c := r.calls.Load(); fmt.Sprint(c) != fmt.Sprint(2*mustAtoi(tc.attempts)) {
				t.Errorf("%d calls, want %d", c, 2*mustAtoi(tc.attempts))
			}
		})
	}
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// TestSlowReceiverNeverBlocks: with a receiver that hangs, Observe still
// returns at once; alerts beyond the queue are dead letters, and Close
// gives up on the rest at its deadline.
func TestSlowReceiverNeverBlocks(t *testing.T) {
	store := openStore(t)
	release := make(chan struct{})
	r := newReceiver(t, func(_ int64, w http.ResponseWriter) bool { <-release; return true })
	defer close(release)
	cfg := fastConfig(Webhook{URL: r.URL})
	cfg.QueueSize, cfg.Workers = 4, 1
	e, err := New(cfg, Deps{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	const n = 200
	// The first alert goes out before the rest are raised, so exactly one
	// is in flight (on a loaded machine the worker may not have picked it
	// up yet otherwise).
	e.Observe(ev(audit.TypeUserLocked, 0, "admin", "", "target", "u0"))
	for deadline := time.Now().Add(10 * time.Second); r.calls.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first alert never reached the receiver")
		}
	}
	for i := 1; i < n; i++ {
		e.Observe(ev(audit.TypeUserLocked, time.Duration(i), "admin", "", "target", fmt.Sprint("u", i)))
	}
	took := time.Since(start)
	t.Logf("%d alerts raised against a hanging receiver in %s", n, took)
	// One alert is in flight, QueueSize wait, the rest are dead letters
	// at once; Close then gives up on the five left.
	if got := e.DeadLetters(); got != n-1-4 {
		t.Errorf("%d dead letters before Close, want %d (queue full)", got, n-1-4)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.Close(ctx); err == nil {
		t.Error("Close returned nil with deliveries still hanging")
	}
	if got := e.DeadLetters(); got != n {
		t.Errorf("%d dead letters, want all %d alerts (queue overflow and shutdown)", got, n)
	}
}

// TestRunFollowsTheStore: the engine reads the store's live feed, and its
// delivery records land in the same store.
func TestRunFollowsTheStore(t *testing.T) {
	store := openStore(t)
	r := newReceiver(t, nil)
	reg := prometheus.NewRegistry()
	e := newEngine(t, fastConfig(Webhook{URL: r.URL, Format: FormatJSON}), store, reg)
	sub := store.Subscribe(1024)
	ran := make(chan struct{})
	go func() { e.Run(context.Background(), sub); close(ran) }()
	stored, err := store.Append(context.Background(), audit.Event{Type: audit.TypeCertRevoked, Actor: "operator:alice", Fields: map[string]string{"kind": "serial", "value": "7", "reason": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	var p Payload
	if err := json.Unmarshal(r.wait(t, 1)[0].body, &p); err != nil {
		t.Fatal(err)
	}
	if p.Event.ID != stored.ID || p.Event.Hash != stored.Hash {
		t.Errorf("payload event %+v is not the stored %+v", p.Event, stored)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"bastion_alert_events_dropped_total", "bastion_alerts_raised_total", "bastion_alert_dead_letters_total", "bastion_alert_delivery_seconds"} {
		if !names[want] {
			t.Errorf("metric %s is not registered", want)
		}
	}
	sub.Close()
	<-ran
}

// TestSendRedactsTheURL: a chat webhook's path is its credential; errors
// name the scheme and host only.
func TestSendRedactsTheURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	w := Webhook{URL: "http://" + addr + "/services/T0/B0/SECRET"}
	_, err = w.Send(context.Background(), http.DefaultClient, Sample("gw", time.Now()), time.Now())
	if err == nil || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), addr) {
		t.Errorf("Send to a closed port: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Webhooks: []Webhook{{URL: "ftp://x/y"}}}, "webhooks[0]: url"},
		{Config{Webhooks: []Webhook{{URL: "https://x/y", Format: "xml"}}}, `format "xml"`},
		{Config{Rules: Rules{AuthFailures: Threshold{Count: 3}}}, "rules.auth_failures"},
		{Config{MaxAttempts: -1}, "max_attempts"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "alert: ") {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := (Config{Webhooks: []Webhook{{URL: "https://hooks.example.com/T/B/X", Format: FormatJSON}}, Rules: DefaultRules()}).Validate(); err != nil {
		t.Error(err)
	}
	if _, err := New(Config{}, Deps{}); err == nil {
		t.Error("New without a store")
	}
}

// value reads a counter.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatal(err)
	}
	return out.GetCounter().GetValue()
}

// TestIdPDownRule: an idp.down event raises idp_down once per outage.
func TestIdPDownRule(t *testing.T) {
	e := newEvaluator(DefaultRules(), nil)
	ev := audit.Event{Type: audit.TypeIdPDown, Time: epoch, Fields: map[string]string{"issuer": "https://idp.example.com", "since": "2026-11-27T11:58:00Z", "error": "connection refused"}}
	got := e.evaluate(ev)
	if len(got) != 1 || got[0].rule != RuleIdPDown || !strings.Contains(got[0].text, "https://idp.example.com") || !strings.Contains(got[0].text, "connection refused") {
		t.Fatalf("idp.down raised %+v", got)
	}
	off := DefaultRules()
	off.IdPDown = false
	if got := newEvaluator(off, nil).evaluate(ev); len(got) != 0 {
		t.Fatalf("idp_down off raised %+v", got)
	}
}

// TestManySourcesStayBounded: 40,000 sources failing once each go through
// the rules and the de-duplication in well under a second, and the
// per-key tables stay bounded; before, past 4096 keys every event scanned
// them all. IPv6 failures count per /64.
func TestManySourcesStayBounded(t *testing.T) {
	cfg := Config{Rules: DefaultRules()}.withDefaults()
	ev := newEvaluator(cfg.Rules, &sourceSet{users: map[string]map[netip.Prefix]bool{}})
	d := newDedupe(cfg)
	start := time.Now()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 40000 {
		remote := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
		for _, c := range ev.evaluate(audit.Event{Type: audit.TypeAuthFailed, Session: "c" + remote, Time: at, Fields: map[string]string{
			"remote": remote, "user": "root", "reason": reasonForbiddenUser,
		}}) {
			d.allow(c.rule, c.key, at)
		}
		at = at.Add(time.Millisecond)
	}
	// Not a speed target: a guard against scanning every key per event.
	took := time.Since(start)
	t.Logf("40,000 sources through the rules and de-duplication: %s", took)
	if took > 10*time.Second {
		t.Errorf("40,000 sources took %s: per-event work is no longer constant", took)
	}
	if n := ev.failures.keys.Len(); n > maxKeys {
		t.Errorf("auth_failures remembers %d sources, bound %d", n, maxKeys)
	}
	if n := d.keys.Len(); n > maxKeys {
		t.Errorf("dedupe remembers %d keys, bound %d", n, maxKeys)
	}
	// 20 failures spread over one /64 reach the threshold.
	var fired bool
	for i := range cfg.Rules.AuthFailures.Count {
		a := netip.MustParseAddr("2001:db8:5:6::").As16()
		a[15] = byte(i + 1)
		for _, c := range ev.evaluate(audit.Event{Type: audit.TypeAuthFailed, Session: fmt.Sprint("v6-", i), Time: at, Fields: map[string]string{
			"remote": netip.AddrFrom16(a).String(), "user": "alice", "reason": "expired",
		}}) {
			fired = fired || c.rule == RuleAuthFailures
		}
	}
	if !fired {
		t.Error("failures spread over one IPv6 /64 never reached the auth_failures threshold")
	}
}

// TestRecordingTruncatedRule: a recording.truncated event raises
// recording_truncated, naming the session and the limit.
func TestRecordingTruncatedRule(t *testing.T) {
	ev := audit.Event{Type: audit.TypeRecordingTruncated, Time: epoch, Actor: "alice", Session: "s1", Fields: map[string]string{"login": "deploy", "target": "db:22", "limit": "65536", "bytes_stored": "65500"}}
	got := newEvaluator(DefaultRules(), nil).evaluate(ev)
	if len(got) != 1 || got[0].rule != RuleRecordingTruncated || !strings.Contains(got[0].text, "s1") || !strings.Contains(got[0].text, "65536") {
		t.Fatalf("recording.truncated raised %+v", got)
	}
	off := DefaultRules()
	off.RecordingTruncated = false
	if got := newEvaluator(off, nil).evaluate(ev); len(got) != 0 {
		t.Fatalf("recording_truncated off raised %+v", got)
	}
}
