package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/promreg"
)

// addressWaits counts the ADDs that found their address on another pod's
// attachment (waitCarriers), in the process's default registry.
var addressWaits = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "stickynet_nodeagent_address_waits_total",
	Help: "CNI ADDs that waited for another pod on the node to give up the pod's MAC or IP, by result (handed_over: it did; timed_out: the ADD failed with try-again-later).",
}, []string{"result"}))

// bandwidthRefused counts the bandwidth changes the agent did not install
// (agent.bandwidthFor), in the process's default registry.
var bandwidthRefused = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewCounter(prometheus.CounterOpts{
	Name: "stickynet_nodeagent_bandwidth_refused_total",
	Help: "Times the node agent refused to install a running pod's changed bandwidth annotations (a burst below one frame, or an ingress rate or burst a tbf cannot honour); the pod kept its limits. Counted at each look (pod update, resync) while the annotations stay.",
}))

// ovsResets counts the times the agent found its marker flow gone
// (resyncLoop), in the process's default registry.
var ovsResets = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewCounter(prometheus.CounterOpts{
	Name: "stickynet_nodeagent_ovs_resets_total",
	Help: "Times the node agent found that Open vSwitch had lost its flows (ovs-vswitchd restarted, or the bridge was deleted) and put the pods' ports and limits back at once.",
}))

// backgroundErrors counts the failures of the agent's work outside CNI
// requests, which only its log told of, in the process's default registry.
var backgroundErrors = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "stickynet_nodeagent_background_errors_total",
	Help: "Failures of the node agent's work outside CNI requests, by operation: bandwidth (installing a running pod's limits; retried), resync (the periodic check of ports and limits against OVS), advertise (the Node's SR-IOV resources), restore (the state rebuilt at start).",
}, []string{"op"}))

// listenMetrics opens the Prometheus endpoint /metrics on addr: the
// process's default registry (CNI requests, Go runtime) and the agent's
// attachment count; and /readyz, which answers 200 when ready returns nil
// (the agent serves CNI requests, its conflist is installed and its OVS
// bridge is there), else 503 with the reason. It serves until ctx ends.
func listenMetrics(ctx context.Context, addr string, attachments func() int, ready func(context.Context) error) (net.Addr, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "stickynet_nodeagent_attachments",
		Help: "Pod attachments (OVS ports and VFs) the node agent keeps.",
	}, func() float64 { return float64(attachments()) }))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, reg}, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint (--metrics-bind-address %q): %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "Metrics endpoint stopped", "address", addr)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr(), nil
}
