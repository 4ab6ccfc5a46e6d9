// Package policy resolves a pod's bandwidth limits: the pod's own annotations
// win; otherwise the highest-priority BandwidthPolicy of its namespace whose
// podSelector matches the pod (ties go to the name that sorts first).
package policy

import (
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
)

// Result is a pod's resolved bandwidth.
type Result struct {
	Bandwidth annotations.Bandwidth
	// Policy names the BandwidthPolicy the limits came from; empty when the pod
	// set its own or no policy matched.
	Policy string
}

// Own reports whether the pod's bandwidth annotations are its own rather than
// filled from a policy by the webhook.
func Own(pod *corev1.Pod) bool {
	_, fromPolicy := pod.Annotations[annotations.BandwidthPolicy]
	return !fromPolicy && annotations.HasBandwidth(pod.Annotations)
}

// Gave reports whether the pod's bandwidth annotations are exactly what the
// named policy of its namespace gives (no kubernetes.io keys, which a policy
// never writes).
func Gave(pod *corev1.Pod, name string, policies []v1alpha1.BandwidthPolicy) bool {
	for i := range policies {
		p := &policies[i]
		if p.Namespace != pod.Namespace || p.Name != name {
			continue
		}
		bw, err := Limits(p)
		if err != nil {
			return false
		}
		want := bw.Annotations()
		for _, k := range annotations.BandwidthKeys {
			got, has := pod.Annotations[k]
			if w, wants := want[k]; has != wants || got != w {
				return false
			}
		}
		return true
	}
	return false
}

// Resolve returns the pod's bandwidth. ownKeys says whether the pod's
// bandwidth annotations are its own (at admission: whether it has any).
func Resolve(pod *corev1.Pod, ownKeys bool, policies []v1alpha1.BandwidthPolicy) (Result, error) {
	if ownKeys {
		bw, err := annotations.ParseBandwidth(pod.Annotations)
		if err == nil {
			err = annotations.CheckBandwidth(pod.Annotations, bw)
		}
		return Result{Bandwidth: bw}, err
	}
	p := Match(pod, policies)
	if p == nil {
		return Result{}, nil
	}
	bw, err := Limits(p)
	return Result{Bandwidth: bw, Policy: p.Name}, err
}

// Match returns the policy that applies to the pod, or nil. A policy whose
// podSelector does not parse (the API server takes one such as an In
// without values) selects no pod: it must not hold up the pods of its
// namespace. SelectorError says what is wrong with it.
func Match(pod *corev1.Pod, policies []v1alpha1.BandwidthPolicy) *v1alpha1.BandwidthPolicy {
	var matching []*v1alpha1.BandwidthPolicy
	for i := range policies {
		p := &policies[i]
		if p.Namespace != pod.Namespace {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil {
			continue
		}
		if sel.Matches(labels.Set(pod.Labels)) {
			matching = append(matching, p)
		}
	}
	if len(matching) == 0 {
		return nil
	}
	sort.Slice(matching, func(i, j int) bool {
		if matching[i].Spec.Priority != matching[j].Spec.Priority {
			return matching[i].Spec.Priority > matching[j].Spec.Priority
		}
		return matching[i].Name < matching[j].Name
	})
	return matching[0]
}

// SelectorError reports a podSelector that does not parse, naming the
// policy and the field; nil for a valid one.
func SelectorError(p *v1alpha1.BandwidthPolicy) error {
	if _, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector); err != nil {
		return fmt.Errorf("BandwidthPolicy %s/%s: spec.podSelector: %w; it selects no pod until fixed", p.Namespace, p.Name, err)
	}
	return nil
}

// Limits converts a policy's spec to bit/s and bits, validating it as the
// annotation parsers do.
func Limits(p *v1alpha1.BandwidthPolicy) (annotations.Bandwidth, error) {
	var bw annotations.Bandwidth
	conv := func(l *v1alpha1.BandwidthLimit, dir string, out *annotations.Limit) error {
		if l == nil {
			return nil
		}
		field := fmt.Sprintf("BandwidthPolicy %s/%s spec.%s", p.Namespace, p.Name, dir)
		r, err := annotations.ParseRate(field+".rate", l.Rate.String())
		if err != nil {
			return err
		}
		out.Rate = r
		burst := ""
		if l.Burst != nil {
			burst = l.Burst.String()
			if out.Burst, err = annotations.ParseBurst(field+".burst", burst); err != nil {
				return err
			}
		}
		return out.Check(dir == "ingress", field+".rate", l.Rate.String(), field+".burst", burst)
	}
	if err := conv(p.Spec.Ingress, "ingress", &bw.Ingress); err != nil {
		return bw, err
	}
	if err := conv(p.Spec.Egress, "egress", &bw.Egress); err != nil {
		return bw, err
	}
	return bw, nil
}
