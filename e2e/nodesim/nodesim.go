// Package nodesim plays the network role of kubelet and its container
// runtime for many simulated nodes at once, so that scale tests get hundreds
// of nodes on one small machine. For each simulated node it registers a Node
// and keeps its Lease fresh (the node lifecycle controller then leaves it
// alone); for each pod bound to such a node it creates the pod's network
// namespace, runs the node's CNI configuration through libcni exactly as
// containerd does (loopback, then the node's conflist, with the same CNI_ARGS
// and capability arguments, from the node's own network namespace), reports
// the pod Running with its IPs, and on deletion runs CNI DEL, removes the
// namespace and deletes the pod as kubelet does. Pods on the host network
// get the node's address and no CNI call, as with a real runtime. No
// container runs.
//
// What it set up is recorded under its state folder before it is made, so a
// new Simulator on the same folder (after a crash or a restart) finishes or
// undoes what the last one left and leaks no namespace.
package nodesim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/stickynet/stickynet/e2e/internal/host"
)

// Node is one simulated node.
type Node struct {
	// Name is the Node object's name.
	Name string
	// IP is the node's InternalIP.
	IP netip.Addr
	// Netns is the node's network namespace, where its CNI plugins run (as
	// they run in the namespace of a real node's containerd).
	Netns string
	// CNIConfDir holds the node's network configuration; the first file in
	// lexical order is used, as containerd does. It is read at every ADD.
	CNIConfDir string
	// CNIBinDir holds the node's plugin binaries.
	CNIBinDir string
	// Labels are added to the Node's own (hostname, os, arch).
	Labels map[string]string
}

// Options configure a Simulator.
type Options struct {
	// Client talks to the cluster; it needs to write nodes, leases, pods and
	// their status.
	Client kubernetes.Interface
	// Nodes are the simulated nodes.
	Nodes []Node
	// StateDir keeps the pod records, pod namespaces and libcni's cache.
	StateDir string
	// Host performs namespace operations and runs plugins in namespaces.
	Host *host.Host
	// Workers is how many pods are set up or torn down at once; default 4.
	Workers int
	// LeaseDuration is the nodes' lease duration; they are renewed every
	// quarter of it. Default 40 s, as kubelet.
	LeaseDuration time.Duration
	// Capacity of every node; default 16 CPUs, 64 GiB, 110 pods.
	Capacity corev1.ResourceList
}

// Simulator runs simulated nodes. Build one with New, call Run.
type Simulator struct {
	opts       Options
	nodes      map[string]*Node
	queue      workqueue.TypedRateLimitingInterface[string]
	lister     corelisters.PodLister
	nodeLister corelisters.NodeLister

	mu      sync.Mutex
	records map[string]*record // by pod key namespace/name
	byUID   map[types.UID]*record
	leases  map[string]*coordinationv1.Lease // last written, by node
	// registeredCh is closed once every node is registered.
	registeredCh chan struct{}
}

// record is what the simulator set up for one pod, kept on disk.
type record struct {
	UID       types.UID `json:"uid"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Node      string    `json:"node"`
	// Netns is the pod's namespace path; ContainerID the sandbox ID given
	// to CNI.
	Netns       string `json:"netns"`
	ContainerID string `json:"containerID"`
	// Ready is false while ADD is under way (a restart then undoes it).
	Ready bool     `json:"ready"`
	IPs   []string `json:"ips,omitempty"`
}

func (r *record) key() string { return r.Namespace + "/" + r.Name }

// New checks opts and returns a Simulator.
func New(opts Options) (*Simulator, error) {
	if opts.Client == nil || opts.Host == nil || opts.StateDir == "" {
		return nil, errors.New("nodesim: Client, Host and StateDir are required")
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.LeaseDuration <= 0 {
		opts.LeaseDuration = 40 * time.Second
	}
	if opts.Capacity == nil {
		opts.Capacity = corev1.ResourceList{
			corev1.ResourceCPU:              resource.MustParse("16"),
			corev1.ResourceMemory:           resource.MustParse("64Gi"),
			corev1.ResourcePods:             resource.MustParse("110"),
			corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
		}
	}
	s := &Simulator{
		opts:    opts,
		nodes:   map[string]*Node{},
		records: map[string]*record{},
		byUID:   map[types.UID]*record{},
		leases:  map[string]*coordinationv1.Lease{},

		registeredCh: make(chan struct{}),
	}
	for i := range opts.Nodes {
		s.nodes[opts.Nodes[i].Name] = &opts.Nodes[i]
	}
	for _, d := range []string{s.podDir(), s.netnsDir(), s.cacheDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create simulator state folder: %w", err)
		}
	}
	return s, nil
}

func (s *Simulator) podDir() string   { return filepath.Join(s.opts.StateDir, "pods") }
func (s *Simulator) netnsDir() string { return filepath.Join(s.opts.StateDir, "netns") }
func (s *Simulator) cacheDir() string { return filepath.Join(s.opts.StateDir, "cni-cache") }

// register creates (or refreshes the status of) the Node of every
// simulated node; their leases are kept by Run's lease loop.
func (s *Simulator) register(ctx context.Context) error {
	return s.forEachNode(ctx, 8, s.registerNode)
}

// Registered is closed once Run has registered every node.
func (s *Simulator) Registered() <-chan struct{} { return s.registeredCh }

// registerNode creates the node, or rewrites the status of the one there
// (as a restarted kubelet does), retrying when the node lifecycle
// controller wrote it in between.
func (s *Simulator) registerNode(ctx context.Context, n *Node) error {
	nodes := s.opts.Client.CoreV1().Nodes()
	obj := nodeObject(*n, s.opts.Capacity, metav1.Now())
	_, err := nodes.Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			cur, err := nodes.Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Status = repostStatus(cur.Status, nodeObject(*n, s.opts.Capacity, metav1.Now()).Status)
			_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("register node %s: %w", n.Name, err)
	}
	return nil
}

func (s *Simulator) forEachNode(ctx context.Context, workers int, f func(context.Context, *Node) error) error {
	work := make(chan *Node)
	errc := make(chan error, len(s.opts.Nodes))
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				errc <- f(ctx, n)
			}
		}()
	}
	for i := range s.opts.Nodes {
		select {
		case work <- &s.opts.Nodes[i]:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return ctx.Err()
}

// renewLease renews a node's lease with one update of the lease last
// written (a get first only when that is unknown or stale).
func (s *Simulator) renewLease(ctx context.Context, n *Node) error {
	leases := s.opts.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	s.mu.Lock()
	cached := s.leases[n.Name]
	s.mu.Unlock()
	if cached != nil {
		l := cached.DeepCopy()
		l.Spec.RenewTime = &now
		if l, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err == nil {
			s.cacheLease(l)
			return nil
		}
	}
	l, err := leases.Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(n.Name),
				LeaseDurationSeconds: ptr.To(int32(s.opts.LeaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create lease of %s: %w", n.Name, err)
		}
		s.cacheLease(l)
		return nil
	}
	if err != nil {
		return fmt.Errorf("get lease of %s: %w", n.Name, err)
	}
	l.Spec.RenewTime = &now
	if l, err = leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease of %s: %w", n.Name, err)
	}
	s.cacheLease(l)
	return nil
}

func (s *Simulator) cacheLease(l *coordinationv1.Lease) {
	s.mu.Lock()
	s.leases[l.Name] = l
	s.mu.Unlock()
}

// Run registers the nodes, then keeps their leases fresh and handles the
// pods bound to them until ctx ends. Whatever it set up stays in place when
// it returns, as when kubelet stops; TearDown removes it.
func (s *Simulator) Run(ctx context.Context) error {
	log := klog.FromContext(ctx).WithName("nodesim")
	ctx = klog.NewContext(ctx, log)
	if err := s.loadRecords(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Leases first and all along: a node whose lease lapses for the node
	// monitor grace period (50 s) turns NotReady, and registering a
	// thousand nodes on a busy machine can take about that long.
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.keepLeases(ctx)
	}()
	if err := s.register(ctx); err != nil {
		return err
	}
	close(s.registeredCh)
	s.queue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer s.queue.ShutDown()
	factory := informers.NewSharedInformerFactoryWithOptions(s.opts.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermNotEqualSelector("spec.nodeName", "").String()
		}))
	inf := factory.Core().V1().Pods()
	s.lister = inf.Lister()
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		if _, ours := s.nodes[pod.Spec.NodeName]; ours {
			s.queue.Add(pod.Namespace + "/" + pod.Name)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	// Nodes too: when the node lifecycle controller marks a node's
	// condition Unknown (a lease renewal was late on a busy machine), the
	// node posts its status again, as kubelet does on its next sync.
	nodeFactory := informers.NewSharedInformerFactory(s.opts.Client, 0)
	nodeInf := nodeFactory.Core().V1().Nodes()
	s.nodeLister = nodeInf.Lister()
	enqueueNode := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok {
			if _, ours := s.nodes[n.Name]; ours && !nodeReady(n) {
				s.queue.Add(nodeKeyPrefix + n.Name)
			}
		}
	}
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueNode,
		UpdateFunc: func(_, obj any) { enqueueNode(obj) },
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	nodeFactory.Start(ctx.Done())
	defer nodeFactory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced, nodeInf.Informer().HasSynced) {
		return fmt.Errorf("sync pod and node caches: %w", ctx.Err())
	}
	// What the last run left: every record is looked at again.
	s.mu.Lock()
	for k := range s.records {
		s.queue.Add(k)
	}
	s.mu.Unlock()
	log.Info("Node simulator running", "nodes", len(s.nodes), "recoveredPods", len(s.records))

	for range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s.processNext(ctx) {
			}
		}()
	}
	<-ctx.Done()
	s.queue.ShutDown()
	return nil
}

// keepLeases renews every node's lease each quarter of the lease duration
// (as kubelet does), spreading the renewals over the period; with many
// nodes the period grows to keep to 50 renewals a second, up to half the
// lease duration.
func (s *Simulator) keepLeases(ctx context.Context) {
	period := s.opts.LeaseDuration / 4
	if p := time.Duration(len(s.opts.Nodes)) * time.Second / 50; p > period {
		period = min(p, s.opts.LeaseDuration/2)
	}
	// Renewals go out at an even pace over the period, several at a time:
	// one after the other, a busy apiserver makes a pass outlast the grace
	// period.
	work := make(chan *Node)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				if err := s.renewLease(ctx, n); err != nil && ctx.Err() == nil {
					klog.FromContext(ctx).Error(err, "Renewing node lease", "node", n.Name)
				}
			}
		}()
	}
	defer func() {
		close(work)
		wg.Wait()
	}()
	tick := time.NewTicker(max(period/time.Duration(len(s.opts.Nodes)+1), time.Millisecond))
	defer tick.Stop()
	for {
		for i := range s.opts.Nodes {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case <-ctx.Done():
				return
			case work <- &s.opts.Nodes[i]:
			}
		}
	}
}

func (s *Simulator) processNext(ctx context.Context) bool {
	key, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(key)
	if err := s.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			klog.FromContext(ctx).Error(err, "Syncing simulated pod", "pod", key)
		}
		s.queue.AddRateLimited(key)
		return true
	}
	s.queue.Forget(key)
	return true
}

// sync brings pod key to what it should be: a pod bound to a simulated
// node and not terminating has a network and is reported Running; anything
// else recorded under the key is torn down.
func (s *Simulator) sync(ctx context.Context, key string) error {
	if name, ok := strings.CutPrefix(key, nodeKeyPrefix); ok {
		return s.syncNode(ctx, name)
	}
	ns, name, _ := strings.Cut(key, "/")
	pod, err := s.lister.Pods(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if apierrors.IsNotFound(err) {
		pod = nil
	}
	s.mu.Lock()
	rec := s.records[key]
	s.mu.Unlock()
	if rec != nil && (pod == nil || pod.UID != rec.UID || pod.Spec.NodeName != rec.Node || !rec.Ready) {
		// Gone, replaced by a pod of the same name, moved, or half set up by
		// a simulator that stopped: undo it.
		if err := s.teardown(ctx, rec); err != nil {
			return err
		}
		rec = nil
	}
	if pod == nil {
		return nil
	}
	if _, ours := s.nodes[pod.Spec.NodeName]; !ours {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		if rec != nil {
			if err := s.teardown(ctx, rec); err != nil {
				return err
			}
		}
		err := s.opts.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: ptr.To(int64(0)),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		return nil
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	nodeIP := s.nodes[pod.Spec.NodeName].IP
	if pod.Spec.HostNetwork {
		// No sandbox network: the runtime calls no CNI plugin, the pod
		// has the node's address.
		return s.reportRunning(ctx, pod, []netip.Addr{nodeIP}, "host"+strings.ReplaceAll(string(pod.UID), "-", ""))
	}
	if rec == nil {
		if rec, err = s.setup(ctx, pod); err != nil {
			return err
		}
	}
	ips := make([]netip.Addr, 0, len(rec.IPs))
	for _, ip := range rec.IPs {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return fmt.Errorf("record of %s: %w", key, err)
		}
		ips = append(ips, a)
	}
	return s.reportRunning(ctx, pod, ips, rec.ContainerID)
}

// reportRunning writes the Running status of pod with ips, unless the pod
// already shows it.
func (s *Simulator) reportRunning(ctx context.Context, pod *corev1.Pod, ips []netip.Addr, containerID string) error {
	if reportedRunning(pod, ips) {
		return nil
	}
	p := pod.DeepCopy()
	p.Status = runningStatus(pod, ips, s.nodes[pod.Spec.NodeName].IP, containerID, metav1.Now())
	if _, err := s.opts.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("report pod %s/%s running: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// repostStatus is the status a simulated node posts over the one stored:
// its own, plus the capacity and allocatable entries that others advertise
// on the node (extended resources such as a node agent's VFs), which a
// kubelet's status update keeps too.
func repostStatus(stored, own corev1.NodeStatus) corev1.NodeStatus {
	for _, l := range []struct{ from, to corev1.ResourceList }{
		{stored.Capacity, own.Capacity},
		{stored.Allocatable, own.Allocatable},
	} {
		for name, q := range l.from {
			if _, set := l.to[name]; !set {
				l.to[name] = q
			}
		}
	}
	return own
}

// nodeKeyPrefix marks node keys in the work queue (no namespace name
// holds an "@").
const nodeKeyPrefix = "@node/"

// syncNode posts a simulated node's status again when it is not Ready.
func (s *Simulator) syncNode(ctx context.Context, name string) error {
	n, err := s.nodeLister.Get(name)
	if err == nil && nodeReady(n) {
		return nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return s.registerNode(ctx, s.nodes[name])
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// setup records the pod, creates its namespace and runs CNI ADD.
func (s *Simulator) setup(ctx context.Context, pod *corev1.Pod) (*record, error) {
	node := s.nodes[pod.Spec.NodeName]
	rec := &record{
		UID: pod.UID, Namespace: pod.Namespace, Name: pod.Name, Node: node.Name,
		Netns:       filepath.Join(s.netnsDir(), string(pod.UID)),
		ContainerID: "sim" + strings.ReplaceAll(string(pod.UID), "-", ""),
	}
	if err := s.saveRecord(rec); err != nil {
		return nil, err
	}
	if err := s.opts.Host.NewNetns(rec.Netns); err != nil {
		return nil, fmt.Errorf("pod %s: %w", rec.key(), err)
	}
	ips, err := s.add(ctx, node, pod, rec)
	if err != nil {
		// Leave the record as not ready: the retry undoes and redoes it.
		return nil, fmt.Errorf("CNI ADD for pod %s on %s: %w", rec.key(), node.Name, err)
	}
	for _, ip := range ips {
		rec.IPs = append(rec.IPs, ip.String())
	}
	rec.Ready = true
	if err := s.saveRecord(rec); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).V(2).Info("Pod network set up", "pod", rec.key(), "node", node.Name, "ips", rec.IPs)
	return rec, nil
}

// teardown runs CNI DEL (when the pod's namespace was made), removes the
// namespace, then the record.
func (s *Simulator) teardown(ctx context.Context, rec *record) error {
	if _, err := os.Stat(rec.Netns); err == nil {
		node := s.nodes[rec.Node]
		if node != nil {
			if err := s.del(ctx, node, rec); err != nil {
				return fmt.Errorf("CNI DEL for pod %s on %s: %w", rec.key(), rec.Node, err)
			}
		}
		if err := s.opts.Host.DeleteNetns(rec.Netns); err != nil {
			return err
		}
	}
	if err := s.dropRecord(rec); err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("Pod network torn down", "pod", rec.key(), "node", rec.Node)
	return nil
}

// TearDown removes the network of every pod the simulator set up (CNI DEL,
// namespace, record), as a runtime does when its node is drained. Call it
// after Run returned.
func (s *Simulator) TearDown(ctx context.Context) error {
	if err := s.loadRecords(); err != nil {
		return err
	}
	s.mu.Lock()
	recs := make([]*record, 0, len(s.records))
	for _, r := range s.records {
		recs = append(recs, r)
	}
	s.mu.Unlock()
	work := make(chan *record)
	errc := make(chan error, len(recs))
	var wg sync.WaitGroup
	for range 2 * s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range work {
				errc <- s.teardown(ctx, r)
			}
		}()
	}
	for _, r := range recs {
		work <- r
	}
	close(work)
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// PodNetns returns the network namespace the simulator made for the pod
// with uid, if it did.
func (s *Simulator) PodNetns(uid types.UID) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byUID[uid]
	if !ok || !r.Ready {
		return "", false
	}
	return r.Netns, true
}

// Netns lists the pod namespaces present under the state folder (for leak checks).
func (s *Simulator) Netns() ([]string, error) {
	return s.opts.Host.ListNetns(s.netnsDir(), "")
}

func (s *Simulator) saveRecord(r *record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode pod record: %w", err)
	}
	path := filepath.Join(s.podDir(), string(r.UID)+".json")
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		return fmt.Errorf("write pod record: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("write pod record: %w", err)
	}
	s.mu.Lock()
	s.records[r.key()] = r
	s.byUID[r.UID] = r
	s.mu.Unlock()
	return nil
}

func (s *Simulator) dropRecord(r *record) error {
	if err := os.Remove(filepath.Join(s.podDir(), string(r.UID)+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pod record: %w", err)
	}
	s.mu.Lock()
	if s.records[r.key()] == r {
		delete(s.records, r.key())
	}
	if s.byUID[r.UID] == r {
		delete(s.byUID, r.UID)
	}
	s.mu.Unlock()
	return nil
}

// loadRecords reads the records a previous run left, and makes a record for
// any pod namespace found without one (a crash between the two), so that it
// is torn down too.
func (s *Simulator) loadRecords() error {
	ents, err := os.ReadDir(s.podDir())
	if err != nil {
		return fmt.Errorf("read pod records: %w", err)
	}
	recs := map[types.UID]*record{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.podDir(), e.Name()))
		if err != nil {
			return fmt.Errorf("read pod record: %w", err)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("parse pod record %s: %w", e.Name(), err)
		}
		recs[r.UID] = &r
	}
	nss, err := s.Netns()
	if err != nil {
		return err
	}
	for _, ns := range nss {
		uid := types.UID(filepath.Base(ns))
		if _, ok := recs[uid]; !ok {
			recs[uid] = &record{UID: uid, Namespace: "", Name: "orphan-" + string(uid), Netns: ns}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if cur, ok := s.byUID[r.UID]; ok {
			*cur = *r
			continue
		}
		s.records[r.key()] = r
		s.byUID[r.UID] = r
	}
	return nil
}

// runtimeConf is what containerd passes for a pod sandbox's interface.
func runtimeConf(pod *corev1.Pod, rec *record, ifName string) (*libcni.RuntimeConf, error) {
	caps, err := capabilityArgs(pod.Annotations)
	if err != nil {
		return nil, err
	}
	return &libcni.RuntimeConf{
		ContainerID:    rec.ContainerID,
		NetNS:          rec.Netns,
		IfName:         ifName,
		Args:           cniArgs(pod, rec.ContainerID),
		CapabilityArgs: caps,
	}, nil
}

// loopbackConfList is the network containerd sets up before the pod's own.
var loopbackConfList = []byte(`{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}`)

func (s *Simulator) add(ctx context.Context, node *Node, pod *corev1.Pod, rec *record) ([]netip.Addr, error) {
	cni := s.cniFor(node)
	lo, err := libcni.NetworkConfFromBytes(loopbackConfList)
	if err != nil {
		return nil, fmt.Errorf("loopback config: %w", err)
	}
	rtLo, err := runtimeConf(pod, rec, "lo")
	if err != nil {
		return nil, err
	}
	if _, err := cni.AddNetworkList(ctx, lo, rtLo); err != nil {
		return nil, fmt.Errorf("loopback: %w", err)
	}
	list, err := nodeConfList(node.CNIConfDir)
	if err != nil {
		return nil, err
	}
	rt, err := runtimeConf(pod, rec, "eth0")
	if err != nil {
		return nil, err
	}
	res, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		return nil, err
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("convert CNI result: %w", err)
	}
	return resultIPs(r, "eth0"), nil
}

func (s *Simulator) del(ctx context.Context, node *Node, rec *record) error {
	cni := s.cniFor(node)
	// A pod whose object is gone is torn down from the record alone.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: rec.Namespace, Name: rec.Name, UID: rec.UID}}
	list, err := nodeConfList(node.CNIConfDir)
	if err != nil {
		return err
	}
	rt, err := runtimeConf(pod, rec, "eth0")
	if err != nil {
		return err
	}
	if cached, _, cerr := cni.GetNetworkListCachedConfig(list, rt); cerr == nil && len(cached) > 0 {
		// Delete with the configuration the pod was added with, if the
		// node's has changed since.
		if l, perr := libcni.NetworkConfFromBytes(cached); perr == nil {
			list = l
		}
	}
	var errs []error
	if err := cni.DelNetworkList(ctx, list, rt); err != nil {
		errs = append(errs, err)
	}
	lo, err := libcni.NetworkConfFromBytes(loopbackConfList)
	if err != nil {
		return fmt.Errorf("loopback config: %w", err)
	}
	rtLo, err := runtimeConf(pod, rec, "lo")
	if err != nil {
		return err
	}
	if err := cni.DelNetworkList(ctx, lo, rtLo); err != nil {
		errs = append(errs, fmt.Errorf("loopback: %w", err))
	}
	return errors.Join(errs...)
}

// cniFor returns a libcni client whose plugins run in the node's namespace.
func (s *Simulator) cniFor(node *Node) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{node.CNIBinDir}, s.cacheDir(), &netnsExec{host: s.opts.Host, netns: node.Netns})
}

// nodeConfList loads the first network configuration of dir, in lexical
// order, as containerd (with max_conf_num = 1) does.
func nodeConfList(dir string) (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("list CNI configs in %s: %w", dir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no CNI config in %s", dir)
	}
	// ConfFiles lists in directory order, which is lexical.
	list, err := libcni.NetworkConfFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("load CNI config %s: %w", files[0], err)
	}
	return list, nil
}

// resultIPs returns the addresses the result puts on interface ifName (or
// every address when none names an interface).
func resultIPs(r *types100.Result, ifName string) []netip.Addr {
	var out []netip.Addr
	for _, ipc := range r.IPs {
		if ipc.Interface != nil && *ipc.Interface < len(r.Interfaces) && r.Interfaces[*ipc.Interface].Name != ifName {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			out = append(out, a.Unmap())
		}
	}
	return out
}
