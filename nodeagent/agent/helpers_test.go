package agent_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/netlinkdump"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/podsource"
)

func TestMain(m *testing.M) {
	code := m.Run()
	agenttest.Cleanup()
	os.Exit(code)
}

// env is a node with a running agent and the plugin ready to call.
type env struct {
	t     *testing.T
	node  *agenttest.Node
	pods  *podsource.Static
	opts  agent.Options
	agent *agenttest.Agent
	cni   *agenttest.CNI
}

func newEnv(t *testing.T, mutate func(*agent.Options)) *env {
	t.Helper()
	e := &env{t: t, node: agenttest.NewNode(t), pods: agenttest.NewStatic()}
	e.opts = e.node.Options(e.pods)
	if mutate != nil {
		mutate(&e.opts)
	}
	e.agent = agenttest.StartAgent(t, e.opts)
	e.cni = agenttest.NewCNI(t, e.node, filepath.Join(e.opts.CNIConfDir, agent.DefaultCNIConfName))
	return e
}

// restart stops the agent and starts a new one with the same options.
func (e *env) restart() {
	e.t.Helper()
	e.agent.Stop(e.t)
	e.agent = agenttest.StartAgent(e.t, e.opts)
}

// podSpec describes a test pod.
type podSpec struct {
	name  string
	ips   string // comma list of prefixes
	mac   string
	gw    string // comma list
	vlan  int
	extra map[string]string
}

func (s podSpec) assignment() annotations.Assignment {
	m, err := net.ParseMAC(s.mac)
	if err != nil {
		panic(err)
	}
	a := annotations.Assignment{Identity: "pod/default/" + s.name, Pool: "pool-a", MAC: m, VLAN: s.vlan}
	for _, p := range strings.Split(s.ips, ",") {
		a.IPs = append(a.IPs, netip.MustParsePrefix(p))
	}
	if s.gw != "" {
		for _, g := range strings.Split(s.gw, ",") {
			a.Gateways = append(a.Gateways, netip.MustParseAddr(g))
		}
	}
	return a
}

// testPod is a pod known to the agent with its netns.
type testPod struct {
	pod   *corev1.Pod
	netns *agenttest.Netns
	rt    *libcni.RuntimeConf
}

// newPod registers the pod with the agent's source and makes its netns; it
// does not run ADD.
func (e *env) newPod(s podSpec) *testPod {
	e.t.Helper()
	pod := agenttest.Pod("default", s.name, "uid-"+s.name, s.assignment(), s.extra)
	e.pods.Set(pod)
	n := agenttest.NewNetns(e.t)
	return &testPod{pod: pod, netns: n, rt: agenttest.RuntimeConf("ctr-"+s.name, n, "eth0", pod)}
}

// addPod registers the pod and runs ADD, failing the test on error.
func (e *env) addPod(s podSpec) *testPod {
	e.t.Helper()
	p := e.newPod(s)
	if _, err := e.cni.Add(p.rt); err != nil {
		e.t.Fatalf("ADD %s: %v", s.name, err)
	}
	return p
}

// cniCode returns the CNI error code of err (0 when err is not a CNI error).
func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// hostHandle is a netlink handle in the node's namespace.
func (e *env) hostHandle() *netlink.Handle {
	e.t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(e.node.Netns.Fd()))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(h.Close)
	return h
}

func handleIn(t *testing.T, n *agenttest.Netns) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// ovsPortOf returns the OVS interface of a container's attachment ("" if none).
func (e *env) ovsPortOf(containerID string) string {
	e.t.Helper()
	return strings.TrimSpace(e.node.OVS.Vsctl(e.t, "--bare", "--columns=name", "find", "Interface",
		fmt.Sprintf("external_ids:stickynet-container-id=%q", containerID)))
}

// waitRemoved waits until the container's OVS port and every record are
// gone (once OVS answers again).
func (e *env) waitRemoved(containerID string) {
	e.t.Helper()
	waitFor(e.t, "the pod's OVS port removed once OVS answers", func() bool { return e.ovsPortOf(containerID) == "" })
	waitFor(e.t, "the pod's record removed", func() bool { return len(e.records()) == 0 })
}

// confWith is the stickynet plugin's network configuration as the runtime
// passes it, with the keys of set set.
func (e *env) confWith(set map[string]any) []byte {
	var m map[string]any
	if err := json.Unmarshal(e.cni.List.Plugins[0].Bytes, &m); err != nil {
		e.t.Fatal(err)
	}
	m["cniVersion"], m["name"] = "1.1.0", "stickynet"
	maps.Copy(m, set)
	b, err := json.Marshal(m)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// waitChild waits until a child of the test process (the agent runs in
// it) runs a command whose arguments contain each of args.
func waitChild(t *testing.T, what string, args ...string) {
	t.Helper()
	self := strconv.Itoa(os.Getpid())
	waitFor(t, what, func() bool {
		stats, _ := filepath.Glob("/proc/[0-9]*/stat")
		for _, st := range stats {
			b, err := os.ReadFile(st)
			// comm, in parentheses, may hold spaces: ppid is the second
			// field after its closing one.
			i := strings.LastIndexByte(string(b), ')')
			if err != nil || i < 0 {
				continue // gone meanwhile
			}
			if f := strings.Fields(string(b[i+1:])); len(f) < 2 || f[1] != self {
				continue
			}
			cmdline, err := os.ReadFile(filepath.Join(filepath.Dir(st), "cmdline"))
			if err != nil {
				continue
			}
			all := true
			for _, a := range args {
				all = all && strings.Contains(string(cmdline), a)
			}
			if all {
				return true
			}
		}
		return false
	})
}

// records lists the files in the agent's records folder but its
// api.RecordsComplete mark.
func (e *env) records() []string {
	e.t.Helper()
	entries, err := os.ReadDir(e.opts.CacheDir)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		if en.Name() != api.RecordsComplete {
			out = append(out, en.Name())
		}
	}
	return out
}

// hostVeths lists the node's veths whose name starts with "sn".
func (e *env) hostVeths() []string {
	e.t.Helper()
	// Links come and go while a test waits for a veth to go: a dump the
	// kernel interrupts is taken again.
	links, err := netlinkdump.Retry(e.hostHandle().LinkList)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, "sn") {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}

// ping pings from a pod and reports whether all count replies came back.
func ping(t *testing.T, from *testPod, to string, count int) bool {
	t.Helper()
	ok, _ := pingSize(t, from, to, count, 0)
	return ok
}

// pingSize is ping with size bytes of payload (0: ping's default, 56), and
// ping's output.
func pingSize(t *testing.T, from *testPod, to string, count, size int) (bool, string) {
	t.Helper()
	args := []string{"busybox", "ping", "-c", fmt.Sprint(count), "-W", "2"}
	if size > 0 {
		args = append(args, "-s", fmt.Sprint(size))
	}
	out, err := from.netns.Command(t.Context(), append(args, to)...).CombinedOutput()
	return err == nil && strings.Contains(string(out), fmt.Sprintf("%d packets received", count)), string(out)
}

// sysctlIn reads /proc/sys/<name> inside a namespace.
func sysctlIn(t *testing.T, n *agenttest.Netns, name string) string {
	t.Helper()
	var v []byte
	if err := n.Do(func(ns.NetNS) error {
		var err error
		v, err = os.ReadFile(filepath.Join("/proc/sys", name))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}
