package stickynet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"golang.org/x/sync/errgroup"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/extender/config"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/webhook/app"
)

// Options configure Start.
type Options struct {
	// Config is the one the cluster was started with (its CNI).
	Config
	// Namespace is stickynet's own namespace; empty means DefaultNamespace.
	Namespace string
	// AgentFlags are added to every node agent's command line (such as -v=2).
	AgentFlags []string
}

// System is stickynet running on a local cluster.
type System struct {
	c      *cluster.Cluster
	opts   Options
	host   *host.Host
	cgroup string
	dir    string
	logDir string

	etcd     *testenv.Etcd
	extender *process
	webhook  *process
	sched    bool

	extenderURL, webhookURL string

	mu     sync.Mutex
	agents map[string]*nodeAgent

	stopOnce, agentsOnce sync.Once
	stopErr, agentsErr   error
}

// nodeAgent is one node's agent, with the Open vSwitch that Start runs for
// a simulated node (a real node's is the cluster's).
type nodeAgent struct {
	node            cluster.Node
	argv            []string // the agent's command line
	agent           *process
	ovsdb, vswitchd *process
}

// StartCluster starts a local cluster as cfg says, with stickynet on it as
// opts says (the cluster's CNI is opts.CNI), as `make cluster-up
// STICKYNET=1` does. Start runs inside cluster.Start, before the nodes can
// be Ready: a node's network is ready only once its agent answers the CNI
// plugin's STATUS.
func StartCluster(ctx context.Context, cfg cluster.Config, opts Options) (*cluster.Cluster, *System, error) {
	var sys *System
	cfg.CNI = opts.CNI
	before := cfg.BeforeReady
	cfg.BeforeReady = func(ctx context.Context, c *cluster.Cluster) error {
		if before != nil {
			if err := before(ctx, c); err != nil {
				return err
			}
		}
		var err error
		sys, err = Start(ctx, c, opts)
		return err
	}
	c, err := cluster.Start(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, sys, nil
}

// Start brings stickynet up on c, which runs with opts.Config.CNI (see
// StartCluster, which calls it at the right moment), and returns once the
// webhook admits pods, the extender answers its scheduler and every agent
// serves. The cluster's Stop stops whatever runs then; Stop stops the
// control side earlier. On failure Start stops what it started.
func Start(ctx context.Context, c *cluster.Cluster, opts Options) (s *System, err error) {
	log := klog.FromContext(ctx).WithName("stickynet")
	ctx = klog.NewContext(ctx, log)
	begin := time.Now()
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	if err := opts.Binaries.check(); err != nil {
		return nil, err
	}
	h, err := host.New()
	if err != nil {
		return nil, err
	}
	s = &System{
		c: c, opts: opts, host: h,
		cgroup: c.State().Cgroup() + "/stickynet",
		dir:    filepath.Join(c.Dir(), "stickynet"),
		logDir: filepath.Join(c.Dir(), "logs"),
		agents: map[string]*nodeAgent{},
	}
	if err := h.CreateCgroup(s.cgroup); err != nil {
		return nil, err
	}
	sys := s // s is nil on return when Start fails; the hook still stops what ran
	c.AfterNodesStop(func(ctx context.Context) error {
		return errors.Join(sys.Stop(ctx), sys.stopAgents(ctx))
	})
	defer func() {
		if err != nil {
			if serr := errors.Join(s.Stop(context.WithoutCancel(ctx)), s.stopAgents(context.WithoutCancel(ctx))); serr != nil {
				log.Error(serr, "Stopping what started")
			}
			s = nil
		}
	}()
	root, err := RepoRoot()
	if err != nil {
		return s, err
	}
	if err := c.InstallCRDs(ctx, filepath.Join(root, "charts", "stickynet", "crds")); err != nil {
		return s, err
	}
	if err := c.CreateNamespace(ctx, opts.Namespace, nil); err != nil {
		return s, err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.startEtcd(); err != nil {
			return err
		}
		return s.startWebhook(gctx)
	})
	g.Go(func() error { return s.startExtender(gctx) })
	for _, n := range c.Nodes() {
		if opts.Runs(n) {
			g.Go(func() error { return s.startAgent(gctx, n) })
		}
	}
	if err := g.Wait(); err != nil {
		return s, err
	}
	log.Info("Stickynet ready", "elapsed", time.Since(begin).Round(time.Millisecond),
		"webhook", s.webhookURL, "extender", s.extenderURL, "agents", len(s.agents), "etcd", s.etcd.Endpoint)
	return s, nil
}

// EtcdEndpoint is the client URL of stickynet's etcd.
func (s *System) EtcdEndpoint() string { return s.etcd.Endpoint }

// Namespace is stickynet's own namespace.
func (s *System) Namespace() string { return s.opts.Namespace }

// AgentNodes lists the nodes whose agent runs.
func (s *System) AgentNodes() []cluster.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cluster.Node
	for _, n := range s.c.Nodes() {
		if _, ok := s.agents[n.Name]; ok {
			out = append(out, n)
		}
	}
	return out
}

func (s *System) startEtcd() error {
	e, err := testenv.RunEtcd(testenv.EtcdOptions{
		Dir:   filepath.Join(s.dir, "etcd"),
		Start: func(cmd *exec.Cmd) error { return s.host.StartInCgroup(cmd, s.cgroup) },
	})
	if err != nil {
		return fmt.Errorf("start stickynet's etcd: %w", err)
	}
	s.etcd = e
	return nil
}

// startExtender runs the extender on a loopback port and a kube-scheduler
// whose stickynet-scheduler profile calls it.
func (s *System) startExtender(ctx context.Context) error {
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.extenderURL = "http://" + addr
	s.extender, err = s.start(ctx, "extender", "", nil, s.opts.Binaries.Extender,
		"--kubeconfig="+s.c.KubeconfigPath(), "--bind-address="+addr,
		"--shutdown-delay=0") // one replica, called by URL: no endpoints to leave first
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "extender ready", 100*time.Millisecond, s.extender, httpOK(s.extenderURL+"/readyz")); err != nil {
		return err
	}
	cfg, err := config.At(s.extenderURL, "")
	if err != nil {
		return err
	}
	if err := s.c.StartScheduler(ctx, cluster.Scheduler{Name: config.SchedulerName, Config: cfg}); err != nil {
		return err
	}
	s.sched = true
	return nil
}

// AllocationsSocket is where the webhook of cluster c lists its addresses
// (`stickynet-webhook allocations --socket`).
func AllocationsSocket(c *cluster.Cluster) string {
	return filepath.Join(c.Dir(), "stickynet", "webhook-allocations.sock")
}

// startWebhook registers the MutatingWebhookConfiguration and runs the
// webhook on a loopback port with a certificate for localhost that it
// makes, rotates and injects into that configuration itself.
func (s *System) startWebhook(ctx context.Context) error {
	port, err := testenv.FreePort()
	if err != nil {
		return err
	}
	probe, err := testenv.FreePort()
	if err != nil {
		return err
	}
	s.webhookURL = fmt.Sprintf("https://localhost:%d%s", port, app.MutatePath)
	k := s.c.Client()
	mwc := app.WebhookConfiguration(WebhookConfigName, s.opts.Namespace, admissionregistrationv1.WebhookClientConfig{URL: &s.webhookURL})
	if err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, WebhookConfigName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove old webhook configuration: %w", err)
	}
	if _, err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create webhook configuration: %w", err)
	}
	secret := types.NamespacedName{Namespace: s.opts.Namespace, Name: "stickynet-webhook-cert"}
	s.webhook, err = s.start(ctx, "webhook", "", nil, s.opts.Binaries.Webhook,
		"--kubeconfig="+s.c.KubeconfigPath(),
		"--etcd-endpoints="+s.etcd.Endpoint,
		"--host=127.0.0.1", "--port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(s.dir, "webhook-certs"),
		"--cert-mode=self", "--cert-secret="+secret.String(), "--cert-dns-names=localhost", "--cert-write-files",
		"--webhook-config-name="+WebhookConfigName,
		"--metrics-bind-address=0", fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", probe),
		"--allocations-socket="+AllocationsSocket(s.c),
		"--leader-elect", "--leader-election-namespace="+s.opts.Namespace,
		"--scheduler-name="+config.SchedulerName,
		"--shutdown-delay=0", // one replica, called by URL: no endpoints to leave first
	)
	if err != nil {
		return err
	}
	ready := httpOK(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
	return waitFor(ctx, "webhook ready with its caBundle injected", 200*time.Millisecond, s.webhook, func(ctx context.Context) (bool, error) {
		if ok, err := ready(ctx); !ok {
			return false, err
		}
		got, err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, WebhookConfigName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return len(got.Webhooks) > 0 && len(got.Webhooks[0].ClientConfig.CABundle) > 0, nil
	})
}

func httpOK(url string) func(context.Context) (bool, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return true, nil
	}
}

// startAgent runs node n's agent inside its namespace, after an Open
// vSwitch for it on a simulated node, and waits until it serves.
func (s *System) startAgent(ctx context.Context, n cluster.Node) error {
	a := &nodeAgent{node: n}
	s.mu.Lock()
	s.agents[n.Name] = a
	s.mu.Unlock()
	db := n.OVSDBSocket
	if n.Simulated {
		var err error
		if db, err = s.startOVS(ctx, a); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(agentDir(n), 0o755); err != nil {
		return fmt.Errorf("create agent folder of %s: %w", n.Name, err)
	}
	if fb := FallbackConfList(n); fb != nil {
		if err := os.WriteFile(fallbackFile(n), fb, 0o644); err != nil {
			return fmt.Errorf("write fallback conflist of %s: %w", n.Name, err)
		}
	}
	a.argv = append(agentArgs(s.opts.Binaries.NodeAgent, n, s.c.KubeconfigPath(), db, filepath.Dir(db)), s.opts.AgentFlags...)
	return s.runAgent(ctx, a)
}

// runAgent starts a's agent process and waits until it serves.
func (s *System) runAgent(ctx context.Context, a *nodeAgent) error {
	var err error
	a.agent, err = s.start(ctx, "nodeagent-"+a.node.Name, a.node.Netns, nil, a.argv...)
	if err != nil {
		return err
	}
	return waitFor(ctx, a.node.Name+" node agent serving", 100*time.Millisecond, a.agent, func(context.Context) (bool, error) {
		conn, err := net.DialTimeout("unix", AgentSocket(a.node), time.Second)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	})
}

// RestartAgent stops node's agent (SIGTERM, by PID), leaves it down for
// down, as a DaemonSet rollout does while the new image is pulled, and
// starts it again with the same arguments, waiting until it serves.
func (s *System) RestartAgent(ctx context.Context, node string, down time.Duration) error {
	s.mu.Lock()
	a := s.agents[node]
	s.mu.Unlock()
	if a == nil {
		return fmt.Errorf("no node agent on %s", node)
	}
	a.agent.Stop(10 * time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(down):
	}
	return s.runAgent(ctx, a)
}

// Stop stops stickynet's control side: the webhook (after removing its
// configuration, so that the API server stops calling it), the extender's
// scheduler, the extender and etcd. The node agents keep serving the pods
// until the cluster's nodes are down, since containerd needs them for the
// CNI DEL of every pod: the cluster's Stop stops them then. Stop is safe to
// call more than once.
func (s *System) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		log := klog.FromContext(ctx)
		var errs []error
		if s.webhook != nil {
			err := s.c.Client().AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, WebhookConfigName, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("remove webhook configuration: %w", err))
			}
		}
		s.webhook.Stop(10 * time.Second)
		if s.sched {
			errs = append(errs, s.c.StopScheduler(config.SchedulerName))
		}
		s.extender.Stop(10 * time.Second)
		if s.etcd != nil {
			s.etcd.Stop()
		}
		s.stopErr = errors.Join(errs...)
		log.V(1).Info("Stickynet's control side stopped", "err", s.stopErr)
	})
	return s.stopErr
}

// stopAgents stops every node agent and the Open vSwitch of simulated
// nodes, by PID; the cluster calls it once its nodes are down.
func (s *System) stopAgents(ctx context.Context) error {
	s.agentsOnce.Do(func() {
		s.mu.Lock()
		agents := make([]*nodeAgent, 0, len(s.agents))
		for _, a := range s.agents {
			agents = append(agents, a)
		}
		s.mu.Unlock()
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.agent.Stop(10 * time.Second)
				a.vswitchd.Stop(5 * time.Second)
				a.ovsdb.Stop(5 * time.Second)
			}()
		}
		wg.Wait()
		klog.FromContext(ctx).V(1).Info("Node agents stopped", "agents", len(agents))
	})
	return s.agentsErr
}
