// Package system_test runs the whole of stickynet on the local cluster with
// three real nodes (kubelet, containerd, Open vSwitch each) and one
// simulated node with its own agent: a StatefulSet pod keeps its IP and MAC,
// on its interface, across deletion and a move to another node, and stays
// reachable from a pod on a third node; two-way bandwidth limits from a
// BandwidthPolicy hold between pods on two nodes, and an edit of the policy
// changes them live; a pod of a namespace without the label runs on the
// fallback network (the reference chain) of a node that runs stickynet; a
// DaemonSet's pod replaced by a rolling update and by a forced deletion
// hands the node's address to the new pod only once its own port is gone.
// At the end nothing is left on the machine.
package system_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/e2e/stickynet"
	"github.com/stickynet/stickynet/extender/config"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/webhook/app"
)

const ns = "sticky"

type env struct {
	c   *cluster.Cluster
	sys *stickynet.System
	k   kubernetes.Interface
	cl  client.Client
}

func TestStickynet(t *testing.T) {
	testenv.Root(t)
	testenv.NeedCommand(t, "iperf3")
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	ctrl.SetLogger(klog.Background())
	before := cluster.SnapshotForTest(ctx, t)

	begin := time.Now()
	bins, err := stickynet.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stickynet built in %s", time.Since(begin).Round(time.Millisecond))
	cfg := stickynet.Config{Binaries: bins, SimAgents: 1}

	begin = time.Now()
	c, sys, err := stickynet.StartCluster(ctx, cluster.Config{SimNodes: 2}, stickynet.Options{Config: cfg, AgentFlags: []string{"-v=2"}})
	if err != nil {
		t.Fatal(err)
	}
	state := c.State()
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	t.Logf("cluster (3 real + 2 simulated nodes) with stickynet Ready in %s", time.Since(begin).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, c)
		}
	})

	sch, err := app.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.RESTConfig(), client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{c: c, sys: sys, k: c.Client(), cl: cl}
	if got := agentNodes(sys); !slices.Equal(got, []string{"node-1", "node-2", "node-3", "sim-1"}) {
		t.Fatalf("agents run on %v, want node-1, node-2, node-3 and sim-1", got)
	}
	if err := c.CreateNamespace(ctx, ns, map[string]string{annotations.EnabledLabel: "true"}); err != nil {
		t.Fatal(err)
	}
	spec, err := stickynet.PoolSpec(c)
	if err != nil {
		t.Fatal(err)
	}
	spec.Default = true
	spec.ReuseDelaySeconds = ptr.To(int32(5))
	if err := cl.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "e2e"}, Spec: spec}); err != nil {
		t.Fatal(err)
	}

	t.Run("StatefulSetPodMovesWithItsAddresses", func(t *testing.T) { e.testMove(ctx, t) })
	t.Run("SimulatedNodeWithAgent", func(t *testing.T) { e.testSimulated(ctx, t) })
	t.Run("BandwidthPolicyBothWaysAndLive", func(t *testing.T) { e.testBandwidth(ctx, t) })
	t.Run("NodeNotReadyWhileOVSDown", func(t *testing.T) { e.testOVSDown(ctx, t) })
	t.Run("NodeReadyThroughAgentRestart", func(t *testing.T) { e.testAgentRestart(ctx, t) })
	t.Run("UnlabelledNamespaceOnFallbackNetwork", func(t *testing.T) { e.testFallback(ctx, t) })
	t.Run("DaemonSetPodHandsAddressOver", func(t *testing.T) { e.testDaemonSetHandover(ctx, t) })
	t.Run("PodOfWidenedPoolScheduled", func(t *testing.T) { e.testWidenedPool(ctx, t) })
	t.Run("NoPodOnNodeWithoutAgent", func(t *testing.T) { e.testNodeWithoutAgent(ctx, t) })

	// Everything goes; each agent removes its pods' ports on CNI DEL.
	if err := e.k.AppsV1().StatefulSets(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Error(err)
	}
	if err := e.k.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}, metav1.ListOptions{}); err != nil {
		t.Error(err)
	}
	eventually(ctx, t, 90*time.Second, "every pod of "+ns+" gone", func() (bool, string) {
		list, err := e.k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		return len(list.Items) == 0, fmt.Sprintf("%d pods left", len(list.Items))
	})
	for _, n := range sys.AgentNodes() {
		eventually(ctx, t, 30*time.Second, "no pod port left on "+n.Name, func() (bool, string) {
			ports, err := e.ports(ctx, n)
			if err != nil {
				return false, err.Error()
			}
			return slices.Equal(ports, []string{n.Uplink}), fmt.Sprintf("ports %v", ports)
		})
	}

	begin = time.Now()
	if err := sys.Stop(ctx); err != nil {
		t.Errorf("stop stickynet: %v", err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("stop cluster: %v", err)
	}
	t.Logf("stickynet and the cluster stopped in %s", time.Since(begin).Round(time.Millisecond))
	cluster.CheckNoLeaks(ctx, t, before, state)
}

func agentNodes(sys *stickynet.System) []string {
	var out []string
	for _, n := range sys.AgentNodes() {
		out = append(out, n.Name)
	}
	return out
}

// testMove: a StatefulSet pod runs on node A with its sticky IP and MAC on
// eth0; A is cordoned and the pod deleted; it comes back on B with the same
// IP and MAC on eth0 and answers ping and TCP from a pod on C.
func (e *env) testMove(ctx context.Context, t *testing.T) {
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: toolbox("web", nil),
		},
	}
	if _, err := e.k.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := e.waitRunning(ctx, t, "web-0", "")
	if first.Spec.SchedulerName != config.SchedulerName {
		t.Errorf("web-0 has schedulerName %q; the webhook should give %q to pods of a pool with a nodeSelector", first.Spec.SchedulerName, config.SchedulerName)
	}
	ip, mac := first.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedMAC]
	if ip == "" || mac == "" {
		t.Fatalf("web-0 has no assignment: annotations %v", first.Annotations)
	}
	e.checkInterface(ctx, t, first, ip, mac)
	nodeA := first.Spec.NodeName
	t.Logf("web-0 on %s with %s %s", nodeA, ip, mac)

	e.cordon(ctx, t, nodeA, true)
	defer e.cordon(ctx, t, nodeA, false)
	if err := e.k.CoreV1().Pods(ns).Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	moved := e.waitRunning(ctx, t, "web-0", first.UID)
	nodeB := moved.Spec.NodeName
	if nodeB == nodeA {
		t.Fatalf("web-0 came back on cordoned %s", nodeA)
	}
	if got := [2]string{moved.Annotations[annotations.AssignedIP], moved.Annotations[annotations.AssignedMAC]}; got != [2]string{ip, mac} {
		t.Errorf("web-0 on %s was assigned %v; it had %s %s on %s", nodeB, got, ip, mac, nodeA)
	}
	e.checkInterface(ctx, t, moved, ip, mac)
	t.Logf("web-0 moved to %s with %s %s", nodeB, ip, mac)

	var nodeC string
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		if n != nodeA && n != nodeB {
			nodeC = n
		}
	}
	e.createPod(ctx, t, "client", nil, nodeC)
	cli := e.waitRunning(ctx, t, "client", "")
	addr := strings.Split(ip, "/")[0]
	testenv.PingAll(t, fmt.Sprintf("ping from client on %s to web-0 (%s) on %s", cli.Spec.NodeName, addr, nodeB), func() ([]byte, error) {
		return e.c.Kubectl(ctx, "-n", ns, "exec", "client", "--", "ping", "-c", "3", "-W", "2", addr)
	})
	out, err := e.c.Kubectl(ctx, "-n", ns, "exec", "client", "--", "iperf3", "-c", addr, "-t", "1")
	if err != nil || !strings.Contains(string(out), "iperf Done") {
		t.Errorf("TCP (iperf3 -t 1) from client on %s to web-0 (%s) on %s: %v\n%s", cli.Spec.NodeName, addr, nodeB, err, out)
	} else {
		t.Logf("client on %s reaches web-0 on %s: ping and iperf3 over TCP", nodeC, nodeB)
	}
}

// testSimulated: a pod on the simulated node whose agent runs gets its
// sticky address from that agent and reaches a pod on a real node; the
// simulated node without an agent is left out of stickynet's pool.
func (e *env) testSimulated(ctx context.Context, t *testing.T) {
	node, err := e.k.CoreV1().Nodes().Get(ctx, "sim-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if node.Labels[stickynet.NodeLabel] != "" {
		t.Errorf("sim-2 runs no agent but is labelled %s=%s", stickynet.NodeLabel, node.Labels[stickynet.NodeLabel])
	}
	e.createPod(ctx, t, "on-sim", nil, "sim-1")
	p := e.waitRunning(ctx, t, "on-sim", "")
	ip, mac := p.Annotations[annotations.AssignedIP], p.Annotations[annotations.AssignedMAC]
	e.checkInterface(ctx, t, p, ip, mac)
	target := e.pod(ctx, t, "client")
	testenv.PingAll(t, "ping from on-sim (sim-1) to client on "+target.Spec.NodeName, func() ([]byte, error) {
		return e.c.InPodNetns(ctx, p, "busybox", "ping", "-c", "2", "-W", "2", target.Status.PodIP)
	})
}

// testBandwidth: a BandwidthPolicy limits a pod on one node to 100 Mbit/s
// each way; iperf3 from and to a pod on another node measures each
// direction; the policy is edited to 30 Mbit/s and the agent applies it to
// the running pod, measured again.
func (e *env) testBandwidth(ctx context.Context, t *testing.T) {
	policy := &v1alpha1.BandwidthPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "limit", Namespace: ns},
		Spec: v1alpha1.BandwidthPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "limited"}},
			Ingress:     &v1alpha1.BandwidthLimit{Rate: resource.MustParse("100M")},
			Egress:      &v1alpha1.BandwidthLimit{Rate: resource.MustParse("100M")},
		},
	}
	if err := e.cl.Create(ctx, policy); err != nil {
		t.Fatal(err)
	}
	e.createPod(ctx, t, "limited", map[string]string{"app": "limited"}, "node-1")
	e.createPod(ctx, t, "peer", nil, "node-2")
	limited := e.waitRunning(ctx, t, "limited", "")
	peer := e.waitRunning(ctx, t, "peer", "")
	if got := limited.Annotations[annotations.BandwidthPolicy]; got != "limit" {
		t.Fatalf("pod limited: %s=%q, want limit", annotations.BandwidthPolicy, got)
	}
	lip, pip := limited.Status.PodIP, peer.Status.PodIP
	node1, _ := e.c.Node("node-1")

	e.checkRate(t, "into limited (tbf), 100M", func() throughput { return e.measure(ctx, t, "peer", lip, 1) }, 100e6, true)
	e.checkRate(t, "out of limited (meter), 100M", func() throughput { return e.measure(ctx, t, "limited", pip, meterStreams) }, 100e6, false)

	sandbox, err := e.c.PodNetns(ctx, limited)
	if err != nil {
		t.Fatal(err)
	}
	var cur v1alpha1.BandwidthPolicy
	if err := e.cl.Get(ctx, types.NamespacedName{Namespace: ns, Name: "limit"}, &cur); err != nil {
		t.Fatal(err)
	}
	cur.Spec.Ingress.Rate = resource.MustParse("30M")
	cur.Spec.Egress.Rate = resource.MustParse("30M")
	if err := e.cl.Update(ctx, &cur); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 60*time.Second, "limited's annotations re-resolved to 30M", func() (bool, string) {
		a := e.pod(ctx, t, "limited").Annotations
		return bitRate(a[annotations.IngressBandwidth]) == 30e6 && bitRate(a[annotations.EgressBandwidth]) == 30e6,
			fmt.Sprintf("ingress %q egress %q", a[annotations.IngressBandwidth], a[annotations.EgressBandwidth])
	})
	eventually(ctx, t, 60*time.Second, "30 Mbit/s tbf and meter on node-1", func() (bool, string) { return e.limits30M(ctx, node1) })
	e.checkRate(t, "into limited (tbf), after the edit to 30M", func() throughput { return e.measure(ctx, t, "peer", lip, 1) }, 30e6, true)
	e.checkRate(t, "out of limited (meter), after the edit to 30M", func() throughput { return e.measure(ctx, t, "limited", pip, meterStreams) }, 30e6, false)

	after := e.pod(ctx, t, "limited")
	if after.UID != limited.UID || restarts(after) != 0 {
		t.Errorf("pod limited was replaced or restarted (uid %s -> %s, restarts %d)", limited.UID, after.UID, restarts(after))
	}
	if now, err := e.c.PodNetns(ctx, after); err != nil || now != sandbox {
		t.Errorf("pod limited's sandbox changed (%s -> %s, %v): the limit was not changed live", sandbox, now, err)
	}
}

// readyCondition is the node's Ready condition, and whether the node is
// free of the not-ready taint.
func (e *env) readyCondition(ctx context.Context, node string) (corev1.NodeCondition, bool) {
	nd, err := e.k.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return corev1.NodeCondition{Message: err.Error()}, false
	}
	for _, c := range nd.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c, !slices.ContainsFunc(nd.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == corev1.TaintNodeNotReady })
		}
	}
	return corev1.NodeCondition{Message: "no Ready condition"}, false
}

// testAgentRestart: node-1's agent stopped for 15 s (three of kubelet's
// runtime checks, each a CNI STATUS through containerd) and started again,
// as a DaemonSet rollout does: the node stays Ready throughout, as OVS
// forwards its pods' traffic all the while. Before, STATUS failed without
// the agent, and the node went NotReady as with ovs-vswitchd down.
func (e *env) testAgentRestart(ctx context.Context, t *testing.T) {
	const node = "node-1"
	eventually(ctx, t, 90*time.Second, node+" Ready and untainted before the restart", func() (bool, string) {
		c, untainted := e.readyCondition(ctx, node)
		return c.Status == corev1.ConditionTrue && untainted, fmt.Sprintf("Ready=%s (untainted %v): %s", c.Status, untainted, c.Message)
	})
	done := make(chan struct{})
	var notReady []string
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			if c, untainted := e.readyCondition(ctx, node); c.Status != corev1.ConditionTrue || !untainted {
				notReady = append(notReady, fmt.Sprintf("%s Ready=%s (untainted %v): %s", time.Now().Format(time.StampMilli), c.Status, untainted, c.Message))
			}
			select {
			case <-done:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	began := time.Now()
	err := e.sys.RestartAgent(ctx, node, 15*time.Second)
	t.Logf("%s's agent stopped and serving again after %s", node, time.Since(began).Round(100*time.Millisecond))
	time.Sleep(10 * time.Second) // kubelet's next status report
	close(done)
	<-watched
	if err != nil {
		t.Fatal(err)
	}
	if len(notReady) > 0 {
		t.Errorf("%s not Ready through its agent's restart, %d times, first: %s", node, len(notReady), notReady[0])
	}
}

// testOVSDown: with node-1's ovs-vswitchd stopped, the agent's CNI STATUS
// fails, containerd reports the network not ready and kubelet marks the node
// NotReady with the agent's reason; once ovs-vswitchd is back (without its
// flows, meters and the pods' qdiscs) the agent puts pod limited's 30 Mbit/s
// limits back before its periodic resync (1 min), the node is Ready again
// and the pod reaches its peer.
func (e *env) testOVSDown(ctx context.Context, t *testing.T) {
	const node = "node-1"
	n, _ := e.c.Node(node)
	readyCondition := func() (corev1.NodeCondition, bool) { return e.readyCondition(ctx, node) }
	if err := e.c.StopVswitchd(node); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	restarted := false
	defer func() {
		if !restarted {
			if err := e.c.StartVswitchd(ctx, node); err != nil {
				t.Errorf("start ovs-vswitchd of %s again: %v", node, err)
			}
		}
	}()
	eventually(ctx, t, 90*time.Second, node+" NotReady, naming ovs-vswitchd", func() (bool, string) {
		c, _ := readyCondition()
		return c.Status == corev1.ConditionFalse && strings.Contains(c.Message, "ovs-vswitchd does not answer"), fmt.Sprintf("Ready=%s: %s", c.Status, c.Message)
	})
	c, _ := readyCondition()
	t.Logf("%s NotReady %s after ovs-vswitchd stopped: %s", node, time.Since(stopped).Round(time.Second), c.Message)

	if err := e.c.StartVswitchd(ctx, node); err != nil {
		t.Fatal(err)
	}
	restarted = true
	started := time.Now()
	eventually(ctx, t, 20*time.Second, "limited's 30 Mbit/s tbf and meter back on "+node, func() (bool, string) { return e.limits30M(ctx, n) })
	t.Logf("limits back %s after ovs-vswitchd started", time.Since(started).Round(100*time.Millisecond))
	eventually(ctx, t, 90*time.Second, node+" Ready and untainted", func() (bool, string) {
		c, untainted := readyCondition()
		return c.Status == corev1.ConditionTrue && untainted, fmt.Sprintf("Ready=%s (untainted %v): %s", c.Status, untainted, c.Message)
	})
	t.Logf("%s Ready %s after ovs-vswitchd started", node, time.Since(started).Round(time.Second))
	peer := e.pod(ctx, t, "peer")
	testenv.PingAll(t, "ping from limited on "+node+" to peer after ovs-vswitchd restarted", func() ([]byte, error) {
		return e.c.Kubectl(ctx, "-n", ns, "exec", "limited", "--", "ping", "-c", "3", "-W", "2", peer.Status.PodIP)
	})
}

// limits30M reports whether node n has a 30 Mbit/s tbf and a 30 Mbit/s
// meter installed (pod limited's after the policy edit), with what it found.
func (e *env) limits30M(ctx context.Context, n cluster.Node) (bool, string) {
	tbf, err := runIn(ctx, n.Netns, "tc", "qdisc", "show")
	if err != nil {
		return false, err.Error()
	}
	meters, err := e.ofctl(ctx, n, "dump-meters")
	if err != nil {
		return false, err.Error()
	}
	return strings.Contains(tbf, "rate 30Mbit") && strings.Contains(meters, "rate=30000 "), tbf + meters
}

// testFallback: a pod of a namespace without the label, on a node that runs
// stickynet, is attached through the fallback network (the reference chain:
// an address of the node's own range, not stickynet's pool) instead of
// failing; its deletion removes the plugin's record and frees the address.
func (e *env) testFallback(ctx context.Context, t *testing.T) {
	const plainNS = "plain"
	if err := e.c.CreateNamespace(ctx, plainNS, nil); err != nil {
		t.Fatal(err)
	}
	node, ok := e.c.Node("node-3")
	if !ok {
		t.Fatal("no node-3")
	}
	tmpl := toolbox("plain", nil)
	tmpl.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node.Name}
	p := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	p.Name, p.Namespace = "plain", plainNS
	if _, err := e.k.CoreV1().Pods(plainNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p = e.waitRunningIn(ctx, t, plainNS, "plain", "")
	for k := range p.Annotations {
		if strings.HasPrefix(k, "stickynet.io/") {
			t.Errorf("pod %s/plain carries %s: the webhook should leave pods of unlabelled namespaces alone", plainNS, k)
		}
	}
	ip, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		t.Fatalf("pod %s/plain reports IP %q: %v", plainNS, p.Status.PodIP, err)
	}
	if ip.Less(node.PodRangeStart) || node.PodRangeEnd.Less(ip) {
		t.Errorf("pod %s/plain on %s has %s, outside the fallback range %s-%s", plainNS, node.Name, ip, node.PodRangeStart, node.PodRangeEnd)
	}
	addrs, err := e.c.InPodNetns(ctx, p, "ip", "-o", "-4", "addr", "show", "eth0")
	if err != nil || !strings.Contains(string(addrs), " inet "+ip.String()+"/") {
		t.Errorf("eth0 of pod %s/plain does not carry %s (%v):\n%s", plainNS, ip, err, addrs)
	}
	records := filepath.Join(node.Dir, "stickynet", "cni-cache", "fallback", "*.json")
	leases := filepath.Join(node.Dir, "cni", "ipam", "*", ip.String())
	if got, _ := filepath.Glob(records); len(got) != 1 {
		t.Errorf("fallback records on %s: %v, want the one of pod plain", node.Name, got)
	}
	if got, _ := filepath.Glob(leases); len(got) != 1 {
		t.Errorf("host-local leases of %s on %s: %v, want one", ip, node.Name, got)
	}
	t.Logf("pod %s/plain on %s runs on the fallback network with %s", plainNS, node.Name, ip)

	if err := e.k.CoreV1().Pods(plainNS).Delete(ctx, "plain", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 90*time.Second, "pod "+plainNS+"/plain gone, its fallback record and lease too", func() (bool, string) {
		_, err := e.k.CoreV1().Pods(plainNS).Get(ctx, "plain", metav1.GetOptions{})
		recs, _ := filepath.Glob(records)
		ls, _ := filepath.Glob(leases)
		return apierrors.IsNotFound(err) && len(recs) == 0 && len(ls) == 0, fmt.Sprintf("get: %v, records %v, leases %v", err, recs, ls)
	})
}

// testDaemonSetHandover: a DaemonSet pod that ignores SIGTERM is replaced
// twice on one node, each time by a pod that the webhook gives the node's
// address. In a rolling update (maxUnavailable) the DaemonSet controller
// creates the new pod only once the old one is terminal, after kubelet tore
// its sandbox down. A forced deletion removes the old pod from the API at
// once, and the controller creates the new pod while kubelet still stops
// the old one (for a second here): the node agent holds the new pod's ADD
// until the old pod's port is gone. Either way the node agent's log shows
// the old pod's attachment removed before the new pod's is set up, and the
// new pod runs with the node's IP and MAC on eth0.
// testWidenedPool: a pod of a pool whose nodeSelector matches no node stays
// Pending, the extender keeping it off every node; the pool is widened to
// node-3, and the pod lands there within seconds. kube-scheduler does not
// watch IPPools: without the release controller's PlacementChanged update
// of the pod, it would try the pod again only at its next cluster event or
// after 5 min.
func (e *env) testWidenedPool(ctx context.Context, t *testing.T) {
	const name = "widened"
	ipp, _ := e.poolPod(ctx, t, "narrow", 1, 30, &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelHostname: "no-such-node"}}, name, nil)
	pods := e.k.CoreV1().Pods(ns)
	eventually(ctx, t, 60*time.Second, "pod "+name+" found no node", func() (bool, string) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == corev1.PodReasonUnschedulable {
				return true, ""
			}
		}
		return false, fmt.Sprintf("on %q, conditions %v", p.Spec.NodeName, p.Status.Conditions)
	})
	if err := e.cl.Get(ctx, client.ObjectKeyFromObject(ipp), ipp); err != nil {
		t.Fatal(err)
	}
	ipp.Spec.NodeSelector.MatchLabels[corev1.LabelHostname] = "node-3"
	if err := e.cl.Update(ctx, ipp); err != nil {
		t.Fatal(err)
	}
	widened := time.Now()
	eventually(ctx, t, 45*time.Second, "pod "+name+" on node-3 after its pool was widened to it", func() (bool, string) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.Spec.NodeName == "node-3", fmt.Sprintf("on %q, %s %q", p.Spec.NodeName, annotations.PlacementChanged, p.Annotations[annotations.PlacementChanged])
	})
	t.Logf("pod %s scheduled %s after its pool was widened", name, time.Since(widened).Round(100*time.Millisecond))
}

// testNodeWithoutAgent: a node without a serving agent (sim-2, which keeps
// the reference chain) would attach stickynet's pods with its own network
// and addresses. Only nodes whose agent serves advertise
// stickynet.io/network, of which the webhook asks one for each pod it
// gives an address, so such a pod, held to sim-2 and of a pool that selects
// every node (the default scheduler alone places it), is never scheduled.
func (e *env) testNodeWithoutAgent(ctx context.Context, t *testing.T) {
	const name, pool = "agentless", "everywhere"
	res := corev1.ResourceName(annotations.NetworkResource)
	// The agents advertise it once they serve, soon after they are ready.
	eventually(ctx, t, 30*time.Second, string(res)+" on the nodes whose agent serves only", func() (bool, string) {
		var wrong []string
		for _, node := range []string{"node-1", "sim-1", "sim-2"} {
			n, err := e.k.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			q, ok := n.Status.Allocatable[res]
			if want := node != "sim-2"; ok != want || (ok && q.Value() < 1) {
				wrong = append(wrong, fmt.Sprintf("%s: %q (present %v, want %v)", node, q.String(), ok, want))
			}
		}
		return len(wrong) == 0, strings.Join(wrong, "; ")
	})
	// Beside pool narrow's addresses (x.y.5.1 to 30); no nodeSelector.
	_, p := e.poolPod(ctx, t, pool, 40, 50, nil, name, map[string]string{corev1.LabelHostname: "sim-2"})
	pods := e.k.CoreV1().Pods(ns)
	if p.Annotations[annotations.AssignedPool] != pool || p.Spec.SchedulerName != corev1.DefaultSchedulerName {
		t.Fatalf("pod %s: pool %q, scheduler %q; want %s and the default scheduler", name, p.Annotations[annotations.AssignedPool], p.Spec.SchedulerName, pool)
	}
	eventually(ctx, t, 60*time.Second, "pod "+name+" unschedulable for want of "+string(res), func() (bool, string) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if p.Spec.NodeName != "" {
			t.Fatalf("pod %s scheduled to %s, a node without a serving agent", name, p.Spec.NodeName)
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Reason == corev1.PodReasonUnschedulable && strings.Contains(c.Message, "Insufficient "+string(res)) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("conditions %v", p.Status.Conditions)
	})
}

// poolPod creates IPPool pool over x.y.5.<first> to x.y.5.<last> (beside
// pool e2e's, x.y.6.1 on) with nodeSelector sel, and a toolbox pod name that
// names it, held to nodes (when given) instead of the real nodes. When the
// test ends the pod goes, then the pool.
func (e *env) poolPod(ctx context.Context, t *testing.T, pool string, first, last byte, sel *metav1.LabelSelector, name string, nodes map[string]string) (*v1alpha1.IPPool, *corev1.Pod) {
	t.Helper()
	spec, err := stickynet.PoolSpec(e.c)
	if err != nil {
		t.Fatal(err)
	}
	b := netip.MustParsePrefix(spec.CIDR).Addr().As4()
	spec.Ranges = []v1alpha1.IPRange{{
		Start: netip.AddrFrom4([4]byte{b[0], b[1], 5, first}).String(), End: netip.AddrFrom4([4]byte{b[0], b[1], 5, last}).String(),
	}}
	spec.NodeSelector = sel
	ipp := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: pool}, Spec: spec}
	if err := e.cl.Create(ctx, ipp); err != nil {
		t.Fatal(err)
	}
	pods := e.k.CoreV1().Pods(ns)
	t.Cleanup(func() {
		if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete pod %s: %v", name, err)
		}
		eventually(ctx, t, 60*time.Second, "pod "+name+" gone", func() (bool, string) {
			_, err := pods.Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
		if err := e.cl.Delete(ctx, ipp); err != nil {
			t.Errorf("delete IPPool %s: %v", pool, err)
		}
	})
	tmpl := toolbox(name, nil)
	tmpl.Annotations = map[string]string{annotations.Pool: pool}
	if nodes != nil {
		tmpl.Spec.NodeSelector = nodes
	}
	p, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: tmpl.Labels, Annotations: tmpl.Annotations}, Spec: tmpl.Spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ipp, p
}

func (e *env) testDaemonSetHandover(ctx context.Context, t *testing.T) {
	const name, node = "agentds", "node-2"
	tmpl := toolbox(name, nil)
	tmpl.Spec.NodeSelector[corev1.LabelHostname] = node
	tmpl.Spec.TerminationGracePeriodSeconds = ptr.To(int64(5))
	tmpl.Spec.Containers[0].Command = []string{"/bin/sh", "-c", `trap '' TERM; while true; do sleep 1; done`}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: tmpl,
		},
	}
	dsets := e.k.AppsV1().DaemonSets(ns)
	if _, err := dsets.Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := dsets.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete DaemonSet %s: %v", name, err)
		}
	}()
	first := e.waitDaemonPod(ctx, t, name, "")
	ip, mac := first.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedMAC]
	e.checkInterface(ctx, t, first, ip, mac)

	patch := []byte(`{"spec":{"template":{"metadata":{"annotations":{"e2e/revision":"2"}}}}}`)
	if _, err := dsets.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	updated := e.waitDaemonPod(ctx, t, name, first.UID)
	e.checkHandover(ctx, t, "rolling update", first, updated, node, ip, mac)

	if err := e.k.CoreV1().Pods(ns).Delete(ctx, updated.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	replaced := e.waitDaemonPod(ctx, t, name, updated.UID)
	e.checkHandover(ctx, t, "forced deletion", updated, replaced, node, ip, mac)
}

// checkHandover checks that a DaemonSet's new pod nw on node has the node's
// address, and that node's agent set nw's attachment up only after it had
// removed old's.
func (e *env) checkHandover(ctx context.Context, t *testing.T, what string, old, nw *corev1.Pod, node, ip, mac string) {
	t.Helper()
	if got := [2]string{nw.Annotations[annotations.AssignedIP], nw.Annotations[annotations.AssignedMAC]}; got != [2]string{ip, mac} {
		t.Errorf("%s: new pod %s was assigned %v; the node's address is %s %s", what, nw.Name, got, ip, mac)
	}
	e.checkInterface(ctx, t, nw, ip, mac)
	b, err := os.ReadFile(filepath.Join(e.c.Dir(), "logs", "stickynet-nodeagent-"+node+".log"))
	if err != nil {
		t.Fatal(err)
	}
	line := func(msg string, p *corev1.Pod) int {
		return slices.IndexFunc(strings.Split(string(b), "\n"), func(l string) bool {
			return strings.Contains(l, `"`+msg+`"`) && strings.Contains(l, `pod="`+p.Namespace+"/"+p.Name+`"`)
		})
	}
	removed, setUp, waited := line("Attachment removed", old), line("Attachment set up", nw), line("Waiting for another pod on the node to give up the address", nw)
	t.Logf("%s: %s replaced %s; agent log lines: old attachment removed %d, new one set up %d, ADD waited for the address %d (-1: not logged)",
		what, nw.Name, old.Name, removed, setUp, waited)
	if removed < 0 || setUp < 0 || setUp < removed {
		t.Errorf("%s: the agent on %s did not remove %s's attachment before setting up %s's (log lines %d and %d)", what, node, old.Name, nw.Name, removed, setUp)
	}
}

// waitDaemonPod waits until the pod of DaemonSet app, other than the one
// with UID not, runs with an IP while no other pod of it is left, and
// returns it.
func (e *env) waitDaemonPod(ctx context.Context, t *testing.T, app string, not types.UID) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	eventually(ctx, t, 120*time.Second, "the one pod of DaemonSet "+app+" Running", func() (bool, string) {
		list, err := e.k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err.Error()
		}
		var states []string
		for i := range list.Items {
			q := &list.Items[i]
			states = append(states, fmt.Sprintf("%s %s deleting=%t %s", q.Name, q.Status.Phase, q.DeletionTimestamp != nil, podReason(q)))
		}
		if len(list.Items) != 1 {
			return false, strings.Join(states, "; ")
		}
		p = &list.Items[0]
		ok := p.UID != not && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
		return ok, strings.Join(states, "; ")
	})
	return p
}

// bitRate parses a bandwidth annotation; -1 if it does not parse.
func bitRate(v string) int64 {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return -1
	}
	return q.Value()
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, s := range p.Status.ContainerStatuses {
		n += s.RestartCount
	}
	return n
}

// toolbox is a pod template whose container serves iperf3 and otherwise
// sleeps; its pods stay on real nodes (they run containers).
func toolbox(app string, labels map[string]string) corev1.PodTemplateSpec {
	l := map[string]string{"app": app}
	for k, v := range labels {
		l[k] = v
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: l},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			NodeSelector:                  map[string]string{cluster.SimulatedLabel: "false"},
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           cluster.ToolboxImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"/bin/sh", "-c", `iperf3 -s -J >/dev/null 2>&1 & trap 'exit 0' TERM; while true; do sleep 1; done`},
			}},
		},
	}
}

// createPod creates a bare toolbox pod on node.
func (e *env) createPod(ctx context.Context, t *testing.T, name string, labels map[string]string, node string) {
	t.Helper()
	tmpl := toolbox(name, labels)
	tmpl.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
	p := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	p.Name = name
	if _, err := e.k.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) pod(ctx context.Context, t *testing.T, name string) *corev1.Pod {
	t.Helper()
	p, err := e.k.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitRunning waits until pod name, other than the one with UID not, runs
// with an IP, and returns it.
func (e *env) waitRunning(ctx context.Context, t *testing.T, name string, not types.UID) *corev1.Pod {
	t.Helper()
	return e.waitRunningIn(ctx, t, ns, name, not)
}

// waitRunningIn is waitRunning in namespace.
func (e *env) waitRunningIn(ctx context.Context, t *testing.T, namespace, name string, not types.UID) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	eventually(ctx, t, 120*time.Second, "pod "+namespace+"/"+name+" Running", func() (bool, string) {
		var err error
		p, err = e.k.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if p.UID == not || p.DeletionTimestamp != nil {
			return false, "old pod still there"
		}
		ok := p.Status.Phase == corev1.PodRunning && p.Status.PodIP != ""
		return ok, fmt.Sprintf("%s on %q %s", p.Status.Phase, p.Spec.NodeName, podReason(p))
	})
	return p
}

func podReason(p *corev1.Pod) string {
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

// checkInterface checks, inside the pod's network namespace, that eth0
// carries the assigned MAC and IP, and that the API reports that IP.
func (e *env) checkInterface(ctx context.Context, t *testing.T, p *corev1.Pod, ip, mac string) {
	t.Helper()
	if got := p.Status.PodIP; got != strings.Split(ip, "/")[0] {
		t.Errorf("pod %s reports IP %s; assigned %s", p.Name, got, ip)
	}
	link, err := e.c.InPodNetns(ctx, p, "ip", "-o", "link", "show", "eth0")
	if err != nil {
		t.Fatalf("eth0 of pod %s: %v", p.Name, err)
	}
	if !strings.Contains(string(link), "link/ether "+mac+" ") {
		t.Errorf("eth0 of pod %s on %s does not carry MAC %s:\n%s", p.Name, p.Spec.NodeName, mac, link)
	}
	addrs, err := e.c.InPodNetns(ctx, p, "ip", "-o", "-4", "addr", "show", "eth0")
	if err != nil {
		t.Fatalf("addresses of pod %s: %v", p.Name, err)
	}
	if !strings.Contains(string(addrs), " inet "+ip+" ") {
		t.Errorf("eth0 of pod %s on %s does not carry %s:\n%s", p.Name, p.Spec.NodeName, ip, addrs)
	}
}

func (e *env) cordon(ctx context.Context, t *testing.T, node string, on bool) {
	t.Helper()
	patch := fmt.Appendf(nil, `{"spec":{"unschedulable":%t}}`, on)
	if _, err := e.k.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("cordon %s (%t): %v", node, on, err)
	}
}

// ports lists the ports of br-stickynet on node n.
func (e *env) ports(ctx context.Context, n cluster.Node) ([]string, error) {
	out, err := runIn(ctx, "", "ovs-vsctl", "--db=unix:"+ovsDB(n), "list-ports", stickynet.Bridge)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

func (e *env) ofctl(ctx context.Context, n cluster.Node, cmd string) (string, error) {
	return runIn(ctx, "", "ovs-ofctl", "-O", "OpenFlow13", cmd, "unix:"+filepath.Join(filepath.Dir(ovsDB(n)), stickynet.Bridge+".mgmt"))
}

// ovsDB is the database socket of node n's Open vSwitch (a simulated
// node's is started by package stickynet in the node's folder).
func ovsDB(n cluster.Node) string {
	if n.OVSDBSocket != "" {
		return n.OVSDBSocket
	}
	return filepath.Join(n.Dir, "ovs", "db.sock")
}

func runIn(ctx context.Context, netns string, argv ...string) (string, error) {
	h, err := host.New()
	if err != nil {
		return "", err
	}
	if netns == "" {
		out, err := h.Run(ctx, argv[0], argv[1:]...)
		return string(out), err
	}
	out, err := h.RunIn(ctx, netns, argv...)
	return string(out), err
}

// Bandwidth is measured as in the node agent's tests: iperf3 over TCP, one
// stream, one direction at a time, from inside the pods' containers
// (kubectl exec), what the receiver got in each second after a ramp-up,
// scaled from TCP payload to Ethernet frames (the unit of tbf and OVS
// meters). A shaper's output is smooth, so the rate checked for tbf is the
// median of those seconds: on this shared 2-core machine a second in which
// other work starves the userspace datapath of both nodes says nothing
// about the shaper. A policer's output swings with TCP's sawtooth from one
// second to the next, so for the meter it is the mean over the window.
// Both are logged, with every second.
//
// Through the meter, iperf3 runs meterStreams TCP streams: a policer drops
// what exceeds the rate, and one stream across two nodes' userspace
// datapaths (a longer round trip than on one node) recovers from each drop
// too slowly to fill it, so its mean fell 10-12 % short of a meter that
// several streams fill; the limit the meter enforces is what is checked.
// Even 4 (or 8) streams leave TCP under a drop-only policer short of the
// rate here: on the 2-vCPU Xeon VM of 2026-12-04 the 100 Mbit/s meter's
// mean was 88-93 % of it (-7 to -12 % in 7 measurements with 4 streams; a
// CI rehearsal failed at -11.6 % against the ±10 % band of before), so a
// policed rate may fall meterBelow short but not exceed it by more than
// meterAbove. A missing or mis-scaled meter is off by far more.
const (
	meterStreams = 4
	iperfSeconds = 12
	iperfSkip    = 2
	tbfTolerance = 0.05
	meterBelow   = 0.15
	meterAbove   = 0.10
)

type throughput struct {
	median, mean float64   // wire bit/s
	seconds      []float64 // wire bit/s of each second after the ramp-up
	payloadMean  float64   // TCP payload bit/s
}

func (e *env) measure(ctx context.Context, t *testing.T, from, toIP string, streams int) throughput {
	t.Helper()
	type report struct {
		Error string `json:"error"`
		Start struct {
			MSS int `json:"tcp_mss_default"`
		} `json:"start"`
		Server struct {
			Intervals []struct {
				Sum struct {
					Start   float64 `json:"start"`
					Seconds float64 `json:"seconds"`
					Bytes   float64 `json:"bytes"`
				} `json:"sum"`
			} `json:"intervals"`
		} `json:"server_output_json"`
	}
	var c report
	var out []byte
	for range 20 { // until the server listens, and is done with the last client
		var err error
		c = report{} // json.Unmarshal keeps the fields an answer leaves out
		out, err = e.c.Kubectl(ctx, "-n", ns, "exec", from, "--", "iperf3", "-c", toIP, "-P", fmt.Sprint(streams), "-t", fmt.Sprint(iperfSeconds), "-J", "--get-server-output")
		if i := strings.IndexByte(string(out), '{'); i >= 0 {
			out = out[i:]
		}
		if jerr := json.Unmarshal(out, &c); jerr != nil {
			t.Fatalf("iperf3 client in %s: %v, output %.1000s", from, err, out)
		}
		if c.Error == "" || !strings.Contains(c.Error, "Connection refused") && !strings.Contains(c.Error, "server is busy") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if c.Error != "" || c.Start.MSS == 0 {
		t.Fatalf("iperf3 client in %s: %s: %.1000s", from, c.Error, out)
	}
	wire := float64(c.Start.MSS+66) / float64(c.Start.MSS)
	var got throughput
	var bytes, secs float64
	for _, iv := range c.Server.Intervals {
		if iv.Sum.Start >= iperfSkip && iv.Sum.Seconds > 0.5 {
			bytes += iv.Sum.Bytes
			secs += iv.Sum.Seconds
			got.seconds = append(got.seconds, iv.Sum.Bytes*8/iv.Sum.Seconds*wire)
		}
	}
	if secs < iperfSeconds-iperfSkip-1.5 {
		t.Fatalf("iperf3 server measured only %.1fs: %.1000s", secs, out)
	}
	got.payloadMean = bytes * 8 / secs
	got.mean = got.payloadMean * wire
	sorted := slices.Clone(got.seconds)
	slices.Sort(sorted)
	if n := len(sorted); n%2 == 1 {
		got.median = sorted[n/2]
	} else {
		got.median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return got
}

// checkRate measures and checks a tbf (shaped: the median) or meter
// (policed: the mean) rate. A measurement out of tolerance is taken once
// more, as in the node agent's tests: on this shared 2-core machine other
// work can starve both nodes' userspace datapaths for seconds, which lowers
// a rate without saying anything about the limiter; a limiter that is
// wrong is wrong both times.
func (e *env) checkRate(t *testing.T, what string, measure func() throughput, rate float64, shaped bool) {
	t.Helper()
	val, below, above, est := 0.0, meterBelow, meterAbove, "mean"
	if shaped {
		below, above, est = tbfTolerance, tbfTolerance, "median"
	}
	for attempt := 1; attempt <= 2; attempt++ {
		got := measure()
		val = got.mean
		if shaped {
			val = got.median
		}
		per := make([]string, len(got.seconds))
		for i, v := range got.seconds {
			per[i] = fmt.Sprintf("%.1f", v/1e6)
		}
		t.Logf("%s (measurement %d): limit %.0f Mbit/s; on the wire median %.1f Mbit/s (%+.1f%%), mean %.1f (%+.1f%%), per second %s; TCP payload mean %.1f Mbit/s",
			what, attempt, rate/1e6, got.median/1e6, (got.median-rate)/rate*100, got.mean/1e6, (got.mean-rate)/rate*100, strings.Join(per, " "), got.payloadMean/1e6)
		if off := (val - rate) / rate; off >= -below && off <= above {
			return
		}
	}
	t.Errorf("%s: %s %.1f Mbit/s on the wire for a limit of %.0f Mbit/s in two measurements: off by %+.1f%%, allowed -%.0f%% to +%.0f%%", what, est, val/1e6, rate/1e6, (val-rate)/rate*100, below*100, above*100)
}

// eventually polls cond until it holds or the timeout passes.
var eventually = testenv.Eventually

// dumpLogs shows the end of stickynet's logs after a failure.
func dumpLogs(t *testing.T, c *cluster.Cluster) {
	logs, _ := filepath.Glob(filepath.Join(c.Dir(), "logs", "stickynet-*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("%s (end):\n%s", filepath.Base(l), b)
	}
}
