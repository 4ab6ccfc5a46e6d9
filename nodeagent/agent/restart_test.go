package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/api"
)

// portState is what must not change for a pod the agent keeps.
type portState struct {
	ifindex int
	ofport  string
}

func (e *env) portState(containerID string) portState {
	e.t.Helper()
	name := e.ovsPortOf(containerID)
	if name == "" {
		e.t.Fatalf("no OVS port for %s", containerID)
	}
	return portState{ifindex: linkIndex(e.t, e, name), ofport: e.node.OVS.Vsctl(e.t, "get", "Interface", name, "ofport")}
}

// TestRestartKeepsPodsRunning restarts the agent while two pods talk: their
// ping and TCP stream must not notice, and their ports stay as they were.
func TestRestartKeepsPodsRunning(t *testing.T) {
	needIperf(t)
	e := newEnv(t, nil)
	a := e.addPod(podSpec{
		name: "a", ips: "10.87.0.10/24", mac: "02:00:0a:57:00:0a",
		extra: map[string]string{annotations.IngressBandwidth: "50M", annotations.EgressBandwidth: "50M"},
	})
	b := e.addPod(podSpec{name: "b", ips: "10.87.0.11/24", mac: "02:00:0a:57:00:0b"})
	before := map[string]portState{"a": e.portState("ctr-a"), "b": e.portState("ctr-b")}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// 8 s of ping every 50 ms from a to b, and a TCP stream from b to a at
	// 10 Mbit/s (below a's limit), reporting every half second.
	pinger := a.netns.Command(ctx, "busybox", "ping", "-c", "160", "-i", "0.05", "-W", "2", "10.87.0.11")
	var pingOut strings.Builder
	pinger.Stdout = &pingOut
	server := a.netns.Command(ctx, "iperf3", "-s", "-1")
	if err := testenv.StartTied(server); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = server.Wait() }()
	waitListening(t, a, iperfPort)
	stream := b.netns.Command(ctx, "iperf3", "-c", "10.87.0.10", "-t", "8", "-b", "10M", "-i", "0.5", "-J")
	var streamOut strings.Builder
	stream.Stdout = &streamOut
	if err := testenv.StartTied(pinger); err != nil {
		t.Fatal(err)
	}
	if err := testenv.StartTied(stream); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	e.restart()

	if err := pinger.Wait(); err != nil {
		t.Errorf("ping: %v\n%s", err, pingOut.String())
	}
	if !strings.Contains(pingOut.String(), "160 packets received") {
		t.Errorf("ping lost packets across the restart:\n%s", lostPings(pingOut.String(), 160))
	}
	if err := stream.Wait(); err != nil {
		t.Errorf("TCP stream: %v", err)
	}
	var res struct {
		Intervals []struct {
			Sum struct {
				Start float64 `json:"start"`
				Bytes float64 `json:"bytes"`
			} `json:"sum"`
		} `json:"intervals"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(streamOut.String()), &res); err != nil || res.Error != "" || len(res.Intervals) < 15 {
		t.Fatalf("TCP stream result (%v): %s %.300s", err, res.Error, streamOut.String())
	}
	for _, iv := range res.Intervals {
		if iv.Sum.Bytes == 0 {
			t.Errorf("TCP stream stalled in the half second from %.1fs", iv.Sum.Start)
		}
	}
	for name, want := range before {
		if got := e.portState("ctr-" + name); got != want {
			t.Errorf("pod %s's port changed across the restart: %+v -> %+v", name, want, got)
		}
	}
	for _, p := range []*testPod{a, b} {
		if err := e.cni.Check(p.rt); err != nil {
			t.Errorf("CHECK %s after restart: %v", p.pod.Name, err)
		}
	}
}

// lostPings lists the sequence numbers busybox ping got no reply for.
func lostPings(out string, count int) string {
	got := map[int]bool{}
	for _, m := range regexp.MustCompile(`seq=(\d+) `).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		got[n] = true
	}
	var lost []string
	for i := range count {
		if !got[i] {
			lost = append(lost, strconv.Itoa(i))
		}
	}
	return "no reply to seq " + strings.Join(lost, ",") + "\n" + lastLines(out, 2)
}

// TestRestartRemovesGonePods: while the agent is down one pod is deleted and
// another pod's netns vanishes; the restarted agent removes what is left of
// them and leaves the others as they were.
func TestRestartRemovesGonePods(t *testing.T) {
	e := newEnv(t, nil)
	a := e.addPod(podSpec{
		name: "a", ips: "10.93.0.10/24", mac: "02:00:0a:5d:00:0a",
		extra: map[string]string{annotations.IngressBandwidth: "50M", annotations.EgressBandwidth: "50M"},
	})
	b := e.addPod(podSpec{name: "b", ips: "10.93.0.11/24", mac: "02:00:0a:5d:00:0b"})
	e.addPod(podSpec{name: "c", ips: "10.93.0.12/24", mac: "02:00:0a:5d:00:0c"})
	d := e.addPod(podSpec{name: "d", ips: "10.93.0.13/24", mac: "02:00:0a:5d:00:0d"})
	before := map[string]portState{"a": e.portState("ctr-a"), "b": e.portState("ctr-b")}
	portC, portD := e.ovsPortOf("ctr-c"), e.ovsPortOf("ctr-d")

	e.agent.Stop(t)
	e.pods.Delete("default", "c") // c is gone while the agent is down
	d.netns.Remove(t)             // d's sandbox went, and its veth with it
	// The kernel deletes the veth when it tears the namespace down, in a
	// work queue; restore judges by the veth, so wait for it to be gone.
	testenv.Eventually(context.Background(), t, 30*time.Second, "d's host veth gone with its netns", func() (bool, string) {
		return !slices.Contains(e.hostVeths(), portD), fmt.Sprintf("host veths %v", e.hostVeths())
	})
	e.restart()

	for name, want := range before {
		if got := e.portState("ctr-" + name); got != want {
			t.Errorf("pod %s's port changed across the restart: %+v -> %+v", name, want, got)
		}
	}
	for _, p := range []*testPod{a, b} {
		if err := e.cni.Check(p.rt); err != nil {
			t.Errorf("CHECK %s after restart: %v", p.pod.Name, err)
		}
	}
	for name, port := range map[string]string{"c": portC, "d": portD} {
		if p := e.ovsPortOf("ctr-" + name); p != "" {
			t.Errorf("pod %s's OVS port %s survived the restart", name, p)
		}
		if slices.Contains(e.hostVeths(), port) {
			t.Errorf("pod %s's host veth %s survived the restart", name, port)
		}
	}
	if recs := e.records(); len(recs) != 2 {
		t.Errorf("records after restart: %v; want a's and b's", recs)
	}
	if !ping(t, a, "10.93.0.11", 2) {
		t.Error("a and b do not reach each other after the restart")
	}
}

// TestRestartWithoutCache: the cache folder is lost while the agent is down;
// the restarted agent rebuilds the attachments from the OVS labels and the
// pods, and CHECK and DEL work.
func TestRestartWithoutCache(t *testing.T) {
	// A change the agent refuses, edited onto the running pod: the limits
	// stay, and must stay after the rebuild too. Before, the rebuild, not
	// knowing the limits in force, took them for none, and the refusal
	// kept none (a burst below one frame); and a bandwidth key it cannot
	// read made the rebuild take the pod for gone and remove its port, the
	// running pod left without a network (malformed).
	for _, edit := range []struct{ name, key, value string }{
		{"burst below a frame", annotations.IngressBurst, "100"},
		{"malformed", annotations.IngressBandwidth, "10Mbps"},
	} {
		t.Run(edit.name, func(t *testing.T) { testRestartWithoutCache(t, edit.key, edit.value) })
	}
}

func testRestartWithoutCache(t *testing.T, key, value string) {
	e := newEnv(t, func(o *agent.Options) { o.ResyncPeriod = 500 * time.Millisecond })
	a := e.addPod(podSpec{
		name: "a", ips: "10.88.0.10/24", mac: "02:00:0a:58:00:0a", gw: "10.88.0.1", vlan: 5,
		extra: map[string]string{annotations.IngressBandwidth: "30M", annotations.EgressBandwidth: "40M"},
	})
	before := e.portState("ctr-a")
	edited := a.pod.DeepCopy()
	edited.Annotations[key] = value
	refusedBefore := bandwidthRefused(t)
	e.pods.Set(edited)
	waitFor(t, "the edit refused", func() bool { return bandwidthRefused(t) > refusedBefore })
	port := e.ovsPortOf("ctr-a")
	e.agent.Stop(t)
	if err := os.RemoveAll(e.opts.CacheDir); err != nil {
		t.Fatal(err)
	}
	// With the records lost, no record proves nothing: the plugin waits
	// for the agent.
	if err := e.cni.Del(a.rt); cniCode(err) != types.ErrTryAgainLater {
		t.Errorf("DEL with the agent down and its records lost: %v; want code %d", err, types.ErrTryAgainLater)
	}
	e.agent = agenttest.StartAgent(t, e.opts)
	if _, err := os.Stat(filepath.Join(e.opts.CacheDir, api.RecordsComplete)); err != nil {
		t.Errorf("records folder after the rebuild: %v; want it marked complete", err)
	}
	if got := e.portState("ctr-a"); got != before {
		t.Errorf("port changed: %+v -> %+v", before, got)
	}
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK after rebuilding from OVS: %v", err)
	}
	if got := tbfRate(t, e, port); got != 30e6/8 {
		t.Errorf("tbf after rebuilding from OVS: %d bytes/s; want %d (30M)", got, uint64(30e6/8))
	}
	if flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge); !strings.Contains(flows, "meter:") {
		t.Errorf("no egress meter after rebuilding from OVS:\n%s", flows)
	}
	if recs := e.records(); len(recs) != 1 {
		t.Errorf("records %v; want the rebuilt one", recs)
	}
	// They stay through resyncs, another restart (now with the record) and
	// a change the agent refuses.
	stay := func(after string) {
		t.Helper()
		if got := tbfRate(t, e, port); got != 30e6/8 {
			t.Errorf("tbf %s: %d bytes/s; want %d (30M)", after, got, uint64(30e6/8))
		}
		if flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge); !strings.Contains(flows, "meter:") {
			t.Errorf("no egress meter %s:\n%s", after, flows)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	stay("after resyncs")
	e.restart()
	stay("after a second restart")
	refused := a.pod.DeepCopy() // readable, but a burst below one frame
	refused.Annotations[annotations.IngressBurst] = "99"
	refusedBefore = bandwidthRefused(t)
	e.pods.Set(refused)
	waitFor(t, "the second edit refused", func() bool { return bandwidthRefused(t) > refusedBefore })
	time.Sleep(500 * time.Millisecond) // the refusal is counted before the worker would act on it
	stay("after a refused change")
	// The edit undone, the limits taken off: they go, though the rebuilt
	// record did not know them.
	lifted := a.pod.DeepCopy()
	delete(lifted.Annotations, annotations.IngressBandwidth)
	delete(lifted.Annotations, annotations.EgressBandwidth)
	e.pods.Set(lifted)
	waitFor(t, "the limits lifted", func() bool { return tbfRate(t, e, port) == 0 })
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK after the limits were lifted: %v", err)
	}
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatal(err)
	}
	if p := e.ovsPortOf("ctr-a"); p != "" {
		t.Errorf("port %s left after DEL", p)
	}
}

// TestDelWithAgentDown: with the agent stopped, a DEL through the conflist
// it installed succeeds for an attachment it holds no record of (an ADD that
// failed for want of the agent), and fails with code 11 for a pod it set
// up, which the agent, back, then removes.
func TestDelWithAgentDown(t *testing.T) {
	e := newEnv(t, nil)
	a := e.addPod(podSpec{name: "a", ips: "10.91.0.10/24", mac: "02:00:0a:5b:00:0a"})
	never := e.newPod(podSpec{name: "never", ips: "10.91.0.11/24", mac: "02:00:0a:5b:00:0b"})
	e.agent.Stop(t)
	if err := e.cni.Del(never.rt); err != nil {
		t.Errorf("DEL of an attachment the agent has no record of, agent down: %v; want success", err)
	}
	if err := e.cni.Del(a.rt); cniCode(err) != types.ErrTryAgainLater {
		t.Errorf("DEL of a pod the agent set up, agent down: %v; want code %d", err, types.ErrTryAgainLater)
	}
	e.agent = agenttest.StartAgent(t, e.opts)
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL with the agent back: %v", err)
	}
	if p := e.ovsPortOf("ctr-a"); p != "" {
		t.Errorf("port %s left after DEL", p)
	}
}

// limitedPair starts an agent with pods a (10.<n>.0.10, ingress 30 Mbit/s,
// egress 40 Mbit/s) and b (10.<n>.0.11, no limits), and returns a's OVS
// port. The agent's periodic resync is an hour away: what OVS loses comes
// back through the marker flow's check. mutate, if any, changes the
// agent's options too.
func limitedPair(t *testing.T, n byte, mutate ...func(*agent.Options)) (e *env, a, b *testPod, port string) {
	t.Helper()
	e = newEnv(t, func(o *agent.Options) {
		o.ResyncPeriod = time.Hour
		for _, m := range mutate {
			m(o)
		}
	})
	a = e.addPod(podSpec{
		name: "a", ips: fmt.Sprintf("10.%d.0.10/24", n), mac: fmt.Sprintf("02:00:0a:%02x:00:0a", n),
		extra: map[string]string{annotations.EgressBandwidth: "40M", annotations.IngressBandwidth: "30M"},
	})
	b = e.addPod(podSpec{name: "b", ips: fmt.Sprintf("10.%d.0.11/24", n), mac: fmt.Sprintf("02:00:0a:%02x:00:0b", n)})
	return e, a, b, e.ovsPortOf("ctr-a")
}

// meterRe finds limitedPair's 40 Mbit/s meter in ovs-ofctl dump-meters.
var meterRe = regexp.MustCompile(`meter=(\d+) .*\n.*rate=40000 `)

// TestVswitchdRestartRestoresMeters: ovs-vswitchd forgets OpenFlow meters and
// flows when it restarts (and clears the root qdisc of the ports it opens);
// the agent sees its marker flow gone and puts both limits back at once,
// without waiting for its periodic resync.
func TestVswitchdRestartRestoresMeters(t *testing.T) {
	e, a, b, port := limitedPair(t, 0x59)
	m := meterRe.FindStringSubmatch(e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge))
	if m == nil {
		t.Fatal("no 40 Mbit/s meter after ADD")
	}
	e.node.OVS.RestartVswitchd(t)
	waitFor(t, "the limits to come back", func() bool {
		return tbfRate(t, e, port) == 30e6/8 && meterRe.MatchString(e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge)) &&
			strings.Contains(e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge), "actions=meter:"+m[1])
	})
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK after ovs-vswitchd restart: %v", err)
	}
	if !ping(t, a, "10.89.0.11", 2) || !ping(t, b, "10.89.0.10", 2) {
		t.Error("pods do not reach each other after ovs-vswitchd restart")
	}
}

// TestBridgeDeletedIsRebuilt: the OVS bridge deleted under a running agent
// (or OVS's database reset) comes back, once the agent sees its marker flow
// gone, with the uplink, the pods' ports under their port numbers, and their
// limits; pods reach each other again and new pods can be added. Before,
// every ADD failed until the agent was restarted.
func TestBridgeDeletedIsRebuilt(t *testing.T) {
	e, a, b, port := limitedPair(t, 0x5a, func(o *agent.Options) { o.Uplink = "upl0" })
	e.node.Netns.Run(t, "ip", "link", "add", "upl0", "type", "veth", "peer", "name", "upl0p")
	uplinked := func() bool {
		return slices.Contains(strings.Fields(e.node.OVS.Vsctl(t, "list-ports", e.node.Bridge)), "upl0")
	}
	if !uplinked() {
		t.Fatal("upl0 not on the bridge before its deletion")
	}
	before := map[string]portState{"a": e.portState("ctr-a"), "b": e.portState("ctr-b")}
	e.node.OVS.Vsctl(t, "del-br", e.node.Bridge)
	waitFor(t, "the bridge, the uplink, the ports and the limits to come back", func() bool {
		return e.ovsPortOf("ctr-a") == port && e.ovsPortOf("ctr-b") != "" && tbfRate(t, e, port) == 30e6/8 &&
			meterRe.MatchString(e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge)) && uplinked()
	})
	for name, want := range before {
		if got := e.portState("ctr-" + name); got != want {
			t.Errorf("pod %s's port (veth, port number) changed across the rebuild: %+v -> %+v", name, want, got)
		}
	}
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK after the rebuild: %v", err)
	}
	if !ping(t, a, "10.90.0.11", 2) || !ping(t, b, "10.90.0.10", 2) {
		t.Error("pods do not reach each other after the bridge was rebuilt")
	}
	e.addPod(podSpec{name: "c", ips: "10.90.0.12/24", mac: "02:00:0a:5a:00:0c"})
}

// TestLiveBandwidthApplied changes and removes limits through annotations
// and checks what is installed (the measured version is in bandwidth_test.go).
func TestLiveBandwidthApplied(t *testing.T) {
	evs := &eventLog{}
	e := newEnv(t, func(o *agent.Options) { o.Events = evs })
	a := e.addPod(podSpec{name: "a", ips: "10.90.0.10/24", mac: "02:00:0a:5a:00:0a"})
	port := e.ovsPortOf("ctr-a")
	ofport, _ := strconv.Atoi(e.node.OVS.Vsctl(t, "get", "Interface", port, "ofport"))
	// The meter of a's port number, if any, and whether a flow sends a's
	// traffic through it.
	meterOf := func() (string, bool) {
		var meter string
		for _, m := range strings.Split(e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge), "meter=")[1:] {
			if strings.HasPrefix(m, strconv.Itoa(ofport)+" ") {
				meter = m
			}
		}
		flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge)
		return meter, strings.Contains(flows, fmt.Sprintf("in_port=%d actions=meter:%d", ofport, ofport))
	}
	if m, flow := meterOf(); tbfRate(t, e, port) != 0 || m != "" || flow {
		t.Fatal("limits installed for a pod without bandwidth annotations")
	}
	steps := []struct {
		ingress, egress string
		ingressBurst    string // bits; "" means none
		k8sIngress      string // kubernetes.io/ingress-bandwidth; "" means none
		refused         string // the key for which the agent refuses the change, keeping the limits
		wantTBF         uint64 // bytes/s
		wantMeter       string // "" means no meter
	}{
		{ingress: "10M", egress: "20M", wantTBF: 10e6 / 8, wantMeter: "rate=20000 "},
		// A burst below one frame, edited onto the running pod (the webhook
		// refuses it at admission): refused, the limits stay.
		{ingress: "10M", egress: "20M", ingressBurst: "100", refused: annotations.IngressBurst, wantTBF: 10e6 / 8, wantMeter: "rate=20000 "},
		// The webhook writes the stickynet key beside the pod's own
		// kubernetes.io key; an edit of the latter alone is refused, as is
		// a malformed value (the pod's assignment stays readable: before,
		// each was an error retried without end, and the pod's next
		// sandbox failed). Without the stickynet key the kubernetes.io
		// key applies.
		{ingress: "10M", egress: "20M", k8sIngress: "10M", wantTBF: 10e6 / 8, wantMeter: "rate=20000 "},
		{ingress: "10M", egress: "20M", k8sIngress: "20M", refused: annotations.KubernetesIngressBandwidth, wantTBF: 10e6 / 8, wantMeter: "rate=20000 "},
		{ingress: "10Mbps", egress: "20M", refused: annotations.IngressBandwidth, wantTBF: 10e6 / 8, wantMeter: "rate=20000 "},
		{egress: "20M", k8sIngress: "20M", wantTBF: 20e6 / 8, wantMeter: "rate=20000 "},
		{ingress: "15M", egress: "", wantTBF: 15e6 / 8},
		{ingress: "", egress: "5M", wantTBF: 0, wantMeter: "rate=5000 "},
		{},
	}
	for i, s := range steps {
		pod := a.pod.DeepCopy()
		pod.Annotations[annotations.IngressBandwidth] = s.ingress
		pod.Annotations[annotations.EgressBandwidth] = s.egress
		if s.ingress == "" {
			delete(pod.Annotations, annotations.IngressBandwidth)
		}
		if s.egress == "" {
			delete(pod.Annotations, annotations.EgressBandwidth)
		}
		if s.ingressBurst != "" {
			pod.Annotations[annotations.IngressBurst] = s.ingressBurst
		}
		delete(pod.Annotations, annotations.KubernetesIngressBandwidth)
		if s.k8sIngress != "" {
			pod.Annotations[annotations.KubernetesIngressBandwidth] = s.k8sIngress
		}
		refusedBefore := bandwidthRefused(t)
		evs.take()
		e.pods.Set(pod)
		if s.refused != "" {
			waitFor(t, fmt.Sprintf("step %d refused", i), func() bool { return bandwidthRefused(t) > refusedBefore })
			// The refusal is counted before the worker would act on it: the
			// limits checked below, as they were, must be what it left.
			time.Sleep(500 * time.Millisecond)
			// On the pod too, where kubectl describe shows it.
			if got := evs.take(); len(got) == 0 || !strings.HasPrefix(got[0], "Warning BandwidthNotApplied annotation "+s.refused+": invalid value") || !strings.Contains(got[0], "the pod keeps the limits in force on node") {
				t.Errorf("step %d: events %q; want a Warning BandwidthNotApplied naming %s", i, got, s.refused)
			}
		}
		waitFor(t, fmt.Sprintf("step %d", i), func() bool {
			meter, flow := meterOf()
			meterOK := meter == "" && !flow
			if s.wantMeter != "" {
				meterOK = strings.Contains(meter, s.wantMeter) && flow
			}
			return tbfRate(t, e, port) == s.wantTBF && meterOK
		})
		if err := e.cni.Check(a.rt); err != nil {
			t.Errorf("CHECK after step %d: %v", i, err)
		}
	}
	// A sandbox made while the two keys differ (a pod's next one, after an
	// edit) gets the stickynet limit.
	e.addPod(podSpec{name: "b", ips: "10.90.0.11/24", mac: "02:00:0a:5a:00:0b", extra: map[string]string{
		annotations.IngressBandwidth: "10M", annotations.KubernetesIngressBandwidth: "20M",
	}})
	if got := tbfRate(t, e, e.ovsPortOf("ctr-b")); got != 10e6/8 {
		t.Errorf("tbf of a pod added with %s 10M and %s 20M: %d bytes/s, want %d", annotations.IngressBandwidth, annotations.KubernetesIngressBandwidth, got, uint64(10e6/8))
	}
}

// eventLog is an events.EventRecorder that keeps each event as "type
// reason note".
type eventLog struct {
	mu  sync.Mutex
	evs []string
}

func (l *eventLog) Eventf(_, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, eventtype+" "+reason+" "+fmt.Sprintf(note, args...))
}

// take returns the events recorded since the last take.
func (l *eventLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	evs := l.evs
	l.evs = nil
	return evs
}

// bandwidthRefused reads stickynet_nodeagent_bandwidth_refused_total from
// the process's default registry (the agent runs in this process).
func bandwidthRefused(t *testing.T) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "stickynet_nodeagent_bandwidth_refused_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("stickynet_nodeagent_bandwidth_refused_total is not registered")
	return 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
