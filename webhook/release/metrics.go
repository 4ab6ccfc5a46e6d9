package release

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stickynet/stickynet/internal/promreg"
)

// Metrics are the release controller's Prometheus metrics.
type Metrics struct {
	released *prometheus.CounterVec
	passes   *prometheus.HistogramVec
}

// NewMetrics registers the release controller's metrics with reg, or shares
// those registered there before.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		released: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stickynet_webhook_released_addresses_total",
			Help: "Addresses the release controller freed, by the kind of identity that held them.",
		}, []string{"kind"}),
		passes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stickynet_webhook_release_pass_duration_seconds",
			Help:    "Duration of the release controller's full passes, by result (ok or error).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9), // 1 ms to 65 s
		}, []string{"result"}),
	}
	m.released = promreg.Register(reg, m.released)
	m.passes = promreg.Register(reg, m.passes)
	return m
}

func (m *Metrics) pass(d time.Duration, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.passes.WithLabelValues(result).Observe(d.Seconds())
}

func (m *Metrics) release(kind string) {
	if m != nil {
		m.released.WithLabelValues(kind).Inc()
	}
}
