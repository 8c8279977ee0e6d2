package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus metrics, registered on a registry
// the caller owns (no global default registry).
type metrics struct {
	authAttempts *prometheus.CounterVec
	connections  prometheus.Gauge
	unauthConns  prometheus.Gauge
	channels     *prometheus.GaugeVec
	bytesRelayed *prometheus.CounterVec
	bans         prometheus.Counter
	connsRefused *prometheus.CounterVec
	auditLatency prometheus.Histogram
	jumps        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		authAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_auth_attempts_total", Help: "Authentication attempts by result (ok, failed) and reason.",
		}, []string{"result", "reason"}),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bastion_connections_active", Help: "Open SSH connections.",
		}),
		unauthConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bastion_connections_unauthenticated", Help: "Connections that have not authenticated yet.",
		}),
		channels: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bastion_channels_active", Help: "Open SSH channels by type.",
		}, []string{"type"}),
		bytesRelayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_bytes_relayed_total", Help: "Bytes relayed through jumps, by direction (up: client to target, down: target to client).",
		}, []string{"direction"}),
		bans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bastion_bans_total", Help: "Source addresses banned for repeated authentication failures.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_connections_refused_total", Help: "Connections closed before the handshake, by reason (banned, too_many_unauthenticated, too_many_unauthenticated_per_source, early_drop, handshake_timeout).",
		}, []string{"reason"}),
		auditLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "bastion_audit_write_seconds", Help: "Time to make one audit event durable.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		jumps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bastion_jumps_total", Help: "direct-tcpip jump requests by result (ok, refused) and reason.",
		}, []string{"result", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.authAttempts, m.connections, m.unauthConns, m.channels, m.bytesRelayed, m.bans, m.connsRefused, m.auditLatency, m.jumps)
	}
	return m
}
