package stickynet

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/api"
)

func TestRuns(t *testing.T) {
	cfg := Config{SimAgents: 2}
	tests := []struct {
		node cluster.Node
		want bool
	}{
		{cluster.Node{Name: "node-1"}, true},
		{cluster.Node{Name: "node-7"}, true},
		{cluster.Node{Name: "sim-1", Simulated: true}, true},
		{cluster.Node{Name: "sim-2", Simulated: true}, true},
		{cluster.Node{Name: "sim-3", Simulated: true}, false},
		{cluster.Node{Name: "sim-x", Simulated: true}, false},
	}
	for _, tt := range tests {
		if got := cfg.Runs(tt.node); got != tt.want {
			t.Errorf("Runs(%s) = %t, want %t", tt.node.Name, got, tt.want)
		}
	}
}

func TestCNI(t *testing.T) {
	cfg := Config{Binaries: BinariesIn("/bin-dir"), SimAgents: 1}
	n := cluster.Node{Name: "node-1", Dir: "/c/nodes/node-1", Uplink: "eth0"}
	got := cfg.CNI(n)
	if !got.PlainUplink || got.Plugins[api.PluginType] != "/bin-dir/stickynet" || got.NodeLabels[NodeLabel] != "true" {
		t.Errorf("CNI(node-1) = %+v: want a plain uplink, the plugin and %s", got, NodeLabel)
	}
	type confList struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type     string          `json:"type"`
			Socket   string          `json:"socket"`
			CacheDir string          `json:"cacheDir"`
			Fallback json.RawMessage `json:"fallback"`
		} `json:"plugins"`
	}
	var conf confList
	if err := json.Unmarshal(got.ConfList, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Name != Network || len(conf.Plugins) != 1 || conf.Plugins[0].Type != api.PluginType ||
		conf.Plugins[0].Socket != "/c/nodes/node-1/stickynet/agent.sock" ||
		conf.Plugins[0].CacheDir != "/c/nodes/node-1/stickynet/cni-cache" {
		t.Errorf("conflist = %s", got.ConfList)
	}
	// A real node's fallback network is the reference chain on its own bridge.
	fb, err := api.ParseFallback(conf.Plugins[0].Fallback)
	if err != nil {
		t.Fatalf("fallback of node-1: %v in %s", err, got.ConfList)
	}
	if len(fb.Plugins) != 1 || fb.Plugins[0].Network.Type != "bridge" || fb.Plugins[0].Network.IPAM.Type != "host-local" ||
		!strings.Contains(string(fb.Plugins[0].Bytes), `"bridge":"`+FallbackBridge+`"`) {
		t.Errorf("fallback of node-1 = %s, want bridge %s with host-local", conf.Plugins[0].Fallback, FallbackBridge)
	}
	sim := cfg.CNI(cluster.Node{Name: "sim-1", Simulated: true, Dir: "/c/nodes/sim-1"})
	var simConf confList
	if err := json.Unmarshal(sim.ConfList, &simConf); err != nil {
		t.Fatal(err)
	}
	if len(simConf.Plugins) != 1 || simConf.Plugins[0].Fallback != nil {
		t.Errorf("conflist of sim-1 = %s, want stickynet without fallback", sim.ConfList)
	}
	if ref := cfg.CNI(cluster.Node{Name: "sim-2", Simulated: true}); ref.PlainUplink || ref.ConfList != nil || ref.NodeLabels != nil {
		t.Errorf("CNI(sim-2) = %+v, want the reference chain (zero CNI)", ref)
	}
}

func TestAgentArgs(t *testing.T) {
	n := cluster.Node{Name: "node-2", Dir: "/c/nodes/node-2", Uplink: "eth0", CNIConfDir: "/c/nodes/node-2/cni/net.d"}
	got := agentArgs("/b/agent", n, "/c/kubeconfig", "/c/nodes/node-2/ovs/db.sock", "/c/nodes/node-2/ovs")
	for _, want := range []string{
		"--node-name=node-2", "--kubeconfig=/c/kubeconfig", "--socket=/c/nodes/node-2/stickynet/agent.sock",
		"--uplink=eth0", "--bridge=br-stickynet", "--ovs-db=unix:/c/nodes/node-2/ovs/db.sock",
		"--ovs-rundir=/c/nodes/node-2/ovs", "--cni-conf-dir=/c/nodes/node-2/cni/net.d", "--cni-network=stickynet",
		"--cni-cache-dir=/c/nodes/node-2/stickynet/cni-cache", "--fallback-conflist=/c/nodes/node-2/stickynet/fallback.conflist",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("agent args %v lack %s", got, want)
		}
	}
	sim := cluster.Node{Name: "sim-1", Simulated: true, Dir: "/c/nodes/sim-1", Uplink: "eth0"}
	var simFallback []string
	for _, a := range agentArgs("/b/agent", sim, "/c/kubeconfig", "/c/nodes/sim-1/ovs/db.sock", "/c/nodes/sim-1/ovs") {
		if strings.HasPrefix(a, "--fallback-conflist") {
			simFallback = append(simFallback, a)
		}
	}
	// Without the flag the agent would look for one (auto).
	if !slices.Equal(simFallback, []string{"--fallback-conflist="}) {
		t.Errorf("simulated node's agent has %v; want --fallback-conflist= (none): only real nodes have a fallback network", simFallback)
	}
	if got[0] != "/b/agent" {
		t.Errorf("agent args start with %s", got[0])
	}
	for _, a := range got {
		if strings.HasPrefix(a, "--cache-dir=") && filepath.Dir(strings.TrimPrefix(a, "--cache-dir=")) != "/c/nodes/node-2/stickynet" {
			t.Errorf("cache dir %s outside the node's folder", a)
		}
	}
}

func TestPoolSpec(t *testing.T) {
	spec, err := poolSpec(netip.MustParsePrefix("10.203.0.0/16"), netip.MustParseAddr("10.203.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if spec.CIDR != "10.203.0.0/16" || spec.Gateway != "10.203.0.1" || len(spec.Ranges) != 1 ||
		spec.Ranges[0].Start != "10.203.6.1" || spec.Ranges[0].End != "10.203.7.254" {
		t.Errorf("pool spec = %+v", spec)
	}
	if spec.NodeSelector == nil || spec.NodeSelector.MatchLabels[NodeLabel] != "true" {
		t.Errorf("pool nodeSelector = %v, want %s=true", spec.NodeSelector, NodeLabel)
	}
	// The cluster's plan: node i at x.y.0.16+i for up to 1020 nodes, the
	// reference chain's pods from x.y.8.0.
	lastNode, firstRefPod := netip.MustParseAddr("10.203.4.11"), netip.MustParseAddr("10.203.8.0")
	start, end := netip.MustParseAddr(spec.Ranges[0].Start), netip.MustParseAddr(spec.Ranges[0].End)
	if !lastNode.Less(start) || !end.Less(firstRefPod) {
		t.Errorf("range %s-%s overlaps node addresses (to %s) or reference-chain pods (from %s)", start, end, lastNode, firstRefPod)
	}
	for _, bad := range []string{"10.203.0.0/24", "fd00::/64"} {
		if _, err := poolSpec(netip.MustParsePrefix(bad), netip.MustParseAddr("10.203.0.1")); err == nil {
			t.Errorf("poolSpec(%s): no error", bad)
		}
	}
}

func TestIsStickynetMod(t *testing.T) {
	if !isStickynetMod([]byte("module github.com/stickynet/stickynet\n\ngo 1.26\n")) {
		t.Error("stickynet's go.mod not recognised")
	}
	if isStickynetMod([]byte("module github.com/stickynet/stickynet/hack/tools\n")) {
		t.Error("a nested module taken for stickynet's")
	}
	if _, err := RepoRoot(); err != nil {
		t.Errorf("RepoRoot from the package folder: %v", err)
	}
}

func TestBinariesCheck(t *testing.T) {
	dir := t.TempDir()
	b := BinariesIn(dir)
	err := b.check()
	if err == nil || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("check of missing binaries = %v, want an error naming make build", err)
	}
	for _, p := range []string{b.Webhook, b.Extender, b.NodeAgent, b.CNI} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.check(); err == nil || !strings.Contains(err.Error(), "not executable") {
		t.Fatalf("check of non-executable binaries = %v", err)
	}
	for _, p := range []string{b.Webhook, b.Extender, b.NodeAgent, b.CNI} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.check(); err != nil {
		t.Fatalf("check of present binaries: %v", err)
	}
}

func TestBuild(t *testing.T) {
	testenv.Integration(t)
	b, err := Build(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.check(); err != nil {
		t.Fatalf("built binaries: %v", err)
	}
	out, err := exec.Command(b.CNI).CombinedOutput() // no CNI_COMMAND: prints its about text
	if !strings.Contains(string(out), "stickynet") {
		t.Errorf("%s without CNI_COMMAND: %v: %s", b.CNI, err, out)
	}
}
