package gateway

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/bastion-ssh/bastion/audit"
)

// flakyAuditor fails every Append while broken, like a full disk.
type flakyAuditor struct {
	mu     sync.Mutex
	broken bool
	got    []audit.Event
}

func (f *flakyAuditor) Append(_ context.Context, ev audit.Event) (audit.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return audit.Event{}, errors.New("audit: write audit.db: no space left on device")
	}
	f.got = append(f.got, ev)
	return ev, nil
}

func (f *flakyAuditor) set(broken bool) {
	f.mu.Lock()
	f.broken = broken
	f.mu.Unlock()
}

func (f *flakyAuditor) events() []audit.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]audit.Event(nil), f.got...)
}

type fakeAlerter struct {
	mu    sync.Mutex
	rules []string
}

func (a *fakeAlerter) Raise(rule, _, _ string) {
	a.mu.Lock()
	a.rules = append(a.rules, rule)
	a.mu.Unlock()
}

func (a *fakeAlerter) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.rules)
}

// TestSpoolKeepsPastEventsAndRefusesNewOnes: while the store fails, a
// record of an action yet to happen is refused and not kept, records of
// past events are kept in order (beyond the cap, dropped and counted),
// one alert fires, and once the store works again they are written,
// followed by an audit.outage record with the counts.
func TestSpoolKeepsPastEventsAndRefusesNewOnes(t *testing.T) {
	store := &flakyAuditor{}
	al := &fakeAlerter{}
	reg := prometheus.NewRegistry()
	s := newSpool(store, slog.New(slog.DiscardHandler), al, time.Now, reg)
	defer s.close(context.Background())
	g := &Gateway{spool: s, metrics: newMetrics(nil), log: slog.New(slog.DiscardHandler)}

	store.set(true)
	if err := g.recordOrRefuse(context.Background(), audit.Event{Type: audit.TypeSessionStart, Session: "never"}); err == nil {
		t.Fatal("recordOrRefuse succeeded on a failing store")
	}
	if !s.down() || g.AuditAvailable() {
		t.Fatal("the spool does not know the log is down")
	}
	for i := range spoolCap + 5 {
		_ = g.record(context.Background(), audit.Event{Type: audit.TypeSessionEnd, Session: "s" + string(rune('a'+i%26))})
	}
	if got := metricValue(s.droppedC); got != 5 {
		t.Errorf("dropped %v, want the 5 over the cap of %d", got, spoolCap)
	}
	if metricValue(s.available) != 0 {
		t.Error("bastion_audit_available is not 0 during the outage")
	}
	if al.count() != 1 {
		t.Errorf("%d alerts raised, want 1 per outage", al.count())
	}

	store.set(false)
	waitUntil(t, 10*time.Second, func() bool { return !s.down() })
	evs := store.events()
	if len(evs) != spoolCap+1 {
		t.Fatalf("%d events written after the outage, want %d kept plus audit.outage", len(evs), spoolCap+1)
	}
	for _, ev := range evs[:spoolCap] {
		if ev.Type != audit.TypeSessionEnd || ev.Time.IsZero() {
			t.Fatalf("kept event %+v: want a session.end dated when it happened", ev)
		}
		if ev.Session == "never" {
			t.Fatal("the refused session.start was written after all")
		}
	}
	out := evs[spoolCap]
	if out.Type != TypeAuditOutage || out.Fields["written_late"] != "4096" || out.Fields["dropped"] != "5" {
		t.Errorf("outage record %+v, want written_late 4096 and dropped 5", out)
	}
	if metricValue(s.available) != 1 || metricValue(s.queuedG) != 0 {
		t.Error("metrics do not show the log back")
	}
}

func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFDExhaustionIsReported: EMFILE on accept is counted every time,
// logged and alerted at most once per interval; other errors are not.
func TestFDExhaustionIsReported(t *testing.T) {
	al := &fakeAlerter{}
	now := time.Unix(1000, 0)
	g := &Gateway{log: slog.New(slog.DiscardHandler), now: func() time.Time { return now }, deps: Deps{Alerter: al}}
	w := newFDWatch(g, nil)
	emfile := &opError{syscall.EMFILE}
	for range 50 {
		w.check("accept", emfile)
	}
	w.check("accept", errors.New("use of closed network connection"))
	if got := metricValue(w.exhausted.WithLabelValues("accept")); got != 50 {
		t.Errorf("counted %v, want 50", got)
	}
	if al.count() != 1 {
		t.Errorf("%d alerts, want 1", al.count())
	}
	now = now.Add(fdAlertEvery)
	w.check("dial", emfile)
	if al.count() != 2 {
		t.Errorf("%d alerts after the interval, want 2", al.count())
	}
}

// opError wraps an errno as net's accept errors do.
type opError struct{ errno syscall.Errno }

func (e *opError) Error() string { return "accept tcp: " + e.errno.Error() }
func (e *opError) Unwrap() error { return e.errno }

// metricValue reads a gauge or counter.
func metricValue(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}
