// Command stickynet-extender is stickynet's kube-scheduler extender: it
// filters out nodes where a pod's IPPool is not reachable or its SR-IOV
// network has no free VF, and prefers the node its sticky identity last ran
// on. See README.md, "Extender", and extender/config for the scheduler side.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/stickynet/stickynet/extender/app"
	"github.com/stickynet/stickynet/extender/score"
	"github.com/stickynet/stickynet/extender/server"
)

func main() {
	fs := flag.NewFlagSet("stickynet-extender", flag.ExitOnError)
	klog.InitFlags(fs)
	opts := app.Options{VFPlacement: score.Spread}
	fs.StringVar(&opts.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty: the in-cluster configuration")
	fs.StringVar(&opts.BindAddress, "bind-address", ":8888", "address to serve the verbs (/filter, /prioritize, /preempt), /healthz, /readyz and /metrics on")
	fs.StringVar(&opts.TLSCertFile, "tls-cert-file", "", "serving certificate (PEM); with -tls-private-key-file, serve HTTPS and reload the pair when it changes")
	fs.StringVar(&opts.TLSKeyFile, "tls-private-key-file", "", "serving certificate's private key (PEM)")
	fs.Int64Var(&opts.MaxRequestBytes, "max-request-bytes", server.DefaultMaxRequestBytes, "largest request body accepted; larger ones get 413")
	fs.BoolVar(&opts.PreferLastNode, "prefer-last-node", true, "score the node a pod's sticky identity last ran on highest")
	fs.DurationVar(&opts.LastNodeTTL, "last-node-ttl", 24*time.Hour, "forget an identity's last node this long after its pod is gone; 0: keep it while the extender runs")
	fs.BoolVar(&opts.CountRequestedVFs, "count-requested-vfs", false, "also check free VFs for pods that request stickynet.io/sriov-<network>; needed only if the scheduler does not count that resource (NodeResourcesFit ignoredResources; never through the extender's managedResources, with which the scheduler skips the extender for every pod without such a request); by default the scheduler's own, never stale count decides for them (the extender's lags the pods just placed until their binding reaches its watch: a burst can overcommit a node, and its kubelet rejects the extra pods, OutOf<resource>)")
	fs.DurationVar(&opts.ShutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, keep answering this long with /readyz failing before stopping, so that the Service's endpoints drop the replica first (keep it under the pod's terminationGracePeriodSeconds)")
	fs.Func("vf-placement", "rank nodes for SR-IOV pods by free VFs: spread (most free first), pack (fewest free first) or none (default spread)", func(s string) error {
		p, err := score.ParsePlacement(s)
		opts.VFPlacement = p
		return err
	})
	maxRanked := fs.Int("max-ranked-nodes", score.DefaultMaxListed, "list at most this many nodes in one prioritize answer, only the best-scored (of the nodes tied at the cut a random sample); 0 or less: every node that scores")
	_ = fs.Parse(os.Args[1:]) // ExitOnError
	opts.MaxRankedNodes = *maxRanked
	if *maxRanked <= 0 {
		opts.MaxRankedNodes = -1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logger := klog.Background().WithName("extender")
	crlog.SetLogger(logger) // the informer cache logs through controller-runtime
	if err := app.Run(klog.NewContext(ctx, logger), opts); err != nil {
		logger.Error(err, "Extender failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
