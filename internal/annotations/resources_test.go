package annotations

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestResourcePatch(t *testing.T) {
	have := corev1.ResourceList{
		"cpu":                    resource.MustParse("2"),
		"stickynet.io/sriov-a":   resource.MustParse("4"),
		"stickynet.io/sriov-old": resource.MustParse("2"),
	}
	withNetwork := have.DeepCopy()
	withNetwork["stickynet.io/network"] = resource.MustParse("110")
	tests := []struct {
		name        string
		have        corev1.ResourceList // capacity; default: have
		allocatable corev1.ResourceList // default: as capacity
		want        map[corev1.ResourceName]int
		out         string
	}{
		{
			name: "unchanged and one gone", want: map[corev1.ResourceName]int{"stickynet.io/sriov-a": 4},
			out: `{"status":{"allocatable":{"stickynet.io/sriov-old":null},"capacity":{"stickynet.io/sriov-old":null}}}`,
		},
		{
			name: "changed and new", want: map[corev1.ResourceName]int{"stickynet.io/sriov-a": 3, "stickynet.io/sriov-b": 0, "stickynet.io/sriov-old": 2},
			out: `{"status":{"allocatable":{"stickynet.io/sriov-a":"3","stickynet.io/sriov-b":"0"},"capacity":{"stickynet.io/sriov-a":"3","stickynet.io/sriov-b":"0"}}}`,
		},
		{name: "nothing to do", want: map[corev1.ResourceName]int{"stickynet.io/sriov-a": 4, "stickynet.io/sriov-old": 2}},
		{
			name: "network added", want: map[corev1.ResourceName]int{"stickynet.io/network": 110, "stickynet.io/sriov-a": 4, "stickynet.io/sriov-old": 2},
			out: `{"status":{"allocatable":{"stickynet.io/network":"110"},"capacity":{"stickynet.io/network":"110"}}}`,
		},
		{
			// Taken off allocatable only (by hand): the scheduler and the
			// kubelet read that one.
			name: "allocatable short", have: withNetwork, allocatable: have,
			want: map[corev1.ResourceName]int{"stickynet.io/network": 110, "stickynet.io/sriov-a": 4, "stickynet.io/sriov-old": 2},
			out:  `{"status":{"allocatable":{"stickynet.io/network":"110"},"capacity":{"stickynet.io/network":"110"}}}`,
		},
		{
			name: "all withdrawn", have: withNetwork, want: nil,
			out: `{"status":{"allocatable":{"stickynet.io/network":null,"stickynet.io/sriov-a":null,"stickynet.io/sriov-old":null},"capacity":{"stickynet.io/network":null,"stickynet.io/sriov-a":null,"stickynet.io/sriov-old":null}}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := corev1.NodeStatus{Capacity: have, Allocatable: tt.allocatable}
			if tt.have != nil {
				st.Capacity = tt.have
			}
			if st.Allocatable == nil {
				st.Allocatable = st.Capacity
			}
			if got := string(ResourcePatch(st, tt.want)); got != tt.out {
				t.Errorf("got  %s\nwant %s", got, tt.out)
			}
		})
	}
}
