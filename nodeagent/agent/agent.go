// Package agent is the stickynet node agent: it owns the OVS bridge of a node
// and every pod attachment on it, answers the CNI plugin on a unix socket,
// applies pods' bandwidth annotations live, rebuilds its state after a restart
// and installs the CNI conflist. Run is the entry point, for the nodeagent
// binary and for anything that runs an agent in-process (a local cluster
// node, a benchmark).
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/workload"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/bandwidth"
	"github.com/stickynet/stickynet/nodeagent/datapath"
	"github.com/stickynet/stickynet/nodeagent/ovs"
	"github.com/stickynet/stickynet/nodeagent/podsource"
	"github.com/stickynet/stickynet/nodeagent/server"
	"github.com/stickynet/stickynet/nodeagent/sriov"
	"github.com/stickynet/stickynet/nodeagent/state"
)

// PodSource gives the agent the pods of its node.
type PodSource interface {
	// Start begins watching and returns once the source holds every pod of
	// the node; afterwards onChange sees each added, updated or deleted pod.
	Start(ctx context.Context, onChange func(*corev1.Pod)) error
	// Get returns a pod of the node.
	Get(namespace, name string) (*corev1.Pod, bool)
	// List returns every pod of the node.
	List() []*corev1.Pod
}

// SriovNetworkSource gives the agent the cluster's SriovNetworks.
type SriovNetworkSource interface {
	// Start begins watching; onChange is called after every change.
	Start(ctx context.Context, onChange func()) error
	// Synced reports whether the source has seen every SriovNetwork once.
	Synced() bool
	Get(name string) (*v1alpha1.SriovNetwork, bool)
	List() []*v1alpha1.SriovNetwork
}

// Options configure an agent. Every path is configurable so that agents can
// run side by side, one per node network namespace.
type Options struct {
	// NodeName is the Node whose pods the agent serves (informer field selector).
	NodeName string
	// Kubeconfig is the API server credentials file; empty means in-cluster.
	Kubeconfig string
	// Pods replaces the informer (tests, simulations); then Kubeconfig is unused.
	Pods PodSource
	// Events records events on pods (a bandwidth change the agent refuses);
	// nil: made from the API client, none without one.
	Events events.EventRecorder
	// Netns is the node's network namespace (a path); empty means the agent's
	// own. OVS must run in the same namespace.
	Netns string
	// Socket is the unix socket the CNI plugin talks to.
	Socket string
	// CacheDir holds the attachment records.
	CacheDir string
	// Bridge is the OVS bridge of pods.
	Bridge string
	// Uplink is an interface added to the bridge as a trunk; empty means none.
	Uplink string
	// DatapathType of a new bridge: auto (netdev without the openvswitch
	// kernel module, else system), netdev or system.
	DatapathType string
	// EgressMode: auto, meter or policing.
	EgressMode bandwidth.EgressMode
	// OVSDB is ovsdb-server's socket, such as unix:/var/run/openvswitch/db.sock.
	OVSDB string
	// OVSRunDir is ovs-vswitchd's run folder (where <bridge>.mgmt lives).
	OVSRunDir string
	// Vsctl and Ofctl are the OVS command paths.
	Vsctl, Ofctl string
	// MTU of pod veths; 0 means the kernel default.
	MTU int
	// CNIConfDir receives the conflist; empty means do not install one.
	CNIConfDir string
	// CNIConfName is the conflist's file name (default DefaultCNIConfName).
	CNIConfName string
	// CNINetwork is the network name in the conflist.
	CNINetwork string
	// CNICacheDir is the plugin's "cacheDir" in the conflist (where it
	// records pods attached through the fallback network); empty leaves
	// the plugin's default, api.DefaultCacheDir.
	CNICacheDir string
	// FallbackConfList is a CNI conflist file (flag --fallback-conflist)
	// whose network the conflist embeds as "fallback": the plugin attaches
	// the pods stickynet does not serve through it. FallbackAuto takes the
	// first other network of CNIConfDir. Empty means none: such pods fail
	// ADD.
	FallbackConfList string
	// CNIBinDir receives the plugin binary copied from CNIPluginSource; both
	// empty means do not install the plugin.
	CNIBinDir, CNIPluginSource string
	// PodWait bounds how long ADD waits for the pod to reach the agent's
	// cache, then for another pod on the node to give up its address and
	// for the pod's SriovNetwork to be known; an ADD waits at most half its
	// conflist's timeout, and the conflist the agent installs gives the
	// plugin at least twice PodWait.
	PodWait time.Duration
	// ResyncPeriod is how often the agent re-checks every pod's limits
	// (meters are lost when ovs-vswitchd restarts); 0 means never.
	ResyncPeriod time.Duration
	// KernelModuleDir is where the openvswitch module shows when loaded
	// (auto datapath type).
	KernelModuleDir string
	// MeterReserve is how many free OpenFlow port numbers are kept with a
	// meter and flow ready for pods with an egress limit; 0 means 32, a
	// negative number none.
	MeterReserve int
	// SysfsRoot is where SR-IOV VFs are looked up.
	SysfsRoot string
	// SriovPF makes the PF-side VF calls; nil means netlink on the node's PFs.
	SriovPF sriov.PF
	// SriovNetworks replaces the SriovNetwork informer (tests, simulations).
	SriovNetworks SriovNetworkSource
	// MetricsAddr is the address of the Prometheus endpoint /metrics, such
	// as ":9194"; empty means none.
	MetricsAddr string
	// DaemonSet is the "namespace/name" of the DaemonSet that runs the
	// agent: when the agent stops after it was deleted (stickynet
	// uninstalled), or while it no longer selects the node, it removes the
	// conflist and plugin it installed. Empty: it never removes them.
	DaemonSet string
	// Ready, when set, is called once the agent answers on its socket.
	Ready func()
}

// Defaults fills unset options with the production defaults.
func (o *Options) Defaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&o.Socket, api.DefaultSocket)
	def(&o.CacheDir, "/var/lib/stickynet/attachments")
	def(&o.Bridge, "br-stickynet")
	def(&o.DatapathType, "auto")
	if o.EgressMode == "" {
		o.EgressMode = bandwidth.EgressAuto
	}
	def(&o.OVSDB, "unix:/var/run/openvswitch/db.sock")
	def(&o.OVSRunDir, "/var/run/openvswitch")
	def(&o.CNIConfName, DefaultCNIConfName)
	def(&o.CNINetwork, "stickynet")
	def(&o.KernelModuleDir, "/sys/module/openvswitch")
	def(&o.SysfsRoot, "/sys")
	if o.PodWait == 0 {
		o.PodWait = 5 * time.Second
	}
	if o.MeterReserve == 0 {
		o.MeterReserve = 32
	}
}

func (o *Options) validate() error {
	if o.Pods == nil && o.NodeName == "" {
		return errors.New("node name is not set (--node-name or NODE_NAME)")
	}
	if o.DaemonSet != "" {
		if _, err := workload.ParseDaemonSet(o.DaemonSet); err != nil {
			return fmt.Errorf("daemonset: %w", err)
		}
	}
	if o.PodWait < 0 {
		return fmt.Errorf("pod wait %s: want a positive duration", o.PodWait)
	}
	switch o.DatapathType {
	case "auto", ovs.DatapathNetdev, ovs.DatapathSystem:
	default:
		return fmt.Errorf("datapath type %q: want auto, netdev or system", o.DatapathType)
	}
	if _, err := bandwidth.ResolveEgressMode(o.EgressMode, ovs.DatapathNetdev); err != nil {
		return err
	}
	return nil
}

// DefaultCNIConfName is the conflist's default file name: runtimes use the
// first network configuration of their folder in name order, and 00- sorts
// before the usual 10-calico, 10-flannel and the like.
const DefaultCNIConfName = "00-stickynet.conflist"

// agent is one running node agent.
type agent struct {
	opts     Options
	pods     PodSource
	nets     SriovNetworkSource
	kube     kubernetes.Interface // nil without an API server
	events   events.EventRecorder // nil: none
	ovs      *ovs.Client
	dp       *datapath.Datapath
	store    *state.Store
	dpType   string
	network  string
	conflist []byte // what install writes
	queue    workqueue.TypedRateLimitingInterface[string]
	keyLocks keyLocks

	mu         sync.Mutex
	atts       map[string]*datapath.Attachment // by Attachment.Key
	starting   map[string]*datapath.Attachment // ADDs past waitCarriers, not yet in atts
	usedPorts  map[int]bool                    // OpenFlow port numbers in use on the bridge
	usedVFs    map[string]bool                 // "pf/index" of VFs given to pods
	pfOwner    map[string]string               // PF → the SriovNetwork whose VFs it gives (vfCounts)
	advertise  chan struct{}                   // wakes advertiseLoop
	podChanged chan struct{}                   // closed and replaced on every pod event
	detached   chan struct{}                   // closed and replaced when an attachment is removed
	ready      bool
	warm       chan struct{} // wakes warmLoop
	owner      *owner        // the agent's DaemonSet, followed for an uninstall; nil: none
}

// Run runs the agent until ctx ends. It leaves every attachment in place
// when it returns: pods keep their network while the agent restarts.
func Run(ctx context.Context, opts Options) error {
	opts.Defaults()
	if err := opts.validate(); err != nil {
		return err
	}
	log := klog.FromContext(ctx).WithName("nodeagent")
	ctx = klog.NewContext(ctx, log)
	fallbackPath, fallback, skipped, err := opts.fallback()
	if err != nil {
		return err
	}
	conflist, err := opts.buildConflist(fallback)
	if err != nil {
		return fmt.Errorf("--fallback-conflist=%s: %w", opts.FallbackConfList, err)
	}
	if opts.FallbackConfList == FallbackAuto {
		log.Info("Fallback network for the pods stickynet does not serve", "fallback", fallbackPath, "passedOver", skipped)
	}

	var kube kubernetes.Interface
	var dyn dynamic.Interface
	if opts.Pods == nil || opts.Kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
		if err != nil {
			return fmt.Errorf("load API server credentials: %w", err)
		}
		cfg.UserAgent = "stickynet-nodeagent/" + opts.NodeName
		if kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return fmt.Errorf("API client: %w", err)
		}
		if dyn, err = dynamic.NewForConfig(cfg); err != nil {
			return fmt.Errorf("API client: %w", err)
		}
	}
	pods := opts.Pods
	if pods == nil {
		pods = podsource.NewInformer(kube, opts.NodeName)
	}
	recorder := opts.Events
	if recorder == nil && kube != nil {
		b := events.NewBroadcaster(&events.EventSinkImpl{Interface: kube.EventsV1()})
		if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
			return fmt.Errorf("start recording events: %w", err)
		}
		defer b.Shutdown()
		recorder = b.NewRecorder(scheme.Scheme, "stickynet-nodeagent")
	}
	nets := opts.SriovNetworks
	if nets == nil && dyn != nil {
		nets = podsource.NewSriovNetworkInformer(dyn)
	}
	if nets == nil {
		nets = podsource.NewStaticSriovNetworks()
	}

	host, err := hostHandle(opts.Netns)
	if err != nil {
		return err
	}
	defer host.Close()
	hostNS, err := openHostNS(opts.Netns)
	if err != nil {
		return err
	}
	defer hostNS.Close()

	oc := ovs.New(ovs.Config{
		Vsctl: opts.Vsctl, Ofctl: opts.Ofctl, DB: opts.OVSDB, RunDir: opts.OVSRunDir, Bridge: opts.Bridge,
	}, ovs.ExecRunner{})
	want := opts.DatapathType
	if want == "auto" {
		want = ovs.DatapathNetdev
		if _, err := os.Stat(opts.KernelModuleDir); err == nil {
			want = ovs.DatapathSystem
		}
	}
	// The probes and metrics answer from here: while the agent waits for
	// Open vSwitch, /readyz says why.
	probes := &health{}
	if opts.MetricsAddr != "" {
		mctx, stop := context.WithCancel(ctx) // closed when Run returns, however
		defer stop()
		if _, err := listenMetrics(mctx, opts.MetricsAddr, probes); err != nil {
			return err
		}
	}
	dpType, err := waitOVS(ctx, oc, want, opts.Uplink, opts.MTU, probes.waiting)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting
		}
		return err
	}
	egress, err := bandwidth.ResolveEgressMode(opts.EgressMode, dpType)
	if err != nil {
		return err
	}
	store, err := state.Open(opts.CacheDir)
	if err != nil {
		return err
	}
	a := &agent{
		opts:     opts,
		pods:     pods,
		nets:     nets,
		kube:     kube,
		events:   recorder,
		ovs:      oc,
		store:    store,
		keyLocks: newKeyLocks(),
		dp: datapath.New(datapath.Config{
			EgressMode:    egress,
			TxChecksumOff: dpType == ovs.DatapathNetdev,
			MTU:           opts.MTU,
			SysfsRoot:     opts.SysfsRoot,
		}, host, hostNS, oc),
		dpType:     dpType,
		network:    opts.CNINetwork,
		conflist:   conflist,
		queue:      workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		atts:       map[string]*datapath.Attachment{},
		starting:   map[string]*datapath.Attachment{},
		usedPorts:  map[int]bool{},
		usedVFs:    map[string]bool{},
		advertise:  make(chan struct{}, 1),
		podChanged: make(chan struct{}),
		detached:   make(chan struct{}),
		warm:       make(chan struct{}, 1),
	}
	defer a.queue.ShutDown()
	pf := opts.SriovPF
	if pf == nil {
		pf = sriov.NetlinkPF{Handle: host}
	}
	a.dp.EnableSRIOV(pf)
	log.Info("Starting", "bridge", opts.Bridge, "datapathType", dpType, "egressMode", egress, "socket", opts.Socket, "node", opts.NodeName)

	if err := pods.Start(ctx, a.onPodChange); err != nil {
		return fmt.Errorf("start pod source: %w", err)
	}
	if err := nets.Start(ctx, a.wakeAdvertise); err != nil {
		return fmt.Errorf("start SriovNetwork source: %w", err)
	}
	if a.owner, err = watchOwner(ctx, kube, opts.DaemonSet, opts.NodeName); err != nil {
		return err
	}
	// The marker goes in before the restore installs any limit: an
	// ovs-vswitchd restart from here on is seen by resyncLoop.
	if err := oc.Mark(ctx); err != nil {
		log.Error(err, "Open vSwitch restarts are seen at the next resync only")
	}
	if err := a.restore(ctx); err != nil {
		return err
	}
	srv, err := server.Listen(ctx, opts.Socket, a)
	if err != nil {
		return err
	}
	probes.started(a)
	if err := a.install(ctx); err != nil {
		return err
	}
	if f := ahead(opts.CNIConfDir, opts.CNIConfName); f != "" {
		log.Info("Warning: another network configuration sorts before stickynet's; the runtime uses it and never calls stickynet (rename one)", "first", f, "stickynet", opts.CNIConfName)
	}
	a.mu.Lock()
	a.ready = true
	a.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(5)
	go func() { defer wg.Done(); a.fallbackLoop(ctx) }()
	go func() { defer wg.Done(); a.bandwidthWorker(ctx) }()
	go func() { defer wg.Done(); a.resyncLoop(ctx) }()
	go func() { defer wg.Done(); a.warmLoop(ctx) }()
	go func() { defer wg.Done(); a.advertiseLoop(ctx) }()
	go func() {
		<-ctx.Done()
		a.queue.ShutDown()
	}()
	if opts.Ready != nil {
		opts.Ready()
	}
	log.Info("Serving", "socket", opts.Socket, "attachments", a.count())
	err = srv.Serve(ctx, 10*time.Second)
	wg.Wait()
	a.owner.uninstall(ctx)
	log.Info("Stopped")
	return err
}

// waitOVS makes the bridge (and adds its uplink) and waits until
// ovs-vswitchd answers on it, trying again every ovsRetry while Open vSwitch
// is not there yet (a node booting, OVS restarting). Exiting instead would
// leave the node without an agent for the container's restart back-off
// (up to 5 min) after OVS is up. It tells waiting each attempt's failure,
// or nil (for /readyz), and returns the bridge's datapath type.
func waitOVS(ctx context.Context, oc *ovs.Client, datapathType, uplink string, mtu int, waiting func(error)) (string, error) {
	log := klog.FromContext(ctx)
	began := time.Now()
	for attempt := 0; ; attempt++ {
		dpType, err := setUpBridge(ctx, oc, datapathType, uplink, mtu)
		if err == nil {
			err = oc.Ping(ctx)
		}
		waiting(err)
		if err == nil {
			if attempt > 0 {
				log.Info("Open vSwitch is ready", "after", time.Since(began).Round(time.Second))
			}
			return dpType, nil
		}
		if attempt%15 == 0 { // at once, then every 30 s
			log.Error(err, "Open vSwitch is not ready; waiting for it", "bridge", oc.Bridge())
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for Open vSwitch: %w", err)
		case <-time.After(ovsRetry):
		}
	}
}

const ovsRetry = 2 * time.Second

// setUpBridge makes the bridge, if it does not exist, and adds the uplink
// (if any), logging an uplinkProblem; it returns the bridge's datapath type.
func setUpBridge(ctx context.Context, oc *ovs.Client, datapathType, uplink string, mtu int) (string, error) {
	dpType, err := oc.EnsureBridge(ctx, datapathType)
	if err == nil && uplink != "" {
		err = oc.EnsureUplink(ctx, uplink)
	}
	if err == nil {
		if perr := uplinkProblem(ctx, oc, uplink, mtu); perr != nil {
			klog.FromContext(ctx).Error(perr, "/readyz fails until the uplink works")
		}
	}
	return dpType, err
}

// uplinkProblem reports an uplink (if any) that Open vSwitch could not open
// (a NIC name mistyped, or not on this node): pods still get their addresses
// and reach the pods of their node, but nothing beyond it; or one whose MTU
// is below the pods' (mtu, 0 for the kernel's 1500): OVS forwards frames
// without fragmenting them or answering "too big", so a pod's larger frames
// to other nodes are dropped, small ones pass (a connection opens, then a
// bulk transfer stalls). It fails /readyz only, not CNI STATUS, which would
// take the node's network, and its pods with it, out of service.
func uplinkProblem(ctx context.Context, oc *ovs.Client, uplink string, mtu int) error {
	if uplink == "" {
		return nil
	}
	msg, upMTU, err := oc.InterfaceState(ctx, uplink)
	if err != nil {
		return err
	}
	if msg != "" {
		return fmt.Errorf("uplink %s (--uplink) on OVS bridge %s does not work: %s; pods reach only the pods of this node", uplink, oc.Bridge(), msg)
	}
	if pods := cmp.Or(mtu, 1500); upMTU > 0 && upMTU < pods {
		return fmt.Errorf("uplink %s (--uplink) has MTU %d, below the pods' %d (--mtu): their frames above %d bytes to other nodes are dropped; set --mtu (nodeAgent.mtu) to %d or raise the uplink's MTU",
			uplink, upMTU, pods, upMTU, upMTU)
	}
	return nil
}

// openHostNS opens the node's network namespace (the agent's own when path
// is empty).
func openHostNS(path string) (ns.NetNS, error) {
	if path == "" {
		n, err := ns.GetCurrentNS()
		if err != nil {
			return nil, fmt.Errorf("open the agent's netns: %w", err)
		}
		return n, nil
	}
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open node netns %s: %w", path, err)
	}
	return n, nil
}

// hostHandle is a netlink handle in the node's network namespace.
func hostHandle(path string) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
		return h, nil
	}
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open node netns %s: %w", path, err)
	}
	defer n.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		return nil, fmt.Errorf("netlink handle in node netns %s: %w", path, err)
	}
	return h, nil
}

// live reports an error when the agent's state lock is not free within
// wait: something holds it that should have let go long ago, and CNI
// requests wait behind it.
// It polls, so that probes made while the lock is stuck leave nothing
// waiting behind.
func (a *agent) live(ctx context.Context, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		if a.mu.TryLock() {
			a.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the node agent's state lock has been held for more than %s: CNI requests are stuck behind it", wait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the node agent's state lock was not free before the probe's timeout: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (a *agent) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.atts)
}

// keyLocks serialize work on attachments: one lock per stripe of keys, a
// channel with room for one, so that a wait can end with its context.
type keyLocks [keyStripes]chan struct{}

func newKeyLocks() (l keyLocks) {
	for i := range l {
		l[i] = make(chan struct{}, 1)
	}
	return l
}

// lockKey serializes work on one attachment. Keys share a stripe of locks:
// hold at most one, and wait for nothing while holding it. The wait ends
// with ctx: a CNI request then answers "try again later" within the
// plugin's timeout. Whoever holds the lock may take long: a limit being
// set in the background while Open vSwitch does not answer holds it for an
// OVS command's timeout, as long as the plugin's; before, a DEL, CHECK or
// GC of that pod waited it out, answered after the plugin had given up,
// and the runtime's retry waited again.
func (a *agent) lockKey(ctx context.Context, key string) (unlock func(), err error) {
	if unlock, ok := a.tryLockKey(key); ok { // a free lock is taken even after ctx ended
		return unlock, nil
	}
	l := a.keyLocks[lockStripe(key)]
	start := time.Now()
	select {
	case l <- struct{}{}:
		return unlocker(l), nil
	case <-ctx.Done():
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("another operation on attachment %s (or on one sharing its lock) was still running after %s; try again later",
				key, time.Since(start).Round(100*time.Millisecond)), "")
	}
}

// tryLockKey takes the lock of key if it is free.
func (a *agent) tryLockKey(key string) (unlock func(), ok bool) {
	l := a.keyLocks[lockStripe(key)]
	if l == nil {
		panic("agent's keyLocks not made (newKeyLocks)")
	}
	select {
	case l <- struct{}{}:
		return unlocker(l), true
	default:
		return nil, false
	}
}

// unlocker releases l once; a second call is a bug, which would release
// another holder's lock.
func unlocker(l chan struct{}) func() {
	var done atomic.Bool
	return func() {
		if done.Swap(true) {
			panic("attachment lock released twice")
		}
		<-l
	}
}

// keyStripes is the number of attachment locks.
const keyStripes = 64

func lockStripe(key string) int {
	var h uint32
	for i := 0; i < len(key); i++ {
		h = h*31 + uint32(key[i])
	}
	return int(h % keyStripes)
}

// First OpenFlow port number for pods: numbers below stay for the uplink and
// anything an operator adds by hand.
const (
	firstPodPort = 100
	lastPodPort  = 0xfeff // OFPP_MAX
)

// allocPort reserves a free OpenFlow port number (also the meter ID): for a
// pod with an egress limit the lowest one whose meter and flow are in place,
// for one without the lowest one without; else the lowest free one. Outside
// meter mode no pod wants a meter (one left from before the mode changed).
// It sets at.OFPort under a.mu: at is in a.starting, where usedByAnother
// reads it while other requests run.
func (a *agent) allocPort(at *datapath.Attachment) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	egressLimit := at.Bandwidth.Egress.Rate > 0 && a.dp.MeterMode()
	first := 0
	for p := firstPodPort; p <= lastPodPort; p++ {
		if a.usedPorts[p] {
			continue
		}
		if first == 0 {
			first = p
		}
		if a.dp.Metered(p) == egressLimit {
			first = p
			break
		}
		if p > first+4096 {
			break // the preferred kind is not among the next numbers: take the first
		}
	}
	if first == 0 {
		return errors.New("no free OpenFlow port number on the bridge")
	}
	a.usedPorts[first] = true
	at.OFPort = first
	return nil
}

func (a *agent) freePort(p int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.usedPorts, p)
}

// install writes the conflist (and the plugin binary) once the agent answers.
func (a *agent) install(ctx context.Context) error {
	if a.opts.CNIBinDir != "" && a.opts.CNIPluginSource != "" {
		path := filepath.Join(a.opts.CNIBinDir, api.PluginType)
		if err := installFile(a.opts.CNIPluginSource, path, 0o755); err != nil {
			return fmt.Errorf("install CNI plugin: %w", err)
		}
		a.owner.wrote(path)
	}
	if a.opts.CNIConfDir == "" {
		return nil
	}
	path := filepath.Join(a.opts.CNIConfDir, a.opts.CNIConfName)
	if err := writeFileAtomic(path, a.conflist, 0o644); err != nil {
		return fmt.Errorf("install CNI conflist: %w", err)
	}
	a.owner.wrote(path)
	for _, f := range staleConflists(a.opts.CNIConfDir, a.opts.CNIConfName) {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("remove the conflist %s of an earlier install: %w", f, err)
		}
		klog.FromContext(ctx).Info("Removed stickynet's conflist of an earlier install under another name", "file", f, "now", path)
	}
	return nil
}

func installFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, b, mode)
}

// writeFileAtomic replaces path with b, never showing a partial file (the
// container runtime watches the folder).
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".stickynet-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
