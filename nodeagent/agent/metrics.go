package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
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

// addressWaiting is the number of ADDs now waiting in waitCarriers, in the
// process's default registry.
var addressWaiting = promreg.Register(prometheus.DefaultRegisterer, prometheus.NewGauge(prometheus.GaugeOpts{
	Name: "stickynet_nodeagent_address_waiting",
	Help: "CNI ADDs now waiting for another pod on the node to give up the pod's MAC or IP.",
}))

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
	Help: "Failures of the node agent's work outside CNI requests, by operation: bandwidth (installing a running pod's limits; retried), resync (the periodic check of ports and limits against OVS), advertise (the Node's stickynet.io/network and SR-IOV resources), restore (the state rebuilt at start).",
}, []string{"op"}))

// probes answers the agent's endpoints: its attachment count, whether it
// is ready (nil, or why not) and whether it is alive (nil, or why not).
type probes interface {
	// attachments is the number of attachments, and false before the
	// agent has read them (no sample then).
	attachments() (int, bool)
	ready(ctx context.Context) error
	live(ctx context.Context) error
}

// listenMetrics opens the Prometheus endpoint /metrics on addr: the
// process's default registry (CNI requests, Go runtime) and the agent's
// attachment count; /readyz, which answers 200 when the agent is ready (it
// serves CNI requests, its conflist is installed and its OVS bridge is
// there), else 503 with the reason; and /livez, 200 unless the agent is
// stuck. It serves until ctx ends.
func listenMetrics(ctx context.Context, addr string, p probes) (net.Addr, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(attachmentsCollector{p})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{prometheus.DefaultGatherer, reg}, promhttp.HandlerOpts{}))
	probe := func(check func(context.Context) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if err := check(r.Context()); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, "ok\n")
		}
	}
	mux.HandleFunc("GET /readyz", probe(p.ready))
	mux.HandleFunc("GET /livez", probe(p.live))
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

// health answers the probes from the agent's start, before the agent is
// built: while it waits for Open vSwitch, /readyz says why and /livez is
// ok (waiting is not stuck: a restart would only wait again); then it asks
// the agent.
type health struct {
	mu    sync.Mutex
	agent *agent
	ovs   error // why Open vSwitch is not ready, while the agent waits for it
}

func (h *health) get() (*agent, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.agent, h.ovs
}

// waiting records why Open vSwitch is not ready yet (waitOVS).
func (h *health) waiting(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ovs = err
}

// started hands the probes to the agent.
func (h *health) started(a *agent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.agent = a
}

func (h *health) attachments() (int, bool) {
	if a, _ := h.get(); a != nil {
		return a.count(), true
	}
	return 0, false
}

// attachmentsCollector exports the attachment count once the agent has
// read its attachments: while it waits for Open vSwitch there is no sample,
// rather than a 0 that pods which still have theirs would not bear out.
type attachmentsCollector struct{ p probes }

var attachmentsDesc = prometheus.NewDesc("stickynet_nodeagent_attachments", "Pod attachments (OVS ports and VFs) the node agent keeps.", nil, nil)

func (attachmentsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- attachmentsDesc }

func (c attachmentsCollector) Collect(ch chan<- prometheus.Metric) {
	if n, ok := c.p.attachments(); ok {
		ch <- prometheus.MustNewConstMetric(attachmentsDesc, prometheus.GaugeValue, float64(n))
	}
}

func (h *health) ready(ctx context.Context) error {
	a, ovsErr := h.get()
	switch {
	case a != nil:
		if err := a.status(ctx); err != nil {
			return err
		}
		return uplinkProblem(ctx, a.ovs, a.opts.Uplink, a.opts.MTU)
	case ovsErr != nil:
		return fmt.Errorf("waiting for Open vSwitch: %w", ovsErr)
	}
	return errors.New("stickynet node agent is starting")
}

func (h *health) live(ctx context.Context) error {
	if a, _ := h.get(); a != nil {
		return a.live(ctx, liveWait)
	}
	return nil
}

// liveWait is how long /livez waits for the agent's state lock, which every
// CNI request and resync takes for a moment: held longer, the agent is
// stuck, and kubelet restarts it (its state is on disk).
const liveWait = 5 * time.Second
