package admission

import (
	"sort"
	"strings"

	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// buildPatch returns the JSON patch from orig to out over the fields the
// handler changes: labels, annotations, the first container's resources and
// the scheduler name. (Diffing whole pods costs more than the rest of
// admission.)
func buildPatch(orig, out *corev1.Pod) []jsonpatch.JsonPatchOperation {
	var ops []jsonpatch.JsonPatchOperation
	ops = append(ops, mapPatch("/metadata/labels", orig.Labels, out.Labels)...)
	ops = append(ops, mapPatch("/metadata/annotations", orig.Annotations, out.Annotations)...)
	if len(orig.Spec.Containers) > 0 && len(out.Spec.Containers) > 0 {
		o, n := orig.Spec.Containers[0].Resources, out.Spec.Containers[0].Resources
		ops = append(ops, mapPatch("/spec/containers/0/resources/requests", quantities(o.Requests), quantities(n.Requests))...)
		ops = append(ops, mapPatch("/spec/containers/0/resources/limits", quantities(o.Limits), quantities(n.Limits))...)
	}
	if orig.Spec.SchedulerName != out.Spec.SchedulerName {
		ops = append(ops, jsonpatch.NewOperation("add", "/spec/schedulerName", out.Spec.SchedulerName))
	}
	return ops
}

func quantities(rl corev1.ResourceList) map[string]string {
	if rl == nil {
		return nil
	}
	m := make(map[string]string, len(rl))
	for k, v := range rl {
		m[string(k)] = v.String()
	}
	return m
}

// mapPatch returns the operations that turn the string map at path from a into b.
func mapPatch(path string, a, b map[string]string) []jsonpatch.JsonPatchOperation {
	if len(a) == 0 {
		if len(b) == 0 {
			return nil
		}
		m := make(map[string]any, len(b))
		for k, v := range b {
			m[k] = v
		}
		return []jsonpatch.JsonPatchOperation{jsonpatch.NewOperation("add", path, m)}
	}
	var ops []jsonpatch.JsonPatchOperation
	for _, k := range sortedKeys(a) {
		if _, ok := b[k]; !ok {
			ops = append(ops, jsonpatch.NewOperation("remove", path+"/"+escape(k), nil))
		}
	}
	for _, k := range sortedKeys(b) {
		if v, ok := a[k]; !ok || v != b[k] {
			ops = append(ops, jsonpatch.NewOperation("add", path+"/"+escape(k), b[k]))
		}
	}
	return ops
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// escape encodes a JSON pointer token (RFC 6901).
func escape(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1") }
