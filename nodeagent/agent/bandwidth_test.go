package agent_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
)

// Bandwidth tests send with iperf3 (TCP, one stream) between two pods on
// the bridge, each direction on its own, and read the rate off the receiving
// pod's interface counters over a fixed window once the stream has ramped
// up. The counters count Ethernet frames, as tbf and OVS meters do, so the
// reading is in the limiter's own unit; TCP payload is about 1448/1514 of it
// (checked by hand with iperf3's own report: 95.6 Mbit/s of payload at a
// 100 Mbit/s limit).
//
// On this machine the userspace datapath forwards from one ovs-vswitchd
// thread that shares two cores with everything else; when other work starves
// it, a reading can be off for reasons outside stickynet. A reading out of
// tolerance is therefore logged and taken once more; the test fails when the
// second is out of tolerance too.

const (
	rampUp         = 3 * time.Second // left out: TCP ramp-up and the meter's initial burst
	window         = 6 * time.Second
	tbfTolerance   = 0.05
	meterTolerance = 0.10
)

// iperfPort is iperf3's default port.
const iperfPort = 5201

// iperfServer runs an iperf3 server on port in the pod until the test ends.
func iperfServer(t *testing.T, p *testPod, port int) {
	t.Helper()
	cmd := p.netns.Command(context.Background(), "iperf3", "-s", "-p", strconv.Itoa(port))
	if err := testenv.StartTied(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

// waitListening waits until something in the pod listens on TCP port.
func waitListening(t *testing.T, p *testPod, port int) {
	t.Helper()
	testenv.Eventually(t.Context(), t, 10*time.Second, fmt.Sprintf("a listener on port %d in %s", port, p.pod.Name), func() (bool, string) {
		out, err := p.netns.Command(t.Context(), "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).CombinedOutput()
		return err == nil && len(strings.TrimSpace(string(out))) > 0, fmt.Sprintf("ss: %v: %s", err, out)
	})
}

// rxBytes is the byte count the pod's eth0 received.
func rxBytes(t *testing.T, p *testPod) uint64 {
	t.Helper()
	l, err := handleIn(t, p.netns).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.RxBytes
}

// measure streams TCP from one pod to another (whose iperf3 server runs on
// port) and returns the rate, in bit/s of Ethernet frames, the receiver got
// over the window.
func measure(t *testing.T, from, to *testPod, toIP string, port int) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out strings.Builder
	for attempt := 0; ; attempt++ {
		out.Reset()
		client := from.netns.Command(ctx, "iperf3", "-c", toIP, "-p", strconv.Itoa(port), "-t", "60")
		client.Stdout, client.Stderr = &out, &out
		// Stopped with SIGINT (nsenter execs iperf3 in place), the client
		// tells the server the test is over: killed, it left the server busy
		// until the server noticed, and the next measurement against it
		// could be refused ("the server is busy running a test").
		client.Cancel = func() error { return client.Process.Signal(os.Interrupt) }
		client.WaitDelay = 5 * time.Second
		if err := testenv.StartTied(client); err != nil {
			t.Fatal(err)
		}
		exited, done := make(chan error, 1), make(chan struct{})
		go func() { exited <- client.Wait(); close(done) }()
		select {
		case err := <-exited: // the server does not listen yet, or is busy
			if attempt == 20 {
				t.Fatalf("iperf3 client: %v: %s", err, out.String())
			}
			time.Sleep(200 * time.Millisecond)
			continue
		case <-time.After(500 * time.Millisecond):
		}
		defer func() { cancel(); <-done }()
		break
	}
	time.Sleep(rampUp)
	b0, t0 := rxBytes(t, to), time.Now()
	time.Sleep(window)
	b1, t1 := rxBytes(t, to), time.Now()
	return float64(b1-b0) * 8 / t1.Sub(t0).Seconds()
}

func checkRate(t *testing.T, what string, take func() float64, rate float64, tol float64) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		got := take()
		dev := (got - rate) / rate
		t.Logf("%s: limit %.0f Mbit/s, received %.1f Mbit/s of frames (%+.1f%%)", what, rate/1e6, got/1e6, dev*100)
		if math.Abs(dev) <= tol {
			return
		}
		if attempt == 2 {
			t.Errorf("%s: %.1f Mbit/s for a limit of %.0f Mbit/s: off by %+.1f%%, allowed ±%.0f%% (twice)", what, got/1e6, rate/1e6, dev*100, tol*100)
			return
		}
		t.Logf("%s: out of tolerance (±%.0f%%); measuring again", what, tol*100)
	}
}

func needIperf(t *testing.T) {
	t.Helper()
	testenv.Root(t)
	testenv.NeedCommand(t, "iperf3")
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Fatal("nsenter not found (util-linux)")
	}
}

func TestBandwidthAccuracy(t *testing.T) {
	needIperf(t)
	e := newEnv(t, nil)
	peer := e.addPod(podSpec{name: "peer", ips: "10.85.0.2/24", mac: "02:00:0a:55:00:02"})
	for i, mbit := range []int{20, 100, 300} {
		t.Run(fmt.Sprintf("%dM", mbit), func(t *testing.T) {
			rate := fmt.Sprintf("%dM", mbit)
			ip := fmt.Sprintf("10.85.0.%d", 10+i)
			p := e.addPod(podSpec{
				name: "limited-" + rate, ips: ip + "/24", mac: fmt.Sprintf("02:00:0a:55:00:%02x", 10+i),
				extra: map[string]string{annotations.IngressBandwidth: rate, annotations.EgressBandwidth: rate},
			})
			iperfServer(t, p, iperfPort)
			// The peer serves each limited pod on a port of its own: a
			// client stopped just before its pod is deleted may leave its
			// "test over" message in the deleted veth (the meter drops
			// packets), and the server busy with that test for minutes.
			peerPort := iperfPort + 1 + i
			iperfServer(t, peer, peerPort)
			checkRate(t, "into the pod (tbf)", func() float64 { return measure(t, peer, p, ip, iperfPort) }, float64(mbit)*1e6, tbfTolerance)
			checkRate(t, "out of the pod (meter)", func() float64 { return measure(t, p, peer, "10.85.0.2", peerPort) }, float64(mbit)*1e6, meterTolerance)
			if err := e.cni.Del(p.rt); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// An egress limit lifted while ovs-ofctl cannot reach ovs-vswitchd: the
// meter's deletion fails, and the retry deletes it. Before, the failed
// attempt had already marked the meter gone, so the retry found nothing to
// do and the pod stayed policed at the old rate (until a resync, none here).
func TestLiftedLimitRetriedAfterFailure(t *testing.T) {
	testenv.Root(t)
	e := newEnv(t, nil)
	p := e.addPod(podSpec{
		name: "lifted", ips: "10.88.0.10/24", mac: "02:00:0a:58:00:0a",
		extra: map[string]string{annotations.EgressBandwidth: "20M"},
	})
	meters := func() string { return e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge) }
	if m := meters(); !strings.Contains(m, "rate=20000 ") {
		t.Fatalf("no 20 Mbit/s meter after ADD: %s", m)
	}
	mgmt := filepath.Join(e.node.OVS.RunDir, e.node.Bridge+".mgmt")
	if err := os.Rename(mgmt, mgmt+".away"); err != nil { // ovs-ofctl cannot connect; ovs-vswitchd keeps its meters
		t.Fatal(err)
	}
	back := sync.OnceFunc(func() {
		if err := os.Rename(mgmt+".away", mgmt); err != nil {
			t.Error(err)
		}
	})
	defer back()
	failed := counter(t, "stickynet_nodeagent_background_errors_total", "op", "bandwidth")
	pod := p.pod.DeepCopy()
	delete(pod.Annotations, annotations.EgressBandwidth)
	e.pods.Set(pod)
	waitFor(t, "a failed attempt to lift the limit", func() bool {
		return counter(t, "stickynet_nodeagent_background_errors_total", "op", "bandwidth") > failed
	})
	back()
	waitFor(t, "the meter deleted by a retry", func() bool { return !strings.Contains(meters(), "rate=20000 ") })
	if err := e.cni.Del(p.rt); err != nil {
		t.Fatal(err)
	}
}

func TestBandwidthLiveChange(t *testing.T) {
	needIperf(t)
	e := newEnv(t, nil)
	peer := e.addPod(podSpec{name: "peer", ips: "10.86.0.2/24", mac: "02:00:0a:56:00:02"})
	spec := podSpec{
		name: "limited", ips: "10.86.0.10/24", mac: "02:00:0a:56:00:0a",
		extra: map[string]string{annotations.IngressBandwidth: "100M", annotations.EgressBandwidth: "100M"},
	}
	p := e.addPod(spec)
	iperfServer(t, peer, iperfPort)
	iperfServer(t, p, iperfPort)
	checkRate(t, "before, into the pod", func() float64 { return measure(t, peer, p, "10.86.0.10", iperfPort) }, 100e6, tbfTolerance)
	checkRate(t, "before, out of the pod", func() float64 { return measure(t, p, peer, "10.86.0.2", iperfPort) }, 100e6, meterTolerance)

	hostVeth := e.ovsPortOf("ctr-limited")
	before := linkIndex(t, e, hostVeth)
	pod := p.pod.DeepCopy()
	pod.Annotations[annotations.IngressBandwidth] = "20M"
	pod.Annotations[annotations.EgressBandwidth] = "20M"
	e.pods.Set(pod)
	waitFor(t, "new tbf rate", func() bool { return tbfRate(t, e, hostVeth) == 20e6/8 })
	waitFor(t, "new meter rate", func() bool {
		return strings.Contains(e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge), "rate=20000 ")
	})
	checkRate(t, "after, into the pod", func() float64 { return measure(t, peer, p, "10.86.0.10", iperfPort) }, 20e6, tbfTolerance)
	checkRate(t, "after, out of the pod", func() float64 { return measure(t, p, peer, "10.86.0.2", iperfPort) }, 20e6, meterTolerance)
	if after := linkIndex(t, e, hostVeth); after != before {
		t.Errorf("host veth was recreated (ifindex %d -> %d): the pod was restarted, not changed live", before, after)
	}
	if err := e.cni.Check(p.rt); err != nil {
		t.Errorf("CHECK after the change: %v", err)
	}
}

func linkIndex(t *testing.T, e *env, name string) int {
	t.Helper()
	l, err := e.hostHandle().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// tbfRate is the rate (bytes/s) of the root tbf on a host veth, 0 if none.
func tbfRate(t *testing.T, e *env, name string) uint64 {
	t.Helper()
	h := e.hostHandle()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		if tbf, ok := q.(*netlink.Tbf); ok {
			return tbf.Rate
		}
	}
	return 0
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second) // generous: OVS and the agent share 2 cores with the rest of CI
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The smallest burst admission accepts, one 1518-byte frame, passes
// full-size frames both ways: the tbf into the pod at 1 Gbit/s (its bucket
// came out 1,496 bytes, rounded down to whole ticks) and the meter out of it
// (burst_size came out 12 kbits, rounded down).
func TestSmallestBurstPassesFullFrames(t *testing.T) {
	testenv.Root(t)
	e := newEnv(t, nil)
	burst := fmt.Sprint(annotations.MinBurst)
	peer, out := limitedPods(e, 0x57, "1G", "10M", burst)
	for _, c := range []struct {
		what string
		from *testPod
		to   string
	}{
		{"into the pod (tbf, 1 Gbit/s)", peer, "10.87.0.10"},
		{"out of the pod (meter, 10 Mbit/s)", out, "10.87.0.2"},
	} {
		if ok, o := pingSize(t, c.from, c.to, 3, 56); !ok {
			t.Fatalf("%s: small frames do not pass: %s", c.what, o)
		}
		if ok, o := pingSize(t, c.from, c.to, 3, 1472); !ok {
			t.Errorf("%s, burst %s bits: 1514-byte frames do not pass: %s", c.what, burst, o)
		}
	}
}

// With --mtu 9000 a burst below one jumbo frame, which admission accepts (it
// knows 1518-byte frames only), is raised to one: an ingress burst of 40k
// (5,000 bytes) dropped every larger frame.
func TestJumboFramesPassSmallBurst(t *testing.T) {
	testenv.Root(t)
	e := newEnv(t, func(o *agent.Options) { o.MTU = 9000 })
	peer, out := limitedPods(e, 0x58, "100M", "10M", "40k")
	e.addPod(podSpec{name: "free", ips: "10.88.0.9/24", mac: "02:00:0a:58:00:09"})
	if ok, o := pingSize(t, peer, "10.88.0.9", 3, 8000); !ok {
		t.Fatalf("8028-byte frames to a pod without limits do not pass: %s", o)
	}
	for _, c := range []struct {
		what string
		from *testPod
		to   string
	}{
		{"into the pod (tbf, burst 40k)", peer, "10.88.0.10"},
		{"out of the pod (meter, burst 40k)", out, "10.88.0.2"},
	} {
		if ok, o := pingSize(t, c.from, c.to, 3, 8000); !ok {
			t.Errorf("%s: 8042-byte frames do not pass: %s", c.what, o)
		}
	}
}

// limitedPods adds pods peer (10.<n>.0.2, no limits), in (10.<n>.0.10,
// ingress limited to ingress) and out (10.<n>.0.11, egress limited to
// egress), both limits with burst, and returns peer and out.
func limitedPods(e *env, n byte, ingress, egress, burst string) (peer, out *testPod) {
	pod := func(name string, last byte, extra map[string]string) *testPod {
		return e.addPod(podSpec{name: name, ips: fmt.Sprintf("10.%d.0.%d/24", n, last), mac: fmt.Sprintf("02:00:0a:%02x:00:%02x", n, last), extra: extra})
	}
	peer = pod("peer", 2, nil)
	pod("in", 10, map[string]string{annotations.IngressBandwidth: ingress, annotations.IngressBurst: burst})
	out = pod("out", 11, map[string]string{annotations.EgressBandwidth: egress, annotations.EgressBurst: burst})
	return peer, out
}
