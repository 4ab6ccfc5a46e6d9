// Command stickynet-webhook is stickynet's mutating admission webhook and
// release controller. See webhook/app. `stickynet-webhook allocations`, run
// in a webhook's pod, lists the addresses in stickynet's state.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/stickynet/stickynet/certs"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/workload"
	"github.com/stickynet/stickynet/webhook/app"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "allocations" {
		os.Exit(app.AllocationsCommand(context.Background(), os.Args[2:], os.Stdout, os.Stderr))
	}
	var o app.Options
	var etcd, secret, dnsNames string
	flag.StringVar(&etcd, "etcd-endpoints", "", "comma-separated etcd v3 endpoints of the state store, such as http://etcd:2379")
	flag.BoolVar(&o.MemoryStore, "memory-store", false, "keep state in memory: one replica only, lost on restart (for trials)")
	flag.StringVar(&o.KeyPrefix, "key-prefix", "/stickynet/", "prefix of stickynet's keys in etcd")
	flag.DurationVar(&o.DialTimeout, "etcd-dial-timeout", 5*time.Second, "timeout of the first connection to etcd")
	flag.StringVar(&o.EtcdCAFile, "etcd-ca-file", "", "CA certificate that signed etcd's serving certificate (https endpoints)")
	flag.StringVar(&o.EtcdCertFile, "etcd-cert-file", "", "client certificate for etcd's --client-cert-auth (with --etcd-key-file)")
	flag.StringVar(&o.EtcdKeyFile, "etcd-key-file", "", "key of --etcd-cert-file")
	flag.StringVar(&o.Host, "host", "", "address the webhook server listens on (default all)")
	flag.IntVar(&o.Port, "port", 9443, "port of the webhook server")
	flag.StringVar(&o.CertDir, "cert-dir", "/tmp/stickynet-webhook-certs", "folder of the serving certificate (tls.crt, tls.key)")
	flag.StringVar(&o.Certs.Mode, "cert-mode", certs.ModeSelf, "who provides the serving certificate: self (a rotated CA in a Secret) or cert-manager")
	flag.StringVar(&secret, "cert-secret", "stickynet-system/stickynet-webhook-cert", "namespace/name of the Secret that holds the certificate: the rotator's CA and certificate (self mode), or cert-manager's (copied with --cert-write-files)")
	flag.StringVar(&dnsNames, "cert-dns-names", "stickynet-webhook.stickynet-system.svc", "comma-separated DNS names of the serving certificate (self mode)")
	flag.BoolVar(&o.Certs.WriteFiles, "cert-write-files", true, "copy the certificate from its Secret (--cert-secret: the rotator's, or cert-manager's) into --cert-dir, and again within about a second of each change; false: serve a Secret mounted at --cert-dir, which follows a new CA only at the kubelet's refresh, about a minute of refused admissions")
	flag.StringVar(&o.Certs.WebhookConfig, "webhook-config-name", "stickynet", "MutatingWebhookConfiguration whose caBundle is kept current (self mode)")
	var qps float64
	flag.Float64Var(&qps, "kube-api-qps", 100, "queries per second to the API server")
	flag.IntVar(&o.KubeAPIBurst, "kube-api-burst", 200, "burst of queries to the API server")
	flag.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables)")
	flag.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.StringVar(&o.AllocationsSocket, "allocations-socket", "", "Unix socket where the webhook lists the addresses in its state to 'stickynet-webhook allocations' run in the same container (the chart's: "+app.DefaultAllocationsSocket+"); empty: none")
	flag.BoolVar(&o.LeaderElection, "leader-elect", true, "elect a leader to run the release controller (needed with more than one replica)")
	flag.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader election Lease (default: the pod's)")
	flag.StringVar(&o.SchedulerName, "scheduler-name", "", "schedulerName given to pods that need the stickynet extender (pool with a nodeSelector, SR-IOV); empty leaves pods alone")
	flag.BoolVar(&o.NetworkResource, "network-resource", true, "give each pod that gets an address a request for one "+annotations.NetworkResource+", which node agents advertise once they serve, so that such pods are scheduled only on nodes whose agent attaches them; false lets them run on nodes without an agent, on another network (each reported as NotOnStickynetNetwork)")
	flag.StringVar(&o.NodeAgentDaemonSet, "node-agent-daemonset", "", "namespace/name of the node agents' DaemonSet (the chart's: <release namespace>/stickynet-nodeagent): the release controller's leader takes "+annotations.NetworkResource+" and "+annotations.SriovResourcePrefix+"* off the Nodes that DaemonSet does not select and where none of its pods runs, left there by agents that could not withdraw them (an uninstall, a node down when its agent left it); empty: it leaves Nodes alone")
	flag.DurationVar(&o.StoreTimeout, "store-timeout", 7*time.Second, "time budget for the state store per admission (keep it under the webhook timeout)")
	flag.DurationVar(&o.ReservationTTL, "reservation-ttl", app.DefaultReservationTTL, "how long a reservation for a pod without a name lives unconfirmed (the release controller confirms it when the pod appears)")
	flag.DurationVar(&o.ReleaseGrace, "release-grace", workload.DefaultGrace, "minimum age of an address's last change before the release controller unbinds or frees it")
	flag.DurationVar(&o.ShutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, keep serving this long with /readyz failing before stopping, so that the Service's endpoints drop the replica first (keep it under the pod's terminationGracePeriodSeconds)")
	klog.InitFlags(nil)
	flag.Parse()

	o.KubeAPIQPS = float32(qps)
	if f := flag.Lookup("kubeconfig"); f != nil { // registered by controller-runtime
		o.Kubeconfig = f.Value.String()
	}
	if etcd != "" {
		o.EtcdEndpoints = strings.Split(etcd, ",")
	}
	// From the environment, not flags, so that a password stays out of the process list.
	o.EtcdUsername, o.EtcdPassword = os.Getenv("STICKYNET_ETCD_USERNAME"), os.Getenv("STICKYNET_ETCD_PASSWORD")
	if (o.EtcdUsername == "") != (o.EtcdPassword == "") {
		// The etcd client logs in only with both: one alone turned
		// authentication off, and etcd's refusal named neither.
		fmt.Fprintln(os.Stderr, "$STICKYNET_ETCD_USERNAME and $STICKYNET_ETCD_PASSWORD: expected both set (etcd with authentication) or neither; one is empty")
		os.Exit(2)
	}
	// Below a minute, a leader's step-down (a third of it, at least 20 s)
	// and the next leader's start outlast the reservations it cannot
	// confirm: their addresses would look free under running pods. Tests
	// of package app use shorter ones through Options.
	if o.ReservationTTL != 0 && o.ReservationTTL < time.Minute { // 0: the default
		fmt.Fprintf(os.Stderr, "--reservation-ttl %s: expected 1m or more (the release controller's leader must be able to hand over within it)\n", o.ReservationTTL)
		os.Exit(2)
	}
	ns, name, ok := strings.Cut(secret, "/")
	if !ok || ns == "" || name == "" {
		fmt.Fprintf(os.Stderr, "--cert-secret %q: expected namespace/name\n", secret)
		os.Exit(2)
	}
	o.Certs.Secret = types.NamespacedName{Namespace: ns, Name: name}
	o.Certs.DNSNames = strings.Split(dnsNames, ",")
	if err := o.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}

	ctx := klog.NewContext(ctrl.SetupSignalHandler(), klog.Background())
	ctrl.SetLogger(klog.Background())
	if err := app.Run(ctx, o); err != nil {
		klog.Background().Error(err, "stickynet-webhook failed")
		os.Exit(1)
	}
}
