package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
	"github.com/stickynet/stickynet/nodeagent/api"
)

// fbEnv is a node with a real agent whose conflist has a fallback network of
// the reference plugins (bridge fbBridge + host-local with two addresses),
// and a runtime that runs the real stickynet plugin binary through libcni
// inside the node's namespace, as containerd on that node would.
type fbEnv struct {
	t         *testing.T
	node      *agenttest.Node
	pods      interface{ Set(*corev1.Pod) }
	cni       *libcni.CNIConfig
	list      *libcni.NetworkConfigList
	path      string // CNI_PATH
	cacheDir  string // the plugin's
	ipamDir   string
	fallback  string
	pluginBin string
	agent     *agenttest.Agent
}

const (
	fbBridge  = "snfb0"
	fbNetwork = "fallback-pods"
	fbFirst   = "10.99.0.10"
	fbSecond  = "10.99.0.11"
)

func newFallbackEnv(t *testing.T) *fbEnv {
	t.Helper()
	return newFallbackEnvAt(t, "1.0.0")
}

// newFallbackEnvAt is newFallbackEnv with a fallback network of the given
// CNI version.
func newFallbackEnvAt(t *testing.T, version string) *fbEnv {
	t.Helper()
	return newFallbackEnvOf(t, `{"cniVersion":%q,"name":%q,"plugins":[{"type":"bridge","bridge":%q,"capabilities":{"mac":true},`+
		`"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.99.0.0/24","rangeStart":%q,"rangeEnd":%q}]]}}]}`,
		version, fbNetwork, fbBridge)
}

// newFallbackEnvOf is newFallbackEnv with the fallback conflist format,
// given its version, name and bridge, then host-local's dataDir and range.
func newFallbackEnvOf(t *testing.T, format, version, network, bridge string) *fbEnv {
	t.Helper()
	testenv.Root(t)
	refDir := filepath.Dir(testenv.NeedTool(t, "cniplugins", "bridge"))
	node := agenttest.NewNode(t)
	pods := agenttest.NewStatic()
	e := &fbEnv{t: t, node: node, pods: pods, cacheDir: filepath.Join(node.Dir, "plugin-cache"), ipamDir: filepath.Join(node.Dir, "fallback-ipam")}
	e.fallback = fmt.Sprintf(format, version, network, bridge, e.ipamDir, fbFirst, fbSecond)
	file := filepath.Join(node.Dir, "fallback.conflist")
	if err := os.WriteFile(file, []byte(e.fallback), 0o600); err != nil {
		t.Fatal(err)
	}
	opts := node.Options(pods)
	opts.FallbackConfList = file
	opts.CNICacheDir = e.cacheDir
	e.agent = agenttest.StartAgent(t, opts)
	b, err := os.ReadFile(filepath.Join(opts.CNIConfDir, agent.DefaultCNIConfName))
	if err != nil {
		t.Fatal(err)
	}
	if e.list, err = libcni.NetworkConfFromBytes(b); err != nil {
		t.Fatalf("installed conflist: %v\n%s", err, b)
	}
	pluginDir := agenttest.PluginDir(t)
	e.pluginBin = filepath.Join(pluginDir, api.PluginType)
	e.path = pluginDir + string(os.PathListSeparator) + refDir
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir, refDir}, filepath.Join(node.Dir, "runtime-cache"), nil)
	return e
}

// in runs f inside the node's namespace, where the runtime runs plugins.
func (e *fbEnv) in(f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return e.node.Netns.Do(func(ns.NetNS) error { return f(ctx) })
}

func (e *fbEnv) add(rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := e.in(func(ctx context.Context) error {
		var err error
		res, err = e.cni.AddNetworkList(ctx, e.list, rt)
		return err
	})
	return res, err
}

func (e *fbEnv) del(rt *libcni.RuntimeConf) error {
	return e.in(func(ctx context.Context) error { return e.cni.DelNetworkList(ctx, e.list, rt) })
}

func (e *fbEnv) check(rt *libcni.RuntimeConf) error {
	return e.in(func(ctx context.Context) error { return e.cni.CheckNetworkList(ctx, e.list, rt) })
}

// gc calls the plugin's GC directly with valid as the runtime's
// attachments (libcni would first DEL what its own cache lists).
func (e *fbEnv) gc(valid ...*libcni.RuntimeConf) error {
	var conf map[string]any
	if err := json.Unmarshal(e.list.Plugins[0].Bytes, &conf); err != nil {
		return err
	}
	atts := []types.GCAttachment{}
	for _, rt := range valid {
		atts = append(atts, types.GCAttachment{ContainerID: rt.ContainerID, IfName: rt.IfName})
	}
	conf["name"], conf["cniVersion"], conf["cni.dev/valid-attachments"] = e.list.Name, e.list.CNIVersion, atts
	b, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	return e.in(func(ctx context.Context) error {
		return invoke.ExecPluginWithoutResult(ctx, e.pluginBin, b, &invoke.Args{Command: "GC", Path: e.path}, nil)
	})
}

// pod registers a pod with the agent and makes its netns.
func (e *fbEnv) pod(name string, ann map[string]string) (*libcni.RuntimeConf, *agenttest.Netns) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: k8stypes.UID("uid-" + name), Annotations: ann},
		Spec:       corev1.PodSpec{NodeName: "node-1"},
	}
	e.pods.Set(p)
	n := agenttest.NewNetns(e.t)
	return agenttest.RuntimeConf("ctr-"+name, n, "eth0", p), n
}

func (e *fbEnv) record(rt *libcni.RuntimeConf) string {
	return filepath.Join(e.cacheDir, "fallback", rt.ContainerID+"@"+rt.IfName+".json")
}

// lease is host-local's file for ip: present while ip is given out.
func (e *fbEnv) lease(ip string) string { return filepath.Join(e.ipamDir, fbNetwork, ip) }

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// fallbackVeths lists the host ends in the fallback bridge.
func (e *fbEnv) fallbackVeths() []string {
	cmd := e.node.Netns.Command(context.Background(), "ip", "-o", "link", "show", "master", fbBridge)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "does not exist") {
			return nil
		}
		e.t.Fatalf("links of %s: %v: %s", fbBridge, err, stderr.String())
	}
	// One line per link, "<index>: <name>@<peer>: <flags> ...".
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasSuffix(f[0], ":") {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return names
}

func (e *fbEnv) ovsPorts() []string {
	return strings.Fields(e.node.OVS.Vsctl(e.t, "list-ports", e.node.Bridge))
}

// TestFallbackNetwork runs the real plugin, a real agent and the reference
// bridge and host-local plugins in throwaway namespaces: pods without a
// stickynet assignment go through the fallback network next to a stickynet
// pod, and every command reaches the network that attached the interface.
func TestFallbackNetwork(t *testing.T) {
	e := newFallbackEnv(t)

	entry := e.list.Plugins[0]
	if !entry.Network.Capabilities["mac"] || !strings.Contains(string(entry.Bytes), `"fallback"`) {
		t.Fatalf("installed stickynet entry %s: want the fallback and its capabilities", entry.Bytes)
	}

	// ADD through the fallback, with the runtime's capability arguments.
	plain, plainNS := e.pod("plain", nil)
	plain.CapabilityArgs = map[string]any{"mac": "02:00:00:99:00:01"}
	res, err := e.add(plain)
	if err != nil {
		t.Fatalf("ADD of a pod without annotations: %v", err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version() != e.list.CNIVersion || len(r.IPs) != 1 || r.IPs[0].Address.IP.String() != fbFirst {
		t.Errorf("result %+v (CNI %s): want %s in CNI %s", r, res.Version(), fbFirst, e.list.CNIVersion)
	}
	if out := plainNS.Run(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "link/ether 02:00:00:99:00:01 ") {
		t.Errorf("eth0 of plain does not carry the MAC the runtime asked for:\n%s", out)
	}
	if out := plainNS.Run(t, "ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "inet "+fbFirst+"/24 ") {
		t.Errorf("eth0 of plain lacks %s:\n%s", fbFirst, out)
	}
	if !exists(e.record(plain)) || !exists(e.lease(fbFirst)) || len(e.fallbackVeths()) != 1 || len(e.ovsPorts()) != 0 {
		t.Errorf("after ADD: record %t, lease %t, fallback veths %v, OVS ports %v; want a record, a lease, one veth, no OVS port",
			exists(e.record(plain)), exists(e.lease(fbFirst)), e.fallbackVeths(), e.ovsPorts())
	}
	if err := e.check(plain); err != nil {
		t.Errorf("CHECK of the fallback attachment: %v", err)
	}
	if err := e.in(func(ctx context.Context) error { return e.cni.GetStatusNetworkList(ctx, e.list) }); err != nil {
		t.Errorf("STATUS: %v", err)
	}

	// A stickynet pod on the same node goes to the agent.
	m := "02:00:0a:51:00:14"
	sticky, _ := e.pod("sticky", map[string]string{
		annotations.Identity: "pod/default/sticky", annotations.AssignedPool: "pool-a",
		annotations.AssignedIP: "10.81.0.20/24", annotations.AssignedMAC: m,
	})
	if _, err := e.add(sticky); err != nil {
		t.Fatalf("ADD of a stickynet pod: %v", err)
	}
	if ports := e.ovsPorts(); len(ports) != 1 || exists(e.record(sticky)) {
		t.Errorf("stickynet pod: OVS ports %v, fallback record %t; want one port and no record", ports, exists(e.record(sticky)))
	}

	// A pod that asks for stickynet but was not admitted never falls back.
	asks, asksNS := e.pod("asks", map[string]string{annotations.Pool: "demo"})
	_, err = e.add(asks)
	if code, msg := cniCodeMsg(err); code != api.ErrPodNotAdmitted || !strings.Contains(msg, `stickynet.io/pool="demo"`) {
		t.Errorf("ADD of a pod with stickynet.io/pool and no assignment: %v; want code %d naming the annotation", err, api.ErrPodNotAdmitted)
	}
	if exists(e.record(asks)) || hasLink(asksNS, "eth0") {
		t.Error("the refused pod left a record or an eth0")
	}

	// A failed fallback ADD (the range is used up) leaves nothing.
	stale, _ := e.pod("stale", nil)
	if _, err := e.add(stale); err != nil {
		t.Fatalf("ADD of a second fallback pod: %v", err)
	}
	full, fullNS := e.pod("full", nil)
	if _, err := e.add(full); err == nil {
		t.Fatal("ADD with the fallback's range used up succeeded")
	} else {
		t.Logf("ADD with the range used up: %v", err)
	}
	cached, _ := filepath.Glob(filepath.Join(e.cacheDir, "results", "*"+full.ContainerID+"*"))
	if exists(e.record(full)) || hasLink(fullNS, "eth0") || len(e.fallbackVeths()) != 2 || len(cached) != 0 {
		t.Errorf("failed ADD left: record %t, eth0 %t, fallback veths %v (want 2), cached results %v",
			exists(e.record(full)), hasLink(fullNS, "eth0"), e.fallbackVeths(), cached)
	}

	// GC: the stale fallback attachment goes, and so does the record of an
	// ADD that crashed after writing it; the valid ones of both networks stay.
	crashed, _ := e.pod("crashed", nil)
	rec := fmt.Sprintf(`{"containerID":%q,"ifName":"eth0","netns":%q,"network":%s}`, crashed.ContainerID, crashed.NetNS, e.fallback)
	if err := os.WriteFile(e.record(crashed), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.gc(plain, sticky); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if exists(e.record(stale)) || exists(e.lease(fbSecond)) || exists(e.record(crashed)) || len(e.fallbackVeths()) != 1 {
		t.Errorf("after GC: stale record %t, lease %t, crashed record %t, fallback veths %v (want 1)",
			exists(e.record(stale)), exists(e.lease(fbSecond)), exists(e.record(crashed)), e.fallbackVeths())
	}
	if !exists(e.record(plain)) || len(e.ovsPorts()) != 1 {
		t.Errorf("GC removed a valid attachment: plain's record %t, OVS ports %v", exists(e.record(plain)), e.ovsPorts())
	}
	if err := e.check(plain); err != nil {
		t.Errorf("CHECK of plain after GC: %v", err)
	}
	if err := e.check(sticky); err != nil {
		t.Errorf("CHECK of sticky after GC: %v", err)
	}

	// DEL, and DEL again.
	if err := e.del(plain); err != nil {
		t.Fatalf("DEL of plain: %v", err)
	}
	if exists(e.record(plain)) || exists(e.lease(fbFirst)) || len(e.fallbackVeths()) != 0 || hasLink(plainNS, "eth0") {
		t.Errorf("after DEL: record %t, lease %t, fallback veths %v, eth0 %t", exists(e.record(plain)), exists(e.lease(fbFirst)), e.fallbackVeths(), hasLink(plainNS, "eth0"))
	}
	if err := e.del(plain); err != nil {
		t.Errorf("second DEL of plain: %v", err)
	}

	// DEL once the pod's netns is gone.
	gone, goneNS := e.pod("gone", nil)
	res, err = e.add(gone)
	if err != nil {
		t.Fatalf("ADD of gone: %v", err)
	}
	r, _ = types100.NewResultFromResult(res)
	goneNS.Remove(t)
	if err := e.del(gone); err != nil {
		t.Errorf("DEL with the netns removed: %v", err)
	}
	if exists(e.record(gone)) || (len(r.IPs) == 1 && exists(e.lease(r.IPs[0].Address.IP.String()))) {
		t.Errorf("after DEL without netns: record %t, lease of %v kept", exists(e.record(gone)), r.IPs)
	}
	// The bridge plugin cannot reach the pod's end once the netns is gone;
	// the host end goes when the kernel tears the namespace down, which it
	// does in a work queue after the last reference is dropped.
	testenv.Eventually(context.Background(), t, 30*time.Second, "host veth of gone removed with its netns", func() (bool, string) {
		v := e.fallbackVeths()
		return len(v) == 0, fmt.Sprintf("fallback veths %v", v)
	})

	if err := e.del(sticky); err != nil {
		t.Errorf("DEL of sticky: %v", err)
	}
	if ports := e.ovsPorts(); len(ports) != 0 {
		t.Errorf("OVS ports after DEL of sticky: %v", ports)
	}
	if recs, _ := filepath.Glob(filepath.Join(e.cacheDir, "fallback", "*")); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// TestNotAdmittedWithoutFallbackNetwork: with a conflist without fallback,
// the real agent refuses a pod without a stickynet assignment as before.
func TestNotAdmittedWithoutFallbackNetwork(t *testing.T) {
	e := newFallbackEnv(t)
	var entry map[string]any
	if err := json.Unmarshal(e.list.Plugins[0].Bytes, &entry); err != nil {
		t.Fatal(err)
	}
	delete(entry, "fallback")
	delete(entry, "capabilities")
	b, err := json.Marshal(map[string]any{"cniVersion": e.list.CNIVersion, "name": e.list.Name, "plugins": []any{entry}})
	if err != nil {
		t.Fatal(err)
	}
	if e.list, err = libcni.NetworkConfFromBytes(b); err != nil {
		t.Fatal(err)
	}
	plain, plainNS := e.pod("plain", nil)
	_, err = e.add(plain)
	if code, msg := cniCodeMsg(err); code != api.ErrPodNotAdmitted || !strings.Contains(msg, "is its namespace labelled stickynet.io/enabled=true?") {
		t.Fatalf("ADD without a fallback: %v; want code %d saying the pod was not admitted", err, api.ErrPodNotAdmitted)
	}
	if exists(e.record(plain)) || hasLink(plainNS, "eth0") {
		t.Error("the refused pod left a record or an eth0")
	}
}

func cniCodeMsg(err error) (uint, string) {
	if err == nil {
		return 0, ""
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code, te.Msg
	}
	return 0, err.Error()
}

func hasLink(n *agenttest.Netns, name string) bool {
	return n.Command(context.Background(), "ip", "link", "show", name).Run() == nil
}

// TestFallbackWithoutCheck: the stickynet network is CNI 1.1.0, so a
// runtime may CHECK any of its attachments; a healthy pod attached through a
// fallback network older than 0.4.0 (flannel's stock conflist says 0.3.1),
// which has no CHECK, passes it.
func TestFallbackWithoutCheck(t *testing.T) {
	e := newFallbackEnvAt(t, "0.3.1")
	rt, _ := e.pod("plain", nil)
	if _, err := e.add(rt); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() {
		if err := e.del(rt); err != nil {
			t.Errorf("DEL: %v", err)
		}
	})
	if err := e.check(rt); err != nil {
		t.Errorf("CHECK of a healthy pod on a CNI 0.3.1 fallback network: %v", err)
	}
}

// TestFallbackGCKeepsOtherAttachments: a fallback network's GC hears of
// every attachment the runtime holds valid, not only those stickynet
// attached: with the fallback "auto", the cluster's network as it was, the
// pods that network attached before stickynet came keep their leases.
func TestFallbackGCKeepsOtherAttachments(t *testing.T) {
	// host-local as the fallback's one plugin: the reference bridge plugin
	// does not pass GC on to its IPAM (v1.10.0), plugins of other networks may.
	e := newFallbackEnvOf(t, `{"cniVersion":%q,"name":%q,"plugins":[{"type":"host-local","bridge":%q,`+
		`"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.99.0.0/24","rangeStart":%q,"rangeEnd":%q}]]}}]}`,
		"1.1.0", fbNetwork, fbBridge)
	// host-local's lease of a pod attached by the same network, directly.
	if err := os.MkdirAll(filepath.Dir(e.lease(fbSecond)), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.lease(fbSecond), []byte("ctr-before\r\neth0"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := &libcni.RuntimeConf{ContainerID: "ctr-before", IfName: "eth0"}
	if err := e.gc(before); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if !exists(e.lease(fbSecond)) {
		t.Error("GC released the lease of a valid attachment that the fallback network made before stickynet")
	}
	// A lease of no valid attachment goes, as the fallback's GC decides.
	if err := e.gc(); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if exists(e.lease(fbSecond)) {
		t.Error("GC with no valid attachment kept the lease: this fallback's GC releases nothing, and the test shows nothing")
	}
}

// TestDelOfPodAttachedBeforeStickynet: a pod the fallback network attached
// directly, before stickynet's conflist was there (the node's pods of before
// the install), is torn down through stickynet's conflist, as the runtime
// has it now: the agent has no attachment of it, and the plugin detaches it
// from the fallback network. Before, its veth and address lease stayed.
//
// With the agent down (restarting, waiting for OVS, the node's first boot
// after the install), the same: the agent's records show it made nothing of
// the pod. Before, that DEL succeeded without detaching it, and its lease
// and hostPort rules stayed for good (containerd sends no GC).
func TestDelOfPodAttachedBeforeStickynet(t *testing.T) {
	for _, agentDown := range []bool{false, true} {
		t.Run(fmt.Sprintf("agentDown=%t", agentDown), func(t *testing.T) {
			e := newFallbackEnv(t)
			list, err := libcni.ConfListFromBytes([]byte(e.fallback))
			if err != nil {
				t.Fatal(err)
			}
			rt, _ := e.pod("before", nil)
			if err := e.in(func(ctx context.Context) error {
				_, err := e.cni.AddNetworkList(ctx, list, rt)
				return err
			}); err != nil {
				t.Fatalf("ADD through the fallback network directly: %v", err)
			}
			if !exists(e.lease(fbFirst)) || len(e.fallbackVeths()) != 1 || exists(e.record(rt)) {
				t.Fatalf("after the direct ADD: lease %t, fallback veths %v, stickynet record %t; want a lease, one veth, no record",
					exists(e.lease(fbFirst)), e.fallbackVeths(), exists(e.record(rt)))
			}
			if agentDown {
				e.agent.Stop(t)
			}
			if err := e.del(rt); err != nil {
				t.Fatalf("DEL through stickynet's conflist: %v", err)
			}
			if exists(e.lease(fbFirst)) || len(e.fallbackVeths()) != 0 {
				t.Errorf("after DEL through stickynet's conflist: lease %t, fallback veths %v; want both gone", exists(e.lease(fbFirst)), e.fallbackVeths())
			}
			// A DEL of a sandbox neither network attached (an ADD that failed
			// early) still succeeds.
			never, _ := e.pod("never", nil)
			if err := e.del(never); err != nil {
				t.Errorf("DEL of a sandbox no network attached: %v", err)
			}
		})
	}
}
