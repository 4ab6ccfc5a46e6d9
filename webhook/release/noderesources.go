package release

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/workload"
)

// A node agent withdraws stickynet's extended resources (annotations.
// OwnResource) from its Node when it leaves the node for good, but not
// always can: after `helm uninstall` its account is gone before it stops,
// and an agent whose node is down when its DaemonSet stops selecting the
// node never runs again there. The resources then stay on the Node, and the
// scheduler places there pods that ask for them (every pod the webhook gives
// an address, with --network-resource), which the node attaches to its own
// network. withdrawStale takes them off each Node that the agents'
// DaemonSet (Controller.NodeAgent) does not select and where no agent runs:
// a later install's leader does so in its first pass.
//
// A Node the DaemonSet selects keeps them, even with no agent there: a
// rolling update or a crash keeps the conflist too, and pods placed there
// wait for the agent. So does a Node where a pod of the DaemonSet, or one
// its selector matches that no controller owns (orphaned by a `kubectl
// delete --cascade=orphan`), is not being deleted: its agent serves and
// would put them back.

// withdrawStale runs as part of each pass; without Controller.NodeAgent, or
// with that DaemonSet not there (not installed yet, being deleted), it does
// nothing. A withdrawal the API server refuses is logged and tried again
// after staleRetry, not failed with the pass (which would retry the whole
// pass within a second).
func (c *Controller) withdrawStale(ctx context.Context) {
	if c.NodeAgent.Name == "" {
		return
	}
	log := klog.FromContext(ctx)
	ds := &appsv1.DaemonSet{}
	if err := c.Client.Get(ctx, c.NodeAgent, ds); err != nil {
		if !apierrors.IsNotFound(err) {
			log.Error(err, "Cannot read the node agents' DaemonSet; stale node resources are not withdrawn this pass", "daemonset", c.NodeAgent)
		}
		return
	}
	if ds.DeletionTimestamp != nil {
		return
	}
	nodes := &corev1.NodeList{}
	if err := c.Client.List(ctx, nodes, client.UnsafeDisableDeepCopy); err != nil {
		log.Error(err, "Cannot list nodes; stale node resources are not withdrawn this pass")
		return
	}
	now := time.Now()
	maps.DeleteFunc(c.staleRetry, func(_ string, at time.Time) bool { return now.After(at) })
	selects := workload.SelectsNodes(ds)
	var stale []*corev1.Node
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if annotations.HasOwnResource(n.Status) && now.After(c.staleRetry[n.Name]) && !selects(n) {
			stale = append(stale, n)
		}
	}
	if len(stale) == 0 {
		return
	}
	agents, err := c.agentNodes(ctx, ds, stale)
	if err != nil {
		log.Error(err, "Stale node resources are not withdrawn this pass")
		return
	}
	if c.staleRetry == nil {
		c.staleRetry = map[string]time.Time{}
	}
	for _, n := range stale {
		if agents[n.Name] {
			continue
		}
		if err := c.withdrawFrom(ctx, n); err != nil {
			c.staleRetry[n.Name] = now.Add(staleRetry)
			log.Error(err, "Cannot withdraw stickynet's stale resources from a node", "node", n.Name, "retryIn", staleRetry)
			c.Metrics.staleWithdrawal(false)
			continue
		}
		delete(c.staleRetry, n.Name)
	}
}

// staleRetry is how long a node whose withdrawal failed is left before the
// next try.
const staleRetry = 5 * time.Minute

// withdrawFrom patches n's status as cached: a Node changed since (its agent
// withdrew them itself, say) is a conflict, and the next pass sees it anew.
func (c *Controller) withdrawFrom(ctx context.Context, n *corev1.Node) error {
	patch := annotations.ResourcePatchAt(n.Status, nil, n.ResourceVersion)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
	if err := c.Client.Status().Patch(ctx, node, client.RawPatch(types.MergePatchType, patch)); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	names := ownNames(n.Status)
	klog.FromContext(ctx).Info("Withdrew stickynet's resources from a node its agents' DaemonSet does not select", "node", n.Name, "daemonset", c.NodeAgent, "resources", names)
	c.Metrics.staleWithdrawal(true)
	c.event(n, corev1.EventTypeNormal, "StaleResourcesWithdrawn",
		"Removed %v from the node: the node agents' DaemonSet %s does not select it and none of its pods runs here, so no agent serves stickynet's network on it (left by an agent that could not withdraw them: an uninstall, or the node down when the agent left it)",
		names, c.NodeAgent)
	return nil
}

// agentNodes are those of nodes where an agent runs: a pod of ds, or one
// its selector matches that no controller owns, not being deleted. The
// cache holds only the pods the webhook labelled, so they are read from the
// API server: by node when there are few (the pods' nodeName is indexed),
// else the namespace's at once.
func (c *Controller) agentNodes(ctx context.Context, ds *appsv1.DaemonSet, nodes []*corev1.Node) (map[string]bool, error) {
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("the node agents' DaemonSet %s: selector: %w", c.NodeAgent, err)
	}
	out := map[string]bool{}
	list := func(opts ...client.ListOption) error {
		pods := &corev1.PodList{}
		opts = append(opts, client.InNamespace(ds.Namespace), client.MatchingLabelsSelector{Selector: sel})
		if err := c.APIReader.List(ctx, pods, opts...); err != nil {
			return fmt.Errorf("list the pods of the node agents' DaemonSet %s: %w", c.NodeAgent, err)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			ref := metav1.GetControllerOf(p)
			if (ref == nil || ref.UID == ds.UID) && p.DeletionTimestamp == nil && p.Spec.NodeName != "" {
				out[p.Spec.NodeName] = true
			}
		}
		return nil
	}
	if len(nodes) > agentListsByNode {
		return out, list()
	}
	for _, n := range nodes {
		if err := list(client.MatchingFields{"spec.nodeName": n.Name}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// agentListsByNode is the most stale nodes whose agents are listed node by
// node.
const agentListsByNode = 20

// ownNames lists the node's own resources, for the event.
func ownNames(status corev1.NodeStatus) []string {
	seen := map[corev1.ResourceName]bool{}
	var out []string
	for _, have := range []corev1.ResourceList{status.Capacity, status.Allocatable} {
		for name := range have {
			if annotations.OwnResource(name) && !seen[name] {
				seen[name] = true
				out = append(out, string(name))
			}
		}
	}
	slices.Sort(out)
	return out
}
