// Package demand owns what a pod asks of a node, as the stickynet scheduler
// extender reads it from the pod's admission output (DESIGN.md, "Contract:
// pod annotations"): the IPPool its address came from, the SriovNetwork whose
// VF it needs and how many, and the key under which the node it last ran on
// is remembered.
package demand

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/stickynet/stickynet/internal/annotations"
)

// Demand is what a pod needs from a node.
type Demand struct {
	// Pool is the IPPool the webhook assigned the pod's address from
	// (stickynet.io/assigned-pool); empty for a pod stickynet did not admit.
	Pool string
	// Network is the SriovNetwork whose VF the pod gets
	// (stickynet.io/sriov-network); empty for an OVS-port pod.
	Network string
	// Resource is the extended resource of Network's VFs,
	// stickynet.io/sriov-<Network>.
	Resource corev1.ResourceName
	// VFs is how many VFs of Network the pod takes on its node: its request
	// of Resource, or 1 when it names the network without requesting it.
	VFs int64
	// Requested is true when VFs is the pod's request of Resource, which
	// the scheduler counts against the node's allocatable itself.
	Requested bool
	// StickyKey names what the pod's address is sticky to: its identity
	// (stickynet.io/identity), followed by its address for identities whose
	// pods share a set of addresses (Deployment, ReplicaSet). Empty when the
	// pod has no identity.
	StickyKey string
}

// Placed reports whether the extender has anything to check for the pod on
// a node. A pod that is not placed passes every node.
func (d Demand) Placed() bool { return d.Pool != "" || d.Network != "" }

// Admitted reports whether the webhook admitted a pod with these
// annotations: it writes stickynet.io/assigned-pool on every pod it serves.
// A pod it did not serve (a host-network pod, one of a namespace not opted
// in) may still carry its inputs, stickynet.io/sriov-network or a copied
// identity: they ask for nothing.
func Admitted(ann map[string]string) bool { return ann[annotations.AssignedPool] != "" }

// Of returns the demand of pod; none for a pod the webhook did not admit.
func Of(pod *corev1.Pod) Demand {
	ann := pod.Annotations
	if !Admitted(ann) {
		return Demand{}
	}
	d := Demand{
		Pool:      ann[annotations.AssignedPool],
		Network:   ann[annotations.SriovNetwork],
		StickyKey: StickyKey(ann),
	}
	if d.Network != "" {
		d.Resource = corev1.ResourceName(annotations.SriovResourcePrefix + d.Network)
		req := Requests(pod)[d.Resource]
		d.VFs, d.Requested = max(req, 1), req > 0
	}
	return d
}

// StickyKey returns the key under which the node a pod ran on is
// remembered, from its annotations; see Demand.StickyKey. None for a pod
// the webhook did not admit.
func StickyKey(ann map[string]string) string {
	id := ann[annotations.Identity]
	if id == "" || !Admitted(ann) {
		return ""
	}
	if parsed, err := annotations.ParseIdentity(id); err == nil && parsed.Shared() {
		ip, _, _ := strings.Cut(ann[annotations.AssignedIP], ",")
		if ip == "" {
			// Without its address a pod of a shared identity says nothing
			// about where that address lives.
			return ""
		}
		return id + "@" + ip
	}
	return id
}

// IsSriovResource reports whether name is the VF resource of a SriovNetwork.
func IsSriovResource(name corev1.ResourceName) bool {
	return strings.HasPrefix(string(name), annotations.SriovResourcePrefix) &&
		len(name) > len(annotations.SriovResourcePrefix)
}

// Requests returns the pod's effective requests of SR-IOV VF resources, as
// the scheduler counts them: the sum over its containers and sidecars
// (restartable init containers), or, if more, what an init container needs
// while it runs (its request plus the sidecars started before it). Nil when
// it requests none.
func Requests(pod *corev1.Pod) map[corev1.ResourceName]int64 {
	var out map[corev1.ResourceName]int64
	set := func(name corev1.ResourceName, v int64) {
		if out == nil {
			out = map[corev1.ResourceName]int64{}
		}
		out[name] = v
	}
	for i := range pod.Spec.Containers {
		for name, q := range pod.Spec.Containers[i].Resources.Requests {
			if IsSriovResource(name) {
				set(name, out[name]+q.Value())
			}
		}
	}
	var sidecars, initPeak map[corev1.ResourceName]int64
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		restartable := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		for name, q := range c.Resources.Requests {
			if !IsSriovResource(name) {
				continue
			}
			if restartable {
				if sidecars == nil {
					sidecars = map[corev1.ResourceName]int64{}
				}
				sidecars[name] += q.Value()
				continue
			}
			if v := q.Value() + sidecars[name]; v > initPeak[name] {
				if initPeak == nil {
					initPeak = map[corev1.ResourceName]int64{}
				}
				initPeak[name] = v
			}
		}
	}
	for name, v := range sidecars {
		set(name, out[name]+v)
	}
	for name, v := range initPeak {
		if v > out[name] {
			set(name, v)
		}
	}
	return out
}

// Usage returns the VFs a pod holds on its node, per resource: its requests,
// plus, if the webhook admitted it, one VF of the network it names if it
// does not request that network's resource. Nil when it holds none.
func Usage(pod *corev1.Pod) map[corev1.ResourceName]int64 {
	use := Requests(pod)
	if nw := pod.Annotations[annotations.SriovNetwork]; nw != "" && Admitted(pod.Annotations) {
		res := corev1.ResourceName(annotations.SriovResourcePrefix + nw)
		if use[res] == 0 {
			if use == nil {
				use = map[corev1.ResourceName]int64{}
			}
			use[res] = 1
		}
	}
	return use
}
