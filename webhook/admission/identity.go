package admission

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/internal/annotations"
)

// identity resolves who owns the pod's addresses (DESIGN.md, "Identity and
// stickiness"). token is used for pods that have no name yet. What the pod
// gets wrong is a denial; a failed read of its ReplicaSet is an error.
func (h *Handler) identity(ctx context.Context, pod *corev1.Pod, token string) (annotations.ID, error) {
	ns := pod.Namespace
	owner := metav1.GetControllerOf(pod)
	if owner != nil {
		switch {
		case owner.Kind == "StatefulSet" && strings.HasPrefix(owner.APIVersion, "apps/"):
			ord, err := statefulSetOrdinal(pod, owner.Name)
			if err != nil {
				return annotations.ID{}, err
			}
			if err := h.checkOwner(ctx, ns, owner, &appsv1.StatefulSet{}); err != nil {
				return annotations.ID{}, err
			}
			return annotations.StatefulSetID(ns, owner.Name, ord), nil
		case owner.Kind == "ReplicaSet" && strings.HasPrefix(owner.APIVersion, "apps/"):
			rs, err := h.replicaSet(ctx, ns, owner)
			if err != nil {
				return annotations.ID{}, err
			}
			if dep := metav1.GetControllerOf(rs); dep != nil && dep.Kind == "Deployment" {
				return annotations.ID{Kind: annotations.KindDeployment, Namespace: ns, Name: dep.Name}, nil
			}
			return annotations.ID{Kind: annotations.KindReplicaSet, Namespace: ns, Name: rs.Name}, nil
		case owner.Kind == "DaemonSet" && strings.HasPrefix(owner.APIVersion, "apps/"):
			if err := h.checkOwner(ctx, ns, owner, &appsv1.DaemonSet{}); err != nil {
				return annotations.ID{}, err
			}
			node := daemonSetNode(pod)
			if node == "" {
				return annotations.ID{}, deny("DaemonSet pod of %s/%s names no node: expected spec.nodeName, or a required node affinity term matchFields metadata.name In [one node], as the DaemonSet controller writes", ns, owner.Name)
			}
			return annotations.ID{Kind: annotations.KindDaemonSet, Namespace: ns, Name: owner.Name, Member: node}, nil
		}
	}
	// Bare pods, Job pods and pods of other controllers are keyed by name.
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + token
	}
	return annotations.ID{Kind: annotations.KindPod, Namespace: ns, Name: name}, nil
}

// statefulSetOrdinal reads the ordinal from the pod's name, which the
// StatefulSet controller always sets to <set>-<ordinal>. Not from the
// pod-index label: a template may carry a copied one, which a controller
// without the PodIndexLabel gate does not overwrite, and a pod of another
// name (a StatefulSet pod's manifest copied and renamed, its controller
// reference with it) would take that ordinal's address and MAC.
func statefulSetOrdinal(pod *corev1.Pod, set string) (int, error) {
	suffix, ok := strings.CutPrefix(pod.Name, set+"-")
	if n, err := strconv.Atoi(suffix); ok && err == nil && n >= 0 && strconv.Itoa(n) == suffix {
		return n, nil
	}
	return 0, deny("StatefulSet pod %q of %s has no ordinal: a StatefulSet's pods are named %s-<ordinal>, as its controller names them", pod.Name, set, set)
}

// daemonSetNode reads the node a DaemonSet pod is for from the node affinity
// the DaemonSet controller sets (matchFields metadata.name), or spec.nodeName.
func daemonSetNode(pod *corev1.Pod) string {
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range term.MatchFields {
				if f.Key == "metadata.name" && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
					return f.Values[0]
				}
			}
		}
	}
	return pod.Spec.NodeName
}

// replicaSet reads the pod's owner ReplicaSet from the cache, or from the API
// server when the cache has not seen it yet (it was created a moment ago),
// and checks that it is the one the pod's reference names (checkOwner).
func (h *Handler) replicaSet(ctx context.Context, ns string, owner *metav1.OwnerReference) (*appsv1.ReplicaSet, error) {
	rs := &appsv1.ReplicaSet{}
	key := client.ObjectKey{Namespace: ns, Name: owner.Name}
	if err := h.get(ctx, key, rs); apierrors.IsNotFound(err) {
		return nil, ownerMissing(owner, key)
	} else if err != nil {
		return nil, fmt.Errorf("read owner ReplicaSet %s/%s: %w", ns, owner.Name, err)
	}
	if err := h.sameOwner(ctx, key, owner, rs); err != nil {
		return nil, err
	}
	return rs, nil
}

// checkOwner checks that the StatefulSet or DaemonSet the pod's controller
// reference names exists and is the one of the reference's UID: anyone who
// may create pods in the namespace could otherwise write that reference into
// a pod web-0 of their own and take the address and MAC of web-0's identity
// while its pod is gone, also while the StatefulSet is deleted (its
// addresses wait out the release grace; with --cascade=orphan, before it is
// applied again, its scaled-down ordinals' for good). A controller makes pods
// only for a workload that exists; a pod of one deleted a moment ago is the
// garbage collector's to delete.
func (h *Handler) checkOwner(ctx context.Context, ns string, owner *metav1.OwnerReference, obj client.Object) error {
	key := client.ObjectKey{Namespace: ns, Name: owner.Name}
	if err := h.get(ctx, key, obj); apierrors.IsNotFound(err) {
		return ownerMissing(owner, key)
	} else if err != nil {
		return fmt.Errorf("read owner %s %s/%s: %w", owner.Kind, ns, owner.Name, err)
	}
	return h.sameOwner(ctx, key, owner, obj)
}

// sameOwner denies a pod whose controller reference's UID is not obj's,
// read again from the API server first: the cache may still hold an earlier
// object of that name (deleted and made again a moment ago).
func (h *Handler) sameOwner(ctx context.Context, key client.ObjectKey, owner *metav1.OwnerReference, obj client.Object) error {
	if obj.GetUID() != owner.UID && h.APIReader != nil {
		err := h.APIReader.Get(ctx, key, obj)
		if apierrors.IsNotFound(err) {
			return ownerMissing(owner, key) // deleted meanwhile
		}
		if err != nil {
			return fmt.Errorf("read owner %s %s: %w", owner.Kind, key, err)
		}
	}
	if obj.GetUID() != owner.UID {
		return deny("the pod's controller reference names %s %s with UID %s, but %s %s has UID %s: a pod takes the identity of its own controller only",
			owner.Kind, key, owner.UID, owner.Kind, key, obj.GetUID())
	}
	return nil
}

// ownerMissing is the denial of a pod whose controller reference names a
// workload that does not exist.
func ownerMissing(owner *metav1.OwnerReference, key client.ObjectKey) error {
	return deny("owner %s %s does not exist: a pod takes the identity of an existing controller only", owner.Kind, key)
}
