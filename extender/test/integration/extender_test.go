// Package integration runs the stickynet extender against the real
// kube-scheduler of the local cluster (e2e/cluster): a second scheduler with
// the shipped stickynet-scheduler profile calls the extender over HTTPS
// (verified against a test CA), which reads
// the cluster through its informers, while the test creates pods annotated
// as the webhook would annotate them and checks where they land, or that
// they stay Pending with a FailedScheduling event naming the cause.
package integration

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/extender/app"
	"github.com/stickynet/stickynet/extender/config"
	"github.com/stickynet/stickynet/extender/score"
	"github.com/stickynet/stickynet/internal/testenv"
)

const (
	ns       = "stickynet-extender"
	rackKey  = "e2e.stickynet.io/rack"
	sriovKey = "e2e.stickynet.io/sriov"
	vfRes    = corev1.ResourceName("stickynet.io/sriov-fast")
)

// env is the running cluster, extender and scheduler.
type env struct {
	cs     kubernetes.Interface
	crc    client.Client
	rest   *rest.Config // the cluster's admin config
	url    string       // the extender's
	client *http.Client // trusts the extender's serving certificate
}

// TestScheduling places pods through kube-scheduler's stickynet-scheduler
// profile on four simulated nodes:
//
//	sim-1 rack=a sriov=yes  1 VF of network fast
//	sim-2 rack=a            2 VFs advertised, but outside the network's nodeSelector
//	sim-3 rack=b sriov=yes  2 VFs
//	sim-4 rack=b            no VF resource
func TestScheduling(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := start(ctx, t)

	t.Run("pool nodeSelector", func(t *testing.T) {
		// Six pods of pool rack-a with CPU requests: without the extender,
		// least-allocated scoring would spread them over all four nodes.
		var names []string
		for i := range 6 {
			name := fmt.Sprintf("pool-%d", i)
			e.create(ctx, t, pod(name, withPool("rack-a"), withIdentity("statefulset/"+ns+"/pool/"+fmt.Sprint(i))))
			names = append(names, name)
		}
		for _, name := range names {
			if node := e.waitBound(ctx, t, name); node != "sim-1" && node != "sim-2" {
				t.Errorf("pod %s of pool rack-a landed on %s, outside the pool's nodeSelector (rack=a: sim-1, sim-2)", name, node)
			}
		}
		// Pods stickynet did not admit are not restricted: with rack a
		// busier, least-allocated scoring sends them to rack b.
		onRackB := 0
		for i := range 2 {
			name := fmt.Sprintf("plain-%d", i)
			e.create(ctx, t, pod(name))
			if node := e.waitBound(ctx, t, name); node == "sim-3" || node == "sim-4" {
				onRackB++
			}
		}
		if onRackB == 0 {
			t.Error("no pod without stickynet annotations landed on rack b: the extender restricted pods it should pass")
		}
	})

	t.Run("SR-IOV pods land only where a VF is free", func(t *testing.T) {
		perNode := map[string]int{}
		for i := range 3 {
			name := fmt.Sprintf("vf-%d", i)
			e.create(ctx, t, pod(name, withPool("everywhere"), withNetwork("fast", 1), withIdentity("statefulset/"+ns+"/vf/"+fmt.Sprint(i))))
			perNode[e.waitBound(ctx, t, name)]++
		}
		if perNode["sim-1"] != 1 || perNode["sim-3"] != 2 || len(perNode) != 2 {
			t.Errorf("VF pods per node %v, want sim-1:1 sim-3:2 (sim-2 advertises VFs but is outside the network's nodeSelector)", perNode)
		}
		// No VF is free any more: the next one stays Pending. The scheduler
		// rules out sim-1, sim-3 and sim-4 itself (the VF request); the
		// extender rules out sim-2.
		e.create(ctx, t, pod("vf-3", withPool("everywhere"), withNetwork("fast", 1)))
		e.waitFailedScheduling(ctx, t, "vf-3",
			"0/4 nodes are available",
			`1 node(s) outside the nodeSelector of SriovNetwork "fast"`,
			"Insufficient stickynet.io/sriov-fast")
		e.delete(ctx, t, "vf-3")
	})

	t.Run("VFs counted by the extender", func(t *testing.T) {
		// A pod that names the network without requesting its resource is
		// invisible to the scheduler's resource accounting: only the
		// extender's own count of VFs in use (from its pod informer) keeps
		// it off sim-1 and sim-3, whose VFs are all taken.
		e.create(ctx, t, pod("vf-unrequested", withPool("everywhere"), withNetwork("fast", 0)))
		e.waitFailedScheduling(ctx, t, "vf-unrequested",
			"0/4 nodes are available",
			`2 node(s) without a free VF of SriovNetwork "fast" (stickynet.io/sriov-fast)`,
			`2 node(s) outside the nodeSelector of SriovNetwork "fast"`)
		// A VF on sim-3 is freed: the pending pod goes there.
		var onSim3 string
		for _, name := range []string{"vf-0", "vf-1", "vf-2"} {
			if p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}); err == nil && p.Spec.NodeName == "sim-3" {
				onSim3 = name
				break
			}
		}
		if onSim3 == "" {
			t.Fatal("no VF pod on sim-3")
		}
		e.delete(ctx, t, onSim3)
		// The extender's pod informer sees the VF freed (unless
		// kube-scheduler, retrying on the deletion after the extender saw
		// it, has already bound the pod; then its probe finds no VF free
		// any more)...
		e.waitExtenderPasses(ctx, t, pod("vf-unrequested", withPool("everywhere"), withNetwork("fast", 0)), func() bool {
			p, err := e.cs.CoreV1().Pods(ns).Get(ctx, "vf-unrequested", metav1.GetOptions{})
			return err == nil && p.Spec.NodeName != ""
		}, "sim-3")
		// ...but kube-scheduler retries a pod an extender rejected only on
		// its own cluster events, and it may have retried on the deletion
		// before the extender's watch delivered it. Any later event brings
		// the pod back; here the pod itself is touched, as a user would.
		if _, err := e.cs.CoreV1().Pods(ns).Patch(ctx, "vf-unrequested", types.MergePatchType,
			[]byte(`{"metadata": {"labels": {"retry": "1"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		if node := e.waitBound(ctx, t, "vf-unrequested"); node != "sim-3" {
			t.Errorf("pod vf-unrequested landed on %s, want sim-3, where a VF was freed", node)
		}
	})

	t.Run("nothing fits", func(t *testing.T) {
		e.create(ctx, t, pod("nowhere", withPool("nowhere")))
		e.waitFailedScheduling(ctx, t, "nowhere", "0/4 nodes are available", `4 node(s) outside the nodeSelector of IPPool "nowhere"`)
		e.create(ctx, t, pod("missing-pool", withPool("missing")))
		e.waitFailedScheduling(ctx, t, "missing-pool", `4 node(s) rejected: IPPool "missing" (stickynet.io/assigned-pool) does not exist`)
		for _, name := range []string{"nowhere", "missing-pool"} {
			p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Spec.NodeName != "" || p.Status.Phase != corev1.PodPending {
				t.Errorf("pod %s: node %q, phase %s; want Pending and unbound", name, p.Spec.NodeName, p.Status.Phase)
			}
		}
	})

	t.Run("identity returns to its last node", func(t *testing.T) {
		id := withIdentity("statefulset/" + ns + "/sticky/0")
		for _, last := range []string{"sim-4", "sim-2"} {
			// The identity's pod ran on `last` (bound there directly, as if
			// scheduled earlier), then was deleted.
			ran := pod("sticky-0", withPool("everywhere"), id)
			ran.Spec.NodeName = last
			e.create(ctx, t, ran)
			e.waitBound(ctx, t, "sticky-0")
			next := pod("sticky-0", withPool("everywhere"), id)
			e.waitExtenderPrefers(ctx, t, next, last)
			e.delete(ctx, t, "sticky-0")
			e.create(ctx, t, next)
			if node := e.waitBound(ctx, t, "sticky-0"); node != last {
				t.Errorf("identity's new pod landed on %s, want %s, where it last ran", node, last)
			}
			e.delete(ctx, t, "sticky-0")
		}
	})

	t.Run("preemption only where the pool works", func(t *testing.T) {
		// Every node is full. Rack b holds pods cheaper to evict (priority
		// -10) than rack a's cheapest (0), so the scheduler's own choice of
		// a node to preempt on would be on rack b, where an address of
		// pool rack-a cannot work: the preempt verb leaves it rack a.
		for name, v := range map[string]int32{"e2e-high": 1000, "e2e-negative": -10} {
			pc := &schedulingv1.PriorityClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Value: v}
			if _, err := e.cs.SchedulingV1().PriorityClasses().Create(ctx, pc, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			// The API server's Priority admission reads classes from its
			// cache, which may not have this one yet.
			probe := pod("pre-probe")
			probe.Spec.PriorityClassName = name
			e.poll(ctx, t, "PriorityClass "+name+" known to admission", func() (bool, error) {
				_, err := e.cs.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				return err == nil, err
			})
		}
		victim := pod("pre-victim")
		victim.Spec.NodeName = "sim-2"
		e.create(ctx, t, victim)
		onRackB := map[types.UID]string{}
		for _, node := range []string{"sim-1", "sim-2", "sim-3", "sim-4"} {
			free := e.freeCPU(ctx, t, node)
			class := "e2e-high"
			if node == "sim-3" || node == "sim-4" {
				class = "e2e-negative"
			}
			if free.Sign() > 0 {
				filler := pod("pre-fill-" + node)
				filler.Spec.NodeName, filler.Spec.PriorityClassName = node, class
				filler.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = free
				e.create(ctx, t, filler)
			}
			if class == "e2e-negative" {
				for _, p := range e.podsOn(ctx, t, node) {
					onRackB[p.UID] = p.Name
				}
			}
		}
		pre := pod("preemptor", withPool("rack-a"), withIdentity("statefulset/"+ns+"/pre/0"))
		pre.Spec.PriorityClassName = "e2e-high"
		pre.Spec.Containers[0].Resources.Requests[corev1.ResourceCPU] = resource.MustParse("1")
		e.create(ctx, t, pre)
		if node := e.waitBound(ctx, t, "preemptor"); node != "sim-1" && node != "sim-2" {
			t.Errorf("pod of pool rack-a landed on %s, outside the pool's nodeSelector", node)
		}
		left := map[types.UID]bool{}
		for _, node := range []string{"sim-3", "sim-4"} {
			for _, p := range e.podsOn(ctx, t, node) {
				if p.DeletionTimestamp == nil {
					left[p.UID] = true
				}
			}
		}
		for uid, name := range onRackB {
			if !left[uid] {
				t.Errorf("pod %s on rack b was evicted for a pod of pool rack-a, which cannot run there", name)
			}
		}
	})

	t.Run("shutdown: not ready, still answering", func(t *testing.T) {
		// A second extender stopped with a delay fails /readyz at once and
		// answers the verbs until the delay is over, so that the Service's
		// endpoints drop it before it stops serving.
		const delay = 10 * time.Second
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		other := &env{url: "http://" + ln.Addr().String(), client: &http.Client{Timeout: 5 * time.Second}}
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		done := make(chan error, 1)
		go func() {
			done <- app.Run(runCtx, app.Options{RESTConfig: e.rest, Listener: ln, VFPlacement: score.Spread, ShutdownDelay: delay})
		}()
		readyz := func() int {
			resp, err := other.client.Get(other.url + "/readyz")
			if err != nil {
				return 0
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		e.poll(ctx, t, "the second extender ready", func() (bool, error) { return readyz() == http.StatusOK, nil })
		stop()
		stopped := time.Now()
		e.poll(ctx, t, "its /readyz failing once stopped", func() (bool, error) { return readyz() == http.StatusServiceUnavailable, nil })
		var res extenderv1.ExtenderFilterResult
		if body, err := other.ask(ctx, "/filter", pod("after-stop"), &res); err != nil || res.NodeNames == nil || len(*res.NodeNames) != len(simNodes) {
			t.Errorf("filter %s after the stop (delay %s): %v %s; want every node passed", time.Since(stopped).Round(time.Millisecond), delay, err, body)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if took := time.Since(stopped); took < delay {
			t.Errorf("the extender stopped %s after its context ended; want at least the delay, %s", took, delay)
		}
	})

	t.Run("no preemption where only the extender objects", func(t *testing.T) {
		// A high-priority pod that fits everywhere by the scheduler's own
		// plugins (no CPU request), on nodes running pods of lower
		// priority, that the extender rejects everywhere: its SriovNetwork
		// does not exist (deleted after admission). Evicting pods cannot
		// help; reported as if it could, the scheduler's preemption found
		// the pod fitting with no victim and failed (waitFailedScheduling
		// looks for that).
		p := pod("pre-extender-only", withPool("everywhere"), withNetwork("absent", 0))
		p.Spec.PriorityClassName = "e2e-high"
		delete(p.Spec.Containers[0].Resources.Requests, corev1.ResourceCPU)
		e.create(ctx, t, p)
		e.waitFailedScheduling(ctx, t, "pre-extender-only",
			`4 node(s) rejected: SriovNetwork "absent" (stickynet.io/sriov-network) does not exist`,
			"Preemption is not helpful")
		e.delete(ctx, t, "pre-extender-only")
	})
}

// freeCPU is the node's allocatable CPU less the requests of the pods bound
// to it that have not finished.
func (e *env) freeCPU(ctx context.Context, t *testing.T, node string) resource.Quantity {
	t.Helper()
	n, err := e.cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	free := n.Status.Allocatable[corev1.ResourceCPU]
	for _, p := range e.podsOn(ctx, t, node) {
		for _, c := range p.Spec.Containers {
			free.Sub(c.Resources.Requests[corev1.ResourceCPU])
		}
	}
	return free
}

// podsOn lists the pods bound to the node that have not finished.
func (e *env) podsOn(ctx context.Context, t *testing.T, node string) []corev1.Pod {
	t.Helper()
	list, err := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out
}

// start brings up a cluster of four simulated nodes, stickynet's CRDs and
// objects, the extender (in this process) and a kube-scheduler with the
// shipped stickynet-scheduler profile pointing at it.
func start(ctx context.Context, t *testing.T) *env {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(1)))
	ctx = klog.NewContext(ctx, logger)
	crlog.SetLogger(logger) // the informers' controller-runtime logs
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 4})
	if err := c.InstallCRDs(ctx, "../../../charts/stickynet/crds"); err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	crc, err := client.New(c.RESTConfig(), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{cs: c.Client(), crc: crc, rest: c.RESTConfig()}
	e.setUpNodes(ctx, t)
	for _, p := range []*v1alpha1.IPPool{
		ipPool("rack-a", "10.31.0.0/24", map[string]string{rackKey: "a"}),
		ipPool("everywhere", "10.32.0.0/24", nil),
		ipPool("nowhere", "10.33.0.0/24", map[string]string{rackKey: "z"}),
	} {
		if err := crc.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := crc.Create(ctx, &v1alpha1.SriovNetwork{
		ObjectMeta: metav1.ObjectMeta{Name: "fast"},
		Spec: v1alpha1.SriovNetworkSpec{
			PFNames:      []string{"ens1f0"},
			NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{sriovKey: "yes"}},
		},
	}); err != nil {
		t.Fatal(err)
	}

	caFile, certFile, keyFile := servingCertificate(t)
	e.url, e.client = runExtender(ctx, t, c, caFile, certFile, keyFile)
	// The shipped profile, with the extender reached over HTTPS at its
	// local address, verified against the test's CA.
	schedCfg, err := config.At(e.url, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StartScheduler(ctx, cluster.Scheduler{Name: "stickynet", Config: schedCfg}); err != nil {
		t.Fatal(err)
	}
	if err := c.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	// The extender must see the pools, the network, the node labels and
	// VFs before pods are scheduled: ask it until its answer shows them.
	probe := pod("probe", withPool("rack-a"), withNetwork("fast", 0))
	e.waitExtenderPasses(ctx, t, probe, nil, "sim-1")
	return e
}

// setUpNodes labels the four simulated nodes and advertises their VFs of
// network fast in their status, as the node agent would.
func (e *env) setUpNodes(ctx context.Context, t *testing.T) {
	t.Helper()
	for _, n := range []struct {
		name, rack, sriov string
		vfs               string
	}{
		{"sim-1", "a", "yes", "1"},
		{"sim-2", "a", "", "2"},
		{"sim-3", "b", "yes", "2"},
		{"sim-4", "b", "", ""},
	} {
		labels := fmt.Sprintf(`{%q: %q`, rackKey, n.rack)
		if n.sriov != "" {
			labels += fmt.Sprintf(`, %q: %q`, sriovKey, n.sriov)
		}
		labels += "}"
		if _, err := e.cs.CoreV1().Nodes().Patch(ctx, n.name, types.MergePatchType,
			[]byte(`{"metadata": {"labels": `+labels+`}}`), metav1.PatchOptions{}); err != nil {
			t.Fatalf("label %s: %v", n.name, err)
		}
		if n.vfs == "" {
			continue
		}
		patch := fmt.Sprintf(`{"status": {"capacity": {%q: %q}, "allocatable": {%q: %q}}}`, vfRes, n.vfs, vfRes, n.vfs)
		if _, err := e.cs.CoreV1().Nodes().Patch(ctx, n.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			t.Fatalf("advertise VFs on %s: %v", n.name, err)
		}
	}
}

// servingCertificate writes a CA and a serving certificate for 127.0.0.1
// signed by it, and returns their files.
func servingCertificate(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "stickynet-extender-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "stickynet-extender"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{caFile, "CERTIFICATE", caDER}, {certFile, "CERTIFICATE", leafDER}, {keyFile, "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// runExtender runs the extender in this process, over HTTPS with the given
// certificate, until the test ends, and returns its URL and a client that
// trusts it once it is ready.
func runExtender(ctx context.Context, t *testing.T, c *cluster.Cluster, caFile, certFile, keyFile string) (string, *http.Client) {
	t.Helper()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + ln.Addr().String()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(runCtx, app.Options{
			RESTConfig:     c.RESTConfig(),
			Listener:       ln,
			TLSCertFile:    certFile,
			TLSKeyFile:     keyFile,
			PreferLastNode: true,
			LastNodeTTL:    time.Hour,
			VFPlacement:    score.Spread,
		})
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("extender: %v", err)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("extender stopped before it was ready: %v", err)
		default:
		}
		if resp, err := hc.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url, hc
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("extender not ready after a minute")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitExtenderPasses asks the extender's filter verb about p on the four
// nodes until exactly want pass and no node fails for a reason that shows
// a view still incomplete, or until settled (when not nil) says the wait is
// moot.
func (e *env) waitExtenderPasses(ctx context.Context, t *testing.T, p *corev1.Pod, settled func() bool, want ...string) {
	t.Helper()
	var last string
	e.poll(ctx, t, fmt.Sprintf("the extender to pass %v for pod %s", want, p.Name), func() (bool, error) {
		if settled != nil && settled() {
			return true, nil
		}
		var res extenderv1.ExtenderFilterResult
		var err error
		if last, err = e.ask(ctx, "/filter", p, &res); err != nil || res.NodeNames == nil {
			return false, cmp.Or(err, fmt.Errorf("no node names: %s", last))
		}
		incomplete := strings.Contains(last, "does not exist") || strings.Contains(last, "not yet known")
		return !incomplete && slices.Equal(*res.NodeNames, want), nil
	}, func() string { return "last answer: " + last }, func() string { return e.vfView(ctx) })
}

// waitExtenderPrefers asks the extender's prioritize verb about p on the
// four nodes until want alone has the top score: the extender's informer
// has seen where p's identity ran.
func (e *env) waitExtenderPrefers(ctx context.Context, t *testing.T, p *corev1.Pod, want string) {
	t.Helper()
	var last string
	e.poll(ctx, t, fmt.Sprintf("the extender to rank %s first for pod %s", want, p.Name), func() (bool, error) {
		var res extenderv1.HostPriorityList
		var err error
		if last, err = e.ask(ctx, "/prioritize", p, &res); err != nil {
			return false, err
		}
		var top int64 = -1
		var best []string
		for _, h := range res {
			switch {
			case h.Score > top:
				top, best = h.Score, []string{h.Host}
			case h.Score == top:
				best = append(best, h.Host)
			}
		}
		return slices.Equal(best, []string{want}), nil
	}, func() string { return "last answer: " + last })
}

// simNodes are the four simulated nodes.
var simNodes = []string{"sim-1", "sim-2", "sim-3", "sim-4"}

// ask sends one of the extender's verbs (path) the arguments for p on the
// four nodes and decodes the answer into out; it returns the answer as
// read, for messages.
func (e *env) ask(ctx context.Context, path string, p *corev1.Pod, out any) (string, error) {
	body, err := json.Marshal(&extenderv1.ExtenderArgs{Pod: p, NodeNames: &simNodes})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+path, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return string(b), fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// vfView describes what the API server says about VFs: each simulated
// node's allocatable VFs and the pods that name a SriovNetwork, for the
// message of a test that timed out waiting for the extender.
func (e *env) vfView(ctx context.Context) string {
	var parts []string
	for _, name := range simNodes {
		n, err := e.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			parts = append(parts, fmt.Sprintf("node %s: %v", name, err))
			continue
		}
		q := n.Status.Allocatable[vfRes]
		parts = append(parts, fmt.Sprintf("node %s allocatable %s, labels %v", name, q.String(), n.Labels))
	}
	pods, err := e.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return strings.Join(append(parts, "pods: "+err.Error()), "; ")
	}
	for _, p := range pods.Items {
		if nw := p.Annotations["stickynet.io/sriov-network"]; nw != "" {
			parts = append(parts, fmt.Sprintf("pod %s uid %s node %q phase %s network %s deleting %v", p.Name, p.UID, p.Spec.NodeName, p.Status.Phase, nw, p.DeletionTimestamp != nil))
		}
	}
	return "API server: " + strings.Join(parts, "; ")
}

func ipPool(name, cidr string, selector map[string]string) *v1alpha1.IPPool {
	p := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.IPPoolSpec{CIDR: cidr}}
	if selector != nil {
		p.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: selector}
	}
	return p
}

type podOption func(*corev1.Pod)

// withPool gives the pod the output annotations of an address from pool.
func withPool(pool string) podOption {
	return func(p *corev1.Pod) {
		p.Annotations["stickynet.io/assigned-pool"] = pool
		p.Annotations["stickynet.io/assigned-ip"] = "10.99.0.10/24"
		p.Annotations["stickynet.io/assigned-mac"] = "02:42:0a:63:00:0a"
	}
}

func withIdentity(id string) podOption {
	return func(p *corev1.Pod) { p.Annotations["stickynet.io/identity"] = id }
}

// withNetwork makes the pod an SR-IOV pod of network; vfs > 0 adds the
// resource request the webhook adds.
func withNetwork(network string, vfs int64) podOption {
	return func(p *corev1.Pod) {
		p.Annotations["stickynet.io/sriov-network"] = network
		if vfs > 0 {
			q := *resource.NewQuantity(vfs, resource.DecimalSI)
			c := &p.Spec.Containers[0]
			c.Resources.Requests[corev1.ResourceName("stickynet.io/sriov-"+network)] = q
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceName("stickynet.io/sriov-" + network): q}
		}
	}
}

// pod is a pod of the stickynet-scheduler profile with a CPU request.
func pod(name string, opts ...podOption) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{}},
		Spec: corev1.PodSpec{
			SchedulerName:                 config.SchedulerName,
			TerminationGracePeriodSeconds: ptr.To(int64(0)),
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           cluster.ToolboxImage,
				ImagePullPolicy: corev1.PullNever,
				Command:         []string{"sleep", "3600"},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("500m"),
				}},
			}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func (e *env) create(ctx context.Context, t *testing.T, p *corev1.Pod) {
	t.Helper()
	if _, err := e.cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
}

// delete deletes a pod and waits until it is gone.
func (e *env) delete(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	err := e.cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s: %v", name, err)
	}
	e.poll(ctx, t, "pod "+name+" gone", func() (bool, error) {
		_, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// waitBound waits until the pod is bound and returns its node.
func (e *env) waitBound(ctx context.Context, t *testing.T, name string) string {
	t.Helper()
	var node string
	e.poll(ctx, t, "pod "+name+" bound", func() (bool, error) {
		p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		node = p.Spec.NodeName
		return node != "", nil
	})
	return node
}

// waitFailedScheduling waits for a FailedScheduling event of the pod whose
// message contains every one of want, and checks the pod is still unbound.
func (e *env) waitFailedScheduling(ctx context.Context, t *testing.T, name string, want ...string) {
	t.Helper()
	var msgs []string
	e.poll(ctx, t, "FailedScheduling event of "+name+" containing "+strings.Join(want, " | "), func() (bool, error) {
		evs, err := e.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
			"involvedObject.name": name, "reason": "FailedScheduling",
		}.String()})
		if err != nil {
			return false, err
		}
		msgs = msgs[:0]
		for _, ev := range evs.Items {
			msgs = append(msgs, ev.Message)
			if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(ev.Message, w) }) {
				return true, nil
			}
		}
		return false, nil
	}, func() string { return "events: " + strings.Join(msgs, " || ") })
	// A node the extender rejected as one preemption could help, where it
	// cannot, sent the scheduler's preemption into an error.
	for _, m := range msgs {
		if strings.Contains(m, "expected at least one victim") {
			t.Errorf("pod %s: the scheduler's preemption failed on a node only the extender rejected: %s", name, m)
		}
	}
	p, err := e.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.NodeName != "" {
		t.Errorf("pod %s was bound to %s", name, p.Spec.NodeName)
	}
}

// poll calls check until it is true, for up to a minute; details, if
// given, says what was seen last when it never is.
func (e *env) poll(ctx context.Context, t *testing.T, what string, check func() (bool, error), details ...func() string) {
	t.Helper()
	var lastErr error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ok, err := check()
		if ok {
			return
		}
		lastErr = err
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			break
		}
	}
	msg := "timed out waiting for " + what
	if lastErr != nil {
		msg += ": " + lastErr.Error()
	}
	for _, d := range details {
		msg += "; " + d()
	}
	t.Fatal(msg)
}
