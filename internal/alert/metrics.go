package alert

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's Prometheus metrics, registered on a registry
// the caller owns (no global default registry).
type metrics struct {
	raised      *prometheus.CounterVec
	suppressed  *prometheus.CounterVec
	attempts    *prometheus.CounterVec
	deadLetters prometheus.Counter
	queued      prometheus.Gauge
	latency     prometheus.Histogram
	// deadCount mirrors deadLetters for DeadLetters().
	deadCount atomic.Int64
}

func newMetrics(reg prometheus.Registerer, dropped func() float64) *metrics {
	m := &metrics{
		raised: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_alerts_raised_total", Help: "Alerts raised, by rule (after de-duplication).",
		}, []string{"rule"}),
		suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_alerts_suppressed_total", Help: "Alerts held back by de-duplication, by rule.",
		}, []string{"rule"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_alert_delivery_attempts_total", Help: "Webhook delivery attempts by result (ok, failed).",
		}, []string{"result"}),
		deadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bastion_alert_dead_letters_total", Help: "Alert deliveries given up on (retries exhausted, permanent error, full queue, shutdown); each is also an alert.failed audit event.",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bastion_alert_queue_length", Help: "Alert deliveries waiting in the webhook queues.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "bastion_alert_delivery_seconds", Help: "Time from the triggering audit event to the webhook's acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.raised, m.suppressed, m.attempts, m.deadLetters, m.queued, m.latency,
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "bastion_alert_events_dropped_total", Help: "Audit events the alert engine missed because its feed was full (the gateway never waits for it).",
			}, dropped))
	}
	return m
}
