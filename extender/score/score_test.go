package score

import (
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/stickynet/stickynet/extender/demand"
	"github.com/stickynet/stickynet/extender/state"
)

const fast = corev1.ResourceName("stickynet.io/sriov-fast")

// cluster: n1..n3 have 8 VFs of which 0, 4 and 7 are used; n4 has none.
// statefulset/ns/web/0 last ran on n3.
func cluster(t *testing.T) *state.State {
	t.Helper()
	s := state.New(state.Options{})
	for i, used := range []int64{0, 4, 7, -1} {
		name := fmt.Sprintf("n%d", i+1)
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if used >= 0 {
			n.Status.Allocatable = corev1.ResourceList{fast: resource.MustParse("8")}
		}
		s.SetNode(n)
		if used > 0 {
			s.SetPod(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "h" + name, UID: types.UID("h" + name)},
				Spec: corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{fast: *resource.NewQuantity(used, resource.DecimalSI)},
				}}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning},
			})
		}
	}
	s.SetPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", UID: "w0", CreationTimestamp: metav1.NewTime(time.Now()), Annotations: map[string]string{"stickynet.io/identity": "statefulset/ns/web/0", "stickynet.io/assigned-pool": "p"}},
		Spec:       corev1.PodSpec{NodeName: "n3"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	})
	s.DeletePod("w0")
	return s
}

func TestPrioritize(t *testing.T) {
	s := cluster(t)
	all := []string{"n1", "n2", "n3", "n4"}
	vf := demand.Demand{Pool: "p", Network: "fast", Resource: fast, VFs: 1}
	sticky := func(d demand.Demand) demand.Demand { d.StickyKey = "statefulset/ns/web/0"; return d }
	for _, tc := range []struct {
		name  string
		opts  Options
		d     demand.Demand
		nodes []string
		want  string
	}{
		{name: "nothing to prefer", opts: Options{PreferLastNode: true, Placement: Spread}, d: demand.Demand{Pool: "p"}, nodes: all, want: "[]"},
		{name: "last node", opts: Options{PreferLastNode: true, Placement: Spread}, d: sticky(demand.Demand{Pool: "p"}), nodes: all, want: "[n3:10]"},
		{name: "last node not a candidate", opts: Options{PreferLastNode: true, Placement: Spread}, d: sticky(demand.Demand{}), nodes: []string{"n1", "n2"}, want: "[]"},
		{name: "last node preference off", opts: Options{Placement: Spread}, d: sticky(demand.Demand{}), nodes: all, want: "[]"},
		{name: "unknown identity", opts: Options{PreferLastNode: true}, d: demand.Demand{StickyKey: "pod/ns/new"}, nodes: all, want: "[]"},
		// Spread: 9 x free share after placing one VF: n1 7/8 -> 7, n2 3/8 -> 3, n3 0, n4 no VFs 0.
		{name: "spread", opts: Options{Placement: Spread}, d: vf, nodes: all, want: "[n1:7 n2:3]"},
		// Pack: 9 x used share after placing: n1 1/8 -> 1, n2 5/8 -> 5, n3 8/8 -> 9.
		{name: "pack", opts: Options{Placement: Pack}, d: vf, nodes: all, want: "[n1:1 n2:5 n3:9]"},
		{name: "spread with the last node first", opts: Options{PreferLastNode: true, Placement: Spread}, d: sticky(vf), nodes: all, want: "[n1:7 n2:3 n3:10]"},
		{name: "shifted so the lowest candidate scores 0", opts: Options{Placement: Spread}, d: vf, nodes: []string{"n1", "n2"}, want: "[n1:4]"},
		// The last node keeps its 10 when the others are shifted (before,
		// 10 - 3: it led n1 by 3, which the scheduler's scores outweighed).
		{name: "the last node is not shifted", opts: Options{PreferLastNode: true, Placement: Spread}, d: sticky(vf), nodes: []string{"n1", "n2", "n3"}, want: "[n1:4 n3:10]"},
		{name: "equal candidates score 0", opts: Options{Placement: Pack}, d: vf, nodes: []string{"n3"}, want: "[]"},
		{name: "more VFs than free", opts: Options{Placement: Spread}, d: demand.Demand{Network: "fast", Resource: fast, VFs: 6}, nodes: all, want: "[n1:2]"},
		{name: "placement none keeps only the last node", opts: Options{PreferLastNode: true, Placement: None}, d: sticky(vf), nodes: all, want: "[n3:10]"},
		{name: "unknown nodes score 0", opts: Options{Placement: Pack}, d: vf, nodes: []string{"zz", "n2"}, want: "[n2:5]"},
		{name: "network nobody advertises", opts: Options{Placement: Spread}, d: demand.Demand{Network: "slow", Resource: "stickynet.io/sriov-slow", VFs: 1}, nodes: all, want: "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got extenderv1.HostPriorityList
			s.Read(func(r state.Reader) { got = tc.opts.Prioritize(tc.d, tc.nodes, r) })
			if got == nil {
				t.Fatal("Prioritize returned nil; the scheduler wants a list")
			}
			var parts []string
			for _, hp := range got {
				if hp.Score <= 0 || hp.Score > extenderv1.MaxExtenderPriority {
					t.Errorf("score %d of %s outside 1..%d", hp.Score, hp.Host, extenderv1.MaxExtenderPriority)
				}
				if !slices.Contains(tc.nodes, hp.Host) {
					t.Errorf("scored %s, not a candidate", hp.Host)
				}
				parts = append(parts, fmt.Sprintf("%s:%d", hp.Host, hp.Score))
			}
			slices.Sort(parts)
			if parts == nil {
				parts = []string{}
			}
			if s := fmt.Sprint(parts); s != tc.want {
				t.Errorf("scores %s, want %s", s, tc.want)
			}
		})
	}
}

func TestParsePlacement(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Placement
		wantErr bool
	}{
		{"spread", Spread, false},
		{"pack", Pack, false},
		{"none", None, false},
		{"", "", true},
		{"Spread", "", true},
		{"binpack", "", true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePlacement(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("ParsePlacement(%q) = %q, %v", tc.in, got, err)
			}
		})
	}
}

// Scores stay within 0..top-1 whatever a node advertises: 9·free overflowed
// int64 for an allocatable of 1.5e18 VFs. A node the pod's VFs do not fit
// scores 0 in both placements.
func TestVFScoreBounds(t *testing.T) {
	const huge = 1_500_000_000_000_000_000
	for _, c := range []struct {
		p                 Placement
		alloc, free, want int64
	}{
		{Spread, 8, 8, 9},
		{Spread, 8, 4, 4},
		{Spread, 8, 0, 0},
		{Spread, 3, 7, 9},
		{Spread, 1 << 62, -5, 0},
		{Spread, huge, huge, 9},
		{Spread, huge, huge / 2, 4},
		{Spread, huge, 1, 0},
		{Pack, 8, 8, 0},
		{Pack, 8, 0, 9},
		{Pack, 8, 2, 6},
		{Pack, huge, 0, 9},
		{Pack, huge, huge / 2, 4},
		{Pack, 8, -1, 0}, // the pod's VF does not fit: 9 before
		{Pack, 8, -8, 0},
	} {
		if got := vfScore(c.p, c.alloc, c.free); got != c.want {
			t.Errorf("vfScore(%s, %d, %d) = %d; want %d", c.p, c.alloc, c.free, got, c.want)
		}
	}
}

// An answer lists at most MaxListed nodes: the best first (the identity's
// last node, then the nodes with the most free VFs), and of the nodes that
// tie at the cut a random sample, a different one from answer to answer that
// in a few answers offers every tied node. Nodes below the cut are left out.
func TestMaxListed(t *testing.T) {
	s := state.New(state.Options{})
	var all []string
	for i := range 280 {
		name := fmt.Sprintf("m%03d", i)
		all = append(all, name)
		s.SetNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{fast: resource.MustParse("8")}}})
		if i < 30 { // m000..m029 run one VF pod each: they score below the others
			s.SetPod(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "h" + name, UID: types.UID("h" + name)},
				Spec: corev1.PodSpec{NodeName: name, Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{fast: resource.MustParse("1")},
				}}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning},
			})
		}
	}
	s.SetPod(&corev1.Pod{ // the identity last ran on m005, a lower node
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", UID: "w0", CreationTimestamp: metav1.NewTime(time.Now()), Annotations: map[string]string{"stickynet.io/identity": "statefulset/ns/web/0", "stickynet.io/assigned-pool": "p"}},
		Spec:       corev1.PodSpec{NodeName: "m005"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	})
	s.DeletePod("w0")
	d := demand.Demand{Pool: "p", Network: "fast", Resource: fast, VFs: 1, StickyKey: "statefulset/ns/web/0"}
	answer := func(o Options) extenderv1.HostPriorityList {
		var got extenderv1.HostPriorityList
		s.Read(func(r state.Reader) { got = o.Prioritize(d, all, r) })
		return got
	}
	if got := answer(Options{PreferLastNode: true, Placement: Spread}); len(got) != 251 {
		t.Errorf("without a bound: %d nodes listed; want 251 (m005 and the 250 with every VF free)", len(got))
	}
	offered := map[string]int{}
	distinct := map[string]bool{}
	for range 50 {
		got := answer(Options{PreferLastNode: true, Placement: Spread, MaxListed: 100})
		if len(got) != 100 {
			t.Fatalf("%d nodes listed; want MaxListed, 100", len(got))
		}
		var names []string
		for _, hp := range got {
			names = append(names, hp.Host)
			switch {
			case hp.Host == "m005":
				if hp.Score != 10 { // not shifted with the others (it was 10 - 6)
					t.Errorf("the last node m005 scores %d; want 10", hp.Score)
				}
			case hp.Host < "m030":
				t.Errorf("%s, below the cut, is listed (score %d)", hp.Host, hp.Score)
			case hp.Score != 1:
				t.Errorf("%s scores %d; want 1", hp.Host, hp.Score)
			}
			offered[hp.Host]++
		}
		if !slices.Contains(names, "m005") {
			t.Fatal("the identity's last node m005 is not listed")
		}
		distinct[fmt.Sprint(names)] = true
	}
	if len(distinct) < 45 {
		t.Errorf("50 answers offered only %d different lists; want a fresh sample each time", len(distinct))
	}
	for _, n := range all[30:] {
		if offered[n] == 0 {
			t.Errorf("%s (every VF free) was never offered in 50 answers of 99 of the 250 such nodes", n)
		}
	}
}
