// Package app runs the stickynet scheduler extender: it builds the cluster
// view (package state) from informers on Nodes, Pods, IPPools and
// SriovNetworks, serves the verbs over HTTP or HTTPS (package server) once
// the informers have synced, and stops cleanly when its context ends.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/extender/filter"
	"github.com/stickynet/stickynet/extender/score"
	"github.com/stickynet/stickynet/extender/server"
	"github.com/stickynet/stickynet/extender/state"
)

// Options configure the extender.
type Options struct {
	// Kubeconfig is the kubeconfig file to use; empty means the in-cluster
	// configuration.
	Kubeconfig string
	// RESTConfig, if set, is used instead of Kubeconfig.
	RESTConfig *rest.Config
	// BindAddress is where the server listens, such as ":8888".
	BindAddress string
	// Listener, if set, is used instead of BindAddress.
	Listener net.Listener
	// TLSCertFile and TLSKeyFile, if both set, make the server speak HTTPS
	// with this certificate, reloaded when the files change.
	TLSCertFile, TLSKeyFile string
	// MaxRequestBytes bounds request bodies; 0 means server.DefaultMaxRequestBytes.
	MaxRequestBytes int64
	// PreferLastNode gives the node a pod's identity last ran on the top score.
	PreferLastNode bool
	// LastNodeTTL is how long that node is remembered after the identity's
	// pod is gone; 0 means forever.
	LastNodeTTL time.Duration
	// VFPlacement ranks nodes for SR-IOV pods by free VFs.
	VFPlacement score.Placement
	// MaxRankedNodes bounds the nodes one prioritize answer lists
	// (score.Options.MaxListed); 0 means score.DefaultMaxListed, a
	// negative number no bound.
	MaxRankedNodes int
	// CountRequestedVFs makes the filter count free VFs also for pods that
	// request the VF resource, which the scheduler counts itself unless
	// configured to ignore it (see filter.Options).
	CountRequestedVFs bool
	// Registry receives the extender's metrics, served at /metrics; nil
	// means a new registry with the Go and process collectors.
	Registry *prometheus.Registry
	// ShutdownTimeout bounds how long requests in flight may finish when
	// the context ends; 0 means 10 s.
	ShutdownTimeout time.Duration
	// ShutdownDelay is how long, once Run's context ends, the extender keeps
	// answering with /readyz failing, so that the scheduler's requests stop
	// coming (the Service's endpoints drop a terminating pod) before it
	// stops serving; 0 stops at once.
	ShutdownDelay time.Duration
}

// Validate checks the options.
func (o *Options) Validate() error {
	var errs []error
	if o.Listener == nil && o.BindAddress == "" {
		errs = append(errs, errors.New("bind address: must be set, such as :8888"))
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		errs = append(errs, fmt.Errorf("TLS: certificate file %q and key file %q must be given together", o.TLSCertFile, o.TLSKeyFile))
	}
	if o.MaxRequestBytes < 0 {
		errs = append(errs, fmt.Errorf("max request bytes %d: must not be negative", o.MaxRequestBytes))
	}
	if o.ShutdownDelay < 0 {
		errs = append(errs, fmt.Errorf("shutdown delay %v: must not be negative", o.ShutdownDelay))
	}
	if o.LastNodeTTL < 0 {
		errs = append(errs, fmt.Errorf("last node TTL %v: must not be negative", o.LastNodeTTL))
	}
	if _, err := score.ParsePlacement(string(o.VFPlacement)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends (and opts.ShutdownDelay more), then shuts down
// and returns nil; it returns an error if the extender cannot start or fails.
func Run(ctx context.Context, opts Options) error {
	if err := opts.Validate(); err != nil {
		return fmt.Errorf("invalid options: %w", err)
	}
	logger := klog.FromContext(ctx)
	// Everything runs under ctx, which ends opts.ShutdownDelay after the
	// caller's (stopping) does.
	stopping := ctx
	ctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	cfg, err := restConfig(opts)
	if err != nil {
		return err
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}

	st := state.New(state.Options{LastNodeTTL: opts.LastNodeTTL})
	registerStateMetrics(reg, st)
	informers, err := newInformerCache(cfg)
	if err != nil {
		return err
	}
	synced, err := watch(ctx, informers, st)
	if err != nil {
		return err
	}
	srv := server.New(st, server.Options{
		MaxRequestBytes: opts.MaxRequestBytes,
		Filter:          filter.Options{CountRequestedVFs: opts.CountRequestedVFs},
		Score:           score.Options{PreferLastNode: opts.PreferLastNode, Placement: opts.VFPlacement, MaxListed: maxListed(opts.MaxRankedNodes)},
		Registry:        reg,
	})

	go func() {
		select {
		case <-stopping.Done():
		case <-ctx.Done():
			return
		}
		if opts.ShutdownDelay > 0 {
			srv.Drain()
			logger.Info("Shutting down: not ready, still serving", "for", opts.ShutdownDelay)
			select {
			case <-time.After(opts.ShutdownDelay):
			case <-ctx.Done():
			}
		}
		stop()
	}()

	ln := opts.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", opts.BindAddress); err != nil {
			return fmt.Errorf("listen on %s: %w", opts.BindAddress, err)
		}
	}
	httpServer := &http.Server{
		Handler:           srv,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}

	g, gctx := errgroup.WithContext(ctx)
	if opts.TLSCertFile != "" {
		watcher, err := certwatcher.New(opts.TLSCertFile, opts.TLSKeyFile)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("load serving certificate: %w", err)
		}
		httpServer.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: watcher.GetCertificate}
		g.Go(func() error { return watcher.Start(gctx) })
	}
	g.Go(func() error {
		if err := informers.Start(gctx); err != nil {
			return fmt.Errorf("run informers: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		begin := time.Now()
		if !toolscache.WaitForCacheSync(gctx.Done(), synced...) {
			return nil // the context ended first
		}
		srv.SetReady()
		logger.Info("Informer caches synced; answering the scheduler", "elapsed", time.Since(begin).Round(time.Millisecond))
		return nil
	})
	g.Go(func() error {
		tick := time.NewTicker(time.Minute)
		defer tick.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
				st.Prune()
			}
		}
	})
	g.Go(func() error {
		logger.Info("Serving the scheduler extender", "address", ln.Addr().String(), "https", opts.TLSCertFile != "")
		var err error
		if httpServer.TLSConfig != nil {
			err = httpServer.ServeTLS(ln, "", "")
		} else {
			err = httpServer.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve: %w", err)
	})
	g.Go(func() error {
		<-gctx.Done()
		timeout := opts.ShutdownTimeout
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), timeout)
		defer cancel()
		if err := httpServer.Shutdown(sctx); err != nil {
			return fmt.Errorf("shut down the server: %w", err)
		}
		return nil
	})
	return g.Wait()
}

func restConfig(opts Options) (*rest.Config, error) {
	var cfg *rest.Config
	if opts.RESTConfig != nil {
		cfg = rest.CopyConfig(opts.RESTConfig)
	} else {
		var err error
		if cfg, err = clientcmd.BuildConfigFromFlags("", opts.Kubeconfig); err != nil {
			return nil, fmt.Errorf("load kubeconfig: %w", err)
		}
	}
	cfg.UserAgent = "stickynet-extender"
	return cfg, nil
}

// newInformerCache returns a cache whose informers keep only what the
// extender reads of nodes and pods.
func newInformerCache(cfg *rest.Config) (crcache.Cache, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("register core types: %w", err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("register stickynet types: %w", err)
	}
	c, err := crcache.New(cfg, crcache.Options{
		Scheme:           scheme,
		DefaultTransform: crcache.TransformStripManagedFields(),
		ByObject: map[client.Object]crcache.ByObject{
			&corev1.Node{}: {Transform: state.SlimNode},
			&corev1.Pod{}:  {Transform: state.SlimPod},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("build informer cache: %w", err)
	}
	return c, nil
}

// watch feeds st from the informers of informers and returns the checks
// that its handlers have seen every object listed at start.
func watch(ctx context.Context, informers crcache.Cache, st *state.State) ([]toolscache.InformerSynced, error) {
	handlers := []struct {
		obj client.Object
		h   toolscache.ResourceEventHandler
	}{
		{&corev1.Node{}, handler(st.SetNode, func(n *corev1.Node) { st.DeleteNode(n.Name) })},
		{&corev1.Pod{}, handler(st.SetPod, func(p *corev1.Pod) { st.DeletePod(p.UID) })},
		{&v1alpha1.IPPool{}, handler(st.SetPool, func(p *v1alpha1.IPPool) { st.DeletePool(p.Name) })},
		{&v1alpha1.SriovNetwork{}, handler(st.SetNetwork, func(n *v1alpha1.SriovNetwork) { st.DeleteNetwork(n.Name) })},
	}
	var synced []toolscache.InformerSynced
	for _, h := range handlers {
		inf, err := informers.GetInformer(ctx, h.obj, crcache.BlockUntilSynced(false))
		if err != nil {
			return nil, fmt.Errorf("informer for %T (are stickynet's CRDs installed?): %w", h.obj, err)
		}
		reg, err := inf.AddEventHandler(h.h)
		if err != nil {
			return nil, fmt.Errorf("add event handler for %T: %w", h.obj, err)
		}
		synced = append(synced, reg.HasSynced)
	}
	return synced, nil
}

// handler turns a set and a delete function into informer event handlers,
// unwrapping the tombstones of deletions the informer missed. An update whose
// object has another UID than before is a deletion and a creation under the
// same name that the informer saw as one (a relist after a broken watch):
// the old object is deleted first, or a pod kept by UID would hold its VF
// forever.
func handler[T any](set func(*T), del func(*T)) toolscache.ResourceEventHandler {
	type uider interface{ GetUID() types.UID }
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(*T); ok {
				set(o)
			}
		},
		UpdateFunc: func(prev, obj any) {
			o, ok := obj.(*T)
			if !ok {
				return
			}
			if p, ok := prev.(*T); ok {
				if pu, ok := any(p).(uider); ok && pu.GetUID() != any(o).(uider).GetUID() {
					del(p)
				}
			}
			set(o)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if o, ok := obj.(*T); ok {
				del(o)
			}
		},
	}
}

// registerStateMetrics exports the sizes of the cluster view.
func registerStateMetrics(reg prometheus.Registerer, st *state.State) {
	for _, k := range []struct {
		kind string
		get  func(state.Counts) int
	}{
		{"node", func(c state.Counts) int { return c.Nodes }},
		{"ippool", func(c state.Counts) int { return c.Pools }},
		{"sriovnetwork", func(c state.Counts) int { return c.Networks }},
		{"pod", func(c state.Counts) int { return c.Pods }},
		{"identity", func(c state.Counts) int { return c.Identities }},
	} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "stickynet", Subsystem: "extender", Name: "cached_objects",
			Help:        "Objects in the extender's cluster view: nodes, IPPools, SriovNetworks, pods holding VFs or an identity, identities with a last node.",
			ConstLabels: prometheus.Labels{"kind": k.kind},
		}, func() float64 { return float64(k.get(st.Counts())) }))
	}
}

// maxListed maps Options.MaxRankedNodes to score.Options.MaxListed.
func maxListed(n int) int {
	switch {
	case n == 0:
		return score.DefaultMaxListed
	case n < 0:
		return 0
	}
	return n
}
