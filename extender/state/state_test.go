package state

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickynet/stickynet/api/v1alpha1"
)

const fast = corev1.ResourceName("stickynet.io/sriov-fast")

func node(name string, labels map[string]string, vfs int64) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	n.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8")}
	if vfs >= 0 {
		n.Status.Allocatable[fast] = *resource.NewQuantity(vfs, resource.DecimalSI)
	}
	return n
}

func pool(name string, sel *metav1.LabelSelector) *v1alpha1.IPPool {
	return &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{NodeSelector: sel}}
}

func network(name string, sel *metav1.LabelSelector) *v1alpha1.SriovNetwork {
	return &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.SriovNetworkSpec{NodeSelector: sel, PFNames: []string{"ens1f0"}}}
}

func labelSel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// vfPod is a pod bound to nodeName holding n VFs of fast (by request).
func vfPod(uid, nodeName string, n int64) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: uid, Namespace: "ns", UID: types.UID(uid), Annotations: map[string]string{"stickynet.io/sriov-network": "fast", "stickynet.io/assigned-pool": "p"}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{
			Name: "c", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{fast: *resource.NewQuantity(n, resource.DecimalSI)}},
		}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func stickyPod(uid, identity, nodeName string, created time.Time) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: uid, Namespace: "ns", UID: types.UID(uid), CreationTimestamp: metav1.NewTime(created),
			Annotations: map[string]string{"stickynet.io/identity": identity, "stickynet.io/assigned-pool": "p"},
		},
		Spec:   corev1.PodSpec{NodeName: nodeName},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

// selects returns, for each node name, whether sel reaches it.
func selects(s *State, sel func(Reader) *Selection, names ...string) string {
	out := ""
	s.Read(func(r Reader) {
		for _, n := range names {
			node := r.Node(n)
			switch {
			case node == nil:
				out += "?"
			case sel(r) == nil:
				out += "-"
			case sel(r).Selects(node):
				out += "1"
			default:
				out += "0"
			}
		}
	})
	return out
}

func TestSelections(t *testing.T) {
	s := New(Options{})
	s.SetNode(node("a", map[string]string{"rack": "1"}, 0))
	s.SetNode(node("b", map[string]string{"rack": "2"}, 0))
	blue := func(r Reader) *Selection { return r.Pool("blue") }
	green := func(r Reader) *Selection { return r.Pool("green") }
	fastNet := func(r Reader) *Selection { return r.Network("fast") }

	steps := []struct {
		name             string
		do               func()
		blue, green, net string // over nodes a, b, c
	}{
		{"nothing yet", func() {}, "--?", "--?", "--?"},
		{"pool on rack 1", func() { s.SetPool(pool("blue", labelSel("rack", "1"))) }, "10?", "--?", "--?"},
		{"pool without selector reaches all", func() { s.SetPool(pool("green", nil)) }, "10?", "11?", "--?"},
		{"new node matches existing selectors", func() { s.SetNode(node("c", map[string]string{"rack": "1"}, 0)) }, "101", "111", "---"},
		{"network with expression", func() {
			s.SetNetwork(network("fast", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "rack", Operator: metav1.LabelSelectorOpIn, Values: []string{"2"}}}}))
		}, "101", "111", "010"},
		{"relabelled node is re-evaluated", func() { s.SetNode(node("a", map[string]string{"rack": "2"}, 0)) }, "001", "111", "110"},
		{"pool selector changes", func() { s.SetPool(pool("blue", labelSel("rack", "2"))) }, "110", "111", "110"},
		{"deleted pool frees its slot; a new selector reuses it", func() {
			s.DeletePool("blue")
			s.SetPool(pool("green", labelSel("rack", "1")))
		}, "---", "001", "110"},
		{"empty selector reaches all", func() { s.SetPool(pool("green", &metav1.LabelSelector{})) }, "---", "111", "110"},
		{"deleted node is unknown", func() { s.DeleteNode("b") }, "-?-", "1?1", "1?0"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			for _, c := range []struct {
				what string
				sel  func(Reader) *Selection
				want string
			}{{"blue", blue, st.blue}, {"green", green, st.green}, {"network fast", fastNet, st.net}} {
				if got := selects(s, c.sel, "a", "b", "c"); got != c.want {
					t.Errorf("%s over a,b,c = %q, want %q", c.what, got, c.want)
				}
			}
		})
	}
}

func TestInvalidSelector(t *testing.T) {
	s := New(Options{})
	s.SetNode(node("a", map[string]string{"rack": "1"}, 0))
	s.SetPool(pool("bad", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "rack", Operator: "Near"}}}))
	s.Read(func(r Reader) {
		p := r.Pool("bad")
		if p.Err() == nil {
			t.Fatal("invalid selector: Err() = nil")
		}
		if p.Selects(r.Node("a")) {
			t.Error("invalid selector selects a node")
		}
	})
}

func vfsOf(s *State, name string) (alloc, used int64) {
	s.Read(func(r Reader) {
		if n := r.Node(name); n != nil {
			alloc, used = r.VFs(n, r.Resource(fast))
		} else {
			alloc, used = -1, -1
		}
	})
	return alloc, used
}

func TestVFAccounting(t *testing.T) {
	s := New(Options{})
	steps := []struct {
		name        string
		do          func()
		node        string
		alloc, used int64
	}{
		{"pod seen before its node", func() { s.SetPod(vfPod("p1", "a", 2)) }, "a", -1, -1},
		{"node appears with its VFs", func() { s.SetNode(node("a", nil, 4)) }, "a", 4, 2},
		{"second pod", func() { s.SetPod(vfPod("p2", "a", 1)) }, "a", 4, 3},
		{"update of the same pod is not counted twice", func() { s.SetPod(vfPod("p2", "a", 1)) }, "a", 4, 3},
		{"pending pod holds nothing", func() { s.SetPod(vfPod("p3", "", 1)) }, "a", 4, 3},
		{"finished pod frees its VFs", func() {
			p := vfPod("p1", "a", 2)
			p.Status.Phase = corev1.PodSucceeded
			s.SetPod(p)
		}, "a", 4, 1},
		{"node advertises fewer VFs", func() { s.SetNode(node("a", nil, 1)) }, "a", 1, 1},
		{"node stops advertising", func() { s.SetNode(node("a", nil, -1)) }, "a", 0, 1},
		{"deleted pod frees its VFs", func() { s.DeletePod("p2") }, "a", 0, 0},
		{"deleting an unknown pod is harmless", func() { s.DeletePod("nope") }, "a", 0, 0},
		{"node without resource", func() { s.SetNode(node("b", nil, -1)) }, "b", 0, 0},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			if alloc, used := vfsOf(s, st.node); alloc != st.alloc || used != st.used {
				t.Errorf("VFs of %s = %d allocatable, %d used; want %d, %d", st.node, alloc, used, st.alloc, st.used)
			}
		})
	}
	t.Run("records of gone nodes are dropped once free", func(t *testing.T) {
		s.SetPod(vfPod("p4", "c", 1)) // node c never exists
		if got := len(s.nodes); got != 3 {
			t.Fatalf("%d node records, want 3 (a, b and c of pod p4)", got)
		}
		s.DeletePod("p4")
		s.DeleteNode("b")
		if _, ok := s.nodes["c"]; ok {
			t.Error("record of node c kept after its last pod left")
		}
		if _, ok := s.nodes["b"]; ok {
			t.Error("record of deleted node b kept")
		}
		// p1 finished and has no identity, p2 and p4 are deleted, p3 is pending.
		if c := s.Counts(); c.Nodes != 1 || c.Pods != 0 {
			t.Errorf("Counts = %+v, want 1 node (a) and no pod", c)
		}
	})
}

func TestLastNode(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := New(Options{LastNodeTTL: time.Hour, Now: func() time.Time { return now }})
	id := "statefulset/ns/web/0"
	last := func() string {
		var n string
		s.Read(func(r Reader) {
			if got, ok := r.LastNode(id); ok {
				n = got
			} else {
				n = "-"
			}
		})
		return n
	}
	t0 := now
	steps := []struct {
		name string
		do   func()
		want string
	}{
		{"unknown identity", func() {}, "-"},
		{"pending pod does not count", func() { s.SetPod(stickyPod("u1", id, "", t0)) }, "-"},
		{"bound pod", func() { s.SetPod(stickyPod("u1", id, "a", t0)) }, "a"},
		{"deleted pod is remembered", func() { s.DeletePod("u1") }, "a"},
		{"new pod elsewhere", func() { s.SetPod(stickyPod("u2", id, "b", t0.Add(time.Minute))) }, "b"},
		{"an older pod still running does not take over", func() { s.SetPod(stickyPod("u1", id, "a", t0)) }, "b"},
		{"the older pod's deletion changes nothing", func() { s.DeletePod("u1") }, "b"},
		{"finished pod is remembered", func() {
			p := stickyPod("u2", id, "b", t0.Add(time.Minute))
			p.Status.Phase = corev1.PodFailed
			s.SetPod(p)
		}, "b"},
		{"within the TTL", func() { now = now.Add(59 * time.Minute) }, "b"},
		{"past the TTL", func() { now = now.Add(2 * time.Minute) }, "-"},
		{"prune forgets it", func() {
			s.Prune()
			if c := s.Counts(); c.Identities != 0 {
				t.Errorf("Counts().Identities = %d after Prune, want 0", c.Identities)
			}
		}, "-"},
		{"running pods never expire", func() {
			s.SetPod(stickyPod("u3", id, "c", now))
			now = now.Add(10 * time.Hour)
			s.Prune()
		}, "c"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			if got := last(); got != st.want {
				t.Errorf("LastNode = %s, want %s", got, st.want)
			}
		})
	}
}

// A pod the extender first sees finished (it started after the pod
// stopped) still gives its node to its identity's next pod; a newer pod
// that runs elsewhere takes over, and the finished one seen again does not
// take it back. Before, only a pod first seen running was remembered.
func TestLastNodeOfPodFirstSeenFinished(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := New(Options{LastNodeTTL: time.Hour, Now: func() time.Time { return now }})
	id := "statefulset/ns/web/0"
	last := func() string {
		n := "-"
		s.Read(func(r Reader) {
			if got, ok := r.LastNode(id); ok {
				n = got
			}
		})
		return n
	}
	failed := stickyPod("u1", id, "a", now.Add(-time.Hour))
	failed.Status.Phase = corev1.PodFailed
	s.SetPod(failed)
	if got := last(); got != "a" {
		t.Errorf("LastNode after a pod first seen failed on a = %s, want a", got)
	}
	now = now.Add(59 * time.Minute) // the TTL counts from when it was seen
	if got := last(); got != "a" {
		t.Errorf("LastNode within the TTL of the failed pod = %s, want a", got)
	}
	s.SetPod(stickyPod("u2", id, "b", now))
	s.SetPod(failed)
	if got := last(); got != "b" {
		t.Errorf("LastNode with a newer pod running on b, the failed one seen again = %s, want b", got)
	}
}

func TestSlimTransforms(t *testing.T) {
	n := node("a", map[string]string{"rack": "1"}, 4)
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"big"}}}
	out, err := SlimNode(n)
	if err != nil {
		t.Fatal(err)
	}
	sn := out.(*corev1.Node)
	if sn.Name != "a" || sn.Labels["rack"] != "1" || len(sn.Status.Images) != 0 || len(sn.Status.Allocatable) != 1 {
		t.Errorf("SlimNode = %+v", sn)
	}
	if q := sn.Status.Allocatable[fast]; q.Value() != 4 {
		t.Errorf("SlimNode kept %v of %s, want 4", q.Value(), fast)
	}

	p := vfPod("p", "a", 2)
	p.Annotations["other.io/x"] = "y"
	p.Spec.Containers[0].Image = "busybox"
	p.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("1")
	out, err = SlimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	sp := out.(*corev1.Pod)
	if sp.UID != "p" || sp.Spec.NodeName != "a" || sp.Status.Phase != corev1.PodRunning || len(sp.Annotations) != 2 ||
		sp.Spec.Containers[0].Image != "" || len(sp.Spec.Containers[0].Resources.Requests) != 1 {
		t.Errorf("SlimPod = %+v", sp)
	}
	// The State reads the same from the slim pod as from the full one.
	full, slim := New(Options{}), New(Options{})
	full.SetNode(n)
	slim.SetNode(sn)
	full.SetPod(p)
	slim.SetPod(sp)
	fa, fu := vfsOf(full, "a")
	if sa, su := vfsOf(slim, "a"); sa != fa || su != fu || fu != 2 {
		t.Errorf("VFs from slim objects %d/%d, from full ones %d/%d; want 4/2 both", sa, su, fa, fu)
	}
	if other, _ := SlimPod("not a pod"); other != "not a pod" {
		t.Error("SlimPod changed an object that is not a pod")
	}
}

// TestManySelectorsAndResources covers selector slots past the 64 held in
// the node itself and VF resources past the two held inline.
func TestManySelectorsAndResources(t *testing.T) {
	s := New(Options{})
	s.SetNode(node("a", map[string]string{"k": "a"}, -1))
	const pools = 70
	for i := range pools {
		want := "a"
		if i%2 == 1 {
			want = "b"
		}
		s.SetPool(pool(fmt.Sprintf("p%d", i), labelSel("k", want)))
	}
	check := func(when string, even bool) {
		t.Helper()
		s.Read(func(r Reader) {
			for i := range pools {
				want := (i%2 == 0) == even
				if got := r.Pool(fmt.Sprintf("p%d", i)).Selects(r.Node("a")); got != want {
					t.Errorf("%s: pool p%d selects a = %v, want %v", when, i, got, want)
				}
			}
		})
	}
	check("labels k=a", true)
	s.SetNode(node("a", map[string]string{"k": "b"}, -1))
	check("relabelled k=b", false)

	n := node("a", map[string]string{"k": "b"}, -1)
	for i := range 4 {
		n.Status.Allocatable[corev1.ResourceName(fmt.Sprintf("stickynet.io/sriov-n%d", i))] = *resource.NewQuantity(int64(10+i), resource.DecimalSI)
	}
	s.SetNode(n)
	for i := range 4 {
		p := vfPod(fmt.Sprintf("u%d", i), "a", 0)
		p.Annotations["stickynet.io/sriov-network"] = fmt.Sprintf("n%d", i)
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceName(fmt.Sprintf("stickynet.io/sriov-n%d", i)): *resource.NewQuantity(int64(i+1), resource.DecimalSI)}
		s.SetPod(p)
	}
	s.Read(func(r Reader) {
		for i := range 4 {
			alloc, used := r.VFs(r.Node("a"), r.Resource(corev1.ResourceName(fmt.Sprintf("stickynet.io/sriov-n%d", i))))
			if alloc != int64(10+i) || used != int64(i+1) {
				t.Errorf("resource n%d: %d allocatable, %d used; want %d, %d", i, alloc, used, 10+i, i+1)
			}
		}
		if alloc, used := r.VFs(r.Node("a"), NoResource); alloc != 0 || used != 0 {
			t.Errorf("NoResource: %d, %d", alloc, used)
		}
	})
	for i := range 4 {
		s.DeletePod(types.UID(fmt.Sprintf("u%d", i)))
	}
	s.DeleteNode("a")
	if c := s.Counts(); c.Nodes != 0 || len(s.nodes) != 0 {
		t.Errorf("node record kept after the node and its pods are gone: %+v", c)
	}
}
