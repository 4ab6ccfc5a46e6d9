// Command localcluster brings stickynet's local cluster up and down:
//
//	localcluster up   [--dir D] [--kubeconfig K] [--nodes N] [--sim-nodes S]
//	                  [--stickynet --stickynet-bin B --sim-agents A]
//	localcluster down [--dir D]
//
// `make cluster-up` and `make cluster-down` run it; see package clusterctl.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/e2e/clusterctl"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: localcluster up|down|run [flags]")
		os.Exit(2)
	}
	opts := clusterctl.Options{Command: os.Args[1]}
	fs := flag.NewFlagSet("localcluster", flag.ExitOnError)
	klog.InitFlags(fs)
	fs.StringVar(&opts.Dir, "dir", "_output/cluster", "folder for the cluster's files")
	fs.StringVar(&opts.Kubeconfig, "kubeconfig", "_output/kubeconfig", "where to write the admin kubeconfig")
	fs.IntVar(&opts.Nodes, "nodes", 3, "real nodes (kubelet + containerd + OVS in a network namespace each)")
	fs.IntVar(&opts.SimNodes, "sim-nodes", 0, "simulated nodes (node simulator)")
	fs.BoolVar(&opts.Stickynet, "stickynet", false, "also run stickynet: etcd, webhook, extender and its scheduler, a node agent on every real node")
	fs.StringVar(&opts.StickynetBin, "stickynet-bin", "_output/bin", "folder of stickynet's binaries (make build)")
	fs.IntVar(&opts.SimAgents, "sim-agents", 0, "with --stickynet: simulated nodes that run a node agent (each with its own Open vSwitch); the others keep the reference chain")
	_ = fs.Parse(os.Args[2:])
	if err := clusterctl.Run(context.Background(), opts); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}
