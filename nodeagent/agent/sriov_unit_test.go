package agent

import (
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/podsource"
	"github.com/stickynet/stickynet/nodeagent/sriov"
	"github.com/stickynet/stickynet/nodeagent/sriov/sriovtest"
)

// The wait after each failure doubles from 1 s and stops at the period
// (doubling without a cap overflowed after about 34 failures into waits of
// nothing).
func TestBackoff(t *testing.T) {
	var last time.Duration
	var waits []time.Duration
	for range 100 {
		last = backoff(last, time.Minute)
		waits = append(waits, last)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute}
	if !slices.Equal(waits[:len(want)], want) {
		t.Errorf("first waits %v; want %v", waits[:len(want)], want)
	}
	for i, w := range waits[len(want):] {
		if w != time.Minute {
			t.Fatalf("wait %d: %v; want the period, 1m", len(want)+i+1, w)
		}
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

// A PF that two SriovNetworks list is the first's by name: its VFs are
// offered once, not to each network, and the other network's pods take none.
func TestSharedPFOfferedOnce(t *testing.T) {
	root := t.TempDir()
	if err := sriovtest.MakeTree(root, "ens1f0", []string{"v0", "v1", "v2", "v3"}); err != nil {
		t.Fatal(err)
	}
	if err := sriovtest.MakeTree(root, "ens1f1", []string{"w0", "w1"}); err != nil {
		t.Fatal(err)
	}
	vlan20 := &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "vlan20"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0", "ens1f1"}, VLAN: 20}}
	a := &agent{opts: Options{SysfsRoot: root}, usedVFs: map[string]bool{}, nets: podsource.NewStaticSriovNetworks(
		vlan20,
		&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "vlan10"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}, VLAN: 10}},
	)}
	counts, shared := a.vfCounts(nil)
	if want := map[corev1.ResourceName]int{"stickynet.io/sriov-vlan10": 4, "stickynet.io/sriov-vlan20": 2}; !maps.Equal(counts, want) {
		t.Errorf("counts %v; want %v (ens1f0's 4 VFs once, for vlan10)", counts, want)
	}
	if len(shared) != 1 || !strings.Contains(shared[0], "PF ens1f0 of SriovNetwork vlan20 is SriovNetwork vlan10's") {
		t.Errorf("shared %q; want ens1f0 named as vlan10's", shared)
	}
	only := &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "vlan20"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}}}
	if _, err := a.allocVF(only); err == nil || !strings.Contains(err.Error(), "no free VF of SriovNetwork vlan20") {
		t.Errorf("a VF of vlan10's PF for vlan20: %v; want none", err)
	}
}
