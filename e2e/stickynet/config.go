// Package stickynet runs the whole of stickynet on the local cluster
// (package cluster), as someone trying it by hand gets it from `make
// cluster-up STICKYNET=1` and as the end-to-end tests use it: the custom
// resources, stickynet's own etcd, the webhook (one replica, leader-elected,
// its serving certificate rotated by itself) with its
// MutatingWebhookConfiguration, the scheduler extender with a kube-scheduler
// running the stickynet-scheduler profile, and a node agent in the network
// namespace of every node that runs stickynet, with that node's Open vSwitch
// and its uplink in br-stickynet, so that pods of all nodes share one L2
// network and the real kubelets' containerd runs stickynet's CNI plugin.
//
// The cluster must be started for it: Config.CNI is the cluster.Config.CNI
// that gives the chosen nodes stickynet's conflist and plugin and a plain
// uplink. Every program runs as a process of its own (the binaries `make
// build` writes, or Build), inside the cluster's cgroup, so that the
// cluster's teardown finds them even when the process that started them is
// gone. Node agents stop only once the cluster's nodes are down, because
// containerd needs them for the CNI DEL of every pod.
//
// Simulated nodes are many and each real agent needs its own Open vSwitch
// (an ovsdb-server and an ovs-vswitchd), so only the first Config.SimAgents
// simulated nodes run stickynet; the others keep the reference chain. Nodes
// that run stickynet carry NodeLabel, which PoolSpec's nodeSelector names:
// the extender keeps a pool's pods off nodes where its subnet is not served.
package stickynet

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/api"
)

const (
	// NodeLabel is "true" on the nodes whose agent serves stickynet's pods.
	NodeLabel = "e2e.stickynet.io/stickynet"
	// Network is the CNI network name of stickynet's conflist.
	Network = "stickynet"
	// Bridge is the OVS bridge of pods on every node.
	Bridge = "br-stickynet"
	// DefaultNamespace is stickynet's own namespace: the webhook's
	// certificate Secret and the leader election Lease.
	DefaultNamespace = "stickynet-system"
	// WebhookConfigName is the MutatingWebhookConfiguration's name.
	WebhookConfigName = "stickynet"
)

// Binaries are stickynet's programs.
type Binaries struct {
	Webhook, Extender, NodeAgent, CNI string
}

// BinariesIn returns the binaries as `make build` names them in dir.
func BinariesIn(dir string) Binaries {
	return Binaries{
		Webhook:   filepath.Join(dir, "stickynet-webhook"),
		Extender:  filepath.Join(dir, "stickynet-extender"),
		NodeAgent: filepath.Join(dir, "stickynet-nodeagent"),
		CNI:       filepath.Join(dir, api.PluginType), // the CNI type, as runtimes look the plugin up
	}
}

// Config says which nodes run stickynet and with which binaries. The same
// Config must go to cluster.Config.CNI (through CNI) and to Start.
type Config struct {
	// Binaries are the programs to run.
	Binaries Binaries
	// SimAgents is how many simulated nodes (sim-1 … sim-SimAgents) run a
	// node agent with an Open vSwitch of their own; the other simulated
	// nodes keep the reference chain. Every real node runs stickynet.
	SimAgents int
}

// Runs reports whether node n runs stickynet.
func (cfg Config) Runs(n cluster.Node) bool {
	if !n.Simulated {
		return true
	}
	k, err := strconv.Atoi(strings.TrimPrefix(n.Name, "sim-"))
	return err == nil && k >= 1 && k <= cfg.SimAgents
}

// CNI is the cluster.Config.CNI for stickynet: on the nodes that run it, a
// plain uplink (the agent puts it into br-stickynet), stickynet's conflist
// pointing at the node's agent socket (on a real node with the reference
// chain as fallback network, see FallbackConfList), the plugin binary and
// NodeLabel; on the others the reference chain.
func (cfg Config) CNI(n cluster.Node) cluster.CNI {
	if !cfg.Runs(n) {
		return cluster.CNI{}
	}
	conf, err := agent.BuildConfList(confListSpec(n))
	if err != nil {
		panic(fmt.Sprintf("stickynet conflist of %s: %v", n.Name, err)) // the reference chain always parses
	}
	return cluster.CNI{
		PlainUplink: true,
		ConfList:    conf,
		Plugins:     map[string]string{api.PluginType: cfg.Binaries.CNI},
		NodeLabels:  map[string]string{NodeLabel: "true"},
	}
}

// FallbackBridge is the Linux bridge of the fallback network on a real
// node. With stickynet the node's uplink is in br-stickynet, so this
// bridge holds only the node's fallback pods.
const FallbackBridge = "cni0"

// FallbackConfList is the fallback network of real node n, for the pods
// stickynet does not serve (namespaces without the label): the reference
// chain the cluster gives nodes without stickynet (bridge and host-local
// with the node's own range of the shared subnet), on FallbackBridge.
// Simulated nodes have none.
func FallbackConfList(n cluster.Node) []byte {
	if n.Simulated {
		return nil
	}
	n.Bridge = FallbackBridge
	return cluster.ReferenceConfList(n, filepath.Join(n.Dir, "cni", "ipam"))
}

// confListSpec is stickynet's conflist on node n, as its agent installs it.
func confListSpec(n cluster.Node) agent.ConfListSpec {
	return agent.ConfListSpec{
		Network:       Network,
		Socket:        AgentSocket(n),
		CacheDir:      pluginCacheDir(n),
		AgentCacheDir: agentCacheDir(n),
		Fallback:      FallbackConfList(n),
	}
}

// agentCacheDir holds the agent's attachment records on node n.
func agentCacheDir(n cluster.Node) string { return filepath.Join(agentDir(n), "attachments") }

// agentDir holds a node's agent socket and attachment records.
func agentDir(n cluster.Node) string { return filepath.Join(n.Dir, "stickynet") }

// pluginCacheDir holds the CNI plugin's records of fallback attachments on
// node n: nodes share the machine's file system, so each has its own.
func pluginCacheDir(n cluster.Node) string { return filepath.Join(agentDir(n), "cni-cache") }

// fallbackFile is where Start writes node n's fallback conflist for the
// agent's --fallback-conflist.
func fallbackFile(n cluster.Node) string { return filepath.Join(agentDir(n), "fallback.conflist") }

// AgentSocket is the unix socket of node n's agent.
func AgentSocket(n cluster.Node) string { return filepath.Join(agentDir(n), "agent.sock") }

// agentArgs is the node agent's command line on node n: it runs inside the
// node's namespace, with the node's Open vSwitch at ovsDB and ovsRunDir, and
// on a real node with the fallback network in fallbackFile(n).
func agentArgs(bin string, n cluster.Node, kubeconfig, ovsDB, ovsRunDir string) []string {
	args := []string{
		bin,
		"--node-name=" + n.Name,
		"--kubeconfig=" + kubeconfig,
		"--socket=" + AgentSocket(n),
		"--cache-dir=" + agentCacheDir(n),
		"--bridge=" + Bridge,
		"--uplink=" + n.Uplink,
		"--ovs-db=unix:" + ovsDB,
		"--ovs-rundir=" + ovsRunDir,
		"--cni-conf-dir=" + n.CNIConfDir,
		"--cni-network=" + Network,
		"--cni-cache-dir=" + pluginCacheDir(n),
	}
	if n.Simulated {
		args = append(args, "--fallback-conflist=") // none: simulated nodes run stickynet or the reference chain, not both
	} else {
		args = append(args, "--fallback-conflist="+fallbackFile(n))
	}
	return args
}

// PoolSpec returns an IPPool spec that works on this cluster: the subnet
// the nodes share on the fabric, with the fabric bridge in the host
// namespace as gateway (so the host reaches pods directly), a range that no
// node address and no reference-chain pod uses, and a nodeSelector for the
// nodes that run stickynet. Set Default or a namespaceSelector as needed.
func PoolSpec(c *cluster.Cluster) (v1alpha1.IPPoolSpec, error) {
	nodes := c.Nodes()
	if len(nodes) == 0 {
		return v1alpha1.IPPoolSpec{}, fmt.Errorf("cluster has no nodes")
	}
	return poolSpec(nodes[0].Subnet, nodes[0].Gateway)
}

// poolSpec: the cluster's address plan puts nodes at x.y.0.16 up to
// x.y.4.11 (1020 nodes) and reference-chain pods from x.y.8.0, which leaves
// x.y.5.0 to x.y.7.255 to stickynet.
func poolSpec(subnet netip.Prefix, gateway netip.Addr) (v1alpha1.IPPoolSpec, error) {
	if !subnet.Addr().Is4() || subnet.Bits() != 16 {
		return v1alpha1.IPPoolSpec{}, fmt.Errorf("cluster subnet %s: want an IPv4 /16", subnet)
	}
	b := subnet.Masked().Addr().As4()
	start := netip.AddrFrom4([4]byte{b[0], b[1], 6, 1})
	end := netip.AddrFrom4([4]byte{b[0], b[1], 7, 254})
	return v1alpha1.IPPoolSpec{
		CIDR:         subnet.Masked().String(),
		Gateway:      gateway.String(),
		Ranges:       []v1alpha1.IPRange{{Start: start.String(), End: end.String()}},
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{NodeLabel: "true"}},
	}, nil
}
