package agent

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/workload"
)

// The agent's DaemonSet (Options.DaemonSet) deleted means stickynet is
// leaving the node (helm uninstall, kubectl delete), and so does one that no
// longer selects the node: the agent that stops then removes the conflist
// and plugin binary it installed, so that new pods get the node's other
// network instead of failing against an agent that is gone. Any other stop
// (a rolling update, a crash, the pod deleted by hand) leaves them: pods
// created meanwhile wait for the agent rather than falling through to
// another network.
//
// The deletion is seen through a watch while the agent runs, not asked for
// at the stop: helm deletes the release's ServiceAccount and RBAC with the
// DaemonSet, and a request made with the deleted account's token is refused.

// owner follows the agent's DaemonSet.
type owner struct {
	kube     kubernetes.Interface
	ns, name string
	node     string
	seen     atomic.Bool // the DaemonSet existed while the agent ran
	leaving  atomic.Bool // and was then deleted

	mu        sync.Mutex
	installed []installed // in the order written: the plugin, then the conflist
}

// installed is a file the agent wrote, as it last wrote it.
type installed struct {
	path string
	fi   os.FileInfo
}

// watchOwner starts following the DaemonSet; nil without one to follow.
func watchOwner(ctx context.Context, kube kubernetes.Interface, ref, node string) (*owner, error) {
	if ref == "" {
		return nil, nil
	}
	ds, err := workload.ParseDaemonSet(ref)
	if err != nil {
		return nil, fmt.Errorf("daemonset: %w", err)
	}
	ns, name := ds.Namespace, ds.Name
	if kube == nil {
		return nil, fmt.Errorf("daemonset %q: the agent has no API server to follow it on", ref)
	}
	o := &owner{kube: kube, ns: ns, name: name, node: node}
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
	inf := f.Apps().V1().DaemonSets().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    o.saw,
		UpdateFunc: func(_, obj any) { o.saw(obj) },
		DeleteFunc: func(any) { o.gone(ctx) },
	}); err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	// Not a reason to hold up serving pods: a watch that cannot start (no
	// permission, say) only costs the uninstall its clean-up.
	wctx, cancel := context.WithTimeout(ctx, ownerSyncWait)
	defer cancel()
	switch {
	case !cache.WaitForCacheSync(wctx.Done(), inf.HasSynced):
		klog.FromContext(ctx).Info("Warning: cannot watch the agent's DaemonSet yet (see the errors above); until it can, the agent will not remove its conflist when stickynet is uninstalled", "daemonset", ref)
	case !o.seen.Load():
		klog.FromContext(ctx).Info("Warning: the agent's DaemonSet does not exist; the agent will not remove its conflist when stickynet is uninstalled", "daemonset", ref)
	}
	return o, nil
}

// ownerSyncWait bounds how long the agent's start waits for its DaemonSet.
const ownerSyncWait = 10 * time.Second

func (o *owner) saw(obj any) {
	ds, ok := obj.(*appsv1.DaemonSet)
	if !ok {
		return
	}
	o.seen.Store(true)
	// A DaemonSet of the name made again (its orphaned pods adopted, say)
	// takes the agent back: only a stop while it is gone removes anything.
	o.leaving.Store(ds.DeletionTimestamp != nil)
}

func (o *owner) gone(ctx context.Context) {
	if o.seen.Load() && !o.leaving.Swap(true) {
		klog.FromContext(ctx).Info("The agent's DaemonSet is deleted: the agent removes its conflist and plugin when it stops", "daemonset", o.ns+"/"+o.name)
	}
}

// leftNode reports whether ds no longer selects the agent's node (its
// nodeSelector or node affinity narrowed, or the node's labels changed):
// the agent leaves the node for good, and its conflist would send the
// node's new pods to no agent.
func (o *owner) leftNode(ctx context.Context, ds *appsv1.DaemonSet) bool {
	if o.node == "" {
		return false
	}
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	node, err := o.kube.CoreV1().Nodes().Get(gctx, o.node, metav1.GetOptions{})
	if err != nil || workload.Selects(ds, node) {
		return false
	}
	klog.FromContext(ctx).Info("The agent's DaemonSet no longer selects this node: the agent removes its conflist and plugin", "daemonset", o.ns+"/"+o.name, "node", o.node)
	return true
}

// wrote records what the agent installed at path.
func (o *owner) wrote(path string) {
	if o == nil {
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := range o.installed {
		if o.installed[i].path == path {
			o.installed[i].fi = fi
			return
		}
	}
	o.installed = append(o.installed, installed{path, fi})
}

// uninstall removes what the agent installed if its DaemonSet is gone or no
// longer selects the node. A file written since by another agent (a new
// install's, on the same node) is left.
func (o *owner) uninstall(ctx context.Context) {
	if o == nil || !o.seen.Load() {
		return
	}
	log := klog.FromContext(ctx)
	if !o.leaving.Load() {
		// The watch may lag a deletion or a narrowing: the DaemonSet is
		// read again. A refused request (the account deleted with the
		// DaemonSet) leaves the files.
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
		defer cancel()
		ds, err := o.kube.AppsV1().DaemonSets(o.ns).Get(gctx, o.name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return
		case ds.DeletionTimestamp == nil && !o.leftNode(ctx, ds):
			return
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	ours := func(f installed) bool {
		fi, err := os.Stat(f.path)
		return err == nil && os.SameFile(fi, f.fi)
	}
	replaced := func(f installed) bool {
		fi, err := os.Stat(f.path)
		return err == nil && !os.SameFile(fi, f.fi)
	}
	// The resources go before the conflist, so that no pod is placed here
	// to meet the node's other network; not once a new install's agent has
	// written its own conflist (it advertises them now). A conflist that is
	// gone (removed by hand) is no other agent's.
	if n := len(o.installed); n == 0 || !replaced(o.installed[n-1]) {
		o.withdraw(ctx)
	}
	// The conflist first: a runtime never meets it without its plugin.
	for i := len(o.installed) - 1; i >= 0; i-- {
		f := o.installed[i]
		if !ours(f) {
			continue
		}
		if err := os.Remove(f.path); err != nil {
			log.Error(err, "Uninstall: could not remove a file the agent installed", "path", f.path)
		} else {
			log.Info("Uninstall: removed a file the agent installed", "path", f.path)
		}
	}
}

// withdraw removes the agent's resources (annotations.OwnResource) from its
// Node, so that the scheduler places no more of stickynet's pods here. Best
// effort: a refused request (the account deleted with the DaemonSet, at an
// uninstall) leaves them, for a later install's webhook to withdraw
// (webhook/release/noderesources.go).
func (o *owner) withdraw(ctx context.Context) {
	if o.node == "" {
		return
	}
	log := klog.FromContext(ctx)
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	node, err := o.kube.CoreV1().Nodes().Get(gctx, o.node, metav1.GetOptions{})
	if err == nil {
		patch := annotations.ResourcePatch(node.Status, nil)
		if patch == nil {
			return
		}
		if _, err = o.kube.CoreV1().Nodes().PatchStatus(gctx, o.node, patch); err == nil {
			log.Info("Uninstall: removed the agent's resources from its node", "node", o.node, "patch", string(patch))
			return
		}
	}
	log.Error(err, "Uninstall: could not remove the agent's resources from its node", "node", o.node)
}
