package cluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/internal/testenv"
)

const ns = "e2e"

// TestRealNodes brings up three real nodes, runs a StatefulSet and a
// Deployment spread over them, pings and pushes iperf3 traffic between pods
// on different nodes, uses kubectl exec and logs, schedules a pod through a
// second scheduler whose extender picks node-2, deletes everything, stops
// the cluster and checks that nothing is left on the machine.
func TestRealNodes(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	before := cluster.SnapshotForTest(ctx, t)

	ext := startExtender(t, "node-2")
	begin := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{
		Schedulers: []cluster.Scheduler{{
			Name:   "extender",
			Config: cluster.ExtenderSchedulerConfig("e2e-extender", ext.url),
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3 real nodes Ready in %s", time.Since(begin).Round(time.Millisecond))
	state := c.State()
	t.Cleanup(func() { _ = c.Stop(context.Background()) })

	if err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	cs := c.Client()
	spread := []corev1.TopologySpreadConstraint{{
		MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
	}}
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(int32(3)),
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template:            toolboxTemplate("web", spread),
		},
	}
	sts.Spec.Template.Spec.TopologySpreadConstraints[0].LabelSelector = sts.Spec.Selector
	if _, err := cs.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dep := deployment("app", 3, toolboxTemplate("app", spread))
	dep.Spec.Template.Spec.TopologySpreadConstraints[0].LabelSelector = dep.Spec.Selector
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	extPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "by-extender", Labels: map[string]string{"app": "by-extender"}},
		Spec:       toolboxTemplate("by-extender", nil).Spec,
	}
	extPod.Spec.SchedulerName = "e2e-extender"
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, extPod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	web := waitRunning(ctx, t, c, "app=web", 3)
	app := waitRunning(ctx, t, c, "app=app", 3)
	byExt := waitRunning(ctx, t, c, "app=by-extender", 1)
	for _, set := range [][]corev1.Pod{web, app} {
		checkSpreadAndRanges(t, c, set, 3)
	}
	if byExt[0].Spec.NodeName != "node-2" {
		t.Errorf("pod of the extender's scheduler landed on %s, want node-2 (the only node the extender keeps)", byExt[0].Spec.NodeName)
	}
	if ext.filterCalls.Load() == 0 {
		t.Error("the second scheduler never called the extender's filter")
	}

	a, b := onDifferentNodes(t, append(web, app...))
	t.Logf("ping %s (%s on %s) -> %s (%s on %s)", a.Name, a.Status.PodIP, a.Spec.NodeName, b.Name, b.Status.PodIP, b.Spec.NodeName)
	testenv.PingAll(t, "ping from the host in "+a.Name+"'s netns", func() ([]byte, error) {
		return c.InPodNetns(ctx, &a, "busybox", "ping", "-c", "3", "-W", "2", b.Status.PodIP)
	})
	testenv.PingAll(t, "kubectl exec ping", func() ([]byte, error) {
		return c.Kubectl(ctx, "-n", ns, "exec", a.Name, "--", "ping", "-c", "2", "-W", "2", b.Status.PodIP)
	})
	if out, err := c.Kubectl(ctx, "-n", ns, "exec", a.Name, "--", "hostname"); err != nil || strings.TrimSpace(string(out)) != a.Name {
		t.Errorf("kubectl exec hostname = %q, %v; want %q", out, err, a.Name)
	}
	if out, err := c.Kubectl(ctx, "-n", ns, "logs", b.Name); err != nil || !strings.Contains(string(out), "started "+b.Name) {
		t.Errorf("kubectl logs %s = %q, %v; want the line it printed at start", b.Name, out, err)
	}
	iperf(ctx, t, c, &a, &b)

	// Delete everything and wait for the pods to be gone.
	if err := cs.AppsV1().StatefulSets(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := cs.AppsV1().Deployments(ns).Delete(ctx, "app", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "by-extender", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	waitNoPods(ctx, t, c, "")

	begin = time.Now()
	if err := c.Stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
	t.Logf("cluster stopped in %s", time.Since(begin).Round(time.Millisecond))
	cluster.CheckNoLeaks(ctx, t, before, state)
}

// TestSimulatedNodes adds 200 simulated nodes to three real ones: pods
// scheduled onto simulated nodes reach Running with IPs from their node's
// range, reach pods on real nodes over the shared L2, survive a restart of
// the simulator (pods deleted meanwhile leave no namespace, pods created
// meanwhile get one), and leave nothing when deleted.
func TestSimulatedNodes(t *testing.T) {
	testenv.Root(t)
	const simNodes, simPods = 200, 200
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	before := cluster.SnapshotForTest(ctx, t)

	begin := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{SimNodes: simNodes})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3 real + %d simulated nodes ready in %s", simNodes, time.Since(begin).Round(time.Millisecond))
	state := c.State()
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	if err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	cs := c.Client()

	simTmpl := toolboxTemplate("sim", nil)
	simTmpl.Spec.NodeSelector = map[string]string{cluster.SimulatedLabel: "true"}
	realTmpl := toolboxTemplate("real", nil)
	realTmpl.Spec.NodeSelector = map[string]string{cluster.SimulatedLabel: "false"}
	begin = time.Now()
	for _, d := range []*appsv1.Deployment{deployment("sim", simPods, simTmpl), deployment("real", 3, realTmpl)} {
		if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sim := waitRunning(ctx, t, c, "app=sim", simPods)
	t.Logf("%d pods on simulated nodes Running in %s", simPods, time.Since(begin).Round(time.Millisecond))
	real := waitRunning(ctx, t, c, "app=real", 3)
	checkSpreadAndRanges(t, c, sim, simPods/4)
	checkSpreadAndRanges(t, c, real, 1)

	// A simulated pod's namespace is on the same L2 as real pods.
	reach(ctx, t, c, &sim[0], &real[0])

	// The simulator stops; some pods are deleted and replaced meanwhile.
	if err := c.StopSimulator(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range sim[:20] {
		if err := cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.RestartSimulator(ctx); err != nil {
		t.Fatal(err)
	}
	sim = waitRunning(ctx, t, c, "app=sim", simPods)
	// One namespace per running pod, named by its UID: none left of the 20
	// deleted, one for each of their replacements.
	waitSimNetns(ctx, t, c, sim)

	if err := cs.AppsV1().Deployments(ns).Delete(ctx, "sim", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := cs.AppsV1().Deployments(ns).Delete(ctx, "real", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	waitNoPods(ctx, t, c, "")
	waitSimNetns(ctx, t, c, nil)

	begin = time.Now()
	if err := c.Stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
	t.Logf("cluster stopped in %s", time.Since(begin).Round(time.Millisecond))
	cluster.CheckNoLeaks(ctx, t, before, state)
}

func toolboxTemplate(app string, spread []corev1.TopologySpreadConstraint) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			TopologySpreadConstraints:     append([]corev1.TopologySpreadConstraint(nil), spread...),
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           cluster.ToolboxImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/bin/sh", "-c", `echo "started $(hostname)"; trap 'exit 0' TERM; while true; do sleep 1; done`},
			}},
		},
	}
}

func deployment(name string, replicas int32, tmpl corev1.PodTemplateSpec) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: tmpl,
		},
	}
}

// waitRunning waits until exactly n pods match selector, all Running with an
// IP and none terminating, and returns them.
func waitRunning(ctx context.Context, t *testing.T, c *cluster.Cluster, selector string, n int) []corev1.Pod {
	t.Helper()
	var last string
	for {
		list, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			running := 0
			for _, p := range list.Items {
				if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
					running++
				}
			}
			if running == n && len(list.Items) == n {
				return list.Items
			}
			last = fmt.Sprintf("%d of %d pods Running with an IP", running, len(list.Items))
			if len(list.Items) > 0 && running < len(list.Items) {
				for _, p := range list.Items {
					if p.Status.Phase != corev1.PodRunning {
						last += fmt.Sprintf("; %s: %s on %q %s", p.Name, p.Status.Phase, p.Spec.NodeName, podReason(p))
						break
					}
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pods %s not Running: %s", selector, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func podReason(p corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Waiting != nil {
			return cs.State.Waiting.Reason + ": " + cs.State.Waiting.Message
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			return c.Message
		}
	}
	return ""
}

// checkSpreadAndRanges checks that the pods use at least minNodes nodes,
// that their IPs are distinct, and that each lies in its node's range.
func checkSpreadAndRanges(t *testing.T, c *cluster.Cluster, pods []corev1.Pod, minNodes int) {
	t.Helper()
	nodes, ips := map[string]bool{}, map[string]string{}
	for _, p := range pods {
		nodes[p.Spec.NodeName] = true
		if other, dup := ips[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s share IP %s", other, p.Name, p.Status.PodIP)
		}
		ips[p.Status.PodIP] = p.Name
		n, ok := c.Node(p.Spec.NodeName)
		if !ok {
			t.Errorf("pod %s on unknown node %s", p.Name, p.Spec.NodeName)
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || ip.Less(n.PodRangeStart) || n.PodRangeEnd.Less(ip) {
			t.Errorf("pod %s on %s has IP %s outside the node's range %s-%s", p.Name, n.Name, p.Status.PodIP, n.PodRangeStart, n.PodRangeEnd)
		}
	}
	if len(nodes) < minNodes {
		t.Errorf("%d pods on %d nodes, want at least %d nodes", len(pods), len(nodes), minNodes)
	}
}

func onDifferentNodes(t *testing.T, pods []corev1.Pod) (corev1.Pod, corev1.Pod) {
	t.Helper()
	for _, a := range pods {
		for _, b := range pods {
			if a.Spec.NodeName != b.Spec.NodeName {
				return a, b
			}
		}
	}
	t.Fatal("no two pods on different nodes")
	return corev1.Pod{}, corev1.Pod{}
}

// iperf runs an iperf3 server in b's network namespace and a 2 s client in
// a's, both from the host, and logs the throughput.
func iperf(ctx context.Context, t *testing.T, c *cluster.Cluster, a, b *corev1.Pod) {
	t.Helper()
	// Not -1 (one client, then exit): an attempt that connects and then
	// fails would leave the next ones nothing to reach.
	srv, err := c.PodNetnsCommand(ctx, b, "iperf3", "-s", "-B", b.Status.PodIP)
	if err != nil {
		t.Error(err)
		return
	}
	if err := testenv.StartTied(srv); err != nil {
		t.Error(err)
		return
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var out []byte
	for i := 0; i < 50; i++ { // until the server listens
		time.Sleep(200 * time.Millisecond)
		if out, err = c.InPodNetns(ctx, a, "iperf3", "-c", b.Status.PodIP, "-t", "2", "-J"); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("iperf3 from %s to %s: %v", a.Name, b.Name, err)
		return
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.End.SumReceived.BitsPerSecond == 0 {
		t.Errorf("iperf3 result: %v\n%s", err, out)
		return
	}
	t.Logf("iperf3 %s -> %s across nodes: %.2f Gbit/s", a.Name, b.Name, res.End.SumReceived.BitsPerSecond/1e9)
}

// reach pings pod to from pod from, one echo request at a time, for up to 10 s.
// The fabric is one bridge with a port per node, and every broadcast (such
// as the ARP request before the first echo) is copied to all of them: with
// hundreds of nodes a copy can be dropped when the kernel's receive backlog
// is full (counted in /proc/net/softnet_stat), as on any crowded L2 segment,
// so a lost first frame is retried; no answer at all fails the test.
func reach(ctx context.Context, t *testing.T, c *cluster.Cluster, from, to *corev1.Pod) {
	t.Helper()
	dropsBefore := backlogDrops(t)
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 1; ; attempt++ {
		_, err := c.InPodNetns(ctx, from, "busybox", "ping", "-c", "1", "-W", "1", to.Status.PodIP)
		if err == nil {
			if attempt > 1 {
				t.Logf("%s reached %s at echo request %d (%d frames dropped from the receive backlog meanwhile)", from.Name, to.Name, attempt, backlogDrops(t)-dropsBefore)
			}
			return
		}
		if time.Now().After(deadline) {
			neigh, _ := c.InPodNetns(ctx, from, "busybox", "ip", "neigh")
			t.Errorf("pod %s on %s cannot reach pod %s (%s) on %s after %d echo requests (%d frames dropped from the receive backlog meanwhile): %v\nneighbours of %s:\n%s",
				from.Name, from.Spec.NodeName, to.Name, to.Status.PodIP, to.Spec.NodeName, attempt, backlogDrops(t)-dropsBefore, err, from.Name, neigh)
			return
		}
	}
}

// backlogDrops is the number of frames the kernel dropped because a CPU's
// receive backlog was full, summed over CPUs.
func backlogDrops(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		t.Fatalf("read softnet_stat: %v", err)
	}
	var sum uint64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseUint(f[1], 16, 64)
		if err != nil {
			t.Fatalf("softnet_stat line %q: %v", line, err)
		}
		sum += n
	}
	return sum
}

func waitNoPods(ctx context.Context, t *testing.T, c *cluster.Cluster, selector string) {
	t.Helper()
	for {
		list, err := c.Client().CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil && len(list.Items) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			n := -1
			if list != nil {
				n = len(list.Items)
			}
			t.Fatalf("%d pods still there: %v", n, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitSimNetns waits until the simulated pods' namespaces are those of
// pods, each named by its pod's UID.
func waitSimNetns(ctx context.Context, t *testing.T, c *cluster.Cluster, pods []corev1.Pod) {
	t.Helper()
	want := make([]string, len(pods))
	for i, p := range pods {
		want[i] = string(p.UID)
	}
	slices.Sort(want)
	for {
		paths, err := c.SimulatedPodNetns()
		if err != nil {
			t.Fatal(err)
		}
		got := make([]string, len(paths))
		for i, p := range paths {
			got[i] = filepath.Base(p)
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("simulated pod namespaces %v; want one for each running pod, by UID: %v", got, want)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// extender is a scheduler extender that keeps only one node.
type extender struct {
	url         string
	filterCalls atomic.Int64
}

func startExtender(t *testing.T, keep string) *extender {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &extender{url: "http://" + l.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("/filter", func(w http.ResponseWriter, r *http.Request) {
		e.filterCalls.Add(1)
		var args extenderv1.ExtenderArgs
		if err := json.NewDecoder(r.Body).Decode(&args); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res := extenderv1.ExtenderFilterResult{FailedNodes: extenderv1.FailedNodesMap{}}
		var kept []string
		for _, n := range ptr.Deref(args.NodeNames, nil) {
			if n == keep {
				kept = append(kept, n)
			} else {
				res.FailedNodes[n] = "the test extender keeps " + keep
			}
		}
		res.NodeNames = &kept
		_ = json.NewEncoder(w).Encode(res)
	})
	mux.HandleFunc("/prioritize", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(extenderv1.HostPriorityList{})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return e
}

// TestNodeCNIChoice checks the per-node network settings later suites rely
// on: a real node started with a plain uplink (its address on eth0, no
// bridge) and its own conflist, and a simulated node whose conflist is
// replaced at run time with SetCNI.
func TestNodeCNIChoice(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	before := cluster.SnapshotForTest(ctx, t)
	altConf := func(n cluster.Node, bridge, first, last string) []byte {
		return []byte(fmt.Sprintf(`{"cniVersion":"1.0.0","name":"alt","plugins":[{"type":"bridge","bridge":%q,
			"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q,"rangeStart":%q,"rangeEnd":%q}]]}}]}`,
			bridge, n.Dir+"/alt-ipam", n.Subnet, first, last))
	}
	c, err := cluster.Start(ctx, cluster.Config{
		Nodes:    1,
		SimNodes: 1,
		CNI: func(n cluster.Node) cluster.CNI {
			if n.Name != "node-1" {
				return cluster.CNI{}
			}
			return cluster.CNI{PlainUplink: true, ConfList: altConf(n, "br-alt", n.PodRangeStart.String(), n.PodRangeEnd.String())}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	state := c.State()
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	if err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}

	node1, _ := c.Node("node-1")
	if node1.Bridge != "" {
		t.Errorf("node-1 with a plain uplink reports bridge %q", node1.Bridge)
	}
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+node1.Netns, "ip", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+node1.IP.String()+"/") {
		t.Errorf("node-1's eth0 does not carry %s: %v\n%s", node1.IP, err, out)
	}
	out, _ = exec.CommandContext(ctx, "nsenter", "--net="+node1.Netns, "ip", "-o", "link", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(out), " master ") {
		t.Errorf("node-1's plain uplink is enslaved: %s", out)
	}

	sim1, _ := c.Node("sim-1")
	// The last ten addresses of sim-1's range, from a conflist installed now.
	last := sim1.PodRangeEnd
	first := last
	for range 9 {
		first = first.Prev()
	}
	if err := c.SetCNI("sim-1", cluster.CNI{ConfList: altConf(sim1, "br-new", first.String(), last.String())}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name, node  string
		hostNetwork bool
	}{{"on-node-1", "node-1", false}, {"on-sim-1", "sim-1", false}, {"host-on-sim-1", "sim-1", true}} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: map[string]string{"app": p.name}},
			Spec:       toolboxTemplate(p.name, nil).Spec,
		}
		pod.Spec.NodeName = p.node
		pod.Spec.HostNetwork = p.hostNetwork
		if _, err := c.Client().CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	onNode1 := waitRunning(ctx, t, c, "app=on-node-1", 1)[0]
	onSim1 := waitRunning(ctx, t, c, "app=on-sim-1", 1)[0]
	checkSpreadAndRanges(t, c, []corev1.Pod{onNode1, onSim1}, 2)
	if hostPod := waitRunning(ctx, t, c, "app=host-on-sim-1", 1)[0]; hostPod.Status.PodIP != sim1.IP.String() {
		t.Errorf("host-network pod on sim-1 has IP %s, want the node's %s", hostPod.Status.PodIP, sim1.IP)
	}
	if ip := netip.MustParseAddr(onSim1.Status.PodIP); ip.Less(first) {
		t.Errorf("pod on sim-1 got %s, outside the range %s-%s of the conflist set with SetCNI", ip, first, last)
	}
	for _, x := range []struct{ netns, bridge string }{{node1.Netns, "br-alt"}, {sim1.Netns, "br-new"}} {
		if out, err := exec.CommandContext(ctx, "nsenter", "--net="+x.netns, "ip", "link", "show", x.bridge).CombinedOutput(); err != nil {
			t.Errorf("bridge %s of the chosen conflist missing in %s: %v\n%s", x.bridge, x.netns, err, out)
		}
	}
	// What envtest-based suites need: the CRDs installed and an
	// Environment that uses this cluster and leaves it running on Stop.
	if err := c.InstallCRDs(ctx, "../../charts/stickynet/crds"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client().Discovery().ServerResourcesForGroupVersion("stickynet.io/v1alpha1"); err != nil {
		t.Errorf("stickynet CRDs not served: %v", err)
	}
	env := c.Environment()
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("envtest on the local cluster: %v", err)
	}
	if cfg.Host != c.RESTConfig().Host {
		t.Errorf("envtest config host %s, want %s", cfg.Host, c.RESTConfig().Host)
	}
	if err := env.Stop(); err != nil {
		t.Errorf("envtest stop: %v", err)
	}
	if _, err := c.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("cluster gone after envtest's Stop: %v", err)
	}

	for _, name := range []string{"on-node-1", "on-sim-1", "host-on-sim-1"} {
		if err := c.Client().CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}
	waitNoPods(ctx, t, c, "")
	if err := c.Stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
	cluster.CheckNoLeaks(ctx, t, before, state)
}
