package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bastion-ssh/bastion/audit"
)

// When the audit log cannot be written (the data directory's disk is
// full, the file system went read-only) the gateway keeps one rule:
// nothing that has an audit record happens without it. Actions not yet
// taken (a login, a jump, a built-in command) are refused with one line,
// MsgAuditUnavailable. Records of things that already happened (a session
// that ended, a refusal, a failed login) cannot be refused, so they wait
// in a bounded queue in memory and are written, in order, once the log
// takes writes again; any the queue had no room for are counted and the
// count is written too (an audit.outage event closes each episode).
// /healthz, bastion_audit_available and an alert (Deps.Alerter, which
// needs no disk) report the outage while it lasts.

// MsgAuditUnavailable is what a user is told when the gateway refuses an
// action because its audit record cannot be made durable.
const MsgAuditUnavailable = "audit log unavailable, try again later"

// TypeAuditOutage is audit.TypeAuditOutage, the record closing an outage.
const TypeAuditOutage = audit.TypeAuditOutage

// Alerter sends an alert without touching the disk; *alert.Engine is one.
type Alerter interface {
	Raise(rule, key, text string)
}

// Alert rules the gateway raises itself.
const (
	AlertAuditUnavailable = "audit_unavailable"
	AlertFDExhausted      = "fd_exhausted"
)

const (
	// spoolCap bounds the records held in memory while the log is down:
	// about 1 KiB each, so a few MiB at most.
	spoolCap = 4096
	// spoolRetry is how often the queue is retried while the log is down.
	spoolRetry = time.Second
)

// errAuditUnavailable is the error a refused action reports.
var errAuditUnavailable = errors.New(MsgAuditUnavailable)

// spool tracks the audit log's health and holds records of past events
// while it is down.
type spool struct {
	store   Auditor
	log     *slog.Logger
	alerter Alerter
	now     func() time.Time

	available prometheus.Gauge
	failures  prometheus.Counter
	queuedG   prometheus.Gauge
	droppedC  prometheus.Counter
	lateC     prometheus.Counter

	mu        sync.Mutex
	queue     []audit.Event
	downSince time.Time // zero while the log takes writes
	lastErr   error
	written   int    // queued records written late in this episode
	dropped   uint64 // records dropped in this episode
	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	stopOnce  sync.Once
}

func newSpool(store Auditor, log *slog.Logger, alerter Alerter, now func() time.Time, reg prometheus.Registerer) *spool {
	s := &spool{
		store: store, log: log, alerter: alerter, now: now,
		available: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bastion_audit_available", Help: "1 while the audit log takes writes, 0 while it does not (actions are refused, records of past events wait in memory)."}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "bastion_audit_write_failures_total", Help: "Audit writes that failed (full disk, I/O error)."}),
		queuedG:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "bastion_audit_queued", Help: "Records of past events waiting in memory for the audit log to take writes again."}),
		droppedC:  prometheus.NewCounter(prometheus.CounterOpts{Name: "bastion_audit_dropped_total", Help: "Records of past events dropped because the in-memory queue was full while the audit log was down."}),
		lateC:     prometheus.NewCounter(prometheus.CounterOpts{Name: "bastion_audit_written_late_total", Help: "Records that waited in memory during an audit outage and were written once it ended."}),
		kick:      make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	s.available.Set(1)
	if reg != nil {
		reg.MustRegister(s.available, s.failures, s.queuedG, s.droppedC, s.lateC)
	}
	go s.run()
	return s
}

// write appends ev and reports whether it is durable. A failure that is
// the store's (not the event's shape, not ctx) marks the log down.
func (s *spool) write(ctx context.Context, ev audit.Event) error {
	_, err := s.store.Append(ctx, ev)
	switch {
	case err == nil:
		s.mu.Lock()
		up := !s.downSince.IsZero() && len(s.queue) == 0
		s.mu.Unlock()
		if up {
			s.kickRetry() // the retry loop closes the episode
		}
	case storeFault(ctx, err):
		s.markDown(err)
	}
	return err
}

// storeFault reports whether err means the log cannot take writes, as
// opposed to a refused event or a caller that gave up.
func storeFault(ctx context.Context, err error) bool {
	return !errors.Is(err, audit.ErrInvalidEvent) && ctx.Err() == nil
}

// keep queues ev, a record of something that already happened, after its
// write failed; it is written once the log takes writes again.
func (s *spool) keep(ev audit.Event) {
	if ev.Time.IsZero() {
		ev.Time = s.now().UTC() // when it happened, not when it is written
	}
	s.mu.Lock()
	if len(s.queue) >= spoolCap {
		s.dropped++
		s.mu.Unlock()
		s.droppedC.Inc()
		return
	}
	s.queue = append(s.queue, ev)
	s.queuedG.Set(float64(len(s.queue)))
	s.mu.Unlock()
	s.kickRetry()
}

// down reports whether the log is known not to take writes.
func (s *spool) down() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.downSince.IsZero()
}

func (s *spool) markDown(err error) {
	s.failures.Inc()
	s.mu.Lock()
	first := s.downSince.IsZero()
	if first {
		s.downSince = s.now()
		s.written, s.dropped = 0, 0
	}
	s.lastErr = err
	s.mu.Unlock()
	if !first {
		return
	}
	s.available.Set(0)
	s.log.Error("audit log unavailable: refusing logins, jumps and commands until it takes writes again; records of past events wait in memory", "err", err)
	if s.alerter != nil {
		s.alerter.Raise(AlertAuditUnavailable, "audit.db", fmt.Sprintf("bastion: the audit log cannot be written (%v); logins, jumps and commands are refused until it can", err))
	}
	s.kickRetry()
}

func (s *spool) kickRetry() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run retries the queue while the log is down, until close.
func (s *spool) run() {
	defer close(s.done)
	t := time.NewTicker(spoolRetry)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-t.C:
		}
		s.flush(context.Background())
	}
}

// flush writes what is queued, oldest first, and closes the episode once
// the queue is empty and a write has succeeded.
func (s *spool) flush(ctx context.Context) {
	for {
		s.mu.Lock()
		if s.downSince.IsZero() {
			s.mu.Unlock()
			return
		}
		if len(s.queue) == 0 {
			s.mu.Unlock()
			s.closeEpisode(ctx)
			return
		}
		ev := s.queue[0]
		s.mu.Unlock()
		if _, err := s.store.Append(ctx, ev); err != nil {
			if !errors.Is(err, audit.ErrInvalidEvent) {
				return // still down; try again later
			}
			s.log.Error("audit: a queued record was refused and is dropped", "type", ev.Type, "err", err)
		} else {
			s.lateC.Inc()
		}
		s.mu.Lock()
		s.queue = s.queue[1:]
		s.written++
		s.queuedG.Set(float64(len(s.queue)))
		s.mu.Unlock()
	}
}

// closeEpisode writes the audit.outage record; once it is durable the log
// is up again.
func (s *spool) closeEpisode(ctx context.Context) {
	s.mu.Lock()
	since, written, dropped, lastErr := s.downSince, s.written, s.dropped, s.lastErr
	s.mu.Unlock()
	detail := ""
	if lastErr != nil {
		detail = lastErr.Error()
	}
	if len(detail) > 300 {
		detail = detail[:300]
	}
	now := s.now()
	_, err := s.store.Append(ctx, audit.Event{Type: TypeAuditOutage, Actor: "gateway", Fields: map[string]string{
		"since": since.UTC().Format(time.RFC3339Nano), "until": now.UTC().Format(time.RFC3339Nano),
		"written_late": strconv.Itoa(written), "dropped": strconv.FormatUint(dropped, 10), "error": detail,
	}})
	if err != nil {
		return
	}
	s.mu.Lock()
	// Records queued while the outage record was written go out next.
	if len(s.queue) == 0 {
		s.downSince = time.Time{}
	}
	s.written = 0
	s.dropped = 0
	up := s.downSince.IsZero()
	s.mu.Unlock()
	if up {
		s.available.Set(1)
		s.log.Warn("audit log takes writes again", "down_for", now.Sub(since).String(), "written_late", written, "dropped", dropped)
	}
}

// close stops retrying and makes a last attempt, bounded by ctx, to write
// what is queued; it returns how many records were lost.
func (s *spool) close(ctx context.Context) int {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	s.flush(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	lost := len(s.queue) + int(s.dropped)
	if lost > 0 {
		s.log.Error("audit: records lost at shutdown: the audit log did not take writes again", "queued", len(s.queue), "dropped", s.dropped)
	}
	return lost
}
