package release

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/promreg"
)

// Metrics are the release controller's Prometheus metrics.
type Metrics struct {
	released *prometheus.CounterVec
	passes   *prometheus.HistogramVec
	requeues prometheus.Counter
	offNet   prometheus.Gauge
	stale    *prometheus.CounterVec
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
			Buckets: []float64{.001, .004, .016, .064, .25, 1, 4, 16, 30, 60, 90, 120, 180}, // a pass ends at 2 min
		}, []string{"result"}),
		requeues: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stickynet_webhook_requeued_pods_total",
			Help: "Unschedulable pods the release controller had the scheduler try again, after their IPPool's or SriovNetwork's nodeSelector changed.",
		}),
	}
	m.offNet = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "stickynet_webhook_pods_off_network",
		Help: "Live pods that, by their status, run with an address other than their stickynet one (the node's own network attached them: no node agent serving there when they started), as the release controller's last pass found them.",
	})
	m.stale = promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stickynet_webhook_stale_node_resources_withdrawals_total",
		Help: "Withdrawals of stale stickynet.io/ resources from Nodes that the node agents' DaemonSet does not select, by result (ok, or error: the API server refused; tried again after 5 min).",
	}, []string{"result"}))
	m.offNet = promreg.Register(reg, m.offNet)
	m.released = promreg.Register(reg, m.released)
	m.requeues = promreg.Register(reg, m.requeues)
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

func (m *Metrics) staleWithdrawal(ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	m.stale.WithLabelValues(result).Inc()
}

func (m *Metrics) requeued() {
	if m != nil {
		m.requeues.Inc()
	}
}

func (m *Metrics) offNetwork(n int) {
	if m != nil {
		m.offNet.Set(float64(n))
	}
}

func (m *Metrics) release(kind string) {
	if m != nil {
		m.released.WithLabelValues(kind).Inc()
	}
}

// poolCollector exports each IPPool's counts and readiness as its status
// has them (the release controller writes them), read from the cache on
// every replica, so that a pool running out can be alerted on.
type poolCollector struct {
	reader     client.Reader
	addrs, rdy *prometheus.Desc
}

// NewPoolCollector registers the IPPool gauges with reg (once per registry).
func NewPoolCollector(reg prometheus.Registerer, r client.Reader) {
	promreg.Register[prometheus.Collector](reg, &poolCollector{
		reader: r,
		addrs: prometheus.NewDesc("stickynet_ippool_addresses",
			"An IPPool's addresses by state (total, allocated, held, cooling, other-pools, free), as its status counts them.", []string{"pool", "state"}, nil),
		rdy: prometheus.NewDesc("stickynet_ippool_ready",
			"1 while an IPPool hands out addresses (its Ready condition is True), else 0.", []string{"pool"}, nil),
	})
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.addrs
	ch <- c.rdy
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pools := &v1alpha1.IPPoolList{}
	if err := c.reader.List(ctx, pools); err != nil {
		klog.Background().Error(err, "IPPool metrics: list IPPools")
		return
	}
	for i := range pools.Items {
		p := &pools.Items[i]
		st := p.Status
		for state, v := range map[string]int64{"total": st.Total, "allocated": st.Allocated, "held": st.Held, "cooling": st.Cooling, "other-pools": st.OtherPools, "free": st.Free} {
			ch <- prometheus.MustNewConstMetric(c.addrs, prometheus.GaugeValue, float64(v), p.Name, state)
		}
		ready := 0.0
		if meta.IsStatusConditionPresentAndEqual(st.Conditions, "Ready", metav1.ConditionTrue) {
			ready = 1
		}
		ch <- prometheus.MustNewConstMetric(c.rdy, prometheus.GaugeValue, ready, p.Name)
	}
}
