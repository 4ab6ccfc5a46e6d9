package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
)

// Bandwidth tests measure with iperf3 (TCP, one stream) between two pods on
// the bridge, each direction on its own. The limits are wire rates (Ethernet
// frames, as tbf and OVS meters count them); iperf3 reports TCP payload, so
// the payload rate is scaled by (MSS+66)/MSS (TCP/IP headers with timestamps
// and the Ethernet header: 1514-byte frames carry 1448 bytes at MTU 1500).
// Both numbers are logged.

const (
	iperfSeconds   = 8
	iperfSkip      = 2 // seconds of ramp-up (and the policer's initial burst) left out
	tbfTolerance   = 0.05
	meterTolerance = 0.10
)

type throughput struct {
	payload float64 // bit/s of TCP payload the receiver got
	wire    float64 // the same as Ethernet frames on the wire
}

// iperfServer runs an iperf3 server in the pod until the test ends.
func iperfServer(t *testing.T, p *testPod) {
	t.Helper()
	cmd := p.netns.Command(context.Background(), "iperf3", "-s", "-J")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
}

// measure runs iperf3 from one pod to another (whose server runs) and
// returns the rate the receiver saw after the ramp-up.
func measure(t *testing.T, from *testPod, toIP string) throughput {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var c struct {
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
	var out []byte
	for range 50 { // until the server listens
		var err error
		out, err = from.netns.Command(ctx, "iperf3", "-c", toIP, "-t", fmt.Sprint(iperfSeconds), "-J", "--get-server-output").Output()
		if jerr := json.Unmarshal(out, &c); jerr != nil {
			t.Fatalf("iperf3 client: %v, output %.1000s", err, out)
		}
		if c.Error == "" || !strings.Contains(c.Error, "Connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if c.Error != "" || c.Start.MSS == 0 {
		t.Fatalf("iperf3 client: %s: %.1000s", c.Error, out)
	}
	var bytes, secs float64
	for _, iv := range c.Server.Intervals {
		if iv.Sum.Start >= iperfSkip && iv.Sum.Seconds > 0.5 {
			bytes += iv.Sum.Bytes
			secs += iv.Sum.Seconds
		}
	}
	if secs < iperfSeconds-iperfSkip-1.5 {
		t.Fatalf("iperf3 server measured only %.1fs: %.1000s", secs, out)
	}
	payload := bytes * 8 / secs
	return throughput{payload: payload, wire: payload * float64(c.Start.MSS+66) / float64(c.Start.MSS)}
}

func checkRate(t *testing.T, what string, got throughput, rate float64, tol float64) {
	t.Helper()
	dev := (got.wire - rate) / rate
	t.Logf("%s: limit %.0f Mbit/s, wire %.1f Mbit/s (%+.1f%%), TCP payload %.1f Mbit/s", what, rate/1e6, got.wire/1e6, dev*100, got.payload/1e6)
	if math.Abs(dev) > tol {
		t.Errorf("%s: %.1f Mbit/s on the wire for a limit of %.0f Mbit/s: off by %+.1f%%, allowed ±%.0f%%", what, got.wire/1e6, rate/1e6, dev*100, tol*100)
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
	iperfServer(t, peer)
	for i, mbit := range []int{20, 100, 300} {
		t.Run(fmt.Sprintf("%dM", mbit), func(t *testing.T) {
			rate := fmt.Sprintf("%dM", mbit)
			ip := fmt.Sprintf("10.85.0.%d", 10+i)
			p := e.addPod(podSpec{
				name: "limited-" + rate, ips: ip + "/24", mac: fmt.Sprintf("02:00:0a:55:00:%02x", 10+i),
				extra: map[string]string{annotations.IngressBandwidth: rate, annotations.EgressBandwidth: rate},
			})
			iperfServer(t, p)
			checkRate(t, "into the pod (tbf)", measure(t, peer, ip), float64(mbit)*1e6, tbfTolerance)
			checkRate(t, "out of the pod (meter)", measure(t, p, "10.85.0.2"), float64(mbit)*1e6, meterTolerance)
			if err := e.cni.Del(p.rt); err != nil {
				t.Fatal(err)
			}
		})
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
	iperfServer(t, peer)
	iperfServer(t, p)
	checkRate(t, "before, into the pod", measure(t, peer, "10.86.0.10"), 100e6, tbfTolerance)
	checkRate(t, "before, out of the pod", measure(t, p, "10.86.0.2"), 100e6, meterTolerance)

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
	checkRate(t, "after, into the pod", measure(t, peer, "10.86.0.10"), 20e6, tbfTolerance)
	checkRate(t, "after, out of the pod", measure(t, p, "10.86.0.2"), 20e6, meterTolerance)
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
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
