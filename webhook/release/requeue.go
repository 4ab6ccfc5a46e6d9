package release

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
)

// A pod the scheduler could not place is tried again at its next cluster
// event, or after 5 min. kube-scheduler does not watch IPPools or
// SriovNetworks, so a pod the extender kept off every node for its pool or
// network waited up to 5 min after that pool's or network's nodeSelector
// was widened (or after it was created, where the extender had not yet seen
// it). requeue writes annotations.PlacementChanged on such pods: an update of
// the pod, on which the scheduler tries it again at once.

// placements are the nodeSelectors of every IPPool ("IPPool/<name>") and
// SriovNetwork ("SriovNetwork/<name>") as a pass saw them.
type placements map[string]placement

type placement struct {
	selector   string // metav1.FormatLabelSelector's
	generation int64
}

func placementsOf(pools []v1alpha1.IPPool, networks []v1alpha1.SriovNetwork) placements {
	out := make(placements, len(pools)+len(networks))
	for i := range pools {
		out["IPPool/"+pools[i].Name] = placement{metav1.FormatLabelSelector(pools[i].Spec.NodeSelector), pools[i].Generation}
	}
	for i := range networks {
		out["SriovNetwork/"+networks[i].Name] = placement{metav1.FormatLabelSelector(networks[i].Spec.NodeSelector), networks[i].Generation}
	}
	return out
}

// unschedulable reports whether the scheduler tried p and found no node.
func unschedulable(p *corev1.Pod) bool {
	if p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled {
			return c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
		}
	}
	return false
}

// requeue writes annotations.PlacementChanged on the unschedulable pods of
// every IPPool and SriovNetwork whose nodeSelector changed, or that was
// created, since the term's previous pass. The first pass of a term has no
// pass to compare with: it takes the IPPools whose spec changed since a
// pass last wrote their status (unobserved: status.observedGeneration
// behind, read before this pass wrote it), such as an edit made while the
// lead changed hands; SriovNetworks have no status, and such an edit of
// one waits for the scheduler's own retry. A pool whose pods could not all
// be written counts as changed again in the next pass.
func (c *Controller) requeue(ctx context.Context, pods []podInfo, pools []v1alpha1.IPPool, unobserved map[string]bool) error {
	networks := &v1alpha1.SriovNetworkList{}
	if err := c.Client.List(ctx, networks); err != nil {
		return fmt.Errorf("list SriovNetworks: %w", err)
	}
	now := placementsOf(pools, networks.Items)
	prev := c.placements
	c.placements = now
	changed := map[string]string{} // key → the annotation's value
	for k, p := range now {
		if q, ok := prev[k]; (prev != nil && (!ok || q.selector != p.selector)) || (prev == nil && unobserved[k]) {
			changed[k] = fmt.Sprintf("%s generation %d", k, p.generation)
		}
	}
	if prev == nil {
		prev = placements{} // a failed write forgets the key: changed again next pass
	}
	if len(changed) == 0 {
		return nil
	}
	var errs []error
	for _, p := range pods {
		if !unschedulable(p.pod) {
			continue
		}
		key := "IPPool/" + p.pool
		value, ok := changed[key]
		if !ok {
			key = "SriovNetwork/" + p.pod.Annotations[annotations.SriovNetwork]
			if value, ok = changed[key]; !ok {
				continue
			}
		}
		if p.pod.Annotations[annotations.PlacementChanged] == value {
			continue
		}
		if err := c.patchAnnotations(ctx, p.pod, map[string]any{annotations.PlacementChanged: value}); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			// retry has the next pass count key as changed again.
			retry := func() {
				if q, ok := prev[key]; ok {
					c.placements[key] = q
				} else {
					delete(c.placements, key)
				}
			}
			if replaced(err) {
				// A pod made again under the name (the cache behind): the
				// next pass, which sees it, writes it, as after a failed write.
				retry()
				continue
			}
			if refusedForGood(err) {
				// Trying again each pass would fail every pass. The pod
				// waits for the scheduler's own retry.
				klog.FromContext(ctx).Error(err, "Could not ask the scheduler to try a pod again", "pod", p.key, "changed", key)
				continue
			}
			errs = append(errs, fmt.Errorf("ask the scheduler to try pod %s again: %w", p.key, err))
			retry()
			continue
		}
		c.Metrics.requeued()
		c.event(p.pod, corev1.EventTypeNormal, "PlacementChanged", "%s changed (%s): scheduling tried again", key, why(prevHad(prev, key)))
	}
	return errors.Join(errs...)
}

// unobservedPools names ("IPPool/<name>") the IPPools whose spec changed
// since a pass last wrote their status.
func unobservedPools(pools []v1alpha1.IPPool) map[string]bool {
	out := map[string]bool{}
	for i := range pools {
		if pools[i].Status.ObservedGeneration < pools[i].Generation {
			out["IPPool/"+pools[i].Name] = true
		}
	}
	return out
}

func prevHad(prev placements, key string) bool { _, ok := prev[key]; return ok }

func why(compared bool) string {
	if compared {
		return "its nodeSelector"
	}
	return "created, or edited since the release controller last looked"
}
