package server

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stickynet/stickynet/extender/filter"
)

// metrics are the server's Prometheus metrics.
type metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	failedNodes *prometheus.CounterVec
	fastPath    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stickynet", Subsystem: "extender", Name: "requests_total",
			Help: "Extender requests by verb and HTTP status code (a filter refused through its result's Error, answered 200: the status it stands for).",
		}, []string{"verb", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "stickynet", Subsystem: "extender", Name: "request_duration_seconds",
			Help: "Time to answer an extender request, from its arrival to the last byte of the answer written.",
			// 25 µs to 0.8 s by doubling, then to the scheduler's 5 s timeout.
			Buckets: append(prometheus.ExponentialBuckets(25e-6, 2, 16), 2, 5, 10),
		}, []string{"verb"}),
		failedNodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stickynet", Subsystem: "extender", Name: "filtered_nodes_total",
			Help: "Nodes the filter verb rejected, by cause.",
		}, []string{"cause"}),
		fastPath: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "stickynet", Subsystem: "extender", Name: "fast_path_total",
			Help: "Requests answered without looking at any node: pods stickynet did not admit (filter) or with nothing to prefer (prioritize).",
		}, []string{"verb"}),
	}
	reg.MustRegister(m.requests, m.duration, m.failedNodes, m.fastPath)
	return m
}

// countFailures counts failed nodes by cause.
func (m *metrics) countFailures(fs []filter.Failure) {
	if len(fs) == 0 {
		return
	}
	var counts [16]int
	for _, f := range fs {
		counts[f.Cause&15]++
	}
	for c, n := range counts {
		if n > 0 {
			m.failedNodes.WithLabelValues(filter.Cause(c).String()).Add(float64(n))
		}
	}
}

func (m *metrics) observe(verb string, code int, d time.Duration) {
	m.requests.WithLabelValues(verb, strconv.Itoa(code)).Inc()
	m.duration.WithLabelValues(verb).Observe(d.Seconds())
}
