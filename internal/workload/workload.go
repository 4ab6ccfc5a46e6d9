// Package workload holds the arithmetic of Kubernetes workloads that the
// admission handler, the release controller and the node agent use: how
// many addresses a Deployment's or ReplicaSet's set may hold, whether a pod
// has ended, and which nodes a DaemonSet selects.
package workload

import (
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// DefaultGrace is how long after its last change an address bound to a pod
// is left alone before it is taken from a pod that cannot be read: the pod
// may still be in its admission chain, not yet stored (--release-grace).
const DefaultGrace = 30 * time.Second

// Terminated reports whether the pod has ended (Succeeded or Failed): its
// sandbox no longer uses its address.
func Terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// Replicas returns the replica count of a spec field (nil means 1).
func Replicas(r *int32) int32 {
	if r == nil {
		return 1
	}
	return *r
}

// Surge returns how many pods above replicas a Deployment's rollout may create
// (maxSurge, default 25 % rounded up; 0 for the Recreate strategy).
func Surge(d *appsv1.Deployment) int32 {
	if d.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		return 0
	}
	ms := intstr.FromString("25%")
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxSurge != nil {
		ms = *ru.MaxSurge
	}
	v, err := intstr.GetScaledValueFromIntOrPercent(&ms, int(Replicas(d.Spec.Replicas)), true)
	if err != nil || v < 0 {
		return 0
	}
	return int32(v)
}

// DeploymentCap is the most addresses a Deployment's set holds: replicas + maxSurge.
func DeploymentCap(d *appsv1.Deployment) int32 { return Replicas(d.Spec.Replicas) + Surge(d) }

// Selects reports whether the DaemonSet's pod template selects the node by
// its nodeSelector and required node affinity, as the DaemonSet controller
// decides where a daemon runs (taints aside: they come and go with
// maintenance). A template whose affinity does not parse selects it.
func Selects(ds *appsv1.DaemonSet, node *corev1.Node) bool { return SelectsNodes(ds)(node) }

// SelectsNodes is Selects for many nodes: the template's affinity is read once.
func SelectsNodes(ds *appsv1.DaemonSet) func(*corev1.Node) bool {
	aff := nodeaffinity.GetRequiredNodeAffinity(&corev1.Pod{Spec: ds.Spec.Template.Spec})
	return func(node *corev1.Node) bool {
		ok, err := aff.Match(node)
		return ok || err != nil
	}
}

// ParseDaemonSet reads "namespace/name" of the node agents' DaemonSet (the
// agent's --daemonset, the webhook's --node-agent-daemonset).
func ParseDaemonSet(s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("%q: expected namespace/name of the DaemonSet that runs the node agents", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}
