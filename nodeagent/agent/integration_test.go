package agent_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/bandwidth"
)

func TestAddCheckDel(t *testing.T) {
	e := newEnv(t, nil)
	a := e.newPod(podSpec{name: "a", ips: "10.77.0.10/24", mac: "02:00:0a:4d:00:0a", gw: "10.77.0.1", vlan: 0})
	b := e.addPod(podSpec{name: "b", ips: "10.77.0.11/24", mac: "02:00:0a:4d:00:0b", gw: "10.77.0.1"})

	res, err := e.cni.Add(a.rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("result", func(t *testing.T) {
		if r.CNIVersion != "1.1.0" || len(r.Interfaces) != 2 || len(r.IPs) != 1 || len(r.Routes) != 1 {
			t.Fatalf("result %s", mustJSON(r))
		}
		pod := r.Interfaces[*r.IPs[0].Interface]
		if pod.Name != "eth0" || pod.Mac != "02:00:0a:4d:00:0a" || pod.Sandbox != a.netns.Path() {
			t.Errorf("pod interface %+v", pod)
		}
		if r.IPs[0].Address.String() != "10.77.0.10/24" || r.IPs[0].Gateway.String() != "10.77.0.1" {
			t.Errorf("ip %+v", r.IPs[0])
		}
		if r.Routes[0].Dst.String() != "0.0.0.0/0" || r.Routes[0].GW.String() != "10.77.0.1" {
			t.Errorf("route %+v", r.Routes[0])
		}
	})
	t.Run("pod interface", func(t *testing.T) {
		h := handleIn(t, a.netns)
		l, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().HardwareAddr.String() != "02:00:0a:4d:00:0a" || l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("eth0 %s up=%v", l.Attrs().HardwareAddr, l.Attrs().Flags&net.FlagUp != 0)
		}
		addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.10/24" {
			t.Errorf("addresses %v", addrs)
		}
		routes, _ := h.RouteList(l, netlink.FAMILY_V4)
		var gw string
		for _, rt := range routes {
			if rt.Dst == nil || rt.Dst.String() == "0.0.0.0/0" {
				gw = rt.Gw.String()
			}
		}
		if gw != "10.77.0.1" {
			t.Errorf("default route via %q, routes %v", gw, routes)
		}
		var features map[string]bool
		if err := a.netns.Do(func(_ ns.NetNS) error {
			et, err := ethtool.NewEthtool()
			if err != nil {
				return err
			}
			defer et.Close()
			features, err = et.Features("eth0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if features["tx-checksum-ip-generic"] {
			t.Error("TX checksum offload is still on for the pod veth on a netdev bridge")
		}
		if v := sysctlIn(t, a.netns, "net/ipv6/conf/eth0/disable_ipv6"); v != "1" {
			t.Errorf("IPv6 on an IPv4-only pod's eth0: disable_ipv6=%s", v)
		}
		if v := sysctlIn(t, e.node.Netns, "net/ipv6/conf/"+e.ovsPortOf("ctr-a")+"/disable_ipv6"); v != "1" {
			t.Errorf("IPv6 on the host veth: disable_ipv6=%s", v)
		}
	})
	t.Run("OVS port", func(t *testing.T) {
		port := e.ovsPortOf("ctr-a")
		if port == "" {
			t.Fatal("no OVS port labelled with container ctr-a")
		}
		ids := e.node.OVS.Vsctl(t, "get", "Interface", port, "external_ids")
		for _, want := range []string{`stickynet-pod-namespace=default`, `stickynet-pod-name=a`, `stickynet-pod-uid=uid-a`, `stickynet-container-id=ctr-a`, `stickynet-ifname=eth0`} {
			if !strings.Contains(ids, want) {
				t.Errorf("external_ids %s lack %s", ids, want)
			}
		}
		if mode := e.node.OVS.Vsctl(t, "get", "Port", port, "vlan_mode"); mode != "access" {
			t.Errorf("vlan_mode %s", mode)
		}
	})
	t.Run("traffic", func(t *testing.T) {
		if !ping(t, a, "10.77.0.11", 2) || !ping(t, b, "10.77.0.10", 2) {
			t.Fatal("pods on the bridge do not reach each other")
		}
	})
	if err := e.cni.Check(a.rt); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	port := e.ovsPortOf("ctr-a")
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	t.Run("after DEL", func(t *testing.T) {
		if p := e.ovsPortOf("ctr-a"); p != "" {
			t.Errorf("OVS port %s still there", p)
		}
		if slices.Contains(e.hostVeths(), port) {
			t.Errorf("host veth %s still there", port)
		}
		if _, err := handleIn(t, a.netns).LinkByName("eth0"); err == nil {
			t.Error("eth0 still in the pod netns")
		}
		if recs := e.records(); len(recs) != 1 {
			t.Errorf("records %v; want only b's", recs)
		}
		if err := e.cni.Del(a.rt); err != nil {
			t.Errorf("second DEL: %v", err)
		}
		if err := e.cni.Check(a.rt); cniCode(err) != types.ErrUnknownContainer {
			t.Errorf("CHECK after DEL = %v; want code %d", err, types.ErrUnknownContainer)
		}
	})
	// ADD again after DEL: same MAC and address, traffic again.
	if _, err := e.cni.Add(a.rt); err != nil {
		t.Fatalf("ADD after DEL: %v", err)
	}
	if !ping(t, b, "10.77.0.10", 2) {
		t.Fatal("re-added pod unreachable")
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func TestDualStackAndVLANs(t *testing.T) {
	e := newEnv(t, nil)
	a := e.addPod(podSpec{name: "a", ips: "10.78.0.10/24,fd78::10/64", mac: "02:00:0a:4e:00:0a", gw: "10.78.0.1,fd78::1", vlan: 10})
	b := e.addPod(podSpec{name: "b", ips: "10.78.0.11/24,fd78::11/64", mac: "02:00:0a:4e:00:0b", gw: "10.78.0.1,fd78::1", vlan: 10})
	c := e.addPod(podSpec{name: "c", ips: "10.78.0.12/24", mac: "02:00:0a:4e:00:0c", vlan: 20})
	d := e.addPod(podSpec{name: "d", ips: "10.78.0.13/24", mac: "02:00:0a:4e:00:0d", vlan: 20})
	if tag := e.node.OVS.Vsctl(t, "get", "Port", e.ovsPortOf("ctr-a"), "tag"); tag != "10" {
		t.Fatalf("tag of a's port = %s, want 10", tag)
	}
	if !ping(t, a, "10.78.0.11", 2) {
		t.Error("same VLAN, IPv4: no reply")
	}
	if v := sysctlIn(t, a.netns, "net/ipv6/conf/eth0/disable_ipv6"); v != "0" {
		t.Errorf("IPv6 off on a dual-stack pod: disable_ipv6=%s", v)
	}
	if !ping(t, a, "fd78::11", 2) {
		t.Error("same VLAN, IPv6: no reply (NODAD address not usable?)")
	}
	if !ping(t, c, "10.78.0.13", 2) {
		t.Error("same VLAN 20: no reply (the isolation check below would pass for a pod that reaches nothing)")
	}
	if ping(t, c, "10.78.0.10", 1) {
		t.Error("pod on VLAN 20 reaches a pod on VLAN 10")
	}
	for _, p := range []*testPod{a, b, c, d} {
		if err := e.cni.Check(p.rt); err != nil {
			t.Errorf("CHECK %s: %v", p.pod.Name, err)
		}
	}
}

func TestDelAfterNetnsVanished(t *testing.T) {
	e := newEnv(t, nil)
	a := e.addPod(podSpec{
		name: "a", ips: "10.79.0.10/24", mac: "02:00:0a:4f:00:0a",
		extra: map[string]string{annotations.IngressBandwidth: "10M", annotations.EgressBandwidth: "10M"},
	})
	port := e.ovsPortOf("ctr-a")
	a.netns.Remove(t)
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL after the netns vanished: %v", err)
	}
	if p := e.ovsPortOf("ctr-a"); p != "" {
		t.Errorf("OVS port %s still there", p)
	}
	if slices.Contains(e.hostVeths(), port) {
		t.Errorf("host veth %s still there", port)
	}
	if recs := e.records(); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
	// DEL with an empty netns path (the runtime no longer knows it) as well.
	a.rt.NetNS = ""
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
}

func TestGC(t *testing.T) {
	e := newEnv(t, nil)
	a := e.addPod(podSpec{name: "a", ips: "10.80.0.10/24", mac: "02:00:0a:50:00:0a"})
	e.addPod(podSpec{
		name: "b", ips: "10.80.0.11/24", mac: "02:00:0a:50:00:0b",
		extra: map[string]string{annotations.EgressBandwidth: "10M"},
	})
	e.addPod(podSpec{name: "c", ips: "10.80.0.12/24", mac: "02:00:0a:50:00:0c"})
	if err := e.cni.GC([]types.GCAttachment{{ContainerID: "ctr-a", IfName: "eth0"}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	for _, gone := range []string{"ctr-b", "ctr-c"} {
		if p := e.ovsPortOf(gone); p != "" {
			t.Errorf("GC left %s's port %s", gone, p)
		}
	}
	if v := e.hostVeths(); len(v) != 1 {
		t.Errorf("host veths after GC: %v", v)
	}
	if recs := e.records(); len(recs) != 1 {
		t.Errorf("records after GC: %v", recs)
	}
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK of the valid attachment after GC: %v", err)
	}
	before := time.Now().Add(-time.Second) // file times are coarser than the clock
	if err := e.cni.Status(); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	// What a STATUS without the agent (a restart) goes by.
	if fi, err := os.Stat(filepath.Join(filepath.Dir(e.opts.Socket), api.StatusPassed)); err != nil || fi.ModTime().Before(before) {
		t.Errorf("%s after a STATUS that passed: %v, %v; want it touched", api.StatusPassed, fi, err)
	}
}

// nothingLeft asserts a failed ADD left no trace.
func nothingLeft(t *testing.T, e *env, p *testPod) {
	t.Helper()
	if port := e.ovsPortOf(p.rt.ContainerID); port != "" {
		t.Errorf("OVS port %s left behind", port)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("host veths left behind: %v", v)
	}
	if recs := e.records(); len(recs) != 0 {
		t.Errorf("records left behind: %v", recs)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.PodWait = 2 * time.Second })
	good := podSpec{name: "good", ips: "10.81.0.10/24", mac: "02:00:0a:51:00:0a"}
	with := func(key, value string) []byte { return e.confWith(map[string]any{key: value}) }
	withVersion := func(v string) []byte { return with("cniVersion", v) }
	// notCached is a pod the runtime asks about that the agent's cache lacks.
	notCached := func(s podSpec) func(*testing.T) *testPod {
		return func(*testing.T) *testPod {
			p := e.newPod(s)
			e.pods.Delete("default", s.name)
			return p
		}
	}
	tests := []struct {
		name     string
		pod      func(t *testing.T) *testPod
		conf     []byte
		wantCode uint
		wantMsg  string
	}{
		{
			name: "malformed config", pod: func(*testing.T) *testPod { return e.newPod(good) },
			conf: []byte(`{"cniVersion":"1.1.0","name":"stickynet","type":"stickynet",`), wantCode: types.ErrDecodingFailure,
		},
		{
			name: "unknown CNI version", pod: func(*testing.T) *testPod { return e.newPod(good) },
			conf: withVersion("7.0.0"), wantCode: types.ErrIncompatibleCNIVersion, wantMsg: "incompatible",
		},
		{
			name: "pod without stickynet annotations",
			pod: func(*testing.T) *testPod {
				p := e.newPod(podSpec{name: "plain", ips: "10.81.0.11/24", mac: "02:00:0a:51:00:0b"})
				p.pod.Annotations = nil
				e.pods.Set(p.pod)
				return p
			},
			wantCode: api.ErrPodNotAdmitted, wantMsg: "stickynet.io/assigned-ip",
		},
		{
			name: "bad annotation value",
			pod: func(*testing.T) *testPod {
				p := e.newPod(podSpec{name: "badmac", ips: "10.81.0.12/24", mac: "02:00:0a:51:00:0c"})
				p.pod.Annotations[annotations.AssignedMAC] = "01:00:5e:00:00:01"
				e.pods.Set(p.pod)
				return p
			},
			wantCode: api.ErrBadAnnotation, wantMsg: "multicast",
		},
		{
			name:     "unknown pod",
			pod:      notCached(podSpec{name: "ghost", ips: "10.81.0.13/24", mac: "02:00:0a:51:00:0d"}),
			wantCode: types.ErrTryAgainLater, wantMsg: "default/ghost is not in the node agent's cache after 2s",
		},
		{
			// The wait is at most half the conflist's timeout: the agent's
			// error, not the plugin's, says what went wrong (the other half,
			// 1.5 s, is the answer's margin on a loaded machine).
			name: "unknown pod, short conflist timeout",
			pod:  notCached(podSpec{name: "ghost2", ips: "10.81.0.19/24", mac: "02:00:0a:51:00:13"}),
			conf: with("timeout", "3s"), wantCode: types.ErrTryAgainLater, wantMsg: "default/ghost2 is not in the node agent's cache after 1.5s",
		},
		{
			name: "stale pod UID",
			pod: func(*testing.T) *testPod {
				p := e.newPod(podSpec{name: "moved", ips: "10.81.0.14/24", mac: "02:00:0a:51:00:0e"})
				p.rt.Args[4][1] = "uid-of-the-new-pod"
				return p
			},
			wantCode: types.ErrTryAgainLater, wantMsg: "has UID uid-moved in the node agent's cache, not uid-of-the-new-pod",
		},
		{
			name: "not a Kubernetes pod",
			pod: func(*testing.T) *testPod {
				p := e.newPod(podSpec{name: "noargs", ips: "10.81.0.15/24", mac: "02:00:0a:51:00:0f"})
				p.rt.Args = nil
				return p
			},
			wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "K8S_POD_NAME",
		},
		{
			name: "interface name clash",
			pod: func(t *testing.T) *testPod {
				p := e.newPod(podSpec{name: "clash", ips: "10.81.0.16/24", mac: "02:00:0a:51:00:10"})
				if err := handleIn(t, p.netns).LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"}); err != nil {
					t.Fatal(err)
				}
				return p
			},
			wantCode: api.ErrInterfaceExists, wantMsg: "eth0 already exists",
		},
		{
			name: "SR-IOV pod",
			pod: func(*testing.T) *testPod {
				return e.newPod(podSpec{
					name: "vf", ips: "10.81.0.17/24", mac: "02:00:0a:51:00:11",
					extra: map[string]string{annotations.SriovNetwork: "fast"},
				})
			},
			wantCode: api.ErrUnsupported, wantMsg: `annotation stickynet.io/sriov-network: invalid value "fast": expected the name of a SriovNetwork (this one does not exist)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.pod(t)
			var err error
			if tt.conf != nil {
				_, err = e.cni.Raw("ADD", tt.conf, p.rt)
			} else {
				_, err = e.cni.Add(p.rt)
			}
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if cniCode(err) != tt.wantCode || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("ADD error = %v (code %d); want code %d mentioning %q", err, cniCode(err), tt.wantCode, tt.wantMsg)
			}
			nothingLeft(t, e, p)
			if tt.name == "interface name clash" {
				if _, err := handleIn(t, p.netns).LinkByName("eth0"); err != nil {
					t.Errorf("the clashing eth0 was touched: %v", err)
				}
			} else if _, err := handleIn(t, p.netns).LinkByName("eth0"); err == nil {
				t.Error("eth0 left in the pod netns")
			}
			// DEL after a failed ADD (runtimes do this) succeeds.
			if err := e.cni.Del(p.rt); err != nil && tt.conf == nil {
				t.Errorf("DEL after failed ADD: %v", err)
			}
		})
	}
	// After all that, a good pod still works.
	p := e.addPod(good)
	if err := e.cni.Check(p.rt); err != nil {
		t.Fatalf("CHECK of a good pod: %v", err)
	}
}

func TestCheckFindsDrift(t *testing.T) {
	e := newEnv(t, nil)
	a := e.addPod(podSpec{
		name: "a", ips: "10.82.0.10/24", mac: "02:00:0a:52:00:0a", gw: "10.82.0.1",
		extra: map[string]string{annotations.IngressBandwidth: "50M", annotations.EgressBandwidth: "50M"},
	})
	if err := e.cni.Check(a.rt); err != nil {
		t.Fatalf("CHECK right after ADD: %v", err)
	}
	h := handleIn(t, a.netns)
	l, _ := h.LinkByName("eth0")
	addr, _ := netlink.ParseAddr("10.82.0.10/24")
	if err := h.AddrDel(l, addr); err != nil {
		t.Fatal(err)
	}
	host := e.hostHandle()
	hl, err := host.LinkByName(e.ovsPortOf("ctr-a"))
	if err != nil {
		t.Fatal(err)
	}
	qs, _ := host.QdiscList(hl)
	for _, q := range qs {
		if q.Type() == "tbf" {
			if err := host.QdiscDel(q); err != nil {
				t.Fatal(err)
			}
		}
	}
	n := e.node.OVS.Vsctl(t, "get", "Interface", e.ovsPortOf("ctr-a"), "ofport")
	e.node.OVS.Ofctl(t, "del-meter", e.node.Bridge, "meter="+n)
	err = e.cni.Check(a.rt)
	if cniCode(err) != api.ErrCheckFailed {
		t.Fatalf("CHECK after drift = %v; want code %d", err, api.ErrCheckFailed)
	}
	for _, want := range []string{"lacks address 10.82.0.10/24", "no default route via 10.82.0.1", "lacks the tbf", "meter " + n} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK error %q does not say %q", err, want)
		}
	}
}

// A pod's address may have been at another MAC (the pod ran on another node):
// after ADD, a neighbour that cached the old MAC has the new one.
func TestAddressMoveAnnounced(t *testing.T) {
	e := newEnv(t, nil)
	b := e.addPod(podSpec{name: "b", ips: "10.83.0.11/24,fd83::11/64", mac: "02:00:0a:53:00:0b"})
	hb := handleIn(t, b.netns)
	lb, _ := hb.LinkByName("eth0")
	oldMAC, _ := net.ParseMAC("02:00:0a:53:ff:ff")
	for _, ip := range []string{"10.83.0.10", "fd83::10"} {
		if err := hb.NeighSet(&netlink.Neigh{LinkIndex: lb.Attrs().Index, IP: net.ParseIP(ip), HardwareAddr: oldMAC, State: netlink.NUD_STALE}); err != nil {
			t.Fatal(err)
		}
	}
	e.addPod(podSpec{name: "a", ips: "10.83.0.10/24,fd83::10/64", mac: "02:00:0a:53:00:0a"})
	want, _ := net.ParseMAC("02:00:0a:53:00:0a")
	for _, ip := range []string{"10.83.0.10", "fd83::10"} {
		deadline := time.Now().Add(3 * time.Second)
		var got net.HardwareAddr
		for time.Now().Before(deadline) {
			neighs, err := hb.NeighList(lb.Attrs().Index, netlink.FAMILY_ALL)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range neighs {
				if n.IP.Equal(net.ParseIP(ip)) {
					got = n.HardwareAddr
				}
			}
			if bytes.Equal(got, want) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("neighbour %s on pod b is at %s; want %s (announcement not seen)", ip, got, want)
		}
	}
}

func TestConflistInstalled(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", port)
	// Over 10 s of pod wait, the conflist gives the plugin twice that.
	e := newEnv(t, func(o *agent.Options) { o.PodWait = 8 * time.Second; o.MetricsAddr = metrics })
	// Ready (conflist installed, OVS bridge there): the DaemonSet's readiness probe.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz of a running agent: %v %v; want 200", resp, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(e.opts.CNIConfDir, agent.DefaultCNIConfName))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.CNIVersion != "1.1.0" || c.Name != "stickynet" || len(c.Plugins) != 1 ||
		c.Plugins[0]["type"] != "stickynet" || c.Plugins[0]["socket"] != e.node.Socket || c.Plugins[0]["timeout"] != "16s" {
		t.Fatalf("conflist %s; want plugin stickynet on socket %s with timeout 16s (twice --pod-wait)", b, e.node.Socket)
	}
	fi, err := os.Stat(e.node.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %s; want a socket with 0600", fi.Mode())
	}
}

// TestDelOfUnknownWithOVSDown: DEL of an attachment the agent has no
// record of (a fallback pod's DEL also reaches the agent) succeeds while
// ovsdb-server cannot be reached, since no veth of it is on the node; before,
// it failed, and the runtime could not finish stopping such pods until OVS
// was back.
func TestDelOfUnknownWithOVSDown(t *testing.T) {
	e := newEnv(t, nil)
	p := e.newPod(podSpec{name: "elsewhere", ips: "10.81.0.31/24", mac: "02:00:0a:51:00:1f"})
	e.node.OVS.HideDB(t)
	if err := e.cni.Del(p.rt); err != nil {
		t.Fatalf("DEL of an attachment never made, with ovsdb-server unreachable: %v", err)
	}
}

// TestDelWithOVSDown: DEL of a pod the agent set up succeeds while
// ovsdb-server cannot be reached, once its veth is gone (nothing on the node
// carries its addresses), and its port row and record go when OVS answers
// again. Before, the DEL failed until OVS was back, and the pod stayed
// Terminating: a StatefulSet could not make it again elsewhere.
func TestDelWithOVSDown(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.ResyncPeriod = 300 * time.Millisecond })
	p := e.addPod(podSpec{name: "leaving", ips: "10.81.0.33/24", mac: "02:00:0a:51:00:21"})
	back := e.node.OVS.HideDB(t)
	if err := e.cni.Del(p.rt); err != nil {
		t.Fatalf("DEL with ovsdb-server unreachable: %v", err)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("host veths left after the DEL: %v", v)
	}
	time.Sleep(time.Second) // resync passes that cannot reach OVS
	back()
	e.waitRemoved("ctr-leaving")
}

// TestDelWithOVSHung: an ovsdb-server that takes connections and answers
// nothing (stopped here) fails no DEL once the pod's veth is gone, the
// first or a retried one: each answers within the plugin's timeout, and
// the port row and record go once ovsdb-server answers again. Before, each
// DEL waited for ovs-vsctl's own timeout, as long as the plugin's, and
// failed: the pod stayed Terminating for as long as ovsdb-server hung.
func TestDelWithOVSHung(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.ResyncPeriod = 300 * time.Millisecond })
	p := e.addPod(podSpec{name: "leaving", ips: "10.81.0.34/24", mac: "02:00:0a:51:00:22"})
	thaw := e.node.OVS.FreezeDB(t)
	for _, try := range []string{"first", "retried"} {
		if err := e.cni.Del(p.rt); err != nil {
			t.Fatalf("%s DEL with ovsdb-server not answering: %v", try, err)
		}
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("host veths left after the DEL: %v", v)
	}
	thaw()
	e.waitRemoved("ctr-leaving")
}

// TestAddWithOVSHung: with ovsdb-server taking connections and answering
// nothing, ADD fails with the agent's own error, "try again later", naming
// Open vSwitch, before the plugin's request timeout (10 s) ends it with a
// bare timeout: the undo of what it set up (the veth at once, the OVS port
// once OVS answers) gets what the plugin still waits, not an OVS command's
// own timeout twice over (about 28 s before). The DEL the runtime sends
// next succeeds; once OVS answers, the port row and the record go, and the
// pod's next ADD works.
func TestAddWithOVSHung(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.ResyncPeriod = 300 * time.Millisecond })
	p := e.newPod(podSpec{name: "stuck", ips: "10.81.0.35/24", mac: "02:00:0a:51:00:23"})
	thaw := e.node.OVS.FreezeDB(t)
	_, err := e.cni.Add(p.rt)
	t.Logf("ADD: %v", err)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "Open vSwitch") || !strings.Contains(err.Error(), "ovsdb-server does not answer") {
		t.Errorf("ADD with ovsdb-server not answering: %v; want the agent's code %d naming Open vSwitch and ovsdb-server", err, types.ErrTryAgainLater)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("host veths left after the failed ADD: %v", v)
	}
	if err := e.cni.Del(p.rt); err != nil { // as the runtime does after a failed ADD
		t.Errorf("DEL after the failed ADD, ovsdb-server still not answering: %v", err)
	}
	thaw()
	e.waitRemoved("ctr-stuck")
	if _, err := e.cni.Add(p.rt); err != nil {
		t.Fatalf("ADD with ovsdb-server answering again: %v", err)
	}
}

// TestCommandsWithOVSHung: with ovsdb-server taking connections and
// answering nothing, CHECK, GC and STATUS answer with the agent's own error
// naming Open vSwitch, before the plugin's request timeout, as ADD and DEL
// do (one deadline for every command, in Handle); before, each waited out
// its OVS commands' own timeouts and the plugin answered a bare timeout.
func TestCommandsWithOVSHung(t *testing.T) {
	e := newEnv(t, nil)
	p := e.addPod(podSpec{name: "checked", ips: "10.81.0.37/24", mac: "02:00:0a:51:00:25"})
	thaw := e.node.OVS.FreezeDB(t)
	defer thaw()
	for _, c := range []struct {
		command string
		code    uint
		run     func() error
	}{
		{"STATUS", types.ErrPluginNotAvailable, e.cni.Status},
		{"CHECK", types.ErrTryAgainLater, func() error { return e.cni.Check(p.rt) }},
		{"GC", types.ErrTryAgainLater, func() error { return e.cni.GC(nil) }},
	} {
		err := c.run()
		if cniCode(err) != c.code || !strings.Contains(err.Error(), "Open vSwitch") {
			t.Errorf("%s with ovsdb-server not answering: %v; want the agent's code %d naming Open vSwitch", c.command, err, c.code)
		}
	}
}

// TestRequestsOnBusyAttachment: CHECK, GC and DEL of a pod whose
// attachment a background step holds (its egress limit being changed while
// ovs-vswitchd does not answer: the step waits an OVS command's 10 s,
// longer than the plugin's timeout, 2 s in these requests' configuration)
// answer "try again later" within the plugin's timeout, saying what they
// waited for; once OVS answers, the pod's DEL succeeds. Before, each waited
// for the lock past the plugin's timeout and the plugin answered a bare
// timeout.
func TestRequestsOnBusyAttachment(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.EgressMode = bandwidth.EgressMeter })
	p := e.addPod(podSpec{name: "busy", ips: "10.81.0.39/24", mac: "02:00:0a:51:00:27", extra: map[string]string{annotations.EgressBandwidth: "20M"}})
	ofport := strings.TrimSpace(e.node.OVS.Vsctl(t, "get", "Interface", e.ovsPortOf("ctr-busy"), "ofport"))
	thaw := e.node.OVS.FreezeVswitchd(t)
	defer thaw()
	pod := p.pod.DeepCopy()
	pod.Annotations[annotations.EgressBandwidth] = "10M"
	e.pods.Set(pod)
	// The bandwidth worker holds the pod's lock while it waits for this.
	waitChild(t, "the agent changing the pod's meter", "ovs-ofctl", "mod-meter", "meter="+ofport+",")
	conf := e.confWith(map[string]any{"timeout": "2s"})
	gcConf := e.confWith(map[string]any{"timeout": "2s", "cni.dev/valid-attachments": []types.GCAttachment{}})
	for _, c := range []struct {
		command string
		conf    []byte
		want    string
	}{
		{"CHECK", conf, "was still running after"},
		{"GC", gcConf, "GC ran out of time: 1 of the attachments the runtime no longer knows are left for the next GC (1 held by another operation until then)"},
		{"DEL", conf, "was still running after"},
	} {
		start := time.Now()
		_, err := e.cni.Raw(c.command, c.conf, p.rt)
		if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s while the pod's meter is being changed, ovs-vswitchd not answering: %v (after %s); want code %d saying %q",
				c.command, err, time.Since(start).Round(time.Millisecond), types.ErrTryAgainLater, c.want)
		}
	}
	thaw()
	if err := e.cni.Del(p.rt); err != nil {
		t.Errorf("DEL once ovs-vswitchd answers: %v", err)
	}
	e.waitRemoved("ctr-busy")
}

// TestCheckWithVswitchdDown: CHECK of a pod whose egress a meter limits,
// with ovs-vswitchd down (ovsdb-server up), says "try again later", naming
// Open vSwitch: the meters cannot be read, which is not a difference from
// what was set up (before: code 104, "differs from what was set up").
func TestCheckWithVswitchdDown(t *testing.T) {
	e := newEnv(t, nil)
	p := e.addPod(podSpec{name: "metered", ips: "10.81.0.38/24", mac: "02:00:0a:51:00:26", extra: map[string]string{annotations.EgressBandwidth: "20M"}})
	if err := e.cni.Check(p.rt); err != nil {
		t.Fatalf("CHECK with Open vSwitch up: %v", err)
	}
	e.node.OVS.StopVswitchd(t)
	defer e.node.OVS.StartVswitchd(t)
	if err := e.cni.Check(p.rt); cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "Open vSwitch") {
		t.Errorf("CHECK with ovs-vswitchd down: %v; want code %d naming Open vSwitch", err, types.ErrTryAgainLater)
	}
}

// TestAddWithOVSDBUnreachable: with ovsdb-server's socket gone (ovsdb-server
// restarting, or stopped), ADD fails with "try again later" naming
// ovsdb-server, as for an Open vSwitch that does not answer, not as an
// internal error (code 999, before); nothing of the pod is left once its
// DEL has run and OVS is back, and its next ADD works.
func TestAddWithOVSDBUnreachable(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.ResyncPeriod = 300 * time.Millisecond })
	p := e.newPod(podSpec{name: "nodb", ips: "10.81.0.36/24", mac: "02:00:0a:51:00:24"})
	back := e.node.OVS.HideDB(t)
	_, err := e.cni.Add(p.rt)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "cannot reach ovsdb-server") {
		t.Errorf("ADD with ovsdb-server's socket gone: %v; want code %d saying it cannot reach ovsdb-server", err, types.ErrTryAgainLater)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("host veths left after the failed ADD: %v", v)
	}
	if err := e.cni.Del(p.rt); err != nil { // as the runtime does after a failed ADD
		t.Errorf("DEL after the failed ADD, ovsdb-server's socket still gone: %v", err)
	}
	back()
	waitFor(t, "the pod's record removed", func() bool { return len(e.records()) == 0 })
	if _, err := e.cni.Add(p.rt); err != nil {
		t.Fatalf("ADD with ovsdb-server's socket back: %v", err)
	}
}

// TestAddWithVswitchdDown: with ovs-vswitchd down, STATUS says the plugin
// is not available, and ADD fails with the agent's own error, "try again
// later", naming Open vSwitch and the command that it did not answer,
// before the plugin's request timeout (10 s) ends it with a bare timeout;
// nothing of the pod is left, and once ovs-vswitchd is back the pod's next
// ADD works. Before, STATUS passed and the plugin's timeout came first.
func TestAddWithVswitchdDown(t *testing.T) {
	metricsAddr := freeAddr(t)
	e := newEnv(t, func(o *agent.Options) { o.MetricsAddr = metricsAddr })
	readyz := func() (int, string) { return probe(metricsAddr, "/readyz") }
	if code, body := readyz(); code != http.StatusOK {
		t.Errorf("/readyz with ovs-vswitchd up: %d %q; want 200", code, body)
	}
	p := e.newPod(podSpec{name: "early", ips: "10.81.0.32/24", mac: "02:00:0a:51:00:20"})
	passed := filepath.Join(filepath.Dir(e.opts.Socket), api.StatusPassed)
	if err := e.cni.Status(); err != nil {
		t.Errorf("STATUS with ovs-vswitchd up: %v", err)
	}
	e.node.OVS.StopVswitchd(t)
	if err := e.cni.Status(); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "ovs-vswitchd does not answer") {
		t.Errorf("STATUS with ovs-vswitchd down: %v; want code %d saying ovs-vswitchd does not answer", err, types.ErrPluginNotAvailable)
	}
	// An agent restart during the outage gets no grace.
	if _, err := os.Stat(passed); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after a STATUS that failed for ovs-vswitchd: %v; want it removed", api.StatusPassed, err)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "ovs-vswitchd does not answer") {
		t.Errorf("/readyz with ovs-vswitchd down: %d %q; want 503 saying ovs-vswitchd does not answer", code, body)
	}
	if code, body := probe(metricsAddr, "/livez"); code != http.StatusOK {
		t.Errorf("/livez with ovs-vswitchd down: %d %q; want 200 (a restart would not bring it back)", code, body)
	}
	_, err := e.cni.Add(p.rt)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "no answer from Open vSwitch") ||
		!strings.Contains(err.Error(), "add-port "+e.node.Bridge) {
		t.Errorf("ADD with ovs-vswitchd down: %v; want code %d naming Open vSwitch and add-port", err, types.ErrTryAgainLater)
	}
	if port := e.ovsPortOf("ctr-early"); port != "" {
		t.Errorf("port %s left in OVS after the failed ADD", port)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Errorf("host veths left after the failed ADD: %v", v)
	}
	if recs := e.records(); len(recs) != 0 {
		t.Errorf("records left after the failed ADD: %v", recs)
	}
	e.node.OVS.StartVswitchd(t)
	if err := e.cni.Status(); err != nil {
		t.Errorf("STATUS with ovs-vswitchd back: %v", err)
	}
	if code, body := readyz(); code != http.StatusOK {
		t.Errorf("/readyz with ovs-vswitchd back: %d %q; want 200", code, body)
	}
	if err := e.cni.Del(p.rt); err != nil { // as the runtime does after a failed ADD
		t.Fatalf("DEL after the failed ADD: %v", err)
	}
	if _, err := e.cni.Add(p.rt); err != nil {
		t.Fatalf("ADD with ovs-vswitchd back: %v", err)
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (testenv.FreePort: never one handed out before in this process).
func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// TestAgentWaitsForOVS: an agent started while ovsdb-server cannot be
// reached waits for it, rather than exiting, and serves once it is back.
// Meanwhile its /readyz says what it waits for and /livez is ok (a restart
// would only wait again); before, neither answered until OVS was back.
func TestAgentWaitsForOVS(t *testing.T) {
	node := agenttest.NewNode(t)
	sock := strings.TrimPrefix(node.OVS.DB, "unix:")
	hidden := node.OVS.HideDB(t)
	metricsAddr := freeAddr(t)
	probed := make(chan struct{})
	began := time.Now()
	back := time.AfterFunc(5*time.Second, func() {
		<-probed
		hidden()
	})
	defer back.Stop()
	go func() {
		defer close(probed)
		var code int
		var body string
		// OVS stays away until this probe is done (a slow start of the
		// agent does not end the wait early; StartAgent allows 30 s).
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if code, body = probe(metricsAddr, "/readyz"); code == http.StatusServiceUnavailable && strings.Contains(body, "waiting for Open vSwitch") {
				break
			}
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for Open vSwitch") || !strings.Contains(body, sock) {
			t.Errorf("/readyz while the agent waits for OVS: %d %q; want 503 saying it waits for Open vSwitch at %s", code, body, sock)
		}
		if code, body := probe(metricsAddr, "/livez"); code != http.StatusOK {
			t.Errorf("/livez while the agent waits for OVS: %d %q; want 200", code, body)
		}
	}()
	opts := node.Options(agenttest.NewStatic())
	opts.MetricsAddr = metricsAddr
	agenttest.StartAgent(t, opts) // fails the test if the agent exits
	if waited := time.Since(began); waited < 5*time.Second {
		t.Errorf("the agent served after %s, before OVS could be reached (5 s)", waited)
	}
	for _, path := range []string{"/readyz", "/livez"} {
		if code, body := probe(metricsAddr, path); code != http.StatusOK {
			t.Errorf("%s once the agent serves: %d %q; want 200", path, code, body)
		}
	}
}

// An uplink Open vSwitch cannot open (a NIC name mistyped, or not on this
// node) fails /readyz, naming it and OVS's error, while CNI STATUS and ADD
// work (the node's pods keep their node-local network); once the NIC is
// there, /readyz passes. ovs-vsctl add-port exits 0 on such a failure, and
// the agent served as if the uplink worked: pods Running, reaching nothing
// beyond their node.
func TestUplinkThatDoesNotWork(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.Uplink, o.MetricsAddr = "upl0", freeAddr(t) })
	code, body := probe(e.opts.MetricsAddr, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "uplink upl0 (--uplink) on OVS bridge br-stickynet does not work: could not open network device upl0") {
		t.Errorf("/readyz with no upl0 on the node: %d %q; want 503 naming the uplink and OVS's error", code, body)
	}
	if err := e.cni.Status(); err != nil {
		t.Errorf("STATUS with no upl0 on the node: %v; want it to pass (pods still reach their node's pods)", err)
	}
	e.addPod(podSpec{name: "a", ips: "10.80.0.10/24", mac: "02:00:0a:50:00:0a"})
	e.node.Netns.Run(t, "ip", "link", "add", "upl0", "type", "veth", "peer", "name", "upl0p")
	e.node.Netns.Run(t, "ip", "link", "set", "upl0", "up")
	if code, body = readyzUntil(e, func(code int, _ string) bool { return code == http.StatusOK }); code != http.StatusOK {
		t.Errorf("/readyz once upl0 exists: %d %q; want 200", code, body)
	}
}

// An uplink whose MTU is below the pods' fails /readyz, naming both MTUs
// and what to set: OVS forwards a pod's larger frames to it and they are
// dropped, so cross-node connections open and bulk transfers stall. Before,
// the agent was Ready. Raised to the pods' MTU, it is Ready.
func TestUplinkMTUBelowPods(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.Uplink, o.MetricsAddr = "upl0", freeAddr(t) })
	e.node.Netns.Run(t, "ip", "link", "add", "upl0", "mtu", "1450", "type", "veth", "peer", "name", "upl0p")
	e.node.Netns.Run(t, "ip", "link", "set", "upl0", "up")
	want := "uplink upl0 (--uplink) has MTU 1450, below the pods' 1500 (--mtu)"
	code, body := readyzUntil(e, func(_ int, body string) bool { return strings.Contains(body, want) }) // OVS opens upl0
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("/readyz with upl0 at MTU 1450 and pods at 1500: %d %q; want 503 naming both", code, body)
	}
	if err := e.cni.Status(); err != nil {
		t.Errorf("STATUS: %v; want it to pass", err)
	}
	e.node.Netns.Run(t, "ip", "link", "set", "upl0", "mtu", "1500")
	if code, body = readyzUntil(e, func(code int, _ string) bool { return code == http.StatusOK }); code != http.StatusOK {
		t.Errorf("/readyz once upl0 is at 1500: %d %q; want 200", code, body)
	}
}

// readyzUntil probes the agent's /readyz until done says so of its answer,
// or 20 s have passed, and returns the last answer.
func readyzUntil(e *env, done func(code int, body string) bool) (int, string) {
	deadline := time.Now().Add(20 * time.Second)
	code, body := probe(e.opts.MetricsAddr, "/readyz")
	for ; !done(code, body) && time.Now().Before(deadline); code, body = probe(e.opts.MetricsAddr, "/readyz") {
		time.Sleep(200 * time.Millisecond)
	}
	return code, body
}

// probe GETs path on the agent's metrics endpoint: the status code and
// body, or 0 and the error when nothing answers.
func probe(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestStaticPod: kubelet names a static pod by its own UID; the agent's
// cache has the mirror pod, whose kubernetes.io/config.mirror annotation
// holds that UID. Before, such a pod waited for a UID that never came. The
// record keeps kubelet's UID, so a mirror pod made again does not make the
// pod look gone.
func TestStaticPod(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.PodWait = time.Second })
	p := e.newPod(podSpec{
		name: "static", ips: "10.81.0.30/24", mac: "02:00:0a:51:00:1e",
		extra: map[string]string{corev1.MirrorPodAnnotationKey: "kubelet-uid-of-static"},
	})
	p.rt.Args[4][1] = "kubelet-uid-of-static"
	if _, err := e.cni.Add(p.rt); err != nil {
		t.Fatalf("ADD of a static pod by kubelet's UID: %v", err)
	}
	// The mirror pod deleted and made again (a new UID) while the static
	// pod runs on: a restarted agent keeps its port.
	port := e.ovsPortOf("ctr-static")
	p.pod.UID = "uid-of-a-new-mirror"
	e.pods.Set(p.pod)
	e.restart()
	if got := e.ovsPortOf("ctr-static"); got != port {
		t.Fatalf("static pod's port after a restart with its mirror pod made again: %q, want %q", got, port)
	}
	if err := e.cni.Del(p.rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

// TestFallbackAuto: with --fallback-conflist=auto the agent installs its
// conflist without a fallback while the folder has no other network, and
// rewrites it when one appears and when an earlier one in name order does.
func TestFallbackAuto(t *testing.T) {
	rescans := agent.SetFallbackRescan(t, 200*time.Millisecond)
	e := newEnv(t, func(o *agent.Options) { o.FallbackConfList = agent.FallbackAuto })
	fallback := func() string { return e.fallbackName(t) }
	if got := fallback(); got != "" {
		t.Fatalf("fallback %q in a folder without another network; want none", got)
	}
	for _, step := range []struct{ file, content, want string }{
		{"20-pods.conflist", `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","bridge":"cni0"}]}`, "pods"},
		{"15-other.conf", `{"cniVersion":"1.0.0","name":"other","type":"bridge","bridge":"cni1"}`, "other"},
	} {
		if err := os.WriteFile(filepath.Join(e.opts.CNIConfDir, step.file), []byte(step.content), 0o644); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t.Context(), t, 10*time.Second, "the conflist's fallback after "+step.file+" appeared", func() (bool, string) {
			got := fallback()
			return got == step.want, fmt.Sprintf("fallback %q, want %q", got, step.want)
		})
	}
	// A rewrite that fails (here: a folder where the conflist goes) is
	// tried again at the next rescan. Before, the new conflist was taken as
	// written, and never written until the agent restarted.
	own := filepath.Join(e.opts.CNIConfDir, agent.DefaultCNIConfName)
	if err := os.Remove(own); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(own, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.opts.CNIConfDir, "10-first.conflist"), []byte(`{"cniVersion":"1.0.0","name":"first","plugins":[{"type":"bridge","bridge":"cni2"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	rescans(3) // three rescans, each failing to write (the last two at least)
	if err := os.Remove(own); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t.Context(), t, 10*time.Second, "the conflist written after a failed rewrite", func() (bool, string) {
		if _, err := os.Stat(own); err != nil {
			return false, err.Error()
		}
		got := fallback()
		return got == "first", fmt.Sprintf("fallback %q, want %q", got, "first")
	})
}

// fallbackName is the name of the fallback network in the agent's conflist
// ("" for none).
func (e *env) fallbackName(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.opts.CNIConfDir, agent.DefaultCNIConfName))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Plugins []struct {
			Fallback *struct {
				Name string `json:"name"`
			} `json:"fallback"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil || len(c.Plugins) != 1 {
		t.Fatalf("conflist %s: %v", b, err)
	}
	if c.Plugins[0].Fallback == nil {
		return ""
	}
	return c.Plugins[0].Fallback.Name
}

// TestFallbackFileFollowed: a fallback conflist named by its file is read
// again, so a cluster network's upgrade that rewrites it (here: replaced by
// a rename, as installers write) reaches the agent's conflist; a file that
// is gone or wrong meanwhile leaves the conflist as it was. Before, the file
// was read once at start, and the old network's plugins ran until the agent
// restarted.
func TestFallbackFileFollowed(t *testing.T) {
	rescans := agent.SetFallbackRescan(t, 200*time.Millisecond)
	file := filepath.Join(t.TempDir(), "pods.conflist")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(file+".new", []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file+".new", file); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"cniVersion":"1.0.0","name":"v1","plugins":[{"type":"bridge","bridge":"cni0"}]}`)
	e := newEnv(t, func(o *agent.Options) { o.FallbackConfList = file })
	if got := e.fallbackName(t); got != "v1" {
		t.Fatalf("fallback %q at start; want v1", got)
	}
	write(`{"cniVersion":"1.0.0","name":"v2","plugins":[{"type":"bridge","bridge":"cni0"}]}`)
	testenv.Eventually(t.Context(), t, 10*time.Second, "the conflist's fallback after the file was replaced", func() (bool, string) {
		got := e.fallbackName(t)
		return got == "v2", fmt.Sprintf("fallback %q, want v2", got)
	})
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	rescans(2)                                  // rescans without the file
	write(`{"cniVersion":"1.0.0","name":"v3"}`) // no plugins: refused
	rescans(2)
	if got := e.fallbackName(t); got != "v2" {
		t.Errorf("fallback %q with the file gone, then wrong; want v2 kept", got)
	}
}

// A pod's port number keeps its meter and flow after the pod goes: the next
// pod with an egress limit takes that number and only the rate changes; a pod
// without a limit gets a number without a meter.
func TestMeterReuse(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.MeterReserve = -1 })
	ofport := func(containerID string) string {
		return e.node.OVS.Vsctl(t, "get", "Interface", e.ovsPortOf(containerID), "ofport")
	}
	limited := func(name, ip, mac, rate string) *testPod {
		return e.addPod(podSpec{name: name, ips: ip, mac: mac, extra: map[string]string{annotations.EgressBandwidth: rate}})
	}
	a := limited("a", "10.91.0.10/24", "02:00:0a:5b:00:0a", "10M")
	n := ofport("ctr-a")
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatal(err)
	}
	if flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge); !strings.Contains(flows, "in_port="+n+" actions=meter:"+n) {
		t.Fatalf("meter flow of port %s gone after DEL:\n%s", n, flows)
	}
	plain := e.addPod(podSpec{name: "plain", ips: "10.91.0.11/24", mac: "02:00:0a:5b:00:0b"})
	if got := ofport("ctr-plain"); got == n {
		t.Errorf("a pod without egress limit got port %s, which goes through a meter", got)
	}
	b := limited("b", "10.91.0.12/24", "02:00:0a:5b:00:0c", "30M")
	if got := ofport("ctr-b"); got != n {
		t.Errorf("pod with egress limit got port %s, not the metered %s", got, n)
	}
	if meters := e.node.OVS.Ofctl(t, "dump-meters", e.node.Bridge); !strings.Contains(meters, "meter="+n+" ") || !strings.Contains(meters, "rate=30000 ") {
		t.Errorf("meter %s not at b's rate:\n%s", n, meters)
	}
	for _, p := range []*testPod{plain, b} {
		if err := e.cni.Check(p.rt); err != nil {
			t.Errorf("CHECK %s: %v", p.pod.Name, err)
		}
	}
	if !ping(t, plain, "10.91.0.12", 2) {
		t.Error("pods do not reach each other")
	}
}

// The agent keeps free port numbers with a meter ready, so ADD of a pod with
// an egress limit only sets a rate.
func TestMeterReserve(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.MeterReserve = 3 })
	re := regexp.MustCompile(`in_port=(\d+) actions=meter:(\d+)`)
	ready := func() map[string]bool {
		out := map[string]bool{}
		for _, m := range re.FindAllStringSubmatch(e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge), -1) {
			if m[1] == m[2] {
				out[m[1]] = true
			}
		}
		return out
	}
	waitFor(t, "3 meters ready", func() bool { return len(ready()) == 3 })
	before := ready()
	p := e.addPod(podSpec{name: "a", ips: "10.92.0.10/24", mac: "02:00:0a:5c:00:0a", extra: map[string]string{annotations.EgressBandwidth: "10M"}})
	n := e.node.OVS.Vsctl(t, "get", "Interface", e.ovsPortOf("ctr-a"), "ofport")
	if !before[n] {
		t.Errorf("pod got port %s; the ready ones were %v", n, before)
	}
	// 2 of 3 left is above half the reserve: no refill yet.
	time.Sleep(300 * time.Millisecond)
	if r := ready(); len(r) != 3 {
		t.Errorf("%d meter flows after one ADD; want 3 (2 ready, 1 in use)", len(r))
	}
	p2 := e.addPod(podSpec{name: "b", ips: "10.92.0.11/24", mac: "02:00:0a:5c:00:0b", extra: map[string]string{annotations.EgressBandwidth: "10M"}})
	// 1 of 3 left: the reserve refills to 3 free ones (+2 in use) in one batch.
	waitFor(t, "the reserve to refill", func() bool { return len(ready()) == 5 })
	if err := e.cni.Check(p2.rt); err != nil {
		t.Error(err)
	}
	if err := e.cni.Check(p.rt); err != nil {
		t.Error(err)
	}
}

// With --egress-mode=policing (the choice on the kernel datapath) the egress
// limit is the interface's ingress_policing_rate/burst. This kernel lacks
// act_police, so OVS accepts but does not enforce it: only the settings are
// checked here.
func TestPolicingModeSettings(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.EgressMode = bandwidth.EgressPolicing })
	a := e.addPod(podSpec{name: "a", ips: "10.95.0.10/24", mac: "02:00:0a:5f:00:0a", extra: map[string]string{annotations.EgressBandwidth: "40M"}})
	port := e.ovsPortOf("ctr-a")
	policing := func() string {
		return e.node.OVS.Vsctl(t, "get", "Interface", port, "ingress_policing_rate") + "/" + e.node.OVS.Vsctl(t, "get", "Interface", port, "ingress_policing_burst")
	}
	if got := policing(); got != "40000/32000" {
		t.Errorf("policing %s, want 40000/32000 (kbit/s, kbit)", got)
	}
	if flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge); strings.Contains(flows, "meter:") {
		t.Errorf("meter flows in policing mode:\n%s", flows)
	}
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	pod := a.pod.DeepCopy()
	delete(pod.Annotations, annotations.EgressBandwidth)
	e.pods.Set(pod)
	waitFor(t, "policing off", func() bool { return policing() == "0/0" })
	if err := e.cni.Check(a.rt); err != nil {
		t.Errorf("CHECK after the change: %v", err)
	}
}

// A meter left by a pod of meter mode (kept for the next limited pod) does
// not police a pod added after the agent switched to policing: the number
// is not preferred (b and c get others). Before, the new pod got the old
// pod's number, meter and flow on top of its policing. (A pod given such a
// number when no other is free within 4,096 has the meter removed: not
// exercised here.)
func TestMeterOfEarlierModeRemoved(t *testing.T) {
	e := newEnv(t, nil) // meter mode
	a := e.addPod(podSpec{name: "a", ips: "10.96.0.10/24", mac: "02:00:0a:60:00:0a", extra: map[string]string{annotations.EgressBandwidth: "5M"}})
	aPort := e.node.OVS.Vsctl(t, "get", "Interface", e.ovsPortOf("ctr-a"), "ofport")
	if err := e.cni.Del(a.rt); err != nil {
		t.Fatal(err)
	}
	if flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge); !strings.Contains(flows, "meter:") {
		t.Fatalf("no meter flow kept after the limited pod's DEL (what this test starts from):\n%s", flows)
	}
	e.opts.EgressMode = bandwidth.EgressPolicing
	e.restart()
	var ports []string
	for i, name := range []string{"b", "c"} {
		e.addPod(podSpec{name: name, ips: fmt.Sprintf("10.96.0.%d/24", 11+i), mac: fmt.Sprintf("02:00:0a:60:00:%02x", 11+i), extra: map[string]string{annotations.EgressBandwidth: "40M"}})
		ofport := e.node.OVS.Vsctl(t, "get", "Interface", e.ovsPortOf("ctr-"+name), "ofport")
		ports = append(ports, ofport)
		if flows := e.node.OVS.Ofctl(t, "dump-flows", e.node.Bridge); strings.Contains(flows, "in_port="+ofport+" actions=meter:") {
			t.Errorf("pod %s (port %s) added in policing mode goes through a meter:\n%s", name, ofport, flows)
		}
	}
	if slices.Contains(ports, aPort) {
		t.Errorf("b or c (ports %v) got a's port number %s, whose meter it left: want another", ports, aPort)
	}
}

// A DaemonSet's rolling update creates the node's new pod, which gets the
// node's address, while the old pod terminates. The new pod's ADD waits for
// the old pod's DEL, gives up with "try again later" naming the old pod when
// the DEL does not come in time, and leaves nothing behind then. An
// attachment whose netns is gone carries nothing and holds no one up. The
// new pod's attachment key shares a lock stripe with the old one's: the
// waiting ADD must not hold up the DEL it waits for.
func TestAddWaitsForAddressCarrier(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.PodWait = 8 * time.Second })
	timedOut, handedOver := addressWaits(t, "timed_out"), addressWaits(t, "handed_over")
	spec := podSpec{name: "ds-old", ips: "10.84.0.10/24", mac: "02:00:0a:54:00:0a"}
	old := e.addPod(spec)
	terminating := old.pod.DeepCopy()
	terminating.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	e.pods.Set(terminating)

	// The container ID is "ctr-" and the pod's name (newPod).
	spec.name = "ds-new"
	for i := 0; agent.LockStripe("ctr-"+spec.name+"/eth0") != agent.LockStripe("ctr-ds-old/eth0"); i++ {
		spec.name = fmt.Sprintf("ds-new-%d", i)
	}
	nw := e.newPod(spec)
	_, err := e.cni.Add(nw.rt)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "MAC 02:00:0a:54:00:0a is still carried on this node by pod default/ds-old (terminating") {
		t.Fatalf("ADD while the old pod carries the address: %v; want code %d naming the terminating pod default/ds-old", err, types.ErrTryAgainLater)
	}
	if p := e.ovsPortOf("ctr-" + spec.name); p != "" {
		t.Errorf("the refused ADD left OVS port %s", p)
	}
	if recs := e.records(); len(recs) != 1 {
		t.Errorf("records after the refused ADD: %v; want the old pod's only", recs)
	}

	done := make(chan error, 1)
	go func() {
		_, err := e.cni.Add(nw.rt)
		done <- err
	}()
	// The DEL must come while the ADD waits.
	for end := time.Now().Add(30 * time.Second); gauge(t, "stickynet_nodeagent_address_waiting") != 1; {
		select {
		case err := <-done:
			t.Fatalf("ADD of the new pod returned while the old pod still carried the address: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(end) {
			t.Fatal("stickynet_nodeagent_address_waiting not 1 within 30 s of the new pod's ADD")
		}
	}
	// A limit given to the new pod while its ADD waits (the ADD read the
	// pod before) is applied once the ADD is done, not at the next resync:
	// the pod's update found no attachment yet to queue.
	limited := nw.pod.DeepCopy()
	limited.Annotations[annotations.IngressBandwidth] = "20M"
	e.pods.Set(limited)
	if err := e.cni.Del(old.rt); err != nil {
		t.Fatalf("DEL of the old pod: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("ADD of the new pod after the old pod's DEL: %v", err)
	}
	port := e.ovsPortOf("ctr-" + nw.pod.Name)
	if port == "" {
		t.Fatal("the new pod has no OVS port")
	}
	waitFor(t, "the limit given during the ADD applied", func() bool { return tbfRate(t, e, port) == 20e6/8 })
	for result, want := range map[string]float64{"timed_out": timedOut + 1, "handed_over": handedOver + 1} {
		if got := addressWaits(t, result); got != want {
			t.Errorf("stickynet_nodeagent_address_waits_total{result=%q} = %v; want %v (one more than before)", result, got, want)
		}
	}

	// The new pod's netns vanishes without a DEL: its record stays, but its
	// host veth went with the netns, so a third pod is not held up.
	nw.netns.Remove(t)
	spec.name = "ds-third"
	third := e.newPod(spec)
	if _, err := e.cni.Add(third.rt); err != nil {
		t.Fatalf("ADD next to an attachment whose netns is gone: %v", err)
	}
	for _, p := range []*testPod{nw, third} {
		if err := e.cni.Del(p.rt); err != nil {
			t.Errorf("DEL %s: %v", p.pod.Name, err)
		}
	}
}

// A pod's sandbox made again while its earlier sandbox still carries the
// address (that sandbox's DEL failed or has not come): the new sandbox's
// ADD waits for the old one, as for another pod's, and gives up naming the
// pod, rather than putting the pod's MAC and IP on a second port (or, for
// an SR-IOV pod, a second VF). Before, only other pods' attachments were
// waited for. Once the old sandbox's DEL comes, the new one attaches.
func TestNewSandboxWaitsForOldSandbox(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.PodWait = 2 * time.Second })
	old := e.addPod(podSpec{name: "resandboxed", ips: "10.87.0.10/24", mac: "02:00:0a:57:00:0a"})
	n := agenttest.NewNetns(t)
	next := &testPod{pod: old.pod, netns: n, rt: agenttest.RuntimeConf("ctr-resandboxed-2", n, "eth0", old.pod)}
	_, err := e.cni.Add(next.rt)
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "MAC 02:00:0a:57:00:0a is still carried on this node by pod default/resandboxed") {
		t.Fatalf("ADD of the pod's new sandbox while its old sandbox carries the address: %v; want code %d naming the pod", err, types.ErrTryAgainLater)
	}
	if p := e.ovsPortOf("ctr-resandboxed-2"); p != "" {
		t.Errorf("the refused ADD left OVS port %s", p)
	}
	if err := e.cni.Del(old.rt); err != nil {
		t.Fatalf("DEL of the old sandbox: %v", err)
	}
	if _, err := e.cni.Add(next.rt); err != nil {
		t.Fatalf("ADD of the new sandbox after the old one's DEL: %v", err)
	}
	if e.ovsPortOf("ctr-resandboxed-2") == "" {
		t.Error("the new sandbox has no OVS port")
	}
	if err := e.cni.Del(next.rt); err != nil {
		t.Errorf("DEL of the new sandbox: %v", err)
	}
}

// addressWaits reads stickynet_nodeagent_address_waits_total{result}.
func addressWaits(t *testing.T, result string) float64 {
	t.Helper()
	return counter(t, "stickynet_nodeagent_address_waits_total", "result", result)
}

// counter reads the counter name{label=value} from the process's default
// registry (the agents of these tests run in-process); 0 if it has no such
// series yet.
func counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	for _, m := range testenv.Metrics(t, prometheus.DefaultGatherer, name) {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// gauge reads the unlabelled gauge name from the process's default
// registry; 0 if it has no such series yet.
func gauge(t *testing.T, name string) float64 {
	t.Helper()
	for _, m := range testenv.Metrics(t, prometheus.DefaultGatherer, name) {
		return m.GetGauge().GetValue()
	}
	return 0
}

// Two ADDs of different pods with one address that overlap in time: one
// attaches, the other waits for it (as it would for any carrier) and, since
// the first pod stays, gives up naming it. Neither sees the other as free
// while it is still being set up.
func TestConcurrentAddsOfOneAddress(t *testing.T) {
	e := newEnv(t, func(o *agent.Options) { o.PodWait = 2 * time.Second })
	var pods []*testPod
	for _, name := range []string{"twin-a", "twin-b"} {
		pods = append(pods, e.newPod(podSpec{name: name, ips: "10.85.0.10/24", mac: "02:00:0a:55:00:0a"}))
	}
	errs := make(chan error, len(pods))
	for _, p := range pods {
		go func() {
			_, err := e.cni.Add(p.rt)
			errs <- err
		}()
	}
	var ok, waited int
	for range pods {
		switch err := <-errs; {
		case err == nil:
			ok++
		case cniCode(err) == types.ErrTryAgainLater && strings.Contains(err.Error(), "is still carried on this node by pod default/twin-"):
			waited++
		default:
			t.Errorf("ADD: %v", err)
		}
	}
	if ok != 1 || waited != 1 {
		t.Errorf("%d ADDs attached and %d waited for the other; want one of each", ok, waited)
	}
	ports := 0
	for _, p := range pods {
		if e.ovsPortOf("ctr-"+p.pod.Name) != "" {
			ports++
		}
		_ = e.cni.Del(p.rt)
	}
	if ports != 1 {
		t.Errorf("%d OVS ports carry the address; want 1", ports)
	}
}

// An install under another cniConfName (changed on upgrade) left its
// conflist, which a later uninstall did not remove: it sorted ahead of the
// node's other network and failed every new pod for want of the plugin. The
// agent removes stickynet's other conflists when it writes its own, and
// leaves other networks'.
func TestInstallRemovesEarlierConflist(t *testing.T) {
	var earlier, pods string
	e := newEnv(t, func(o *agent.Options) {
		if err := os.MkdirAll(o.CNIConfDir, 0o755); err != nil {
			t.Fatal(err)
		}
		earlier, pods = filepath.Join(o.CNIConfDir, "05-stickynet.conflist"), filepath.Join(o.CNIConfDir, "10-pods.conflist")
		for path, content := range map[string]string{
			earlier: `{"cniVersion":"1.0.0","name":"stickynet","plugins":[{"type":"stickynet","socket":"/run/stickynet/agent.sock"}]}`,
			pods:    `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge","bridge":"cni0"}]}`,
		} {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	if _, err := os.Stat(earlier); !os.IsNotExist(err) {
		t.Errorf("the earlier install's %s after the agent started: %v; want it removed", earlier, err)
	}
	for _, keep := range []string{pods, filepath.Join(e.opts.CNIConfDir, agent.DefaultCNIConfName)} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("%s: %v; want it kept", keep, err)
		}
	}
}
