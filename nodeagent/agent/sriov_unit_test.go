package agent

import (
	"net"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/sriov"
)

func TestResourcePatch(t *testing.T) {
	have := corev1.ResourceList{
		"cpu":                    resource.MustParse("2"),
		"stickynet.io/sriov-a":   resource.MustParse("4"),
		"stickynet.io/sriov-old": resource.MustParse("2"),
	}
	tests := []struct {
		name string
		want map[corev1.ResourceName]int
		out  string
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(resourcePatch(have, tt.want)); got != tt.out {
				t.Errorf("got  %s\nwant %s", got, tt.out)
			}
		})
	}
}

func TestVFConfig(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	asg := annotations.Assignment{MAC: mac, VLAN: 7, Bandwidth: annotations.Bandwidth{Egress: annotations.Limit{Rate: 1_500_000}}}
	off, on := false, true
	tests := []struct {
		name string
		spec v1alpha1.SriovNetworkSpec
		want sriov.Config
	}{
		{name: "defaults: pool VLAN, spoof check on, trust off, auto", want: sriov.Config{MAC: "02:00:00:00:00:01", VLAN: 7, SpoofChk: true, MaxTxRateMbps: 2, LinkState: sriov.LinkAuto}},
		{
			name: "network settings win", spec: v1alpha1.SriovNetworkSpec{VLAN: 100, SpoofChk: &off, Trust: &on, LinkState: v1alpha1.LinkStateDisable},
			want: sriov.Config{MAC: "02:00:00:00:00:01", VLAN: 100, Trust: true, MaxTxRateMbps: 2, LinkState: sriov.LinkDisable},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := vfConfig(&v1alpha1.SriovNetwork{Spec: tt.spec}, asg); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
