// Command stickynet-nodeagent is stickynet's node agent (a DaemonSet): it runs
// the OVS datapath of its node and answers the stickynet CNI plugin. See
// package agent.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/bandwidth"
)

func main() {
	var o agent.Options
	var egress string
	fs := flag.CommandLine
	fs.StringVar(&o.NodeName, "node-name", os.Getenv("NODE_NAME"), "Node whose pods this agent serves (default $NODE_NAME)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "API server credentials; empty means in-cluster")
	fs.StringVar(&o.Netns, "netns", "", "node network namespace (path) holding OVS and the host veths; empty means the agent's own")
	fs.StringVar(&o.Socket, "socket", api.DefaultSocket, "unix socket the CNI plugin talks to")
	fs.StringVar(&o.CacheDir, "cache-dir", "/var/lib/stickynet/attachments", "folder of attachment records")
	fs.StringVar(&o.Bridge, "bridge", "br-stickynet", "OVS bridge of pods")
	fs.StringVar(&o.Uplink, "uplink", "", "interface to add to the bridge as a trunk uplink")
	fs.StringVar(&o.DatapathType, "datapath-type", "auto", "datapath of a new bridge: auto, netdev or system")
	fs.StringVar(&egress, "egress-mode", string(bandwidth.EgressAuto), "pod egress limits: auto (meter on netdev, policing on system), meter or policing")
	fs.StringVar(&o.OVSDB, "ovs-db", "unix:/var/run/openvswitch/db.sock", "ovsdb-server socket")
	fs.StringVar(&o.OVSRunDir, "ovs-rundir", "/var/run/openvswitch", "ovs-vswitchd run folder (bridge management sockets)")
	fs.StringVar(&o.Vsctl, "ovs-vsctl", "ovs-vsctl", "ovs-vsctl command")
	fs.StringVar(&o.Ofctl, "ovs-ofctl", "ovs-ofctl", "ovs-ofctl command")
	fs.IntVar(&o.MTU, "mtu", 0, "MTU of pod veths, and of SR-IOV VFs up to their PF's; 0 means the kernel default (a VF keeps its own)")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", "/etc/cni/net.d", "where to install the conflist; empty means do not")
	fs.StringVar(&o.CNIConfName, "cni-conf-name", agent.DefaultCNIConfName, "conflist file name; runtimes use the first of --cni-conf-dir in name order, so it must sort before the cluster's other networks'")
	fs.StringVar(&o.CNINetwork, "cni-network", "stickynet", "network name in the conflist")
	fs.StringVar(&o.FallbackConfList, "fallback-conflist", agent.FallbackAuto, "CNI conflist file of the network for pods stickynet does not serve (embedded in the conflist as \"fallback\", read again every 10 s); \"auto\": the first other network configuration of --cni-conf-dir in name order, the one the runtime would use without stickynet, looked for again every 10 s; empty means none: such pods fail CNI ADD")
	fs.StringVar(&o.CNICacheDir, "cni-cache-dir", "", "the plugin's \"cacheDir\" in the conflist (records of fallback attachments); empty means "+api.DefaultCacheDir)
	fs.StringVar(&o.CNIBinDir, "cni-bin-dir", "", "where to install the stickynet plugin binary (with --cni-plugin)")
	fs.StringVar(&o.CNIPluginSource, "cni-plugin", "", "stickynet plugin binary to copy into --cni-bin-dir")
	fs.DurationVar(&o.PodWait, "pod-wait", 0, "how long ADD waits for the pod to reach the agent, then for another pod on the node to give up its address and for its SriovNetwork to be known; at most half the conflist's timeout, and the conflist the agent installs gives the plugin at least twice this (default 5s)")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", time.Minute, "how often to re-check every pod's limits and ports against OVS, to make the OVS bridge and the pods' ports again if they are gone, and to remove attachments whose pod sandbox is gone; the same happens within 2 s of ovs-vswitchd losing its flows (a restart drops meters and the pods' qdiscs), seen by a marker flow in OpenFlow table 250; a resync that fails is tried again 2 s later, then at doubling waits up to this period; 0 means neither")
	fs.StringVar(&o.SysfsRoot, "sysfs-root", "/sys", "where SR-IOV VFs are looked up (<root>/class/net/<pf>/device/virtfn*)")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", "", "address of the Prometheus endpoint /metrics, such as :9194; empty means none")
	fs.IntVar(&o.MeterReserve, "meter-reserve", 32, "free OpenFlow port numbers kept with an egress meter ready; negative means none")
	fs.StringVar(&o.DaemonSet, "daemonset", "", "namespace/name of the DaemonSet that runs the agent: when the agent stops after that DaemonSet was deleted (stickynet uninstalled), or while it no longer selects the node, it removes the conflist and plugin binary it installed, so that new pods get the node's other network; empty means it never removes them")
	klog.InitFlags(fs)
	flag.Parse()
	o.EgressMode = bandwidth.EgressMode(egress)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "stickynet-nodeagent:", err)
		os.Exit(1)
	}
}
