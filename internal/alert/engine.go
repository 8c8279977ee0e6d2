package alert

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

// Deps are the engine's collaborators.
type Deps struct {
	// Store records alert.sent, alert.failed and alert.source_seen and
	// keeps the new_source rule's set; *audit.Store is one. Required.
	Store Store
	// Registry receives the engine's metrics; nil registers nowhere.
	Registry prometheus.Registerer
	// Cluster, when set (gateways sharing etcd), de-duplicates alerts
	// across gateways: an alert that passes this gateway's limits goes
	// out only if this gateway is the first in the cluster to claim its
	// rule and key for the key's cooldown. *cluster.Cluster is one.
	Cluster Claimer
}

// Claimer claims a key once cluster-wide for ttl (cluster.Cluster.Claim).
type Claimer interface {
	Claim(ctx context.Context, kind, id string, ttl time.Duration) (bool, error)
}

// claimTimeout bounds one cluster claim; past it the alert goes out (a
// duplicate is better than a lost alert).
const claimTimeout = 3 * time.Second

// Engine evaluates the rules on audit events and delivers the alerts.
type Engine struct {
	cfg     Config
	store   Store
	log     *slog.Logger
	eval    *evaluator
	dedupe  *dedupe
	metrics *metrics
	sinks   []*sink
	cluster Claimer
	// claims are alerts waiting for their cluster claim.
	claims sync.WaitGroup

	// stop ends when Close gives up waiting: in-flight attempts are
	// canceled and what is left becomes dead letters.
	stop    context.Context
	giveUp  context.CancelFunc
	mu      sync.Mutex
	closed  bool
	feed    *audit.Subscription // set by Run, for the dropped-events metric
	workers sync.WaitGroup
	records sync.WaitGroup // delivery records being written
}

// New builds an engine and starts its delivery workers.
func New(cfg Config, deps Deps) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil {
		return nil, errors.New("alert: a Store is required (the audit log, for alert.sent and alert.failed)")
	}
	cfg = cfg.withDefaults()
	sources, err := loadSources(deps.Store, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("alert: read the new_source set: %w", err)
	}
	e := &Engine{
		cfg:     cfg,
		store:   deps.Store,
		log:     cfg.Logger,
		eval:    newEvaluator(cfg.Rules, sources),
		dedupe:  newDedupe(cfg),
		cluster: deps.Cluster,
	}
	e.stop, e.giveUp = context.WithCancel(context.Background())
	e.metrics = newMetrics(deps.Registry, e.droppedEvents)
	for _, w := range cfg.Webhooks {
		s := &sink{hook: w, queue: make(chan Alert, cfg.QueueSize)}
		e.sinks = append(e.sinks, s)
		for range cfg.Workers {
			e.workers.Add(1)
			go e.deliverLoop(s)
		}
	}
	return e, nil
}

// Run evaluates every event of sub until sub closes or ctx ends. It never
// blocks on delivery.
func (e *Engine) Run(ctx context.Context, sub *audit.Subscription) {
	e.mu.Lock()
	e.feed = sub
	e.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-sub.C:
			if !ok {
				return
			}
			e.Observe(ev)
		}
	}
}

// Observe evaluates one event and queues the alerts it raises. Run calls
// it for each event of the feed; call it from one goroutine only.
func (e *Engine) Observe(ev audit.Event) {
	for _, c := range e.eval.evaluate(ev) {
		ok, suppressed := e.dedupe.allow(c.rule, c.key, ev.Time)
		if !ok {
			e.metrics.suppressed.WithLabelValues(c.rule).Inc()
			continue
		}
		a := Alert{
			ID: newAlertID(), Rule: c.rule, Key: c.key, Text: c.text, Source: e.cfg.Source,
			Time: e.cfg.Now().UTC(), Count: c.count, Suppressed: suppressed, Event: c.ev,
		}
		if e.cluster != nil {
			// The claim waits on etcd, so it runs beside the feed; the
			// local limits above already keep these few.
			window := e.dedupe.window(c.rule, c.key, ev.Time)
			e.claims.Add(1)
			go func() {
				defer e.claims.Done()
				if e.claimCluster(a, window) {
					e.raise(a)
				}
			}()
			continue
		}
		e.raise(a)
	}
}

// raise counts, logs and queues an alert that passed de-duplication.
func (e *Engine) raise(a Alert) {
	e.metrics.raised.WithLabelValues(a.Rule).Inc()
	e.log.Info("alert raised", "rule", a.Rule, "key", a.Key, "text", a.Text)
	e.enqueue(a)
}

// claimCluster reports whether this gateway is the first in the cluster
// to raise a's rule and key within window. When etcd cannot say, the
// alert goes out.
func (e *Engine) claimCluster(a Alert, window time.Duration) bool {
	ctx, cancel := context.WithTimeout(e.stop, claimTimeout)
	defer cancel()
	first, err := e.cluster.Claim(ctx, "alert", a.Rule+"\x00"+a.Key, window)
	if err != nil {
		e.log.Warn("could not de-duplicate an alert across the cluster; sending it", "rule", a.Rule, "key", a.Key, "err", err)
		return true
	}
	if !first {
		e.metrics.suppressed.WithLabelValues(a.Rule).Inc()
		e.log.Debug("alert already raised by another gateway", "rule", a.Rule, "key", a.Key)
	}
	return first
}

// Raise sends an alert that no audit event stands behind straight to the
// webhooks: the audit log itself failing (a full disk), or the process
// running out of file descriptors. Delivery needs no disk. The caller
// limits how often it raises; Raise is safe to call from any goroutine.
func (e *Engine) Raise(rule, key, text string) {
	a := Alert{ID: newAlertID(), Rule: rule, Key: key, Text: text, Source: e.cfg.Source, Time: e.cfg.Now().UTC(), Count: 1}
	e.metrics.raised.WithLabelValues(rule).Inc()
	e.log.Warn("alert raised", "rule", rule, "key", key, "text", text)
	e.enqueue(a)
}

// enqueue hands a to every webhook's queue without waiting; a full queue
// makes it a dead letter for that webhook.
func (e *Engine) enqueue(a Alert) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	for _, s := range e.sinks {
		select {
		case s.queue <- a:
			e.metrics.queued.Inc()
		default:
			e.deadLetter(s.hook, a, 0, "queue_full", fmt.Errorf("the queue of %d undelivered alerts is full", cap(s.queue)))
		}
	}
}

// Close stops taking alerts, lets the workers deliver what is queued
// until ctx ends, and then abandons the rest as dead letters (counted,
// and recorded while the store is open). Call it before closing the
// store.
func (e *Engine) Close(ctx context.Context) error {
	e.claims.Wait() // bounded by claimTimeout
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	for _, s := range e.sinks {
		close(s.queue)
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.workers.Wait()
		e.records.Wait()
		close(done)
	}()
	select {
	case <-done:
		e.giveUp()
		return nil
	case <-ctx.Done():
		e.giveUp() // workers abandon retries and drain as dead letters
		<-done
		return fmt.Errorf("alert: undelivered alerts abandoned at shutdown: %w", ctx.Err())
	}
}

// DeadLetters is how many alert deliveries were given up on.
func (e *Engine) DeadLetters() uint64 { return uint64(e.metrics.deadCount.Load()) }

// droppedEvents is how many feed events the engine missed.
func (e *Engine) droppedEvents() float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.feed == nil {
		return 0
	}
	return float64(e.feed.Dropped())
}

// sink is one webhook and its queue.
type sink struct {
	hook  Webhook
	queue chan Alert
}

// deliverLoop delivers alerts from s's queue until it closes.
func (e *Engine) deliverLoop(s *sink) {
	defer e.workers.Done()
	for a := range s.queue {
		e.metrics.queued.Dec()
		e.deliver(s.hook, a)
	}
}

// deliver tries a until it is delivered, a permanent error, the retry
// budget or shutdown, and records the outcome.
func (e *Engine) deliver(w Webhook, a Alert) {
	backoff := e.cfg.Backoff
	var last error
	for attempt := 1; attempt <= e.cfg.MaxAttempts; attempt++ {
		if e.stop.Err() != nil {
			e.deadLetter(w, a, attempt-1, "shutdown", errors.Join(errors.New("the gateway stopped before delivery"), last))
			return
		}
		ctx, cancel := context.WithTimeout(e.stop, e.cfg.Timeout)
		status, err := w.Send(ctx, e.cfg.Client, a, e.cfg.Now())
		cancel()
		if err == nil {
			e.metrics.attempts.WithLabelValues("ok").Inc()
			e.metrics.latency.Observe(e.cfg.Now().Sub(a.Event.Time).Seconds())
			e.record(audit.Event{Type: audit.TypeAlertSent, Actor: "alerts", Fields: map[string]string{
				"rule": a.Rule, "key": a.Key, "alert_id": a.ID, "webhook": w.Name(),
				"attempts": strconv.Itoa(attempt), "status": strconv.Itoa(status), "event_id": a.Event.ID,
			}})
			return
		}
		last = err
		var se *SendError
		retryable := errors.As(err, &se) && se.Retryable
		e.metrics.attempts.WithLabelValues("failed").Inc()
		e.log.Warn("alert delivery failed", "rule", a.Rule, "webhook", w.Name(), "attempt", attempt, "err", err)
		if !retryable || attempt == e.cfg.MaxAttempts {
			reason := "retries_exhausted"
			if !retryable {
				reason = "permanent"
			}
			e.deadLetter(w, a, attempt, reason, err)
			return
		}
		wait := backoff
		if se != nil && se.RetryAfter > wait {
			wait = min(se.RetryAfter, e.cfg.MaxBackoff)
		}
		backoff = min(2*backoff, e.cfg.MaxBackoff)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-e.stop.Done():
			t.Stop()
		}
	}
}

// deadLetter counts, logs and records an alert given up on.
func (e *Engine) deadLetter(w Webhook, a Alert, attempts int, reason string, err error) {
	e.metrics.deadLetters.Inc()
	e.metrics.deadCount.Add(1)
	e.log.Error("alert not delivered", "rule", a.Rule, "key", a.Key, "webhook", w.Name(), "attempts", attempts, "reason", reason, "err", err)
	detail := ""
	if err != nil {
		detail = err.Error()
	}
	e.record(audit.Event{Type: audit.TypeAlertFailed, Actor: "alerts", Fields: map[string]string{
		"rule": a.Rule, "key": a.Key, "alert_id": a.ID, "webhook": w.Name(), "text": a.Text,
		"attempts": strconv.Itoa(attempts), "reason": reason, "detail": detail, "event_id": a.Event.ID,
	}})
}

// record appends a delivery record without holding up the worker, so
// records of a burst share the store's group commits; Close waits for
// them. A closed store is only logged.
func (e *Engine) record(ev audit.Event) {
	e.records.Add(1)
	go func() {
		defer e.records.Done()
		if _, err := e.store.Append(context.Background(), ev); err != nil {
			e.log.Error("alert: cannot record the delivery outcome", "type", ev.Type, "err", err)
		}
	}()
}
