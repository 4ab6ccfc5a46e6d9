// Package app wires the stickynet webhook binary: a controller-runtime manager
// with the mutating admission server (TLS), health and readiness endpoints,
// Prometheus metrics, the serving certificate (certs/), the IPAM core over
// etcd v3, and the leader-elected release controller.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	crcache "sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	cradmission "sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/certs"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/workload"
	"github.com/stickynet/stickynet/webhook/admission"
	"github.com/stickynet/stickynet/webhook/release"
)

// MutatePath is the URL path of the pod mutation endpoint.
const MutatePath = "/mutate-pods"

// Options configure the webhook binary.
type Options struct {
	Kubeconfig string // empty: in-cluster config or $KUBECONFIG

	EtcdEndpoints []string // state store; empty with MemoryStore for single-replica trials
	MemoryStore   bool     // keep state in memory (one replica only; lost on restart)
	KeyPrefix     string
	DialTimeout   time.Duration
	// TLS to etcd, and a username and password when etcd has auth enabled
	// (all optional).
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	EtcdUsername, EtcdPassword            string

	Host    string
	Port    int
	CertDir string
	Certs   certs.Options

	MetricsAddr string
	ProbeAddr   string
	// AllocationsSocket, if set, is a Unix socket where the webhook lists
	// the addresses in the state to `stickynet-webhook allocations`.
	AllocationsSocket string

	// KubeAPIQPS and KubeAPIBurst limit the client's requests to the API server
	// (0: client-go's defaults).
	KubeAPIQPS   float32
	KubeAPIBurst int

	// LeaderElection elects, through the Lease LeaseName in
	// LeaderElectionNamespace (default: the pod's), the replica that runs
	// the release controller (leadership); without it this replica runs it.
	LeaderElection          bool
	LeaderElectionNamespace string

	SchedulerName string
	// NetworkResource: see admission.Handler.
	NetworkResource bool
	// NodeAgentDaemonSet, "namespace/name" of the node agents' DaemonSet:
	// the leader withdraws the stale resources of agents that could not
	// from the Nodes it does not select (release.Controller.NodeAgent).
	// Empty: none.
	NodeAgentDaemonSet string
	StoreTimeout       time.Duration
	ReservationTTL     time.Duration
	ReleaseGrace       time.Duration
	// ShutdownDelay is how long, once Run's context ends, the webhook keeps
	// serving with /readyz failing before it stops: long enough for the
	// Service's endpoints to drop it, so that no admission meets a closed
	// port during a rollout. 0: stop at once.
	ShutdownDelay time.Duration
}

// DefaultReservationTTL is --reservation-ttl's default, and what a zero
// Options.ReservationTTL means.
const DefaultReservationTTL = 5 * time.Minute

// Validate refuses options the webhook cannot run with, naming the flag.
// A zero duration means its default.
func (o *Options) Validate() error {
	var errs []error
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{
		{"--store-timeout", o.StoreTimeout},
		{"--reservation-ttl", o.ReservationTTL},
		{"--release-grace", o.ReleaseGrace},
		{"--shutdown-delay", o.ShutdownDelay},
		{"--etcd-dial-timeout", o.DialTimeout},
	} {
		if d.value < 0 {
			errs = append(errs, fmt.Errorf("%s %s: expected a duration of 0 (the default) or more", d.flag, d.value))
		}
	}
	if o.NodeAgentDaemonSet != "" {
		if _, err := workload.ParseDaemonSet(o.NodeAgentDaemonSet); err != nil {
			errs = append(errs, fmt.Errorf("--node-agent-daemonset: %w", err))
		}
	}
	// A negative port turns controller-runtime's server off while its
	// readiness check passes: a replica Ready that serves nothing.
	if o.Port < 0 || o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d: expected a TCP port from 1 to 65535 (0: the default, 9443)", o.Port))
	}
	if o.KubeAPIQPS < 0 || o.KubeAPIBurst < 0 {
		errs = append(errs, fmt.Errorf("--kube-api-qps %g, --kube-api-burst %d: expected 0 (the client's defaults) or more", o.KubeAPIQPS, o.KubeAPIBurst))
	}
	switch o.Certs.Mode {
	case certs.ModeSelf, certs.ModeCertManager:
	default:
		errs = append(errs, fmt.Errorf("--cert-mode %q: expected %s or %s", o.Certs.Mode, certs.ModeSelf, certs.ModeCertManager))
	}
	if o.Certs.Mode == certs.ModeSelf && strings.TrimSpace(o.Certs.WebhookConfig) == "" {
		errs = append(errs, fmt.Errorf("--webhook-config-name %q: expected the name of the MutatingWebhookConfiguration whose caBundle the webhook keeps (--cert-mode %s)", o.Certs.WebhookConfig, certs.ModeSelf))
	}
	if o.Certs.Mode == certs.ModeSelf {
		for _, n := range o.Certs.DNSNames {
			if strings.TrimSpace(n) == "" {
				errs = append(errs, fmt.Errorf("--cert-dns-names %q: expected comma-separated DNS names, none of them empty", strings.Join(o.Certs.DNSNames, ",")))
				break
			}
			// A space after a comma made a certificate for " b.svc", not b.svc.
			if msgs := validation.IsDNS1123Subdomain(n); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("--cert-dns-names %q: %q is not a DNS name: %s", strings.Join(o.Certs.DNSNames, ","), n, strings.Join(msgs, "; ")))
				break
			}
		}
		// Empty when Options come from code that sets none (main checks
		// namespace/name): setup refuses that.
		if s := o.Certs.Secret; s.Namespace != "" || s.Name != "" {
			if msgs := append(validation.IsDNS1123Label(s.Namespace), validation.IsDNS1123Subdomain(s.Name)...); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("--cert-secret %q: expected namespace/name of a Secret: %s", s.Namespace+"/"+s.Name, strings.Join(msgs, "; ")))
			}
		}
	}
	return errors.Join(errs...)
}

// Scheme has the types the webhook reads.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrl.GetConfig()
}

// Run runs the webhook until ctx ends (and o.ShutdownDelay more).
func Run(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("invalid options: %w", err)
	}
	if o.ReservationTTL == 0 {
		o.ReservationTTL = DefaultReservationTTL
	}
	log := klog.FromContext(ctx)
	mctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	var draining atomic.Bool
	go func() {
		select {
		case <-ctx.Done():
		case <-mctx.Done():
			return
		}
		draining.Store(true)
		log.Info("Shutting down: not ready, still serving", "for", o.ShutdownDelay)
		select {
		case <-time.After(o.ShutdownDelay):
		case <-mctx.Done():
		}
		stop()
	}()
	cfg, err := restConfig(o.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client config: %w", err)
	}
	if o.KubeAPIQPS > 0 {
		cfg.QPS, cfg.Burst = o.KubeAPIQPS, o.KubeAPIBurst
	}
	sch, err := Scheme()
	if err != nil {
		return err
	}
	raw, err := openStore(ctx, o)
	if err != nil {
		return err
	}
	defer raw.Close()
	st := store.Instrument(raw, metrics.Registry)
	// A connection etcd refuses for good once it answers (a wrong password)
	// stops the webhook, naming why, as it does at the first attempt.
	var refused <-chan struct{}
	refusal := func() error { return nil }
	if d, ok := raw.(*dialing); ok {
		refused, refusal = d.Refused()
	}

	alloc := ipam.New(st, ipam.Options{Prefix: o.KeyPrefix, ReservationTTL: o.ReservationTTL})
	allocReady := make(chan struct{})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  sch,
		Metrics: metricsserver.Options{BindAddress: o.MetricsAddr},
		// Only the pods the webhook gave an address: the rest of the
		// cluster's pods are neither decoded nor kept. Nothing reads
		// managedFields, often the largest part of a cached object.
		Cache: crcache.Options{
			DefaultTransform: crcache.TransformStripManagedFields(),
			ByObject: map[client.Object]crcache.ByObject{
				&corev1.Pod{}: {Label: labels.SelectorFromSet(labels.Set{annotations.ManagedLabel: "true"})},
			},
		},
		HealthProbeBindAddress: o.ProbeAddr,
		// No leader election of the manager's: leadership (leader.go)
		// elects the release controller's leader.
		WebhookServer: webhook.NewServer(webhook.Options{Host: o.Host, Port: o.Port, CertDir: o.CertDir}),
		Logger:        log,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	// The address list, for `stickynet-webhook allocations` in the same
	// container.
	if o.AllocationsSocket != "" {
		if err := mgr.Add(allocationsServer{path: o.AllocationsSocket, handler: allocationsHandler(alloc, allocReady)}); err != nil {
			return err
		}
	}
	if err := mgr.Add(runnable(func(ctx context.Context) error {
		select {
		case <-refused: // nil without dialing: never
			return refusal()
		case <-ctx.Done():
			return nil
		}
	})); err != nil {
		return err
	}
	if err := mgr.Add(runnable(func(ctx context.Context) error {
		if err := alloc.Start(ctx); err != nil {
			return fmt.Errorf("start allocator: %w", err)
		}
		close(allocReady)
		<-ctx.Done()
		return nil
	})); err != nil {
		return err
	}

	// Every replica reads etcd every 5 s: one that cannot leaves the
	// Service, and the leader gives the lead up before the reservations it
	// cannot confirm expire. The read also checks that etcd's revision is
	// not behind the address cache's (a restore without --bump-revision).
	// (Its reads are not counted in the store's metrics.)
	probe := newStoreProbe(alloc, raw)
	if err := mgr.Add(probe); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("etcd", probe.check); err != nil {
		return err
	}

	o.Certs.CertDir = o.CertDir
	certsReady, err := certs.Setup(ctx, mgr, o.Certs)
	if err != nil {
		return err
	}

	handler := &admission.Handler{
		Reader: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Alloc: alloc,
		Decoder: cradmission.NewDecoder(sch), SchedulerName: o.SchedulerName, NetworkResource: o.NetworkResource, StoreTimeout: o.StoreTimeout, Grace: o.ReleaseGrace,
		Metrics: admission.NewMetrics(metrics.Registry),
	}
	release.NewPoolCollector(metrics.Registry, mgr.GetClient())
	// The webhook server starts once the certificate, the address cache and
	// the informers of what the handler reads are there: the manager's cache
	// starts an informer at its first read, and a first admission that waits
	// for cluster-wide lists of namespaces, pods, workloads and pools one after
	// another would outlast the API server's timeout in a large cluster.
	serving := make(chan struct{})
	if err := mgr.Add(runnable(func(ctx context.Context) error {
		for _, ch := range []<-chan struct{}{certsReady, allocReady} {
			select {
			case <-ch:
			case <-ctx.Done():
				return nil
			}
		}
		for _, obj := range admission.Reads() {
			inf, err := mgr.GetCache().GetInformer(ctx, obj)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("watch %T for admissions: %w", obj, err)
			}
			// Every replica, not only the leader's release passes, frees
			// addresses (a pod moving pools, the members of a full set whose
			// pods are gone): each must know every pool's reuse delay.
			if _, isPool := obj.(*v1alpha1.IPPool); isPool {
				if _, err := inf.AddEventHandler(poolFeed(alloc)); err != nil {
					return fmt.Errorf("watch IPPools for their reuse delays: %w", err)
				}
			}
		}
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return nil
		}
		mgr.GetWebhookServer().Register(MutatePath, &webhook.Admission{Handler: handler, RecoverPanic: ptr.To(true)})
		close(serving)
		return nil
	})); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook", func(req *http.Request) error {
		if draining.Load() {
			return errors.New("shutting down")
		}
		select {
		case <-serving:
			return mgr.GetWebhookServer().StartedChecker()(req)
		default:
			return errors.New("waiting for the serving certificate, the address cache and the informers")
		}
	}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}

	// The leader's term: the release controller, made afresh for each, and
	// the watch that gives the lead up when etcd does not answer (with one
	// replica there is no one to give it to).
	rec, releaseMetrics := mgr.GetEventRecorder("stickynet"), release.NewMetrics(metrics.Registry)
	var nodeAgent types.NamespacedName
	if o.NodeAgentDaemonSet != "" {
		nodeAgent, _ = workload.ParseDaemonSet(o.NodeAgentDaemonSet) // Validate checked it
	}
	lead, err := newLeadership(o, cfg, rec, metrics.Registry, func() []manager.Runnable {
		term := []manager.Runnable{&release.Controller{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Cache: mgr.GetCache(), Alloc: alloc,
			Recorder: rec, Grace: o.ReleaseGrace, Metrics: releaseMetrics, Ready: allocReady, NodeAgent: nodeAgent,
		}}
		if o.LeaderElection {
			term = append(term, stepDown{probe: probe, max: max(o.ReservationTTL/3, 20*time.Second)})
		}
		return term
	})
	if err != nil {
		return err
	}
	lead.ready = allocReady
	if o.LeaderElection {
		lead.storeUp = func() bool { d, _ := probe.down(); return d == 0 }
	}
	if err := mgr.Add(lead); err != nil {
		return err
	}
	// Half the reservations' TTL, but not less than 30 s: a leader's
	// handover takes up to the Lease's duration and a retry (17 s).
	if err := mgr.AddReadyzCheck("release-leader", lead.leaderCheck(max(o.ReservationTTL/2, 30*time.Second), time.Now())); err != nil {
		return err
	}
	log.Info("Starting stickynet webhook", "port", o.Port, "etcd", o.EtcdEndpoints, "memoryStore", o.MemoryStore)
	return mgr.Start(mctx)
}

// poolFeed tells the allocator each IPPool's spec as the informer sees it.
func poolFeed(alloc *ipam.Allocator) toolscache.ResourceEventHandlerFuncs {
	set := func(obj any) {
		if p, ok := obj.(*v1alpha1.IPPool); ok {
			_, _ = alloc.LearnPool(p.Name, p.Spec) // a refused spec: the pool's status says why
		}
	}
	return toolscache.ResourceEventHandlerFuncs{AddFunc: set, UpdateFunc: func(_, obj any) { set(obj) }}
}

type runnable func(ctx context.Context) error

func (r runnable) Start(ctx context.Context) error { return r(ctx) }

// NeedLeaderElection: these run on every replica.
func (r runnable) NeedLeaderElection() bool { return false }

func openStore(ctx context.Context, o Options) (store.Store, error) {
	if o.MemoryStore {
		return store.NewMemory(), nil
	}
	if len(o.EtcdEndpoints) == 0 {
		return nil, errors.New("no state store: set --etcd-endpoints (or --memory-store for a single-replica trial)")
	}
	return openDialing(ctx, func() (store.Store, error) {
		return etcd.New(etcd.Options{ // registers its metrics once connected
			Endpoints: o.EtcdEndpoints, DialTimeout: o.DialTimeout,
			CAFile: o.EtcdCAFile, CertFile: o.EtcdCertFile, KeyFile: o.EtcdKeyFile,
			Username: o.EtcdUsername, Password: o.EtcdPassword, Registerer: metrics.Registry,
		})
	})
}

// WebhookConfiguration returns the MutatingWebhookConfiguration stickynet
// needs: Pod CREATE in namespaces labelled stickynet.io/enabled=true (never
// kube-system or the webhook's own namespace), failing closed, no side effects
// on dry run, re-invoked when later webhooks change the pod.
func WebhookConfiguration(name, ownNamespace string, cc admissionregistrationv1.WebhookClientConfig) *admissionregistrationv1.MutatingWebhookConfiguration {
	fail := admissionregistrationv1.Fail
	side := admissionregistrationv1.SideEffectClassNoneOnDryRun
	reinvoke := admissionregistrationv1.IfNeededReinvocationPolicy
	scope := admissionregistrationv1.NamespacedScope
	timeout := int32(10)
	exclude := []string{"kube-system"}
	if ownNamespace != "" && ownNamespace != "kube-system" {
		exclude = append(exclude, ownNamespace)
	}
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "pods.stickynet.io",
			ClientConfig: cc,
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: &scope},
			}},
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{annotations.EnabledLabel: "true"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{
					Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: exclude,
				}},
			},
			FailurePolicy:           &fail,
			SideEffects:             &side,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      &reinvoke,
		}},
	}
}
