package admission

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
)

// onNamedNode refuses a pod created with spec.nodeName on a node that its
// IPPool's or SriovNetwork's nodeSelector leaves out, or (with
// NetworkResource) that advertises no annotations.NetworkResource. Such a
// pod skips the scheduler, so the extender never sees it, and the kubelet
// drops a request for an extended resource its node does not list: it would
// run with an address its node cannot reach, or on the node's own network,
// and nothing would say so. The node is read from the API server (the
// webhook keeps no Nodes), only for such pods; a node that does not exist
// runs nothing, and is not judged.
func (h *Handler) onNamedNode(ctx context.Context, pod *corev1.Pod, ipp *v1alpha1.IPPool, sriov *v1alpha1.SriovNetwork) error {
	if pod.Spec.NodeName == "" || h.APIReader == nil {
		return nil
	}
	type placement struct {
		what string
		sel  *metav1.LabelSelector
	}
	var checks []placement
	if selectsNodes(ipp.Spec.NodeSelector) {
		checks = append(checks, placement{"IPPool " + ipp.Name, ipp.Spec.NodeSelector})
	}
	if sriov != nil && selectsNodes(sriov.Spec.NodeSelector) {
		checks = append(checks, placement{"SriovNetwork " + sriov.Name, sriov.Spec.NodeSelector})
	}
	if len(checks) == 0 && !h.NetworkResource {
		return nil
	}
	node := &corev1.Node{}
	if err := h.APIReader.Get(ctx, client.ObjectKey{Name: pod.Spec.NodeName}, node); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("read node %s, which pod %s/%s names in spec.nodeName, to check that stickynet can attach the pod there: %w",
			pod.Spec.NodeName, pod.Namespace, podName(pod), err)
	}
	if q, ok := node.Status.Allocatable[annotations.NetworkResource]; h.NetworkResource && (!ok || q.Value() < 1) {
		return deny("pod %s/%s names node %s in spec.nodeName, which advertises no %s: no stickynet node agent serves there (yet), and the node's own network would attach the pod with another address; "+
			"name a node whose agent serves, or leave spec.nodeName empty for the scheduler to choose one",
			pod.Namespace, podName(pod), pod.Spec.NodeName, annotations.NetworkResource)
	}
	for _, c := range checks {
		sel, err := metav1.LabelSelectorAsSelector(c.sel)
		if err != nil {
			return deny("pod %s/%s names node %s in spec.nodeName, and the nodeSelector of %s does not parse (%v): no node can be checked against it; mend the selector, or name another pool or network",
				pod.Namespace, podName(pod), pod.Spec.NodeName, c.what, err)
		}
		if !sel.Matches(labels.Set(node.Labels)) {
			return deny("pod %s/%s names node %s in spec.nodeName, which the nodeSelector of %s (%s) leaves out: the pod would run where its address cannot work; "+
				"name a node the selector matches, or leave spec.nodeName empty for the scheduler to choose one",
				pod.Namespace, podName(pod), pod.Spec.NodeName, c.what, metav1.FormatLabelSelector(c.sel))
		}
	}
	return nil
}
