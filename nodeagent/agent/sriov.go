package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/datapath"
	"github.com/stickynet/stickynet/nodeagent/sriov"
)

func vfKey(pf string, index int) string { return pf + "/" + strconv.Itoa(index) }

// waitSriovNetwork returns the SriovNetwork once the source has it, waiting
// until ctx (the ADD's wait) ends.
func (a *agent) waitSriovNetwork(ctx context.Context, name string) (*v1alpha1.SriovNetwork, error) {
	start := time.Now()
	for {
		if n, ok := a.nets.Get(name); ok {
			return n, nil
		}
		if a.nets.Synced() {
			err := &annotations.Error{Key: annotations.SriovNetwork, Value: name, Accepted: "the name of a SriovNetwork (this one does not exist)"}
			return nil, types.NewError(api.ErrUnsupported, err.Error(), "")
		}
		select {
		case <-ctx.Done():
			return nil, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("SriovNetworks not known to the node agent %s (the ADD waits --pod-wait, at most half the conflist's timeout); try again later", waitedFor(ctx, start, 0)), "")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// vfConfig is the PF-side configuration for a pod on a network.
func vfConfig(n *v1alpha1.SriovNetwork, asg annotations.Assignment) sriov.Config {
	c := sriov.Config{
		MAC:           asg.MAC.String(),
		VLAN:          asg.VLAN,
		SpoofChk:      true,
		MaxTxRateMbps: asg.Bandwidth.Egress.VFRateMbps(),
		LinkState:     sriov.LinkAuto,
	}
	if n.Spec.VLAN > 0 {
		c.VLAN = int(n.Spec.VLAN)
	}
	if n.Spec.SpoofChk != nil {
		c.SpoofChk = *n.Spec.SpoofChk
	}
	if n.Spec.Trust != nil {
		c.Trust = *n.Spec.Trust
	}
	if n.Spec.LinkState != "" {
		c.LinkState = sriov.LinkState(n.Spec.LinkState)
	}
	return c
}

// allocVF reserves the first free VF of the network's PFs whose netdev is in
// the node's namespace.
func (a *agent) allocVF(n *v1alpha1.SriovNetwork) (sriov.VF, error) {
	var seen []string
	for _, pf := range n.Spec.PFNames {
		a.mu.Lock()
		owner := a.pfOwner[pf]
		a.mu.Unlock()
		if owner != "" && owner != n.Name {
			seen = append(seen, fmt.Sprintf("PF %s is SriovNetwork %s's (the first by name that lists it)", pf, owner))
			continue
		}
		vfs, err := sriov.Discover(a.opts.SysfsRoot, pf)
		if err != nil {
			seen = append(seen, err.Error())
			continue
		}
		for _, vf := range vfs {
			if vf.NetDev == "" || !a.dp.HostLinkExists(vf.NetDev) {
				continue
			}
			a.mu.Lock()
			taken := a.usedVFs[vfKey(pf, vf.Index)]
			if !taken {
				a.usedVFs[vfKey(pf, vf.Index)] = true
			}
			a.mu.Unlock()
			if !taken {
				return vf, nil
			}
		}
		seen = append(seen, fmt.Sprintf("PF %s: %d VFs, none free", pf, len(vfs)))
	}
	return sriov.VF{}, types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("no free VF of SriovNetwork %s on this node; try again later", n.Name), strings.Join(seen, "; "))
}

func (a *agent) freeVF(v *datapath.VFState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.usedVFs, vfKey(v.PF, v.Index))
}

// addVF attaches the pod through a VF of SriovNetwork n.
func (a *agent) addVF(ctx context.Context, at *datapath.Attachment, n *v1alpha1.SriovNetwork, asg annotations.Assignment) error {
	vf, err := a.allocVF(n)
	if err != nil {
		return err
	}
	a.mu.Lock() // at is in a.starting, where usedByAnother reads at.VF
	at.VF = &datapath.VFState{PF: vf.PF, Index: vf.Index, PCI: vf.PCI, NetDev: vf.NetDev}
	at.HostVeth = ""
	a.mu.Unlock()
	if err := a.dp.PrepareVF(at); err != nil {
		a.freeVF(at.VF)
		return err
	}
	// How the VF was goes to disk before anything changes.
	if err := a.store.Put(at); err != nil {
		a.freeVF(at.VF)
		return err
	}
	cfg := vfConfig(n, asg)
	if err := a.dp.SetupVF(ctx, at, cfg); err != nil {
		if _, stuck := errors.AsType[*datapath.RestoreError](err); stuck {
			// Not as it was: the VF stays this attachment's, with its
			// record, and the DEL that follows a failed ADD restores it
			// (undoAdd's rule).
			a.track(at)
			return err
		}
		if derr := a.dropRecord(at); derr != nil {
			return errors.Join(err, derr)
		}
		a.freeVF(at.VF)
		return err
	}
	at.Bandwidth = asg.Bandwidth
	klog.FromContext(ctx).V(2).Info("VF attached", "pod", at.Pod(), "pf", vf.PF, "vf", vf.Index, "netdev", vf.NetDev)
	return nil
}

// ResourceName is the extended resource of a SriovNetwork's VFs.
func ResourceName(network string) corev1.ResourceName {
	return corev1.ResourceName(annotations.SriovResourcePrefix + network)
}

func (a *agent) wakeAdvertise() {
	select {
	case a.advertise <- struct{}{}:
	default:
	}
}

// advertiseLoop keeps the Node's extended resources right: stickynet's
// network (annotations.NetworkResource), from the agent's first serving on
// until it leaves the node (a stop that is not a leave keeps it), and for
// each SriovNetwork that selects the node the number of its VFs here. It
// checks them when the SriovNetworks or the Node change and every
// ResyncPeriod. A failed pass is tried again after 1 s, then twice as long
// each time up to ResyncPeriod (backoff): until one succeeds, the node takes
// none of stickynet's pods (its Node not there yet, the API server not
// answering).
func (a *agent) advertiseLoop(ctx context.Context) {
	if a.kube == nil || a.opts.NodeName == "" {
		return
	}
	log := klog.FromContext(ctx)
	period := a.opts.ResyncPeriod
	if period <= 0 {
		period = time.Minute
	}
	if err := a.watchNode(ctx); err != nil {
		log.Error(err, "The node's resources are checked every resync period only", "period", period)
	}
	var retry time.Duration // the wait after the last failure; 0: it succeeded
	for {
		wait := period
		if err := a.advertiseOnce(ctx); err != nil && ctx.Err() == nil {
			retry = backoff(retry, period)
			wait = retry
			log.Error(err, "Advertising the node's resources failed", "retryIn", wait)
			backgroundErrors.WithLabelValues("advertise").Inc()
		} else {
			retry = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-a.advertise:
		case <-time.After(wait):
		}
	}
}

// backoff is the wait after a failure that follows a wait of last (0: the
// pass before succeeded): 1 s, then twice as long each time, up to period.
func backoff(last, period time.Duration) time.Duration {
	return min(max(2*last, time.Second), period)
}

// watchNode wakes advertiseLoop when the Node shows stickynet's network
// other than the agent advertises it: gone (a Node deleted and registered
// again, a kubelet that zeroed it, a hand edit) or of another count (the
// node's pod limit changed). A watch that cannot list the Node (no
// permission) logs why; the resync period then finds it.
func (a *agent) watchNode(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(a.kube, 0, informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", a.opts.NodeName).String()
	}))
	check := func(obj any) {
		node, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		if q, ok := node.Status.Allocatable[annotations.NetworkResource]; !ok || q.Value() != int64(networkCapacity(node)) {
			a.wakeAdvertise()
		}
	}
	if _, err := f.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: check, UpdateFunc: func(_, obj any) { check(obj) },
	}); err != nil {
		return fmt.Errorf("watch node %s: %w", a.opts.NodeName, err)
	}
	f.Start(ctx.Done())
	return nil
}

// vfCounts is, per resource, the VFs of each SriovNetwork that selects a
// node with labels: those whose netdev the node sees, plus those given to
// pods (a VF in a pod's namespace is not visible in the node's sysfs). It is
// the capacity: the scheduler subtracts what pods request. A PF belongs to
// one SriovNetwork on a node, the first by name that lists it: counted for
// each, its VFs would be offered twice, and pods placed on the second count
// would fail their CNI ADD for want of a VF. shared says which PFs other
// networks list too.
func (a *agent) vfCounts(nodeLabels map[string]string) (_ map[corev1.ResourceName]int, shared []string) {
	out := map[corev1.ResourceName]int{}
	a.mu.Lock()
	used := map[string]bool{}
	for k := range a.usedVFs {
		used[k] = true
	}
	a.mu.Unlock()
	nets := a.nets.List()
	sort.Slice(nets, func(i, j int) bool { return nets[i].Name < nets[j].Name })
	pfOwner := map[string]string{}
	for _, n := range nets {
		sel := labels.Everything()
		if n.Spec.NodeSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(n.Spec.NodeSelector)
			if err != nil {
				continue
			}
			sel = s
		}
		if !sel.Matches(labels.Set(nodeLabels)) {
			continue
		}
		count := 0
		for _, pf := range n.Spec.PFNames {
			if owner, ok := pfOwner[pf]; ok {
				if owner != n.Name {
					shared = append(shared, fmt.Sprintf("PF %s of SriovNetwork %s is SriovNetwork %s's", pf, n.Name, owner))
				}
				continue
			}
			pfOwner[pf] = n.Name
			vfs, err := sriov.Discover(a.opts.SysfsRoot, pf)
			if err != nil {
				continue
			}
			for _, vf := range vfs {
				if vf.NetDev != "" || used[vfKey(pf, vf.Index)] {
					count++
				}
			}
		}
		out[ResourceName(n.Name)] = count
	}
	a.mu.Lock()
	a.pfOwner = pfOwner
	a.mu.Unlock()
	return out, shared
}

func (a *agent) advertiseOnce(ctx context.Context) error {
	node, err := a.kube.CoreV1().Nodes().Get(ctx, a.opts.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", a.opts.NodeName, err)
	}
	var counts map[corev1.ResourceName]int
	var shared []string
	if a.nets.Synced() {
		counts, shared = a.vfCounts(node.Labels)
	} else {
		// The SriovNetworks not listed yet (or not at all: no CRD, no
		// permission) hold up the VFs' counts, which keep their values,
		// not stickynet's network.
		counts = map[corev1.ResourceName]int{}
		for name, q := range node.Status.Capacity {
			if annotations.OwnResource(name) {
				counts[name] = int(q.Value())
			}
		}
	}
	counts[annotations.NetworkResource] = networkCapacity(node)
	patch := annotations.ResourcePatch(node.Status, counts)
	if patch == nil {
		return nil
	}
	if len(shared) > 0 {
		klog.FromContext(ctx).Info("Warning: SriovNetworks share PFs; each PF's VFs are offered to the first network by name that lists it only (give each network PFs of its own)", "node", a.opts.NodeName, "shared", shared)
	}
	if _, err := a.kube.CoreV1().Nodes().PatchStatus(ctx, a.opts.NodeName, patch); err != nil {
		return fmt.Errorf("patch the resources of node %s: %w", a.opts.NodeName, err)
	}
	klog.FromContext(ctx).Info("Node resources advertised", "node", a.opts.NodeName, "patch", string(patch))
	return nil
}

// networkCapacity is how many pods the node can attach to stickynet's
// network: as many as it runs pods, so that the resource never binds before
// the node's own pod limit (kubelet's default of 110 if the node has none yet).
func networkCapacity(node *corev1.Node) int {
	if q, ok := node.Status.Capacity[corev1.ResourcePods]; ok && q.Value() > 0 {
		return int(q.Value())
	}
	return 110
}
