// Package extender benchmarks the stickynet scheduler extender (`make
// bench-extender`): the latency of one filter plus one prioritize call at
// 5,000 nodes, in process and over HTTP, p50 and p99; and, with the real
// kube-scheduler of the local cluster, the throughput of scheduling 1,000
// pods on 1,000 nodes with the stickynet extender, with a no-op extender and
// with none, in the same run.
package extender

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/extender/score"
	"github.com/stickynet/stickynet/extender/server"
	"github.com/stickynet/stickynet/extender/state"
	"github.com/stickynet/stickynet/internal/testenv"
)

const (
	latencyNodes = 5000
	warmup       = 300
	rounds       = 2000 // filter+prioritize pairs measured per scenario and transport
)

// nameShape is how node names look: they are the bulk of every request.
type nameShape struct {
	name string
	of   func(i int) string
}

var nameShapes = []nameShape{
	{"short names (node-04321)", func(i int) string { return fmt.Sprintf("node-%05d", i) }},
	{"cloud names (ip-10-20-16-225.eu-west-1.compute.internal)", func(i int) string {
		return fmt.Sprintf("ip-10-%d-%d-%d.eu-west-1.compute.internal", 20+i/65536, (i/256)%256, i%256)
	}},
}

// bigCluster is the extender's view of 5,000 nodes in 10 racks; 80 % of them
// offer SriovNetwork fast with 8 VFs, of which a random number is in use.
// IPPool half reaches racks 0-4, IPPool all every node. The identity
// statefulset/bench/web/0 last ran on node 4321.
func bigCluster(nodeName func(int) string) (*state.State, []string) {
	st := state.New(state.Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	names := make([]string, latencyNodes)
	fast := corev1.ResourceName("stickynet.io/sriov-fast")
	for i := range names {
		names[i] = nodeName(i)
		labels := map[string]string{
			"kubernetes.io/hostname":        names[i],
			"topology.kubernetes.io/zone":   fmt.Sprintf("eu-west-1%c", 'a'+i%3),
			"node.kubernetes.io/instance":   "m6i.8xlarge",
			"bench.stickynet.io/rack":       fmt.Sprint(i % 10),
			"bench.stickynet.io/sriov-fast": fmt.Sprint(i%5 != 0),
		}
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: names[i], Labels: labels}}
		if i%5 != 0 {
			n.Status.Allocatable = corev1.ResourceList{fast: resource.MustParse("8")}
			if used := rng.IntN(9); used > 0 {
				st.SetPod(&corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("vf-%d", i), UID: types.UID(fmt.Sprintf("vf-%d", i))},
					Spec: corev1.PodSpec{NodeName: names[i], Containers: []corev1.Container{{
						Name: "c", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{fast: *resource.NewQuantity(int64(used), resource.DecimalSI)}},
					}}},
					Status: corev1.PodStatus{Phase: corev1.PodRunning},
				})
			}
		}
		st.SetNode(n)
	}
	st.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "half"}, Spec: v1alpha1.IPPoolSpec{
		NodeSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: "bench.stickynet.io/rack", Operator: metav1.LabelSelectorOpIn, Values: []string{"0", "1", "2", "3", "4"},
		}}},
	}})
	st.SetPool(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "all"}})
	st.SetNetwork(&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{
		PFNames:      []string{"ens1f0"},
		NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"bench.stickynet.io/sriov-fast": "true"}},
	}})
	st.SetPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", UID: "old-web-0", Annotations: map[string]string{"stickynet.io/identity": "statefulset/bench/web/0", "stickynet.io/assigned-pool": "all"}},
		Spec:       corev1.PodSpec{NodeName: names[4321]},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	})
	st.DeletePod("old-web-0")
	return st, names
}

// benchPod is a StatefulSet pod as kube-scheduler sends it (about 4 KB of
// JSON), with the given stickynet annotations and VF request.
func benchPod(ann map[string]string, vfs int64) *corev1.Pod {
	env := make([]corev1.EnvVar, 0, 12)
	for i := range 10 {
		env = append(env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", i), Value: fmt.Sprintf("value-%d-of-the-application-config", i)})
	}
	env = append(env, corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}})
	req := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("4Gi")}
	if vfs > 0 {
		req["stickynet.io/sriov-fast"] = *resource.NewQuantity(vfs, resource.DecimalSI)
	}
	annotations := map[string]string{"kubectl.kubernetes.io/default-container": "web", "prometheus.io/scrape": "true"}
	for k, v := range ann {
		annotations[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-0", Namespace: "bench", UID: "4f2c8a6e-1b3d-4e5f-8a9b-0c1d2e3f4a5b", ResourceVersion: "123456",
			Labels: map[string]string{
				"app": "web", "controller-revision-hash": "web-6c9f8d7b5", "statefulset.kubernetes.io/pod-name": "web-0",
				"apps.kubernetes.io/pod-index": "0",
			},
			Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "StatefulSet", Name: "web", UID: "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: corev1.PodSpec{
			SchedulerName: "stickynet-scheduler",
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.example.com/team/web:3.14.1", Env: env,
				Ports:     []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
				Resources: corev1.ResourceRequirements{Requests: req, Limits: req},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "data", MountPath: "/var/lib/web"},
					{Name: "config", MountPath: "/etc/web", ReadOnly: true},
					{Name: "kube-api-access-x7k2q", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, PeriodSeconds: 5},
			}, {
				Name: "log-shipper", Image: "registry.example.com/infra/shipper:1.2.0",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m")}},
			}},
			Volumes: []corev1.Volume{
				{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data-web-0"}}},
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "web-config"}}}},
			},
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(int64(300))},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(int64(300))},
			},
			ServiceAccountName: "web", Hostname: "web-0", Subdomain: "web",
			TerminationGracePeriodSeconds: ptr.To(int64(30)),
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSGuaranteed},
	}
}

// scenario is one kind of pod.
type scenario struct {
	name string
	pod  *corev1.Pod
}

func scenarios() []scenario {
	sticky := map[string]string{
		"stickynet.io/identity": "statefulset/bench/web/0", "stickynet.io/assigned-ip": "10.20.0.5/16",
		"stickynet.io/assigned-mac": "02:42:0a:14:00:05", "stickynet.io/gateway": "10.20.0.1",
	}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range sticky {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	return []scenario{
		{"plain pod (fast path)", benchPod(nil, 0)},
		{"pool on half the nodes, last node", benchPod(with(map[string]string{"stickynet.io/assigned-pool": "half"}), 0)},
		{"SR-IOV, VF requested", benchPod(with(map[string]string{"stickynet.io/assigned-pool": "all", "stickynet.io/sriov-network": "fast"}), 1)},
		{"SR-IOV, VF counted by extender", benchPod(with(map[string]string{"stickynet.io/assigned-pool": "half", "stickynet.io/sriov-network": "fast"}), 0)},
	}
}

// pair is one filter request and the prioritize request that follows it,
// on the nodes the filter passed, as kube-scheduler sends them.
type pair struct {
	filter, prioritize []byte
	passed, scored     int
	// answer sizes in bytes, which the floor server answers with
	filterOut, prioritizeOut int
}

func newPair(b *testing.B, h http.Handler, pod *corev1.Pod, names []string) pair {
	b.Helper()
	fb, err := json.Marshal(&extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
	if err != nil {
		b.Fatal(err)
	}
	var fr extenderv1.ExtenderFilterResult
	fa := call(b, h, "/filter", fb)
	if err := json.Unmarshal(fa, &fr); err != nil || fr.NodeNames == nil {
		b.Fatalf("filter answer: %v", err)
	}
	pb, err := json.Marshal(&extenderv1.ExtenderArgs{Pod: pod, NodeNames: fr.NodeNames})
	if err != nil {
		b.Fatal(err)
	}
	var pr extenderv1.HostPriorityList
	pa := call(b, h, "/prioritize", pb)
	if err := json.Unmarshal(pa, &pr); err != nil {
		b.Fatalf("prioritize answer: %v", err)
	}
	return pair{filter: fb, prioritize: pb, passed: len(*fr.NodeNames), scored: len(pr), filterOut: len(fa), prioritizeOut: len(pa)}
}

func call(b *testing.B, h http.Handler, path string, body []byte) []byte {
	b.Helper()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		b.Fatalf("%s: %d %s", path, w.Code, w.Body)
	}
	return w.Body.Bytes()
}

// roundTrip is one request through some transport; answer is the size of
// the extender's answer to it (only the floor server uses it).
type roundTrip func(path string, body []byte, answer int) error

// inProcess calls the handler directly, with a response writer that
// only counts what is written.
func inProcess(h http.Handler) roundTrip {
	var w discard
	return func(path string, body []byte, _ int) error {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w.reset()
		h.ServeHTTP(&w, req)
		if w.code != http.StatusOK || w.n == 0 {
			return fmt.Errorf("%s: status %d, %d bytes", path, w.code, w.n)
		}
		return nil
	}
}

// discard is an http.ResponseWriter that keeps the status and counts bytes.
type discard struct {
	header http.Header
	code   int
	n      int
}

func (d *discard) reset() {
	if d.header == nil {
		d.header = http.Header{}
	}
	clear(d.header)
	d.code, d.n = 0, 0
}

func (d *discard) Header() http.Header { return d.header }

func (d *discard) WriteHeader(code int) {
	if d.code == 0 {
		d.code = code
	}
}

func (d *discard) Write(p []byte) (int, error) {
	d.WriteHeader(http.StatusOK)
	d.n += len(p)
	return len(p), nil
}

// overHTTP posts to url with a keep-alive client, as kube-scheduler's
// HTTPExtender does, and reads the whole answer.
//
// The client's write buffer holds a whole request (the largest here is
// 223 KB). With net/http's default of 4 KB, the transport hands a larger
// body to the TCP connection's ReadFrom, which copies it through a new
// 32 KB buffer per request: 64 KB of garbage per filter+prioritize pair
// made this process collect every ~90 pairs, and those pairs, not the
// server, were the p99 of every transport here (the floor's included:
// 1.2-2.3 ms, against 0.4-1.0 ms with this buffer). What is measured is
// the server; the client's own garbage collection is kept out of it.
func overHTTP(url string) roundTrip {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, WriteBufferSize: 256 << 10}, Timeout: 5 * time.Second}
	return func(path string, body []byte, answer int) error {
		req, err := http.NewRequest(http.MethodPost, url+path+"?answer="+strconv.Itoa(answer), bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: status %d", path, resp.StatusCode)
		}
		return nil
	}
}

// measure returns the sorted latencies of n filter+prioritize pairs.
func measure(b *testing.B, rt roundTrip, p pair, n int) []time.Duration {
	b.Helper()
	lat := make([]time.Duration, n)
	for i := range n {
		t0 := time.Now()
		if err := rt("/filter", p.filter, p.filterOut); err != nil {
			b.Fatal(err)
		}
		if err := rt("/prioritize", p.prioritize, p.prioritizeOut); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	slices.Sort(lat)
	return lat
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// report prints a line of the benchmark's results. (testing keeps only the
// first lines a benchmark logs.)
func report(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// floorHandler is the baseline "over HTTP" is compared with: a net/http
// server that reads the whole body, as the extender does, and answers with
// as many bytes as the extender would (the query's answer), without
// decoding or deciding anything. What the extender costs over HTTP beyond
// it is the extender's own.
func floorHandler() http.Handler {
	var (
		mu   sync.Mutex
		body bytes.Buffer
		out  []byte
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("answer"))
		if err != nil || n <= 0 {
			http.Error(w, "answer: want a byte count", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		body.Reset()
		body.Grow(int(r.ContentLength) + 1)
		if _, err := body.ReadFrom(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for len(out) < n {
			out = append(out, ' ')
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = w.Write(out[:n])
	})
}

// defaultScore is the scoring the extender runs with by default.
var defaultScore = score.Options{PreferLastNode: true, Placement: score.Spread, MaxListed: score.DefaultMaxListed}

// TestMain lets the test binary serve, as a child process, the extender
// on one name shape's cluster (role "extender-<shape index>") or the HTTP
// floor (role "floor"): "over HTTP" is measured against a separate process,
// as the extender runs, so that the client's garbage is not collected by
// the server's GC.
func TestMain(m *testing.M) {
	roles := map[string]func(context.Context) error{"floor": func(ctx context.Context) error { return serve(ctx, floorHandler()) }}
	for i, shape := range nameShapes {
		roles[fmt.Sprintf("extender-%d", i)] = func(ctx context.Context) error {
			st, _ := bigCluster(shape.of)
			srv := server.New(st, server.Options{Score: defaultScore})
			srv.SetReady()
			return serve(ctx, srv)
		}
	}
	testenv.RunChild(roles)
	os.Exit(m.Run())
}

// serve serves h on a free loopback port until ctx ends, after printing
// its address.
func serve(ctx context.Context, h http.Handler) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	return testenv.Serve(ctx, &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, ln)
}

// BenchmarkLatency measures filter+prioritize pairs at 5,000 nodes: in
// process (the handler called directly), over HTTP (a keep-alive
// http.Client, as kube-scheduler's, talking to the extender in a separate
// process on the same machine) and, as the baseline of the same run, the
// HTTP floor: the same requests to a server that only reads them and
// answers with as many bytes as the extender does (floorHandler).
func BenchmarkLatency(b *testing.B) {
	type worstP99 struct{ http, floor time.Duration }
	worst := map[string]*worstP99{}
	floor := overHTTP("http://" + testenv.StartChild(b, "floor"))
	for si, shape := range nameShapes {
		if only := os.Getenv("STICKYNET_BENCH_NAMES"); only != "" && !strings.HasPrefix(shape.name, only) {
			continue // for experiments: STICKYNET_BENCH_NAMES=short or cloud
		}
		st, names := bigCluster(shape.of)
		srv := server.New(st, server.Options{Score: defaultScore})
		srv.SetReady()
		transports := []struct {
			name string
			rt   roundTrip
		}{{"in process", inProcess(srv)}, {"over HTTP", overHTTP("http://" + testenv.StartChild(b, fmt.Sprintf("extender-%d", si)))}, {"HTTP floor", floor}}

		w := &worstP99{}
		worst[shape.name] = w
		report("%d nodes, %s, GOMAXPROCS %d", latencyNodes, shape.name, runtime.GOMAXPROCS(0))
		report("  %-36s %-11s %9s %9s %9s   %s", "pod", "transport", "p50 ms", "p99 ms", "max ms", "request bytes, nodes passed, nodes scored")
		for _, sc := range scenarios() {
			p := newPair(b, srv, sc.pod, names)
			for _, tr := range transports {
				measure(b, tr.rt, p, warmup)
				lat := measure(b, tr.rt, p, rounds)
				p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
				report("  %-36s %-11s %9.3f %9.3f %9.3f   filter %d B, prioritize %d B, %d passed, %d scored",
					sc.name, tr.name, ms(p50), ms(p99), ms(lat[len(lat)-1]), len(p.filter), len(p.prioritize), p.passed, p.scored)
				switch tr.name {
				case "over HTTP":
					w.http = max(w.http, p99)
				case "HTTP floor":
					w.floor = max(w.floor, p99)
				}
			}
		}
	}
	for i, shape := range nameShapes {
		w, ok := worst[shape.name]
		if !ok {
			continue
		}
		report("worst p99 over HTTP, %s: %.3f ms (target 2 ms); HTTP floor %.3f ms; the extender's own %.3f ms",
			shape.name, ms(w.http), ms(w.floor), ms(w.http-w.floor))
		short := []string{"short", "cloud"}[i]
		b.ReportMetric(ms(w.http), "worst-p99-http-ms/"+short)
		b.ReportMetric(ms(w.floor), "worst-p99-floor-ms/"+short)
	}
}
