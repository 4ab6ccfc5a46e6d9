// Package cluster is stickynet's local Kubernetes cluster for tests, with no
// container engine: a real etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler built from source, real nodes (each a network namespace with
// its own containerd, kubelet and Open vSwitch, joined to the others by an
// uplink into a shared fabric bridge, so that pods of all nodes share one L2
// network), and simulated nodes for scale, whose pods get real network
// namespaces set up by the node's CNI configuration (package nodesim).
//
// Tests call Start and Stop; `make cluster-up` and `make cluster-down` run
// the same code in a supervisor process (package clusterctl). Everything the
// cluster starts runs in its own cgroup and everything it makes is named
// after its ID or lives in its folder, so Teardown removes it all even when
// the process that started it is gone.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/e2e/images"
	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/e2e/nodesim"
	"github.com/stickynet/stickynet/internal/testenv"
)

// Config says what cluster Start brings up. The zero value is three real
// nodes and no simulated ones, in a temporary folder.
type Config struct {
	// Dir holds everything the cluster writes (certificates, configs, logs,
	// node state). Empty: a new temporary folder, removed by Stop.
	Dir string
	// Kubeconfig is where the admin kubeconfig is written; empty: Dir/kubeconfig.
	Kubeconfig string
	// Nodes is the number of real nodes, node-1 … node-N; 0 means 3, a
	// negative number none.
	Nodes int
	// SimNodes is the number of simulated nodes, sim-1 … sim-K.
	SimNodes int
	// CNI chooses each node's network configuration, real or simulated; nil
	// (or a zero CNI) gives the reference chain (bridge, host-local,
	// loopback). It can also be changed later with SetCNI.
	CNI func(n Node) CNI
	// Schedulers are kube-scheduler instances started besides the default
	// one, for example one whose profile calls an extender.
	Schedulers []Scheduler
	// APIServerFlags are added to kube-apiserver's command line.
	APIServerFlags []string
	// BeforeReady, if set, runs once the control plane and every real
	// node's containerd and kubelet run, before Start waits for the nodes
	// to be Ready and registers the simulated ones: it starts what the
	// nodes' network needs, such as a CNI plugin's node agents (a node
	// whose plugin fails CNI STATUS stays NotReady). An error fails Start.
	BeforeReady func(ctx context.Context, c *Cluster) error
	// Binaries overrides where the cluster's programs are found; empty
	// fields are filled from the cache of hack/build-tools.sh and PATH.
	Binaries Binaries
}

// CNI is a node's network configuration.
type CNI struct {
	// ConfList is the node's conflist (JSON), written as its only network
	// configuration. Empty: the reference chain (ReferenceConfList).
	ConfList []byte
	// Plugins are extra plugin binaries by type name, put into the node's
	// CNI bin folder next to the reference plugins.
	Plugins map[string]string
	// PlainUplink leaves the node's uplink out of any bridge, with the
	// node's address on the uplink itself, for a plugin that attaches the
	// uplink to its own switch (stickynet's OVS bridge). Only read at Start.
	PlainUplink bool
	// NodeLabels are put on the Node when it registers, for example to
	// tell which nodes this network serves. Only read at Start.
	NodeLabels map[string]string
}

// Scheduler is one more kube-scheduler.
type Scheduler struct {
	// Name names its process and log.
	Name string
	// Config is a KubeSchedulerConfiguration (YAML or JSON) whose profiles
	// have their own schedulerName; the harness sets the kubeconfig and
	// turns leader election off. ExtenderSchedulerConfig writes one.
	Config []byte
}

// Binaries are the programs the cluster runs.
type Binaries struct {
	Etcd, APIServer, ControllerManager, Scheduler, Kubelet, Kubectl string
	Containerd, ContainerdShim, Ctr                                 string
	CNIPlugins                                                      string // folder with bridge, host-local, loopback, bandwidth
	Pause, Busybox, Iperf3, Runc                                    string
	OVSDBServer, OVSVswitchd, OVSVsctl, OVSDBTool, OVSSchema        string
}

// Node is one node of the cluster as tests see it.
type Node struct {
	// Name is the Node object's name.
	Name string
	// Index is the node's position: real nodes first, then simulated ones.
	Index int
	// Simulated is true for a node played by the node simulator.
	Simulated bool
	// IP is the node's address on the fabric (its InternalIP).
	IP netip.Addr
	// Netns is the path of the node's network namespace.
	Netns string
	// Uplink is the name of the node's uplink inside its namespace; Bridge
	// is the Linux bridge holding it ("" with CNI.PlainUplink).
	Uplink, Bridge string
	// Subnet is the pod subnet shared by all nodes; PodRangeStart and
	// PodRangeEnd bound the node's own part of it.
	Subnet                     netip.Prefix
	PodRangeStart, PodRangeEnd netip.Addr
	// Gateway is the fabric bridge's address in the host namespace.
	Gateway netip.Addr
	// Dir holds the node's files; CNIBinDir and CNIConfDir are its CNI folders.
	Dir, CNIBinDir, CNIConfDir string
	// Real nodes only: their containerd socket, kubelet root folder and the
	// unix socket of their ovsdb-server (for ovs-vsctl --db=unix:<path>).
	ContainerdSocket, KubeletDir, OVSDBSocket string
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg   Config
	bin   Binaries
	host  *host.Host
	state State
	dir   string
	plan  plan

	pki        *testenv.PKI
	kubeconfig string
	restConfig *rest.Config
	client     kubernetes.Interface

	etcd      *testenv.Etcd
	apiserver *process
	kcm       *process
	schedMu   sync.Mutex
	scheds    []*process
	// schedKubeconfig is the scheduler's credential, reused by StartScheduler.
	schedKubeconfig string
	nodes           []*realNode
	simNodes        []Node

	simMu  sync.Mutex
	sim    *nodesim.Simulator
	simRun context.CancelFunc
	simEnd chan struct{}

	hookMu     sync.Mutex
	afterNodes []func(context.Context) error

	stopOnce sync.Once
	stopErr  error
}

// Start brings a cluster up and returns once every real node is Ready and
// every simulated node is registered. On failure it tears down what it made.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	log := klog.FromContext(ctx)
	begin := time.Now()
	if os.Geteuid() != 0 {
		return nil, errors.New("the local cluster needs root (network namespaces, cgroups, mounts)")
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Nodes < 0 {
		cfg.Nodes = 0
	}
	if cfg.Nodes+cfg.SimNodes == 0 {
		return nil, errors.New("a cluster needs at least one node")
	}
	h, err := host.New()
	if err != nil {
		return nil, err
	}
	if err := TeardownStale(ctx); err != nil {
		log.Error(err, "Could not remove every stale cluster; going on")
	}
	bin, err := findBinaries(cfg.Binaries)
	if err != nil {
		return nil, err
	}
	c = &Cluster{cfg: cfg, bin: bin, host: h}
	c.state.ID, err = randomID()
	if err != nil {
		return nil, err
	}
	c.state.OwnerPID = os.Getpid()
	if me, err := host.ReadProcess(os.Getpid()); err == nil {
		c.state.OwnerStart = me.Start
	}
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "stickynet-cluster-")
		if err != nil {
			return nil, fmt.Errorf("create cluster folder: %w", err)
		}
		c.dir, c.state.OwnedDir = d, true
	} else {
		c.dir, err = filepath.Abs(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("cluster folder: %w", err)
		}
		if err := os.MkdirAll(c.dir, 0o755); err != nil {
			return nil, fmt.Errorf("create cluster folder: %w", err)
		}
	}
	c.state.Dir = c.dir
	c.kubeconfig = cfg.Kubeconfig
	if c.kubeconfig == "" {
		c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
	} else {
		c.kubeconfig, _ = filepath.Abs(c.kubeconfig)
		c.state.Kubeconfig = c.kubeconfig
	}
	defer func() {
		if err != nil {
			if serr := c.Stop(context.WithoutCancel(ctx)); serr != nil {
				log.Error(serr, "Tearing down the cluster that failed to start")
			}
			c = nil
		}
	}()
	if err := c.setupFabric(ctx); err != nil {
		return c, err
	}
	log.Info("Starting local cluster", "id", c.state.ID, "dir", c.dir, "subnet", c.plan.subnet, "nodes", cfg.Nodes, "simNodes", cfg.SimNodes)
	if err := c.startControlPlaneAndNodes(ctx); err != nil {
		return c, err
	}
	log.Info("Local cluster ready", "elapsed", time.Since(begin).Round(time.Millisecond), "kubeconfig", c.kubeconfig)
	return c, nil
}

// randomID draws a cluster ID (a var for tests).
var randomID = func() (string, error) {
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("draw cluster id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// setupFabric chooses a free subnet, records the cluster's state and creates
// its cgroup and fabric bridge, under the machine-wide lock that serializes
// this between clusters starting at the same time.
func (c *Cluster) setupFabric(ctx context.Context) error {
	unlock, err := machineLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := c.host.PrepareNetnsDir(); err != nil {
		return err
	}
	// The ID names the cluster's cgroup, netns and links, which a failed
	// start's teardown removes: one another live cluster has (1 in 65,536)
	// would take that cluster down with it. Drawn again until free.
	for i := 0; ; i++ {
		_, serr := os.Stat(c.state.registryPath())
		links, lerr := c.host.Links(c.state.Prefix())
		if lerr != nil {
			return lerr
		}
		if errors.Is(serr, os.ErrNotExist) && len(links) == 0 {
			break
		}
		if i == 100 {
			return fmt.Errorf("no free cluster ID in 100 draws (the last, %s, is taken)", c.state.ID)
		}
		if c.state.ID, err = randomID(); err != nil {
			return err
		}
	}
	subnet, err := c.freeSubnet()
	if err != nil {
		return err
	}
	c.plan, err = newPlan(subnet, c.cfg.Nodes+c.cfg.SimNodes)
	if err != nil {
		return err
	}
	c.state.Subnet = subnet.String()
	if c.cfg.Nodes > 0 {
		c.state.KubeletFolders = devicePluginFolders()
	}
	if err := c.state.write(); err != nil {
		return err
	}
	if err := c.host.CreateCgroup(c.state.Cgroup()); err != nil {
		return err
	}
	return c.host.AddBridge(c.state.Bridge(), c.plan.gatewayPrefix())
}

// freeSubnet returns a 10.x.0.0/16 that overlaps no address or route of the
// host namespace (other clusters' bridges included).
func (c *Cluster) freeSubnet() (netip.Prefix, error) {
	used, err := c.host.HostPrefixes()
	if err != nil {
		return netip.Prefix{}, err
	}
	for x := 200; x < 250; x++ {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(x), 0, 0}), 16)
		free := true
		for _, u := range used {
			if u.Overlaps(cand) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, errors.New("no free 10.x.0.0/16 between 10.200 and 10.249 for the cluster fabric")
}

// ID is the cluster's identifier: its netns, links and cgroups start with
// "sn<ID>" (cgroup "/stickynet-<ID>").
func (c *Cluster) ID() string { return c.state.ID }

// Dir is the folder holding the cluster's files.
func (c *Cluster) Dir() string { return c.dir }

// State is what Teardown needs to remove the cluster.
func (c *Cluster) State() State { return c.state }

// KubeconfigPath is the admin kubeconfig's path.
func (c *Cluster) KubeconfigPath() string { return c.kubeconfig }

// RESTConfig returns a copy of the admin (system:masters) client config.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Client returns an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Nodes returns the cluster's nodes, real ones first.
func (c *Cluster) Nodes() []Node {
	out := make([]Node, 0, len(c.nodes)+len(c.simNodes))
	for _, n := range c.nodes {
		out = append(out, n.Node)
	}
	return append(out, c.simNodes...)
}

// Node returns the node named name.
func (c *Cluster) Node(name string) (Node, bool) {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// APIServerURL is the apiserver's address on the fabric.
func (c *Cluster) APIServerURL() string {
	return "https://" + netip.AddrPortFrom(c.plan.gateway(), apiserverPort).String()
}

// CACert returns the cluster CA certificate (PEM), which signs the
// apiserver's serving certificate and every client certificate.
func (c *Cluster) CACert() []byte { return c.pki.CAPEM }

func loadRESTConfig(kubeconfig string) (*rest.Config, kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 200, 400
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("build client: %w", err)
	}
	return rc, cs, nil
}

// Stop tears the cluster down: the node simulator (with CNI DEL for its
// pods), every real node (pod sandboxes removed through CRI, so their CNI
// DEL runs, then kubelet, containerd, OVS), the control plane, and finally
// Teardown's sweep of processes, mounts, namespaces, links, cgroups and
// files. It is safe to call more than once.
func (c *Cluster) Stop(ctx context.Context) error {
	c.stopOnce.Do(func() { c.stopErr = c.stop(ctx) })
	return c.stopErr
}

func (c *Cluster) stop(ctx context.Context) error {
	log := klog.FromContext(ctx)
	begin := time.Now()
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := c.stopSimulator(ctx, true)
		log.V(1).Info("Node simulator stopped", "elapsed", time.Since(begin).Round(time.Millisecond), "err", err)
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}()
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := n.stop(ctx)
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}()
	}
	wg.Wait()
	log.V(1).Info("Nodes stopped", "elapsed", time.Since(begin).Round(time.Millisecond))
	if len(c.nodes) > 0 {
		errs = append(errs, removeDevicePluginSocket(c.state.KubeletFolders))
	}
	c.hookMu.Lock()
	hooks := c.afterNodes
	c.afterNodes = nil
	c.hookMu.Unlock()
	for i := len(hooks) - 1; i >= 0; i-- {
		errs = append(errs, hooks[i](ctx))
	}
	c.schedMu.Lock()
	scheds := c.scheds
	c.schedMu.Unlock()
	for _, s := range scheds {
		s.Stop(5 * time.Second)
	}
	c.kcm.Stop(5 * time.Second)
	c.apiserver.Stop(10 * time.Second)
	if c.etcd != nil {
		c.etcd.Stop()
	}
	errs = append(errs, teardown(ctx, c.host, c.state))
	err := errors.Join(errs...)
	log.Info("Local cluster stopped", "id", c.state.ID, "elapsed", time.Since(begin).Round(time.Millisecond), "err", err)
	return err
}

// AfterNodesStop registers f to run during Stop once every node is down
// (the CNI DEL of every pod has run) and before the control plane stops,
// last registered first: for node-side services that pods' networks need to
// the end, such as a CNI plugin's node agents. Its error is Stop's too.
func (c *Cluster) AfterNodesStop(f func(ctx context.Context) error) {
	c.hookMu.Lock()
	defer c.hookMu.Unlock()
	c.afterNodes = append(c.afterNodes, f)
}

// Pods of nodes use these images, imported into every real node.
const (
	// PauseImage is the sandbox image pinned in every node's containerd.
	PauseImage = images.Pause
	// ToolboxImage has busybox (sh, ping, nc, ip, wget, ...) and iperf3;
	// pods that use it need imagePullPolicy: Never.
	ToolboxImage = images.Toolbox
)
