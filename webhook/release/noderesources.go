package release

import (
	"context"
	"errors"
	"fmt"
	"slices"

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
// DaemonSet (Controller.NodeAgent) does not select and where no pod of it
// runs: a later install's leader does so in its first pass.
//
// A Node the DaemonSet selects keeps them, even with no agent there: a
// rolling update or a crash keeps the conflist too, and pods placed there
// wait for the agent. A pod of the DaemonSet that is not being deleted keeps
// them as well: its agent is serving and would put them back.

// withdrawStale runs as part of each pass; without Controller.NodeAgent, or
// with that DaemonSet not there (not installed yet, being deleted), it does
// nothing.
func (c *Controller) withdrawStale(ctx context.Context) error {
	if c.NodeAgent.Name == "" {
		return nil
	}
	ds := &appsv1.DaemonSet{}
	if err := c.Client.Get(ctx, c.NodeAgent, ds); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get the node agents' DaemonSet %s: %w", c.NodeAgent, err)
	}
	if ds.DeletionTimestamp != nil {
		return nil
	}
	nodes := &corev1.NodeList{}
	if err := c.Client.List(ctx, nodes, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var stale []*corev1.Node
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if annotations.HasOwnResource(n.Status) && !workload.Selects(ds, n) {
			stale = append(stale, n)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	// The cache holds only the pods the webhook labelled: the agents' are
	// read from the API server, only when a node may need it.
	agents, err := c.agentNodes(ctx, ds)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range stale {
		if agents[n.Name] {
			continue
		}
		patch := annotations.ResourcePatch(n.Status, nil)
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
		if err := c.Client.Status().Patch(ctx, node, client.RawPatch(types.MergePatchType, patch)); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("withdraw stickynet's resources from node %s: %w", n.Name, err))
			}
			continue
		}
		klog.FromContext(ctx).Info("Withdrew stickynet's resources from a node its agents' DaemonSet does not select", "node", n.Name, "daemonset", c.NodeAgent, "patch", string(patch))
		c.event(n, corev1.EventTypeNormal, "StaleResourcesWithdrawn",
			"Removed %s from the node: the node agents' DaemonSet %s does not select it and none of its pods runs here, so no agent serves stickynet's network on it (left by an agent that could not withdraw them: an uninstall, or the node down when the agent left it)",
			ownNames(n.Status), c.NodeAgent)
	}
	return errors.Join(errs...)
}

// agentNodes are the nodes where a pod of ds runs, one not being deleted.
func (c *Controller) agentNodes(ctx context.Context, ds *appsv1.DaemonSet) (map[string]bool, error) {
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("the node agents' DaemonSet %s: selector: %w", c.NodeAgent, err)
	}
	pods := &corev1.PodList{}
	if err := c.APIReader.List(ctx, pods, client.InNamespace(ds.Namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list the pods of the node agents' DaemonSet %s: %w", c.NodeAgent, err)
	}
	out := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if ref := metav1.GetControllerOf(p); ref != nil && ref.UID == ds.UID && p.DeletionTimestamp == nil && p.Spec.NodeName != "" {
			out[p.Spec.NodeName] = true
		}
	}
	return out, nil
}

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
