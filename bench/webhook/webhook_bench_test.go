// Package webhook benchmarks pod creation through the local cluster's real
// kube-apiserver in three configurations in one run: with the stickynet
// webhook, with a no-op webhook (TLS, one fixed patch) and with none; and the
// stickynet handler's latency at a paced 200 creations per second, from its
// own histogram. Both webhooks run in processes of their own, as in a
// cluster, not in the process of the clients that create the pods. Run it
// with `make bench-webhook`.
package webhook

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/certs"
	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/webhook/app"
)

const (
	clients = 32
	perRun  = 2000 // pods per measured run
	rounds  = 3    // runs of each configuration, interleaved
	paced   = 200  // creations per second for the latency measurement
	pacedN  = 3000
	grace   = 2 * time.Second  // the release controller's, short so that addresses free soon after a run
	rest    = 10 * time.Second // the machine at rest, measured before the paced run
)

func ptr[T any](v T) *T { return &v }

func freePort(b *testing.B) int {
	port, err := testenv.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	return port
}

func BenchmarkWebhook(b *testing.B) {
	testenv.Root(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	ctx = klog.NewContext(ctx, klog.Background().V(1))
	c, err := cluster.Start(ctx, cluster.Config{Nodes: -1, SimNodes: 1, APIServerFlags: []string{"--max-requests-inflight=1000", "--max-mutating-requests-inflight=1000"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Stop(context.Background()) })
	if err := c.InstallCRDs(ctx, "../../charts/stickynet/crds"); err != nil {
		b.Fatal(err)
	}
	cfg := c.RESTConfig()
	cfg.QPS, cfg.Burst = -1, 0
	k := kubernetes.NewForConfigOrDie(cfg)
	sch, _ := app.Scheme()
	cl, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		b.Fatal(err)
	}
	// STICKYNET_BENCH_ETCD_DIR puts stickynet's etcd's data in a folder of that
	// directory (such as /dev/shm, where fsync does not wait for a disk):
	// an experiment on what sets the handler's tail, not a setup to run.
	var etcdFlags []string
	if parent := os.Getenv(etcdDirEnv); parent != "" {
		dir, err := os.MkdirTemp(parent, "stickynet-bench-etcd-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
		etcdFlags = append(etcdFlags, "--data-dir="+dir) // etcd takes the last --data-dir
	}
	e := testenv.StartEtcd(b, etcdFlags...)

	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{
		{"stickynet-system", nil},
		{"none", nil},
		{"noop", map[string]string{"noop": "true"}},
		{"sticky", map[string]string{annotations.EnabledLabel: "true"}},
	} {
		if err := c.CreateNamespace(ctx, ns.name, ns.labels); err != nil {
			b.Fatal(err)
		}
	}
	if err := cl.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "bench"}, Spec: v1alpha1.IPPoolSpec{
		CIDR: "10.96.0.0/14", Gateway: "10.96.0.1", Default: true, ReuseDelaySeconds: ptr(int32(0)),
	}}); err != nil {
		b.Fatal(err)
	}

	// The no-op webhook: TLS, returns one fixed patch.
	noopURL, noopCA := startNoop(b)
	noop := app.WebhookConfiguration("noop", "", admissionregistrationv1.WebhookClientConfig{URL: &noopURL, CABundle: noopCA})
	noop.Webhooks[0].Name = "noop.bench.stickynet.io"
	noop.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"noop": "true"}}
	if _, err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, noop, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}

	// The stickynet webhook, as in production: TLS, etcd, release controller.
	port, probe, metricsPort := freePort(b), freePort(b), freePort(b)
	mwc := app.WebhookConfiguration("stickynet", "stickynet-system", admissionregistrationv1.WebhookClientConfig{
		URL: ptr(fmt.Sprintf("https://localhost:%d%s", port, app.MutatePath)),
	})
	if _, err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	opts, err := json.Marshal(app.Options{
		Kubeconfig: c.KubeconfigPath(), EtcdEndpoints: []string{e.Endpoint},
		Host: "127.0.0.1", Port: port, CertDir: b.TempDir(),
		Certs: certs.Options{
			Mode: certs.ModeSelf, Secret: types.NamespacedName{Namespace: "stickynet-system", Name: "stickynet-cert"},
			DNSNames: []string{"localhost"}, WebhookConfig: "stickynet", WriteFiles: true,
		},
		MetricsAddr: fmt.Sprintf("127.0.0.1:%d", metricsPort), ProbeAddr: fmt.Sprintf("127.0.0.1:%d", probe),
		LeaderElection: false, StoreTimeout: 7 * time.Second, ReleaseGrace: grace,
		KubeAPIQPS: 100, KubeAPIBurst: 200,
		// Off (the chart's default is on): the pods name a node in
		// spec.nodeName, which with it on the webhook would read for each
		// (pods that the scheduler places are not read so), and no
		// scheduler places them. On costs two more patch operations a pod.
		NetworkResource: false,
	})
	if err != nil {
		b.Fatal(err)
	}
	testenv.StartChild(b, "stickynet", optionsEnv+"="+string(opts))
	waitReady(ctx, b, k, probe)

	results := map[string][]float64{}
	cpu := map[string]cpuShare{} // CPU ms per creation by process, per configuration
	var freed []time.Duration    // from the sticky pods' deletion to the pool's last address freed
	// The handler's own latency over the unpaced runs (only the sticky
	// namespace's pods reach it): how much of a creation's time it is.
	webhookMetrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	loadedBefore := scrape(b, webhookMetrics)
	for r := range rounds {
		for _, ns := range []string{"none", "noop", "sticky"} {
			cpuBefore := sampleCPU()
			rate := createPods(ctx, b, k, ns, fmt.Sprintf("r%d", r), perRun, 0)
			results[ns] = append(results[ns], rate)
			if cpu[ns] == nil {
				cpu[ns] = cpuShare{}
			}
			for l, ms := range cpuBetween(cpuBefore, sampleCPU()) {
				cpu[ns][l] += ms / perRun / rounds
			}
			deleteAll(ctx, b, k, ns)
			if ns == "sticky" {
				t0 := time.Now()
				waitReleased(ctx, b, cl) // the release controller's work stays out of the next run
				freed = append(freed, time.Since(t0).Round(100*time.Millisecond))
			}
		}
	}

	loadedAfter := scrape(b, webhookMetrics)
	l50, l99, _ := quantiles(loadedBefore.histogram(admissions), loadedAfter.histogram(admissions), 0.015)

	// Handler latency at a paced 200 creations per second, from the webhook's histogram.
	// The etcd transactions of the same run show how much of the handler's
	// tail is the state store's; etcd's disk latencies (the WAL's fsync
	// before each answer, the backend's periodic commit, during which etcd
	// applies no write) and the machine's CPU load and pressure say why.
	// The machine at rest first, as the paced run finds it: what the
	// cluster and stickynet cost per second without creations.
	restBefore := sampleCPU()
	time.Sleep(rest)
	atRest := cpuBetween(restBefore, sampleCPU())
	for l := range atRest {
		atRest[l] /= rest.Seconds() // ms of CPU per second
	}

	before, etcdBefore := scrape(b, webhookMetrics), scrape(b, e.Endpoint+"/metrics")
	cpuBefore, stallBefore, pacedStart := sampleCPU(), stall(), time.Now()
	createPods(ctx, b, k, "sticky", "paced", pacedN, paced)
	busy, stalled, pacedTook := cpuBetween(cpuBefore, sampleCPU()), stall()-stallBefore, time.Since(pacedStart)
	after, etcdAfter := scrape(b, webhookMetrics), scrape(b, e.Endpoint+"/metrics")
	p50, p99, within := quantiles(before.histogram(admissions), after.histogram(admissions), 0.015)
	t50, t99, _ := quantiles(before.histogram(claims), after.histogram(claims), 0.015)
	_, f99, _ := quantiles(etcdBefore.histogram(walFsync), etcdAfter.histogram(walFsync), 0.015)
	_, c99, _ := quantiles(etcdBefore.histogram(backendCommit), etcdAfter.histogram(backendCommit), 0.015)
	commits := etcdAfter.histogram(backendCommit)[math.Inf(1)] - etcdBefore.histogram(backendCommit)[math.Inf(1)]
	passes, passSeconds := after.sum(passCount)-before.sum(passCount), after.sum(passTime)-before.sum(passTime)

	mean := func(xs []float64) float64 {
		s := 0.0
		for _, x := range xs {
			s += x
		}
		return s / float64(len(xs))
	}
	host, _ := os.Hostname()
	fmt.Printf("\nWebhook benchmark on %s: %d clients, %d pods per run, %d interleaved runs each\n", host, clients, perRun, rounds)
	if len(etcdFlags) > 0 {
		fmt.Printf("stickynet's etcd's data in %s (%s), not on the benchmark's temporary folder\n", os.Getenv(etcdDirEnv), etcdDirEnv)
	}
	for _, ns := range []string{"none", "noop", "sticky"} {
		fmt.Printf("%-8s %7.0f creations/s   (runs %v)\n", ns, mean(results[ns]), round(results[ns]))
	}
	fmt.Println("CPU per creation (ms) during the unpaced runs, by process:")
	for _, ns := range []string{"none", "noop", "sticky"} {
		fmt.Printf("  %-8s %s\n", ns, cpu[ns].String(6))
	}
	fmt.Printf("stickynet ÷ no-op webhook = %.2f   (target ≥ 0.9)\n", mean(results["sticky"])/mean(results["noop"]))
	fmt.Printf("no-op webhook ÷ none      = %.2f\n", mean(results["noop"])/mean(results["none"]))
	fmt.Printf("the release controller freed the %d addresses of each sticky run %v after the pods were gone (the grace is %s)\n", perRun, freed, grace)
	fmt.Printf("handler latency during the unpaced sticky runs: p50 %.2f ms, p99 %.2f ms\n", l50*1000, l99*1000)
	fmt.Printf("handler latency at %d creations/s: p50 %.2f ms, p99 %.2f ms, %.2f%% within 15 ms (target p99 ≤ 15 ms)\n", paced, p50*1000, p99*1000, within*100)
	fmt.Printf("  its etcd transactions in the same run: p50 %.2f ms, p99 %.2f ms\n", t50*1000, t99*1000)
	fmt.Printf("  stickynet's etcd in the same run: WAL fsync p99 %.2f ms; %.0f backend commits, p99 %.2f ms\n", f99*1000, commits, c99*1000)
	fmt.Printf("  the machine in the same run: CPU %.0f %% of %d cores busy; a runnable task waited for a CPU %.0f %% of the time\n",
		100*busy.total()/float64(pacedTook.Milliseconds())/float64(runtime.NumCPU()), runtime.NumCPU(), 100*stalled.Seconds()/pacedTook.Seconds())
	for l := range busy {
		busy[l] /= pacedN
	}
	fmt.Printf("  CPU per creation (ms) in the same run: %s\n", busy.String(6))
	fmt.Printf("  the machine at rest for %s just before it: CPU %.0f %% of %d cores busy; ms of CPU per second: %s\n",
		rest, 100*atRest.total()/1000/float64(runtime.NumCPU()), runtime.NumCPU(), atRest.String(6))
	fmt.Printf("  the release controller in the same run: %.0f passes, %.1f s in all (%.0f %% of the run)\n",
		passes, passSeconds, 100*passSeconds/pacedTook.Seconds())
	b.ReportMetric(mean(results["sticky"])/mean(results["noop"]), "ratio")
	b.ReportMetric(p99*1000, "p99-ms")
}

func round(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(math.Round(x))
	}
	return out
}

func waitReady(ctx context.Context, b *testing.B, k kubernetes.Interface, probe int) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
		if err == nil {
			resp.Body.Close()
			m, err := k.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "stickynet", metav1.GetOptions{})
			if resp.StatusCode == http.StatusOK && err == nil && len(m.Webhooks[0].ClientConfig.CABundle) > 0 {
				// One pod through the webhook proves the API server trusts it.
				p := pod("sticky", "probe")
				if _, err := k.CoreV1().Pods("sticky").Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err == nil {
					return
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	b.Fatal("stickynet webhook not ready")
}

func pod(ns, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"bench": "true"}},
		// Bound to a node that does not exist: the scheduler stays out of the measurement.
		Spec: corev1.PodSpec{NodeName: "bench-nowhere", Containers: []corev1.Container{{Name: "c", Image: "busybox", ImagePullPolicy: corev1.PullNever}}},
	}
}

// createPods creates n pods from `clients` goroutines, paced at rate per
// second when rate > 0, and returns the achieved creations per second.
func createPods(ctx context.Context, b *testing.B, k kubernetes.Interface, ns, prefix string, n, rate int) float64 {
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil {
					return
				}
				if rate > 0 {
					if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
						time.Sleep(d)
					}
				}
				if _, err := k.CoreV1().Pods(ns).Create(ctx, pod(ns, fmt.Sprintf("%s-%d", prefix, i)), metav1.CreateOptions{}); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("create pods in %s: %v", ns, err)
	}
	return float64(n) / time.Since(start).Seconds()
}

func deleteAll(ctx context.Context, b *testing.B, k kubernetes.Interface, ns string) {
	if err := k.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}, metav1.ListOptions{}); err != nil {
		b.Fatal(err)
	}
	for {
		l, err := k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{Limit: 1})
		if err == nil && len(l.Items) == 0 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitReleased waits until the release controller has freed every address of the bench pool.
func waitReleased(ctx context.Context, b *testing.B, cl client.Client) {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		p := &v1alpha1.IPPool{}
		if err := cl.Get(ctx, client.ObjectKey{Name: "bench"}, p); err == nil && p.Status.Total > 0 && p.Status.Allocated+p.Status.Held == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	b.Fatal("the release controller did not free the bench pool's addresses within 5 minutes")
}

// histogram is the cumulative bucket counts of one series.
type histogram map[float64]float64

// The histogram series the benchmark reads: the webhook's allowed
// admissions and its etcd transactions that succeeded (the claims), and
// stickynet's etcd's WAL fsyncs and backend commits.
const (
	admissions    = `stickynet_webhook_admission_duration_seconds_bucket{result="allowed",`
	claims        = `stickynet_store_request_duration_seconds_bucket{op="txn",result="ok",`
	walFsync      = `etcd_disk_wal_fsync_duration_seconds_bucket{`
	backendCommit = `etcd_disk_backend_commit_duration_seconds_bucket{`
)

// The release controller's passes: how many, and their time in all.
const (
	passCount = `stickynet_webhook_release_pass_duration_seconds_count{`
	passTime  = `stickynet_webhook_release_pass_duration_seconds_sum{`
)

// metricsPage is the text of a /metrics endpoint, read once.
type metricsPage []string

// scrape reads the metrics at url.
func scrape(b *testing.B, url string) metricsPage {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var page metricsPage
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		page = append(page, sc.Text())
	}
	return page
}

// sum adds up the values of the series that start with prefix.
func (p metricsPage) sum(prefix string) float64 {
	total := 0.0
	for _, line := range p {
		if strings.HasPrefix(line, prefix) {
			total += value(line)
		}
	}
	return total
}

// histogram returns the buckets of the histogram series that start with
// prefix, summed by bound.
func (p metricsPage) histogram(prefix string) histogram {
	h := histogram{}
	for _, line := range p {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		le := line[strings.Index(line, `le="`)+4:]
		le = le[:strings.Index(le, `"`)]
		bound := math.Inf(1)
		if le != "+Inf" {
			bound, _ = strconv.ParseFloat(le, 64)
		}
		h[bound] += value(line)
	}
	return h
}

// value is a metric line's value.
func value(line string) float64 {
	v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
	return v
}

// quantiles interpolates p50 and p99 within the buckets of after-before, as
// Prometheus' histogram_quantile does, and returns the share at or below limit.
func quantiles(before, after histogram, limit float64) (p50, p99, within float64) {
	var bounds []float64
	for le := range after {
		bounds = append(bounds, le)
	}
	sort.Float64s(bounds)
	counts := make([]float64, len(bounds))
	for i, le := range bounds {
		counts[i] = after[le] - before[le]
	}
	total := counts[len(counts)-1]
	q := func(phi float64) float64 {
		rank := phi * total
		prevLe, prevC := 0.0, 0.0
		for i, le := range bounds {
			if counts[i] >= rank {
				if math.IsInf(le, 1) {
					return prevLe
				}
				return prevLe + (le-prevLe)*(rank-prevC)/(counts[i]-prevC)
			}
			prevLe, prevC = le, counts[i]
		}
		return prevLe
	}
	for i, le := range bounds {
		if le == limit {
			within = counts[i] / total
		}
	}
	return q(0.5), q(0.99), within
}

// serveNoop is the no-op webhook (role "noop"): TLS, returns one fixed
// patch. It prints its URL and its CA, base64, on one line.
func serveNoop(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	patch := []byte(`[{"op":"add","path":"/metadata/labels/noop","value":"patched"}]`)
	pt := admissionv1.PatchTypeJSONPatch
	mux := http.NewServeMux()
	mux.HandleFunc("/mutate", func(w http.ResponseWriter, r *http.Request) {
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true, Patch: patch, PatchType: &pt}
		review.Request = nil
		_ = json.NewEncoder(w).Encode(&review)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	fmt.Printf("https://localhost:%d/mutate %s\n", l.Addr().(*net.TCPAddr).Port, base64.StdEncoding.EncodeToString(certPEM))
	return testenv.Serve(ctx, srv, l)
}

// startNoop runs the no-op webhook in a child process and returns its URL and CA.
func startNoop(b *testing.B) (string, []byte) {
	url, ca, _ := strings.Cut(testenv.StartChild(b, "noop"), " ")
	pemCA, err := base64.StdEncoding.DecodeString(ca)
	if err != nil {
		b.Fatalf("no-op webhook's CA: %v", err)
	}
	return url, pemCA
}

// optionsEnv carries the stickynet webhook's app.Options, JSON, to its child.
const optionsEnv = "STICKYNET_BENCH_WEBHOOK_OPTIONS"

// runStickynet is the stickynet webhook (role "stickynet") with the options
// of optionsEnv, as its binary runs it.
func runStickynet(ctx context.Context) error {
	var o app.Options
	if err := json.Unmarshal([]byte(os.Getenv(optionsEnv)), &o); err != nil {
		return fmt.Errorf("%s: %w", optionsEnv, err)
	}
	if path := os.Getenv(profileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Println("started")
	return app.Run(ctx, o)
}

// etcdDirEnv, set to a directory, holds stickynet's etcd's data instead of
// the benchmark's temporary folder on the disk.
const etcdDirEnv = "STICKYNET_BENCH_ETCD_DIR"

// profileEnv, set to a file name, has the stickynet webhook's child write a
// CPU profile of the whole benchmark there (for `go tool pprof`).
const profileEnv = "STICKYNET_BENCH_WEBHOOK_CPUPROFILE"

func TestMain(m *testing.M) {
	testenv.RunChild(map[string]func(context.Context) error{"noop": serveNoop, "stickynet": runStickynet})
	os.Exit(m.Run())
}
