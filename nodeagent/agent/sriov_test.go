package agent_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/podsource"
	"github.com/stickynet/stickynet/nodeagent/sriov"
	"github.com/stickynet/stickynet/nodeagent/sriov/sriovtest"
)

var untouched = sriov.Config{MAC: "00:00:00:00:00:00", SpoofChk: true, LinkState: sriov.LinkAuto}

// sriovEnv is a node whose "PF" pf0 has VFs whose netdevs are veths in the
// node's namespace; each VF's peer sits in a "wire" namespace with an
// address, so traffic through a VF in a pod is real.
type sriovEnv struct {
	*env
	pf   *sriovtest.Recorder
	wire *agenttest.Netns
}

func newSriovEnv(t *testing.T, vfs int, mutate func(*agent.Options)) *sriovEnv {
	t.Helper()
	root := t.TempDir()
	var names []string
	initial := map[string]sriov.Config{}
	for i := range vfs {
		names = append(names, "pf0v"+string(rune('0'+i)))
		initial["pf0/"+string(rune('0'+i))] = untouched
	}
	if err := sriovtest.MakeTree(root, "pf0", names); err != nil {
		t.Fatal(err)
	}
	s := &sriovEnv{pf: sriovtest.NewRecorder(initial)}
	trust := true
	net := &v1alpha1.SriovNetwork{
		ObjectMeta: metav1.ObjectMeta{Name: "fast"},
		Spec:       v1alpha1.SriovNetworkSpec{PFNames: []string{"pf0"}, VLAN: 100, Trust: &trust, LinkState: v1alpha1.LinkStateEnable},
	}
	node := agenttest.NewNode(t)
	s.wire = agenttest.NewNetns(t)
	h := handleIn(t, node.Netns)
	wire := handleIn(t, s.wire)
	for _, n := range names {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n, MTU: 1400}, PeerName: n + "w", PeerNamespace: netlink.NsFd(int(s.wire.Fd()))}); err != nil {
			t.Fatal(err)
		}
		l, _ := wire.LinkByName(n + "w")
		if err := wire.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	l, _ := wire.LinkByName("pf0v0w")
	addr, _ := netlink.ParseAddr("10.94.0.2/24")
	if err := wire.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	pods := agenttest.NewStatic()
	opts := node.Options(pods)
	opts.SysfsRoot = root
	opts.SriovPF = s.pf
	opts.SriovNetworks = podsource.NewStaticSriovNetworks(net)
	if mutate != nil {
		mutate(&opts)
	}
	e := &env{t: t, node: node, pods: pods, opts: opts}
	e.agent = agenttest.StartAgent(t, opts)
	e.cni = agenttest.NewCNI(t, node, filepath.Join(opts.CNIConfDir, agent.DefaultCNIConfName))
	s.env = e
	return s
}

func vfPod(name, ip, mac string, extra map[string]string) podSpec {
	ann := map[string]string{annotations.SriovNetwork: "fast"}
	for k, v := range extra {
		ann[k] = v
	}
	return podSpec{name: name, ips: ip, mac: mac, extra: ann}
}

func TestSriovAttachDetach(t *testing.T) {
	s := newSriovEnv(t, 2, nil)
	host := s.hostHandle()
	origMAC := func(name string) string {
		l, err := host.LinkByName(name)
		if err != nil {
			t.Fatalf("VF netdev %s not in the node: %v", name, err)
		}
		return l.Attrs().HardwareAddr.String()
	}
	mac0 := origMAC("pf0v0")

	p := s.newPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", map[string]string{annotations.EgressBandwidth: "30M"}))
	res, err := s.cni.Add(p.rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, _ := types100.NewResultFromResult(res)
	if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "eth0" || r.Interfaces[0].Sandbox != p.netns.Path() || *r.IPs[0].Interface != 0 {
		t.Fatalf("result %s", mustJSON(r))
	}
	want := sriov.Config{MAC: "02:00:0a:5e:00:0a", VLAN: 100, SpoofChk: true, Trust: true, MaxTxRateMbps: 30, LinkState: sriov.LinkEnable}
	wantCalls := []string{
		"SetVfHardwareAddr pf0/0 02:00:0a:5e:00:0a", "SetVfVlan pf0/0 100", "SetVfSpoofchk pf0/0 true",
		"SetVfTrust pf0/0 true", "SetVfMaxTxRate pf0/0 30", "SetVfLinkState pf0/0 enable",
	}
	if got := s.pf.Calls(); !reflect.DeepEqual(got, wantCalls) {
		t.Errorf("PF calls %v\nwant %v", got, wantCalls)
	}
	if got, _ := s.pf.VfConfig("pf0", 0); got != want {
		t.Errorf("VF 0 is %+v, want %+v", got, want)
	}
	if _, err := host.LinkByName("pf0v0"); err == nil {
		t.Error("VF netdev still in the node after ADD")
	}
	l, err := handleIn(t, p.netns).LinkByName("eth0")
	if err != nil || l.Attrs().HardwareAddr.String() != "02:00:0a:5e:00:0a" || l.Attrs().MTU != 1400 {
		t.Fatalf("pod eth0: %v %v", l, err)
	}
	if !ping(t, p, "10.94.0.2", 2) {
		t.Error("no traffic through the VF")
	}
	if err := s.cni.Check(p.rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	// The record holds how the VF was.
	b, err := os.ReadFile(filepath.Join(s.opts.CacheDir, "ctr-a_eth0.json"))
	if err != nil || !strings.Contains(string(b), `"origMAC": "`+mac0+`"`) || !strings.Contains(string(b), `"original": {`) {
		t.Errorf("record: %v\n%s", err, b)
	}

	// Live egress change: max_tx_rate follows.
	pod := p.pod.DeepCopy()
	pod.Annotations[annotations.EgressBandwidth] = "50M"
	s.pods.Set(pod)
	waitFor(t, "max_tx_rate 50", func() bool { c, _ := s.pf.VfConfig("pf0", 0); return c.MaxTxRateMbps == 50 })
	s.pf.Calls()

	// The PF gives up the pod's MAC before the VF's netdev is given its own
	// back: drivers such as ixgbe, i40e and ice refuse an untrusted VF's MAC
	// change while the PF holds another MAC for it.
	var netdevMAC string
	s.pf.OnCall(func(call string) {
		if call != "SetVfHardwareAddr" {
			return
		}
		if l, err := host.LinkByName("pf0v0"); err != nil {
			netdevMAC = "no pf0v0 in the node: " + err.Error()
		} else {
			netdevMAC = l.Attrs().HardwareAddr.String()
		}
	})
	if err := s.cni.Del(p.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	s.pf.OnCall(nil)
	if netdevMAC != "02:00:0a:5e:00:0a" {
		t.Errorf("the VF netdev's MAC when the PF gave up the pod's MAC: %s; want still the pod's 02:00:0a:5e:00:0a (the PF side first)", netdevMAC)
	}
	if got, _ := s.pf.VfConfig("pf0", 0); got != untouched {
		t.Errorf("VF 0 after DEL is %+v, want it restored to %+v", got, untouched)
	}
	if got := origMAC("pf0v0"); got != mac0 {
		t.Errorf("VF netdev MAC after DEL %s, want %s", got, mac0)
	}
	if l, _ := host.LinkByName("pf0v0"); l != nil && l.Attrs().MTU != 1400 {
		t.Errorf("VF netdev MTU after DEL %d", l.Attrs().MTU)
	}
	if err := s.cni.Del(p.rt); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	if recs := s.records(); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
}

// A VF takes the agent's --mtu but never above its PF's: drivers refuse a
// VF an MTU above its PF's, and --mtu 9000 for the OVS fabric beside a PF
// at 1500 would have failed every VF pod's ADD. The record keeps the MTU
// the VF has.
func TestSriovVFMTUBoundByPF(t *testing.T) {
	s := newSriovEnv(t, 1, func(o *agent.Options) { o.MTU = 9000 })
	if err := s.hostHandle().LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pf0", MTU: 1450}, PeerName: "pf0w", PeerNamespace: netlink.NsFd(int(s.wire.Fd()))}); err != nil { // the PF's netdev (this kernel has no dummy links)
		t.Fatal(err)
	}
	p := s.newPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	if _, err := s.cni.Add(p.rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if l, err := handleIn(t, p.netns).LinkByName("eth0"); err != nil || l.Attrs().MTU != 1450 {
		t.Fatalf("pod eth0: %v %v; want the PF's MTU 1450 (not --mtu 9000, nor the VF's 1400)", l, err)
	}
	if b, err := os.ReadFile(filepath.Join(s.opts.CacheDir, "ctr-a_eth0.json")); err != nil || !strings.Contains(string(b), `"mtu": 1450`) {
		t.Errorf("record: %v\n%s; want the MTU the VF has, 1450", err, b)
	}
	if err := s.cni.Del(p.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if l, err := s.hostHandle().LinkByName("pf0v0"); err != nil || l.Attrs().MTU != 1400 {
		t.Errorf("VF netdev after DEL: %v %v; want its own MTU 1400 back", l, err)
	}
}

// A VF whose link comes up a while after the move (a driver bringing up its
// carrier) still has the pod's address announced on the wire: SetupVF
// waits for the carrier. The stand-in VF's wire end is down at ADD and comes
// up 500 ms later. Before, the announcement went out at once, the kernel
// dropped it with no carrier, and the wire never learnt the pod's MAC.
func TestSriovAnnounceAfterCarrier(t *testing.T) {
	s := newSriovEnv(t, 1, nil)
	wire := handleIn(t, s.wire)
	later := handleIn(t, s.wire)
	w, err := wire.LinkByName("pf0v0w")
	if err != nil {
		t.Fatal(err)
	}
	s.wire.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/pf0v0w/arp_accept") // a gratuitous ARP makes an entry
	if err := wire.LinkSetDown(w); err != nil {
		t.Fatal(err)
	}
	// The wire end comes up 500 ms after the VF is in the pod's netns, so
	// that the ADD reaches its wait for carrier first however slow it is.
	p := s.newPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	inPod := handleIn(t, p.netns)
	up := make(chan error, 1)
	var upAt time.Time
	go func() {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := inPod.LinkByName("eth0"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				up <- errors.New("the VF never reached the pod's netns")
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
		upAt = time.Now()
		up <- later.LinkSetUp(w)
	}()
	if _, err := s.cni.Add(p.rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	added := time.Now()
	if err := <-up; err != nil {
		t.Fatal(err)
	}
	if added.Before(upAt) {
		t.Fatalf("ADD returned at %s, before the VF had carrier (%s): it did not wait", added.Format(time.StampMilli), upAt.Format(time.StampMilli))
	}
	want, _ := net.ParseMAC("02:00:0a:5e:00:0a")
	var got []netlink.Neigh
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got, err = wire.NeighList(w.Attrs().Index, netlink.FAMILY_V4); err != nil {
			t.Fatal(err)
		}
		for _, n := range got {
			if n.IP.Equal(net.ParseIP("10.94.0.10")) && bytes.Equal(n.HardwareAddr, want) {
				return
			}
		}
	}
	t.Errorf("the wire's neighbours %v; want 10.94.0.10 at %s (the announcement not seen)", got, want)
}

func TestSriovNetnsGoneAndExhaustion(t *testing.T) {
	s := newSriovEnv(t, 2, func(o *agent.Options) { o.PodWait = 300 * time.Millisecond })
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	s.addPod(vfPod("b", "10.94.0.11/24", "02:00:0a:5e:00:0b", nil))
	c := s.newPod(vfPod("c", "10.94.0.12/24", "02:00:0a:5e:00:0c", nil))
	_, err := s.cni.Add(c.rt)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "no free VF of SriovNetwork fast") {
		t.Fatalf("ADD with every VF taken = %v; want code 11 saying so", err)
	}
	nothingLeftVF(t, s, c)

	a.netns.Remove(t) // the veth standing in for the VF goes with it
	if err := s.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL after the netns vanished: %v", err)
	}
	if got, _ := s.pf.VfConfig("pf0", 0); got != untouched {
		t.Errorf("VF 0 after DEL is %+v, want it restored", got)
	}
	if recs := s.records(); len(recs) != 1 {
		t.Errorf("records %v; want b's only", recs)
	}
}

func nothingLeftVF(t *testing.T, s *sriovEnv, p *testPod) {
	t.Helper()
	if _, err := handleIn(t, p.netns).LinkByName("eth0"); err == nil {
		t.Error("eth0 left in the pod netns")
	}
	for _, r := range s.records() {
		if strings.HasPrefix(r, p.rt.ContainerID+"_") {
			t.Errorf("record %s left", r)
		}
	}
}

func TestSriovRestart(t *testing.T) {
	s := newSriovEnv(t, 2, nil)
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	s.addPod(vfPod("b", "10.94.0.11/24", "02:00:0a:5e:00:0b", nil))
	s.agent.Stop(t)
	s.pods.Delete("default", "b") // b goes while the agent is down
	s.restart()
	if err := s.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK a after restart: %v", err)
	}
	if got, _ := s.pf.VfConfig("pf0", 1); got != untouched {
		t.Errorf("VF 1 of the gone pod is %+v, want it restored", got)
	}
	if _, err := s.hostHandle().LinkByName("pf0v1"); err != nil {
		t.Errorf("VF 1's netdev not back in the node: %v", err)
	}
	if !ping(t, a, "10.94.0.2", 2) {
		t.Error("no traffic through a's VF after the restart")
	}
}

// A pod gone while the agent was down whose VF cannot be given back at the
// restart (the PF refuses for now) stays tracked: its DEL tries again and
// restores the VF, and no other pod is given it meanwhile.
func TestSriovRestoreTeardownFails(t *testing.T) {
	s := newSriovEnv(t, 2, nil)
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	s.agent.Stop(t)
	s.pods.Delete("default", "a")
	s.pf.SetFail("SetVfHardwareAddr", errors.New("PF busy"))
	restores := counter(t, "stickynet_nodeagent_background_errors_total", "op", "restore")
	s.restart()
	s.pf.SetFail("SetVfHardwareAddr", nil)
	if got := counter(t, "stickynet_nodeagent_background_errors_total", "op", "restore"); got != restores+1 {
		t.Errorf("stickynet_nodeagent_background_errors_total{op=restore} = %v after an incomplete restore; want %v", got, restores+1)
	}
	b := vf0KeptUntilDEL(t, s, a)
	if err := s.cni.Del(b.rt); err != nil {
		t.Fatalf("DEL b: %v", err)
	}
}

// A resync that fails is tried again within seconds, not at the next
// periodic resync (an hour away here): this one, run because OVS lost its
// flows, fails to give back the VF of a pod whose sandbox is gone while the
// PF refuses, and sets the marker flow, so the next checks saw nothing
// wrong. Before, the VF stayed taken until the periodic resync.
func TestFailedResyncRetried(t *testing.T) {
	s := newSriovEnv(t, 2, func(o *agent.Options) { o.ResyncPeriod = time.Hour })
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	s.pf.SetFail("SetVfHardwareAddr", errors.New("PF busy"))
	a.netns.Remove(t) // the sandbox is gone, and no DEL comes
	failed := counter(t, "stickynet_nodeagent_background_errors_total", "op", "resync")
	s.node.OVS.Ofctl(t, "del-flows", s.node.Bridge, "table=250") // the marker flow
	waitFor(t, "the resync to fail", func() bool {
		return counter(t, "stickynet_nodeagent_background_errors_total", "op", "resync") > failed
	})
	s.pf.SetFail("SetVfHardwareAddr", nil)
	waitFor(t, "the failed resync to be tried again and give VF 0 back", func() bool {
		got, _ := s.pf.VfConfig("pf0", 0)
		return got == untouched && len(s.records()) == 0
	})
}

// A VF destroyed under its pod (the PF's sriov_numvfs lowered, its driver
// unloaded) has nothing to restore: the pod's DEL succeeds and leaves
// nothing, where before it failed for good on the PF and the pod stayed
// Terminating.
func TestSriovVFGoneDel(t *testing.T) {
	s := newSriovEnv(t, 2, nil)
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	s.pf.Calls() // the ADD's
	// The VF goes: its netdev (the pod's eth0), its sysfs entry, and the
	// PF no longer knows it.
	pn := handleIn(t, a.netns)
	if l, err := pn.LinkByName("eth0"); err != nil {
		t.Fatal(err)
	} else if err := pn.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(s.opts.SysfsRoot, "class", "net", "pf0", "device", "virtfn0")); err != nil {
		t.Fatal(err)
	}
	for _, call := range []string{"SetVfHardwareAddr", "SetVfVlan", "SetVfSpoofchk", "SetVfTrust", "SetVfMaxTxRate", "SetVfLinkState"} {
		s.pf.SetFail(call, errors.New("invalid argument"))
	}
	if err := s.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL of a pod whose VF is gone: %v", err)
	}
	nothingLeftVF(t, s, a)
	if got := s.pf.Calls(); slices.ContainsFunc(got, func(c string) bool { return strings.Contains(c, "pf0/0") }) {
		t.Errorf("PF calls for the gone VF 0: %v; want none", got)
	}
}

// A driver that refuses every max_tx_rate, 0 too (ixgbe while its PF's
// link is down or below 10 Gbit/s): a pod without an egress limit gets its
// VF and gives it back (before, its ADD failed); a limited one is refused,
// naming the rate.
func TestSriovRateRefusedByDriver(t *testing.T) {
	s := newSriovEnv(t, 2, nil)
	s.pf.SetFail("SetVfMaxTxRate", unix.EINVAL)
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	if err := s.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL of a pod without a limit, the driver refusing max_tx_rate: %v", err)
	}
	nothingLeftVF(t, s, a)
	b := s.newPod(vfPod("b", "10.94.0.11/24", "02:00:0a:5e:00:0b", map[string]string{annotations.EgressBandwidth: "50M"}))
	if _, err := s.cni.Add(b.rt); err == nil || !strings.Contains(err.Error(), "max_tx_rate of VF 0 on pf0 to 50 Mbit/s: invalid argument") {
		t.Fatalf("ADD of a pod limited to 50M, the driver refusing max_tx_rate = %v; want an error naming the rate", err)
	}
	if got, _ := s.pf.VfConfig("pf0", 0); got != untouched {
		t.Errorf("VF 0 after the refused ADD is %+v; want it restored", got)
	}
}

// vf0KeptUntilDEL checks that VF 0 is still a's: pod b, added now, gets VF
// 1; a's DEL then restores VF 0. It returns b.
func vf0KeptUntilDEL(t *testing.T, s *sriovEnv, a *testPod) *testPod {
	t.Helper()
	b := s.addPod(vfPod("b", "10.94.0.11/24", "02:00:0a:5e:00:0b", nil))
	if got, _ := s.pf.VfConfig("pf0", 1); got.MAC != "02:00:0a:5e:00:0b" {
		t.Errorf("b's VF 1 is %+v; want b's MAC (VF 0 still a's)", got)
	}
	if err := s.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL a: %v", err)
	}
	if got, _ := s.pf.VfConfig("pf0", 0); got != untouched {
		t.Errorf("VF 0 after a's DEL is %+v; want it restored", got)
	}
	return b
}

// A DEL whose VF's former VLAN the PF refuses to take back (for now)
// succeeds once the VF's netdev is back in the node and the PF no longer
// gives the VF the pod's MAC, so the pod can finish terminating; the VF
// stays the pod's, given to no other, until resync's sweep restores it
// after the sandbox is gone. Before, every DEL failed while the PF refused,
// and the pod stayed Terminating. While the PF still gives the VF the pod's
// MAC, the DEL fails: the pod's identity must not start elsewhere meanwhile.
func TestSriovDelRestoreRefused(t *testing.T) {
	s := newSriovEnv(t, 2, func(o *agent.Options) { o.ResyncPeriod = 300 * time.Millisecond })
	a := s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	s.pf.SetFail("SetVfHardwareAddr", errors.New("PF busy"))
	if err := s.cni.Del(a.rt); err == nil || !strings.Contains(err.Error(), "PF busy") {
		t.Fatalf("DEL with the PF refusing the VF's own MAC: %v; want the refusal (the VF would still send as the pod)", err)
	}
	s.pf.SetFail("SetVfHardwareAddr", nil)
	if err := s.cni.Del(a.rt); err != nil { // the runtime's next try
		t.Fatalf("DEL once the PF takes the MAC: %v", err)
	}
	a = s.addPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil)) // VF 0 again
	s.pf.SetFail("SetVfVlan", errors.New("PF busy"))
	if err := s.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL with the PF refusing the VF's former VLAN only: %v; want it to succeed, the VF out of the pod", err)
	}
	if _, err := s.hostHandle().LinkByName("pf0v0"); err != nil {
		t.Fatalf("VF 0's netdev not back in the node after DEL: %v", err)
	}
	if got, _ := s.pf.VfConfig("pf0", 0); got.VLAN != 100 || got.MAC != untouched.MAC {
		t.Fatalf("VF 0 after the DEL is %+v; the test wants its own MAC back and the pod's VLAN 100 left", got)
	}
	s.pf.SetFail("SetVfVlan", nil) // the PF would take it now: only the sweep may give VF 0 back
	// The StatefulSet's next pod, with a's MAC and address, on this node
	// while a's sandbox is still there: VF 0 carries neither (its netdev is
	// back, the PF gives it its own MAC), so the ADD goes ahead on VF 1.
	// Before, it waited for the sweep, and failed with "try again".
	next := s.newPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	next.pod.UID = "uid-a-next"
	s.pods.Set(next.pod)
	next.rt = agenttest.RuntimeConf("ctr-a-next", next.netns, "eth0", next.pod)
	if _, err := s.cni.Add(next.rt); err != nil {
		t.Fatalf("ADD of a's next pod while VF 0, out of a, waits for the sweep: %v", err)
	}
	if got, _ := s.pf.VfConfig("pf0", 1); got.MAC != "02:00:0a:5e:00:0a" {
		t.Errorf("a's next pod's VF 1 is %+v; want a's MAC", got)
	}
	if err := s.cni.Del(next.rt); err != nil {
		t.Fatalf("DEL a's next pod: %v", err)
	}
	b := s.addPod(vfPod("b", "10.94.0.11/24", "02:00:0a:5e:00:0b", nil))
	if got, _ := s.pf.VfConfig("pf0", 1); got.MAC != "02:00:0a:5e:00:0b" {
		t.Errorf("b's VF 1 is %+v; want b's MAC (VF 0, not restored, still a's)", got)
	}
	a.netns.Remove(t) // the runtime removes the sandbox after its DEL
	waitFor(t, "VF 0 restored by resync's sweep", func() bool { c, _ := s.pf.VfConfig("pf0", 0); return c == untouched })
	if err := s.cni.Del(b.rt); err != nil {
		t.Fatalf("DEL b: %v", err)
	}
}

// An ADD whose VF setup fails and whose restore of the VF fails too keeps
// the VF (tracked, with its record): no other pod gets a VF that still holds
// the failed pod's settings; the DEL that follows restores it and frees it.
func TestSriovFailedAddRestoreFails(t *testing.T) {
	s := newSriovEnv(t, 2, nil)
	a := s.newPod(vfPod("a", "10.94.0.10/24", "02:00:0a:5e:00:0a", nil))
	// The VLAN is refused after the pod's MAC is set; from then on the MAC
	// is refused too, so the restore cannot put the VF's own MAC back (a
	// refused VLAN the VF still has is no failure of the restore).
	s.pf.SetFail("SetVfVlan", errors.New("PF busy"))
	s.pf.OnCall(func(call string) {
		if call == "SetVfVlan" {
			s.pf.SetFail("SetVfHardwareAddr", errors.New("PF busy"))
		}
	})
	if _, err := s.cni.Add(a.rt); err == nil || !strings.Contains(err.Error(), "restore the VF") {
		t.Fatalf("ADD with the PF refusing VLANs, then MACs = %v; want an error saying the VF could not be restored", err)
	}
	s.pf.OnCall(nil)
	s.pf.SetFail("SetVfVlan", nil)
	s.pf.SetFail("SetVfHardwareAddr", nil)
	if recs := s.records(); len(recs) != 1 {
		t.Errorf("records after the failed ADD %v; want a's, kept for its DEL", recs)
	}
	b := vf0KeptUntilDEL(t, s, a)
	if recs := s.records(); len(recs) != 1 {
		t.Errorf("records after a's DEL %v; want b's only", recs)
	}
	if err := s.cni.Del(b.rt); err != nil {
		t.Fatalf("DEL b: %v", err)
	}
}

// The agent advertises each SriovNetwork's VFs as an extended resource on
// its Node, following the networks and their node selectors, and
// stickynet's network as many times as the node runs pods.
func TestSriovResourceAdvertised(t *testing.T) {
	apisrv := agenttest.StartAPIServer(t, filepath.Join("..", "..", "charts", "stickynet", "crds"))
	ctx := t.Context()
	kube := kubernetes.NewForConfigOrDie(apisrv.Config)
	dyn := dynamic.NewForConfigOrDie(apisrv.Config)
	n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"nic": "fast"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Capacity = corev1.ResourceList{corev1.ResourcePods: resource.MustParse("42")}
	n.Status.Allocatable = n.Status.Capacity
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := sriovtest.MakeTree(root, "pf0", []string{"a0", "a1", "a2"}); err != nil {
		t.Fatal(err)
	}
	if err := sriovtest.MakeTree(root, "pf1", []string{"b0", "b1"}); err != nil {
		t.Fatal(err)
	}
	create := func(name string, pfs []string, selector map[string]string) {
		n := &v1alpha1.SriovNetwork{
			TypeMeta:   metav1.TypeMeta{APIVersion: "stickynet.io/v1alpha1", Kind: "SriovNetwork"},
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       v1alpha1.SriovNetworkSpec{PFNames: pfs},
		}
		if selector != nil {
			n.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: selector}
		}
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dyn.Resource(podsource.SriovNetworkResource).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	create("fast", []string{"pf0", "pf1"}, map[string]string{"nic": "fast"})
	create("elsewhere", []string{"pf0"}, map[string]string{"nic": "slow"})

	node := agenttest.NewNode(t)
	opts := node.Options(nil)
	opts.Pods, opts.Kubeconfig, opts.SysfsRoot = nil, apisrv.Kubeconfig, root
	opts.ResyncPeriod = time.Hour
	agenttest.StartAgent(t, opts)

	resources := func() map[string]string {
		n, err := kube.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for k, v := range n.Status.Capacity {
			if a, ok := n.Status.Allocatable[k]; !ok || a.Cmp(v) != 0 {
				t.Errorf("allocatable %s = %v, capacity %v", k, a.String(), v.String())
			}
			out[string(k)] = v.String()
		}
		return out
	}
	waitFor(t, "stickynet.io/sriov-fast: 5", func() bool { return resources()["stickynet.io/sriov-fast"] == "5" })
	if got := resources()[annotations.NetworkResource]; got != "42" {
		t.Errorf("%s: %s; want 42, the node's pods", annotations.NetworkResource, got)
	}
	if _, ok := resources()["stickynet.io/sriov-elsewhere"]; ok {
		t.Error("a network whose selector does not match the node is advertised")
	}
	if err := dyn.Resource(podsource.SriovNetworkResource).Delete(ctx, "fast", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stickynet.io/sriov-fast to go", func() bool { _, ok := resources()["stickynet.io/sriov-fast"]; return !ok })
}

// An agent that starts before its Node is registered (a simulated node, an
// API server that does not answer yet) advertises stickynet.io/network
// within seconds of the Node's arrival (its watch of the Node and its retry
// each see to it), not a resync period later: until then the node takes
// none of stickynet's pods. Nor does it wait for the SriovNetworks, here
// never listed (no CRD): their VFs' counts keep the values they have.
func TestNetworkResourceOnceNodeRegistered(t *testing.T) {
	apisrv := agenttest.StartAPIServer(t)
	ctx := t.Context()
	kube := kubernetes.NewForConfigOrDie(apisrv.Config)
	node := agenttest.NewNode(t)
	opts := node.Options(nil)
	opts.Pods, opts.Kubeconfig = nil, apisrv.Kubeconfig
	opts.ResyncPeriod = time.Hour
	agenttest.StartAgent(t, opts)
	time.Sleep(3 * time.Second) // a few failed passes
	vfs := corev1.ResourceName("stickynet.io/sriov-fast")
	had := corev1.ResourceList{vfs: resource.MustParse("2")}
	// Registered with its status, as a kubelet does (an update after would
	// race the agent's patch).
	if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1"}, Status: corev1.NodeStatus{Capacity: had, Allocatable: had},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var status corev1.NodeStatus
	waitFor(t, annotations.NetworkResource+" on the Node registered after the agent started", func() bool {
		n, err := kube.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		status = n.Status
		q, ok := n.Status.Allocatable[annotations.NetworkResource]
		return ok && q.Value() == 110
	})
	if q, ok := status.Allocatable[vfs]; !ok || q.Value() != 2 {
		t.Errorf("%s: %s (present %v); want the 2 it had, the SriovNetworks not listed", vfs, q.String(), ok)
	}
}

// A VF carries its pod's MAC and VLAN, set through the PF, until DEL resets
// it, even once the pod's netns is gone: a replacement with the same address
// waits for that DEL.
func TestSriovCarrierUntilDel(t *testing.T) {
	s := newSriovEnv(t, 2, func(o *agent.Options) { o.PodWait = 500 * time.Millisecond })
	old := s.addPod(vfPod("old", "10.95.0.10/24", "02:00:0a:5f:00:0a", nil))
	old.netns.Remove(t)
	nw := s.newPod(vfPod("new", "10.95.0.10/24", "02:00:0a:5f:00:0a", nil))
	_, err := s.cni.Add(nw.rt)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "still carried on this node by pod default/old") {
		t.Fatalf("ADD while the old pod's VF still has the MAC: %v; want code 11 naming default/old", err)
	}
	if err := s.cni.Del(old.rt); err != nil {
		t.Fatalf("DEL of the old pod: %v", err)
	}
	if _, err := s.cni.Add(nw.rt); err != nil {
		t.Fatalf("ADD after the old pod's DEL: %v", err)
	}
}
