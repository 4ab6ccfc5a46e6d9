package state

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/extender/demand"
)

// SlimNode is an informer transform that keeps of a Node only what the
// State reads (name, labels, VF resources), so that the informer of a large
// cluster stays small. Other objects pass unchanged.
func SlimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
			DeletionTimestamp: n.DeletionTimestamp,
		},
	}
	for name, q := range n.Status.Allocatable {
		if demand.IsSriovResource(name) {
			if out.Status.Allocatable == nil {
				out.Status.Allocatable = corev1.ResourceList{}
			}
			out.Status.Allocatable[name] = q
		}
	}
	return out, nil
}

// SlimPod is an informer transform that keeps of a Pod only what the State
// reads: its identity, node, phase, stickynet annotations and VF requests.
// Other objects pass unchanged.
func SlimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, SchedulerName: p.Spec.SchedulerName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	for k, v := range p.Annotations {
		if strings.HasPrefix(k, "stickynet.io/") {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	slim := func(cs []corev1.Container) []corev1.Container {
		var keep []corev1.Container
		for _, c := range cs {
			s := corev1.Container{Name: c.Name, RestartPolicy: c.RestartPolicy}
			for name, q := range c.Resources.Requests {
				if demand.IsSriovResource(name) {
					if s.Resources.Requests == nil {
						s.Resources.Requests = corev1.ResourceList{}
					}
					s.Resources.Requests[name] = q
				}
			}
			keep = append(keep, s)
		}
		return keep
	}
	out.Spec.Containers = slim(p.Spec.Containers)
	out.Spec.InitContainers = slim(p.Spec.InitContainers)
	return out, nil
}
