package annotations

import (
	"encoding/json"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// OwnResource reports whether name is one of the extended resources that
// stickynet's node agents keep on their Nodes: stickynet's network
// (NetworkResource) and the SR-IOV networks' VFs (SriovResourcePrefix).
func OwnResource(name corev1.ResourceName) bool {
	return name == NetworkResource || strings.HasPrefix(string(name), SriovResourcePrefix)
}

// HasOwnResource reports whether a Node's status lists any of them.
func HasOwnResource(status corev1.NodeStatus) bool {
	for _, have := range []corev1.ResourceList{status.Capacity, status.Allocatable} {
		for name := range have {
			if OwnResource(name) {
				return true
			}
		}
	}
	return false
}

// ResourcePatch is the merge patch of a Node's status that makes its own
// resources (OwnResource) in capacity and allocatable both equal want (nil
// when they already are); a nil want removes them all. The scheduler and
// the kubelet read allocatable, so it counts as much as capacity.
func ResourcePatch(status corev1.NodeStatus, want map[corev1.ResourceName]int) []byte {
	return ResourcePatchAt(status, want, "")
}

// ResourcePatchAt is ResourcePatch that applies only to the Node at
// resourceVersion (a conflict otherwise); "": any.
func ResourcePatchAt(status corev1.NodeStatus, want map[corev1.ResourceName]int, resourceVersion string) []byte {
	set := map[string]any{}
	for _, have := range []corev1.ResourceList{status.Capacity, status.Allocatable} {
		for name := range have {
			if _, wanted := want[name]; OwnResource(name) && !wanted {
				set[string(name)] = nil
			}
		}
	}
	for name, n := range want {
		c, cok := status.Capacity[name]
		a, aok := status.Allocatable[name]
		if !cok || !aok || c.Value() != int64(n) || a.Value() != int64(n) {
			set[string(name)] = strconv.Itoa(n)
		}
	}
	if len(set) == 0 {
		return nil
	}
	patch := map[string]any{"status": map[string]any{"capacity": set, "allocatable": set}}
	if resourceVersion != "" {
		patch["metadata"] = map[string]any{"resourceVersion": resourceVersion}
	}
	b, _ := json.Marshal(patch)
	return b
}
