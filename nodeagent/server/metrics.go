package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stickynet/stickynet/internal/promreg"
	"github.com/stickynet/stickynet/nodeagent/api"
)

// The CNI requests the agent answered, in the process's default registry
// (one agent per process in production).
var (
	cniRequests = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stickynet_nodeagent_cni_requests_total",
		Help: "CNI requests the node agent answered, by command and result (ok, fallback: the plugin attaches the pod through the fallback network, error).",
	}, []string{"command", "result"}))
	cniDuration = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "stickynet_nodeagent_cni_request_duration_seconds",
		Help:    "Time the node agent took to answer a CNI request, by command.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"command"}))
)

// observe counts an answered request.
func observe(command string, resp api.Response, d time.Duration) {
	result := "ok"
	switch {
	case resp.Error != nil:
		result = "error"
	case resp.Fallback != nil:
		result = "fallback"
	}
	cniRequests.WithLabelValues(command, result).Inc()
	cniDuration.WithLabelValues(command).Observe(d.Seconds())
}
