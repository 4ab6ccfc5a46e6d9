package filter

import (
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/extender/demand"
	"github.com/stickynet/stickynet/extender/state"
)

const fast = corev1.ResourceName("stickynet.io/sriov-fast")

// cluster builds the view the cases filter against:
//
//	n1 rack=1 sriov=yes 2 VFs, 0 used
//	n2 rack=1 sriov=yes 1 VF,  1 used
//	n3 rack=2 sriov=yes 4 VFs, 0 used
//	n4 rack=1           4 VFs (advertised, but outside the network's selector)
//	n5 rack=1 sriov=yes no VF resource
func cluster(t *testing.T) *state.State {
	t.Helper()
	s := state.New(state.Options{})
	for _, n := range []struct {
		name   string
		labels map[string]string
		vfs    int64
	}{
		{"n1", map[string]string{"rack": "1", "sriov": "yes"}, 2},
		{"n2", map[string]string{"rack": "1", "sriov": "yes"}, 1},
		{"n3", map[string]string{"rack": "2", "sriov": "yes"}, 4},
		{"n4", map[string]string{"rack": "1"}, 4},
		{"n5", map[string]string{"rack": "1", "sriov": "yes"}, -1},
	} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels}}
		if n.vfs >= 0 {
			node.Status.Allocatable = corev1.ResourceList{fast: *resource.NewQuantity(n.vfs, resource.DecimalSI)}
		}
		s.SetNode(node)
	}
	s.SetPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "holder", UID: types.UID("holder"), Annotations: map[string]string{"stickynet.io/sriov-network": "fast", "stickynet.io/assigned-pool": "rack1"}},
		Spec:       corev1.PodSpec{NodeName: "n2"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	})
	s.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "rack1"}, Spec: v1alpha1.IPPoolSpec{
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "1"}},
	}})
	s.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "all"}})
	s.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: v1alpha1.IPPoolSpec{
		NodeSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "rack", Operator: "Near"}}},
	}})
	s.SetNetwork(&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{
		PFNames: []string{"ens1f0"}, NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"sriov": "yes"}},
	}})
	s.SetNetwork(&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "any"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f1"}}})
	return s
}

// sriov is the demand of a pod that names network fast and requests vfs
// of its resource (requested) or not.
func sriov(pool string, vfs int64, requested bool) demand.Demand {
	return demand.Demand{Pool: pool, Network: "fast", Resource: fast, VFs: vfs, Requested: requested}
}

func TestFilter(t *testing.T) {
	s := cluster(t)
	all := []string{"n1", "n2", "n3", "n4", "n5"}
	const (
		outsideRack1 = `node(s) outside the nodeSelector of IPPool "rack1"`
		outsideFast  = `node(s) outside the nodeSelector of SriovNetwork "fast"`
		noVFs        = `node(s) advertising no VFs of SriovNetwork "fast" (stickynet.io/sriov-fast)`
		noFreeVF     = `node(s) without a free VF of SriovNetwork "fast" (stickynet.io/sriov-fast)`
	)
	for _, tc := range []struct {
		name   string
		opts   Options
		d      demand.Demand
		nodes  []string
		passed []string
		failed map[string]string // every failure is unresolvable (Result.Failed)
	}{
		{
			name: "pod stickynet did not admit passes everywhere, unknown nodes too",
			d:    demand.Demand{StickyKey: "pod/ns/x"}, nodes: append(slices.Clone(all), "zz"),
			passed: append(slices.Clone(all), "zz"),
		},
		{
			name: "pool selector", d: demand.Demand{Pool: "rack1"}, nodes: all,
			passed: []string{"n1", "n2", "n4", "n5"},
			failed: map[string]string{"n3": outsideRack1},
		},
		{
			name: "pool without selector", d: demand.Demand{Pool: "all"}, nodes: all,
			passed: all,
		},
		{
			name: "missing pool", d: demand.Demand{Pool: "gone"}, nodes: []string{"n1", "n3"},
			failed: map[string]string{
				"n1": `node(s) rejected: IPPool "gone" (stickynet.io/assigned-pool) does not exist`,
				"n3": `node(s) rejected: IPPool "gone" (stickynet.io/assigned-pool) does not exist`,
			},
		},
		{
			name: "invalid pool selector", d: demand.Demand{Pool: "bad"}, nodes: []string{"n1"},
			failed: map[string]string{"n1": `node(s) rejected: IPPool "bad" has an invalid nodeSelector: "Near" is not a valid label selector operator`},
		},
		{
			name: "one VF, not requested", d: sriov("all", 1, false), nodes: all,
			passed: []string{"n1", "n3"},
			failed: map[string]string{"n2": noFreeVF, "n4": outsideFast, "n5": noVFs},
		},
		{
			name: "one VF, requested: the scheduler counts", d: sriov("all", 1, true), nodes: all,
			passed: []string{"n1", "n2", "n3", "n5"},
			failed: map[string]string{"n4": outsideFast},
		},
		{
			name: "one VF, requested, counted anyway", opts: Options{CountRequestedVFs: true}, d: sriov("all", 1, true), nodes: all,
			passed: []string{"n1", "n3"},
			failed: map[string]string{"n2": noFreeVF, "n4": outsideFast, "n5": noVFs},
		},
		{
			name: "three VFs", opts: Options{CountRequestedVFs: true}, d: sriov("", 3, true), nodes: all,
			passed: []string{"n3"},
			failed: map[string]string{
				"n1": `node(s) without 3 free VFs of SriovNetwork "fast" (stickynet.io/sriov-fast)`,
				"n2": `node(s) without 3 free VFs of SriovNetwork "fast" (stickynet.io/sriov-fast)`,
				"n4": outsideFast, "n5": noVFs,
			},
		},
		{
			name: "pool failure takes precedence over the network's", d: sriov("rack1", 1, false), nodes: all,
			passed: []string{"n1"},
			failed: map[string]string{"n2": noFreeVF, "n3": outsideRack1, "n4": outsideFast, "n5": noVFs},
		},
		{
			name: "missing network", d: demand.Demand{Network: "slow", Resource: "stickynet.io/sriov-slow", VFs: 1}, nodes: []string{"n1"},
			failed: map[string]string{"n1": `node(s) rejected: SriovNetwork "slow" (stickynet.io/sriov-network) does not exist`},
		},
		{
			name: "node unknown to the extender, pool with a selector", d: demand.Demand{Pool: "rack1"}, nodes: []string{"n1", "zz"},
			passed: []string{"n1"},
			failed: map[string]string{"zz": "node(s) not yet known to the stickynet extender"},
		},
		{
			// Nothing to look up: it passes (it failed until the Node
			// reached the extender's watch).
			name: "node unknown to the extender, pool without a selector", d: demand.Demand{Pool: "all"}, nodes: []string{"n1", "zz"},
			passed: []string{"n1", "zz"},
		},
		{
			name: "node unknown to the extender, network with a selector", d: sriov("all", 1, true), nodes: []string{"n1", "zz"},
			passed: []string{"n1"},
			failed: map[string]string{"zz": "node(s) not yet known to the stickynet extender"},
		},
		{
			name: "node unknown to the extender, network without a selector, VFs counted by the scheduler",
			d:    demand.Demand{Pool: "all", Network: "any", Resource: "stickynet.io/sriov-any", VFs: 1, Requested: true}, nodes: []string{"zz"},
			passed: []string{"zz"},
		},
		{
			name: "node unknown to the extender, VFs counted by the extender", opts: Options{CountRequestedVFs: true},
			d: demand.Demand{Pool: "all", Network: "any", Resource: "stickynet.io/sriov-any", VFs: 1, Requested: true}, nodes: []string{"zz"},
			failed: map[string]string{"zz": "node(s) not yet known to the stickynet extender"},
		},
		{
			name: "node unknown to the extender, missing pool", d: demand.Demand{Pool: "gone"}, nodes: []string{"zz"},
			failed: map[string]string{"zz": `node(s) rejected: IPPool "gone" (stickynet.io/assigned-pool) does not exist`},
		},
		{name: "no candidates", d: demand.Demand{Pool: "rack1"}, nodes: []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var res *Result
			s.Read(func(r state.Reader) { res = tc.opts.Filter(tc.d, tc.nodes, r) })
			if !slices.Equal(res.Passed, tc.passed) {
				t.Errorf("passed %v, want %v", res.Passed, tc.passed)
			}
			if got := res.Failed(); !maps.Equal(got, nilToEmpty(tc.failed)) {
				t.Errorf("failed %v, want %v", got, tc.failed)
			}
			if n := len(res.Passed) + len(res.Failures); n != len(tc.nodes) {
				t.Errorf("%d nodes in the result, %d asked", n, len(tc.nodes))
			}
		})
	}
}

func TestIntoReusesResult(t *testing.T) {
	s := cluster(t)
	res := &Result{}
	s.Read(func(r state.Reader) {
		Options{}.Into(res, sriov("rack1", 1, false), []string{"n1", "n2", "n3"}, r)
		Options{}.Into(res, demand.Demand{Pool: "all"}, []string{"n4"}, r)
	})
	if !slices.Equal(res.Passed, []string{"n4"}) || len(res.Failures) != 0 {
		t.Errorf("second Into left %+v", res)
	}
	if got := res.Reason(CausePoolSelector); got != `node(s) outside the nodeSelector of IPPool "all"` {
		t.Errorf("pool reason after reuse: %q", got)
	}
	if got := res.Reason(CauseNoFreeVF); got != "" {
		t.Errorf("network reason left from the first call: %q", got)
	}
}

func TestCauses(t *testing.T) {
	for c := CauseUnknownNode; c < numCauses; c++ {
		if c.String() == "unknown" || c.String() == "" {
			t.Errorf("cause %d has no name", c)
		}
	}
}

func nilToEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
