// Package webhook_test runs stickynet's admission webhook and release
// controller against the local cluster's real kube-apiserver and
// kube-controller-manager: the API server calls the webhook over TLS, the
// workload controllers create, delete and replace pods, and simulated nodes
// run them. State is kept in a real etcd.
package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/certs"
	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/webhook/app"
)

const systemNS = "stickynet-system"

// reservationTTL is the webhooks' --reservation-ttl: how long a rejected
// pod's address stays reserved.
const reservationTTL = 8 * time.Second

type suite struct {
	c     *cluster.Cluster
	k     kubernetes.Interface
	cl    client.Client
	alloc *ipam.Allocator // reads the state the webhooks write
	st    store.Store     // stickynet's etcd, read by stored
	a     *replica        // replica a, on the chart's account
}

func TestWebhook(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	ctrl.SetLogger(klog.Background())
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 3}) // stops after the webhooks' cleanups
	if err := c.InstallCRDs(ctx, "../../charts/stickynet/crds"); err != nil {
		t.Fatal(err)
	}
	e := testenv.StartEtcd(t)
	sch, err := app.Scheme()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(c.RESTConfig(), client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	s := &suite{c: c, k: c.Client(), cl: cl}
	if err := c.CreateNamespace(ctx, systemNS, nil); err != nil {
		t.Fatal(err)
	}
	st, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s.st, s.alloc = st, ipam.New(st, ipam.Options{})
	if err := s.alloc.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// Two replicas, as two webhook pods would run: replica a serves namespaces
	// without the label replica=b, replica b those with it. Replica a runs
	// as the chart's webhook does, on its ServiceAccount with the chart's
	// RBAC and under the chart's names for its configuration and Secret, so
	// that every test below fails on a permission the chart lacks.
	s.a = s.startWebhook(ctx, t, "a", e.Endpoint, metav1.LabelSelectorRequirement{Key: "replica", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"b"}}, 0, s.chartAccount(t))
	b := s.startWebhook(ctx, t, "b", e.Endpoint, metav1.LabelSelectorRequirement{Key: "replica", Operator: metav1.LabelSelectorOpIn, Values: []string{"b"}}, 10*time.Second, "")

	t.Cleanup(func() {
		if t.Failed() { // keep what the webhooks were doing for the post-mortem
			if f, err := os.Create(filepath.Join(os.TempDir(), "stickynet-webhook-goroutines.txt")); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(f, 2)
				f.Close()
				t.Logf("goroutines written to %s", f.Name())
			}
		}
	})

	s.createPool(ctx, t, "main", v1alpha1.IPPoolSpec{CIDR: "10.77.0.0/24", Gateway: "10.77.0.1", Default: true, ReuseDelaySeconds: ptr(int32(3))})

	t.Run("StatefulSetKeepsAddresses", func(t *testing.T) { s.testStatefulSet(ctx, t) })
	t.Run("ScaleRetainAndRelease", func(t *testing.T) { s.testScale(ctx, t) })
	t.Run("DeploymentRolloutKeepsSet", func(t *testing.T) { s.testRollout(ctx, t) })
	t.Run("DaemonSetPerNode", func(t *testing.T) { s.testDaemonSet(ctx, t) })
	t.Run("RejectedPodReservationExpires", func(t *testing.T) { s.testRejected(ctx, t) })
	t.Run("DryRunAllocatesNothing", func(t *testing.T) { s.testDryRun(ctx, t) })
	t.Run("TwoReplicasNeverCollide", func(t *testing.T) { s.testTwoReplicas(ctx, t) })
	t.Run("BandwidthPolicyEdit", func(t *testing.T) { s.testBandwidthPolicy(ctx, t) })
	t.Run("PoolStatus", func(t *testing.T) { s.testPoolStatus(ctx, t) })
	t.Run("EditedPoolMovesAddress", func(t *testing.T) { s.testEditedPool(ctx, t) })
	t.Run("DeletedPoolWaitsForItsAddresses", func(t *testing.T) { s.testDeletedPool(ctx, t) })
	t.Run("UnlabelledLivePodKeepsAddress", func(t *testing.T) { s.testUnlabelled(ctx, t) })
	t.Run("LostStateRecordedAgain", func(t *testing.T) { s.testLostState(ctx, t, st) })
	t.Run("LostLeaseKeepsServing", func(t *testing.T) { s.testLostLease(ctx, t, s.a, b) })
	t.Run("ShutdownKeepsServing", func(t *testing.T) { s.testShutdown(ctx, t, b) }) // last: stops replica b
}

// replica is a webhook replica startWebhook runs.
type replica struct {
	probe  int
	socket string        // its --allocations-socket
	stop   func() error  // cancels Run and returns what it returned (once)
	exited chan struct{} // closed when Run returns
}

// testLostLease: the release controller's Lease taken by someone else, as
// when its leader cannot renew it for its renew deadline (10 s; the API
// server out of its reach, say). Both replicas go on serving admissions,
// and the leader stops its release controller: the address of a pod deleted
// meanwhile is not freed while the Lease is not theirs. Once it expires a
// replica leads again and frees that address. Before, the leader's process
// ended at once (controller-runtime's manager does on a lost Lease),
// cutting the admissions in flight.
func (s *suite) testLostLease(ctx context.Context, t *testing.T, rs ...*replica) {
	ns, nsB := "lease", "lease-b" // admitted by replica a, by replica b
	s.namespace(ctx, t, ns, nil)
	s.namespace(ctx, t, nsB, map[string]string{"replica": "b"})
	bareIn := func(ns, name string) *corev1.Pod {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: template(name, nil).Spec}
		pod.Spec.NodeName = "nowhere" // never runs: no kubelet confirms its deletion
		got, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod %s: %v", name, err)
		}
		if got.Annotations[annotations.AssignedIP] == "" {
			t.Fatalf("pod %s/%s admitted without an address: %v", ns, name, got.Annotations)
		}
		return got
	}
	bare := func(name string) *corev1.Pod { return bareIn(ns, name) }
	bare("before")
	eventually(ctx, t, 30*time.Second, "pod before's address confirmed", func() (bool, string) {
		got := s.alloc.Lookup("pod/" + ns + "/before")
		return len(got) == 1 && got[0].Pod == ns+"/before" && !got[0].Reserved, fmt.Sprintf("%+v", got)
	})

	leases := s.k.CoordinationV1().Leases(systemNS)
	testenv.TakeLease(ctx, t, leases, app.LeaseName, "intruder", 30*time.Second)
	serving := func(what string) {
		t.Helper()
		for i, r := range rs {
			select {
			case <-r.exited:
				t.Fatalf("replica %d stopped (%v) %s", i, r.stop(), what)
			default:
			}
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", r.probe))
			if err != nil {
				t.Fatalf("replica %d's /readyz %s: %v", i, what, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("replica %d's /readyz answers %d %s", i, resp.StatusCode, what)
			}
		}
	}
	time.Sleep(14 * time.Second) // past the renew deadline and a retry period, with room
	serving("after the Lease was taken")
	bare("during")
	bareIn(nsB, "during")
	defer func() {
		if err := s.k.CoreV1().Pods(nsB).Delete(ctx, "during", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	}()
	// (The pod GC of kube-controller-manager deletes pods of a node that
	// does not exist, such as these, after a while: it may have been first.)
	if err := s.k.CoreV1().Pods(ns).Delete(ctx, "before", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	time.Sleep(2*time.Second + 3*time.Second) // ReleaseGrace is 2 s; a pass every 200 ms
	if got := s.stored(ctx, t, "pod/"+ns+"/before"); len(got) != 1 {
		t.Fatalf("pod before's address %+v freed while the Lease was the intruder's; want it kept until a replica leads", got)
	}
	if l, err := leases.Get(ctx, app.LeaseName, metav1.GetOptions{}); err != nil || *l.Spec.HolderIdentity != "intruder" {
		t.Fatalf("Lease held by %v (%v); want it still the intruder's: the test's timing is off", l.Spec.HolderIdentity, err)
	}
	serving("while the Lease is the intruder's")
	if got := leaderGauge(t); got != 0 {
		t.Errorf("stickynet_webhook_release_leader %v while the Lease is the intruder's; want 0", got)
	}

	eventually(ctx, t, 60*time.Second, "a replica leading again and freeing pod before's address", func() (bool, string) {
		l, err := leases.Get(ctx, app.LeaseName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got := s.alloc.Lookup("pod/" + ns + "/before")
		return *l.Spec.HolderIdentity != "intruder" && len(got) == 0, fmt.Sprintf("Lease held by %s, address %+v", *l.Spec.HolderIdentity, got)
	})
	serving("after a replica took the Lease again")
	if got := leaderGauge(t); got != 1 {
		t.Errorf("stickynet_webhook_release_leader %v with a replica leading; want 1", got)
	}
	if err := s.k.CoreV1().Pods(ns).Delete(ctx, "during", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// testShutdown: a replica told to stop fails /readyz at once and keeps
// admitting pods through its shutdown delay, then stops cleanly.
func (s *suite) testShutdown(ctx context.Context, t *testing.T, r *replica) {
	stopped := make(chan error, 1)
	go func() { stopped <- r.stop() }()
	eventually(ctx, t, 5*time.Second, "replica b's /readyz failing once it is told to stop", func() (bool, string) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", r.probe))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusInternalServerError || resp.StatusCode == http.StatusServiceUnavailable, fmt.Sprintf("readyz %d", resp.StatusCode)
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "rb", Annotations: map[string]string{annotations.Pool: "shared"}},
		Spec:       template("late", nil).Spec,
	}
	pod.Spec.NodeName = "nowhere"
	got, err := s.k.CoreV1().Pods("rb").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod created while replica b drains: %v; want it admitted", err)
	}
	if got.Annotations[annotations.AssignedIP] == "" {
		t.Errorf("pod admitted while replica b drains has no address: %v", got.Annotations)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("replica b stopped with %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("replica b still running a minute after it was told to stop")
	}
}

func ptr[T any](v T) *T { return &v }

func freePort(t *testing.T) int {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// startWebhook runs one webhook replica in this process, registers its
// MutatingWebhookConfiguration and waits until the API server's calls reach
// it. With a kubeconfig (chartAccount's) the replica runs on it, under the
// chart's names; else as the cluster's admin.
func (s *suite) startWebhook(ctx context.Context, t *testing.T, name, etcdEndpoint string, sel metav1.LabelSelectorRequirement, shutdownDelay time.Duration, kubeconfig string) *replica {
	port, probe, socket := freePort(t), freePort(t), filepath.Join(t.TempDir(), "allocations.sock")
	cfgName, secret := "stickynet-"+name, "stickynet-"+name+"-cert"
	if kubeconfig != "" {
		cfgName, secret = "stickynet", "stickynet-webhook-cert"
	} else {
		kubeconfig = s.c.KubeconfigPath()
	}
	mwc := app.WebhookConfiguration(cfgName, systemNS, admissionregistrationv1.WebhookClientConfig{
		URL: ptr(fmt.Sprintf("https://localhost:%d%s", port, app.MutatePath)),
	})
	sel0 := mwc.Webhooks[0].NamespaceSelector
	sel0.MatchExpressions = append(sel0.MatchExpressions, sel)
	if _, err := s.k.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(klog.NewContext(ctx, klog.Background().WithName("webhook-"+name)))
	done, exited := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(exited)
		done <- app.Run(wctx, app.Options{
			Kubeconfig: kubeconfig, EtcdEndpoints: []string{etcdEndpoint},
			Host: "127.0.0.1", Port: port, CertDir: t.TempDir(),
			Certs: certs.Options{
				Mode: certs.ModeSelf, Secret: types.NamespacedName{Namespace: systemNS, Name: secret},
				DNSNames: []string{"localhost"}, WebhookConfig: cfgName, WriteFiles: true,
			},
			MetricsAddr: "0", ProbeAddr: fmt.Sprintf("127.0.0.1:%d", probe), AllocationsSocket: socket,
			LeaderElection: true, LeaderElectionNamespace: systemNS,
			// NetworkResource off: the simulated nodes run no node agent to
			// advertise stickynet.io/network (e2e/system tests it on).
			SchedulerName: "", NetworkResource: false, StoreTimeout: 5 * time.Second,
			ReservationTTL: reservationTTL, ReleaseGrace: 2 * time.Second, KubeAPIQPS: 100, KubeAPIBurst: 200,
			ShutdownDelay: shutdownDelay,
		})
	}()
	r := &replica{probe: probe, socket: socket, exited: exited, stop: sync.OnceValue(func() error {
		cancel()
		return <-done
	})}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("webhook %s: %v", name, err)
		}
	})
	eventually(ctx, t, 60*time.Second, "webhook "+name+" ready and its caBundle injected", func() (bool, string) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		got, err := s.k.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, cfgName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return resp.StatusCode == http.StatusOK && len(got.Webhooks[0].ClientConfig.CABundle) > 0,
			fmt.Sprintf("readyz %d, caBundle %d bytes", resp.StatusCode, len(got.Webhooks[0].ClientConfig.CABundle))
	})
	return r
}

// chartAccount applies the ServiceAccount, RBAC, certificate Secret and
// admission policies (node status, pods, Secrets) that the chart renders
// for its webhook in systemNS, and returns a kubeconfig with a token of
// that ServiceAccount.
func (s *suite) chartAccount(t *testing.T) string {
	if n := testenv.ApplyChartAccount(t, s.c.RESTConfig(), "../../charts/stickynet", systemNS, "templates/webhook.yaml"); n != 12 {
		t.Fatalf("the chart's webhook.yaml renders %d of ServiceAccount, ClusterRole(Binding), Role(Binding), Secret and 3 ValidatingAdmissionPolicy(Binding); want 12", n)
	}
	return testenv.ServiceAccountKubeconfig(t, s.c.RESTConfig(), systemNS, "stickynet-webhook")
}

// eventually polls cond until it holds or the timeout passes.
var eventually = testenv.Eventually

func (s *suite) createPool(ctx context.Context, t *testing.T, name string, spec v1alpha1.IPPoolSpec) {
	if err := s.cl.Create(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) namespace(ctx context.Context, t *testing.T, name string, labels map[string]string) {
	if labels == nil {
		labels = map[string]string{}
	}
	labels[annotations.EnabledLabel] = "true"
	if err := s.c.CreateNamespace(ctx, name, labels); err != nil {
		t.Fatal(err)
	}
}

func template(app string, ann map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}, Annotations: ann},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr(int64(0)),
			Containers:                    []corev1.Container{{Name: "c", Image: "busybox", ImagePullPolicy: corev1.PullNever, Command: []string{"sleep", "3600"}}},
		},
	}
}

// addr is a pod's assignment.
type addr struct{ ip, mac string }

// pods waits until exactly n pods match app, all Running and carrying an
// assignment, and returns their assignments by pod name.
func (s *suite) pods(ctx context.Context, t *testing.T, ns, app string, n int) map[string]addr {
	t.Helper()
	var out map[string]addr
	eventually(ctx, t, 90*time.Second, fmt.Sprintf("%d running pods of %s/%s", n, ns, app), func() (bool, string) {
		list, err := s.k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err.Error()
		}
		out = map[string]addr{}
		ready := 0
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			if p.Annotations[annotations.AssignedIP] == "" {
				t.Fatalf("pod %s/%s has no %s: the webhook did not admit it", ns, p.Name, annotations.AssignedIP)
			}
			out[p.Name] = addr{p.Annotations[annotations.AssignedIP], p.Annotations[annotations.AssignedMAC]}
			if p.Status.Phase == corev1.PodRunning {
				ready++
			}
		}
		return ready == n && len(list.Items) == n, fmt.Sprintf("%d running of %d", ready, len(list.Items))
	})
	return out
}

func ips(m map[string]addr) []string {
	var out []string
	for _, a := range m {
		out = append(out, a.ip)
	}
	sort.Strings(out)
	return out
}

func (s *suite) testStatefulSet(ctx context.Context, t *testing.T) {
	ns := "sts"
	s.namespace(ctx, t, ns, nil)
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr(int32(3)), PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: template("web", nil),
		},
	}
	if _, err := s.k.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := s.pods(ctx, t, ns, "web", 3)
	if len(ips(before)) != 3 || ips(before)[0] == ips(before)[1] || ips(before)[1] == ips(before)[2] {
		t.Fatalf("ordinals do not have distinct addresses: %v", before)
	}
	eventually(ctx, t, 30*time.Second, "StickyAddressAssigned events on the pods", func() (bool, string) {
		evs, err := s.k.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, e := range evs.Items {
			if e.Reason == "StickyAddressAssigned" && e.Regarding.Kind == "Pod" && strings.Contains(e.Note, "statefulset/sts/web/") {
				n++
			}
		}
		return n >= 3, fmt.Sprintf("%d events", n)
	})
	for round := range 2 {
		for _, name := range []string{"web-1", "web-2"} {
			old, err := s.k.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.k.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(ctx, t, 60*time.Second, name+" replaced", func() (bool, string) {
				p, err := s.k.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return false, err.Error()
				}
				return p.UID != old.UID && p.Status.Phase == corev1.PodRunning, string(p.Status.Phase)
			})
		}
		after := s.pods(ctx, t, ns, "web", 3)
		for name, want := range before {
			if after[name] != want {
				t.Fatalf("round %d: %s has %v after deletion; had %v", round, name, after[name], want)
			}
		}
	}
	// As an operator lists the state in the webhook's container
	// (`stickynet-webhook allocations`, on replica a's socket): each
	// ordinal's address and MAC, allocated, bound to its pod.
	eventually(ctx, t, 30*time.Second, "the allocations command listing the ordinals", func() (bool, string) {
		var out, errOut bytes.Buffer
		if code := app.AllocationsCommand(ctx, []string{"--socket", s.a.socket, "--identity", "statefulset/sts/web/", "-o", "json"}, &out, &errOut); code != 0 {
			return false, fmt.Sprintf("exit %d: %s", code, errOut.String())
		}
		var list []app.Allocation
		if err := json.Unmarshal(out.Bytes(), &list); err != nil {
			return false, err.Error()
		}
		got := map[string]addr{}
		for _, a := range list {
			if a.State != ipam.StateAllocated || a.Pool != "main" {
				return false, fmt.Sprintf("%+v", a)
			}
			_, name, _ := strings.Cut(a.Pod, "/")
			got[name] = addr{a.IP, a.MAC}
		}
		for name, want := range before {
			if p, err := netip.ParsePrefix(want.ip); err != nil || got[name] != (addr{p.Addr().String(), want.mac}) {
				return false, fmt.Sprintf("listed %v; the pods carry %v", got, before)
			}
		}
		return len(got) == len(before), fmt.Sprintf("listed %v; the pods carry %v", got, before)
	})
}

func (s *suite) scale(ctx context.Context, t *testing.T, ns, name string, n int32) {
	t.Helper()
	// The StatefulSet controller writes the object too: a conflict is retried.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := s.k.AppsV1().StatefulSets(ns).GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		sc.Spec.Replicas = n
		_, err = s.k.AppsV1().StatefulSets(ns).UpdateScale(ctx, name, sc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("scale statefulset %s/%s to %d: %v", ns, name, n, err)
	}
}

func (s *suite) testScale(ctx context.Context, t *testing.T) {
	ns := "scale"
	s.namespace(ctx, t, ns, nil)
	for _, retention := range []string{annotations.RetentionRetain, annotations.RetentionRelease} {
		name := strings.ToLower(retention)
		sts := &appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: appsv1.StatefulSetSpec{
				Replicas: ptr(int32(3)), PodManagementPolicy: appsv1.ParallelPodManagement,
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
				Template: template(name, map[string]string{annotations.IPRetention: retention}),
			},
		}
		if _, err := s.k.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		before := s.pods(ctx, t, ns, name, 3)
		s.scale(ctx, t, ns, name, 1)
		s.pods(ctx, t, ns, name, 1)
		for _, ord := range []int{1, 2} {
			id := annotations.StatefulSetID(ns, name, ord).String()
			want := 1
			if retention == annotations.RetentionRelease {
				want = 0
			}
			eventually(ctx, t, 30*time.Second, fmt.Sprintf("%s owns %d address(es)", id, want), func() (bool, string) {
				got := s.alloc.Lookup(id)
				return len(got) == want, fmt.Sprintf("%+v", got)
			})
			if retention == annotations.RetentionRetain {
				// Held long past the release grace: still there.
				time.Sleep(3 * time.Second)
				ip := strings.TrimSuffix(before[fmt.Sprintf("%s-%d", name, ord)].ip, "/24")
				if got := s.stored(ctx, t, id); len(got) != 1 || !strings.HasSuffix(got[0].Key, "/"+ip) {
					t.Fatalf("%s with Retain: %+v in etcd; want its address %s", id, got, ip)
				}
			}
		}
		if retention == annotations.RetentionRelease {
			// Both replicas run in this process and share the registry; the
			// releasing goroutine counts after its Release returned, which
			// the test's allocator may see first.
			eventually(ctx, t, 10*time.Second, "stickynet_webhook_released_addresses_total{kind=\"statefulset\"} counts the 2 ordinals released", func() (bool, string) {
				n := releasedMetric(t, "statefulset")
				return n >= 2, fmt.Sprintf("%v", n)
			})
		}
		if retention == annotations.RetentionRetain {
			s.scale(ctx, t, ns, name, 3)
			after := s.pods(ctx, t, ns, name, 3)
			for pod, want := range before {
				if after[pod] != want {
					t.Fatalf("Retain: %s came back with %v; had %v", pod, after[pod], want)
				}
			}
		}
	}
}

func (s *suite) deploymentMembers(name string) map[string]bool {
	out := map[string]bool{}
	for _, e := range s.alloc.Lookup("deployment/" + name) {
		out[e.IP.String()+"/24"] = true
	}
	return out
}

func (s *suite) testRollout(ctx context.Context, t *testing.T) {
	ns := "deploy"
	s.namespace(ctx, t, ns, nil)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(3)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			Template: template("api", map[string]string{"rev": "1"}),
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxSurge: ptr(intstr.FromInt32(1)), MaxUnavailable: ptr(intstr.FromInt32(0)),
			}},
		},
	}
	if _, err := s.k.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := s.pods(ctx, t, ns, "api", 3)
	var set map[string]bool
	for rev := 2; rev <= 3; rev++ {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d, err := s.k.AppsV1().Deployments(ns).Get(ctx, "api", metav1.GetOptions{})
			if err != nil {
				return err
			}
			d.Spec.Template.Annotations["rev"] = fmt.Sprint(rev)
			_, err = s.k.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatalf("roll deployment %s/api to rev %d: %v", ns, rev, err)
		}
		eventually(ctx, t, 120*time.Second, fmt.Sprintf("rollout to rev %d", rev), func() (bool, string) {
			list, err := s.k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=api"})
			if err != nil {
				return false, err.Error()
			}
			n := 0
			for _, p := range list.Items {
				if p.Annotations["rev"] == fmt.Sprint(rev) && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
					n++
				}
			}
			return n == 3 && len(list.Items) == 3, fmt.Sprintf("%d of %d pods at rev %d", n, len(list.Items), rev)
		})
		now := s.pods(ctx, t, ns, "api", 3)
		members := s.deploymentMembers(ns + "/api")
		if len(members) > 4 {
			t.Fatalf("rev %d: the deployment owns %d addresses; want at most replicas+maxSurge = 4: %v", rev, len(members), members)
		}
		for i, ip := range ips(now) {
			if !members[ip] {
				t.Fatalf("rev %d: pod address %s is not a member of the deployment's set %v", rev, ip, members)
			}
			if i > 0 && ips(now)[i-1] == ip {
				t.Fatalf("rev %d: two pods have address %s: %v", rev, ip, now)
			}
		}
		for _, ip := range ips(first) {
			if !members[ip] {
				t.Fatalf("rev %d: the first pods' address %s left the set %v", rev, ip, members)
			}
		}
		if set != nil && fmt.Sprint(set) != fmt.Sprint(members) {
			t.Fatalf("the set changed between rollouts: %v then %v", set, members)
		}
		set = members
	}
}

func (s *suite) testDaemonSet(ctx context.Context, t *testing.T) {
	ns := "ds"
	s.namespace(ctx, t, ns, nil)
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
			Template: template("agent", nil),
		},
	}
	if _, err := s.k.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nodes := len(s.c.Nodes())
	byNode := func() map[string]string {
		list, err := s.k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=agent"})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
				out[p.Spec.NodeName] = p.Annotations[annotations.AssignedIP] + " " + p.Annotations[annotations.Identity]
			}
		}
		return out
	}
	s.pods(ctx, t, ns, "agent", nodes)
	before := byNode()
	for node, a := range before {
		if !strings.HasSuffix(a, "/"+node) {
			t.Fatalf("pod on %s has identity %s", node, a)
		}
	}
	if err := s.k.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "app=agent"}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 60*time.Second, "DaemonSet pods replaced", func() (bool, string) {
		now := byNode()
		return fmt.Sprint(now) == fmt.Sprint(before), fmt.Sprintf("%v, want %v", now, before)
	})
}

func (s *suite) testRejected(ctx context.Context, t *testing.T) {
	ns := "reject"
	s.namespace(ctx, t, ns, nil)
	// Another admission step, after stickynet's, rejects pods labelled reject=yes.
	vap := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "reject-labelled"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: ptr(admissionregistrationv1.Fail),
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				},
			}}},
			Validations: []admissionregistrationv1.Validation{{Expression: "!has(object.metadata.labels) || !('reject' in object.metadata.labels)", Message: "rejected by test policy"}},
		},
	}
	if _, err := s.k.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, vap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "reject-labelled"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName: "reject-labelled", ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: ns}}},
		},
	}
	if _, err := s.k.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = s.k.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
		_ = s.k.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(context.Background(), vap.Name, metav1.DeleteOptions{})
	}()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "doomed-", Namespace: ns, Labels: map[string]string{"reject": "yes"}},
		Spec:       template("doomed", nil).Spec,
	}
	isDoomed := func(e ipam.Entry) bool { return strings.HasPrefix(e.Identity, "pod/"+ns+"/doomed-") }
	// Wait for the policy to be in force (a dry run allocates nothing).
	eventually(ctx, t, 30*time.Second, "the policy is in force", func() (bool, string) {
		_, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "rejected by test policy"), fmt.Sprint(err)
	})
	if _, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "rejected by test policy") {
		t.Fatalf("pod creation: %v; want the policy's rejection", err)
	}
	// The reservation lives reservationTTL (and up to 2 s more): long enough
	// to be seen by a poll on a busy machine.
	eventually(ctx, t, reservationTTL, "a reservation was made", func() (bool, string) {
		got := s.alloc.List(isDoomed)
		return len(got) == 1 && got[0].Reserved, fmt.Sprintf("%+v", got)
	})
	eventually(ctx, t, 4*reservationTTL, "the reservation expires", func() (bool, string) {
		got := s.alloc.List(isDoomed)
		return len(got) == 0, fmt.Sprintf("%+v", got)
	})
}

func (s *suite) testDryRun(ctx context.Context, t *testing.T) {
	ns := "dryrun"
	s.namespace(ctx, t, ns, nil)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "trial", Namespace: ns}, Spec: template("trial", nil).Spec}
	got, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations[annotations.AssignedIP] == "" {
		t.Fatal("dry run did not show the assignment")
	}
	time.Sleep(time.Second)
	if l := s.stored(ctx, t, "pod/"+ns+"/trial"); len(l) != 0 {
		t.Fatalf("dry run allocated %+v", l)
	}
	if _, err := s.k.CoreV1().Pods(ns).Get(ctx, "trial", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry-run pod exists: %v", err)
	}
}

func (s *suite) testTwoReplicas(ctx context.Context, t *testing.T) {
	s.createPool(ctx, t, "shared", v1alpha1.IPPoolSpec{CIDR: "10.78.0.0/25"})
	s.namespace(ctx, t, "ra", map[string]string{"replica": "a"})
	s.namespace(ctx, t, "rb", map[string]string{"replica": "b"})
	const perNS = 50
	before := testenv.StoreRequests(t, crmetrics.Registry)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, ns := range []string{"ra", "rb"} {
		for i := range perNS {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pod := &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: ns, Labels: map[string]string{"app": "burst"}, Annotations: map[string]string{annotations.Pool: "shared"}},
					Spec:       template("burst", nil).Spec,
				}
				pod.Spec.NodeName = "nowhere" // never runs: admission is what is tested
				if _, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	seenIP, seenMAC := map[string]string{}, map[string]string{}
	for _, ns := range []string{"ra", "rb"} {
		list, err := s.k.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=burst"})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != perNS {
			t.Fatalf("%s has %d pods; want %d", ns, len(list.Items), perNS)
		}
		for _, p := range list.Items {
			ip, mac := p.Annotations[annotations.AssignedIP], p.Annotations[annotations.AssignedMAC]
			if other, dup := seenIP[ip]; dup {
				t.Fatalf("%s given to %s/%s and %s", ip, ns, p.Name, other)
			}
			if other, dup := seenMAC[mac]; dup {
				t.Fatalf("MAC %s given to %s/%s and %s", mac, ns, p.Name, other)
			}
			seenIP[ip], seenMAC[mac] = ns+"/"+p.Name, ns+"/"+p.Name
		}
	}
	// Each admitted pod's claim is a successful etcd transaction, which the
	// replicas' stickynet_store_request_duration_seconds counts.
	after := testenv.StoreRequests(t, crmetrics.Registry)
	won, lost := "txn/"+store.ResultOK, "txn/"+store.ResultConflict
	if n := after[won] - before[won]; n < 2*perNS {
		t.Errorf("stickynet_store_request_duration_seconds counts %d successful transactions for %d admitted pods", n, 2*perNS)
	}
	t.Logf("transactions another replica won: %d", after[lost]-before[lost])
	for _, ns := range []string{"ra", "rb"} {
		_ = s.k.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}, metav1.ListOptions{})
	}
}

func (s *suite) testBandwidthPolicy(ctx context.Context, t *testing.T) {
	ns := "bw"
	s.namespace(ctx, t, ns, nil)
	pol := &v1alpha1.BandwidthPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "gold", Namespace: ns},
		Spec: v1alpha1.BandwidthPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "limited"}},
			Ingress:     &v1alpha1.BandwidthLimit{Rate: resource.MustParse("10M")},
			Egress:      &v1alpha1.BandwidthLimit{Rate: resource.MustParse("5M")},
		},
	}
	if err := s.cl.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "limited", Namespace: ns, Labels: map[string]string{"app": "limited"}}, Spec: template("limited", nil).Spec}
	got, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations[annotations.IngressBandwidth] != "10000000" || got.Annotations[annotations.BandwidthPolicy] != "gold" {
		t.Fatalf("admitted with %v", got.Annotations)
	}
	pol.Spec.Ingress.Rate = resource.MustParse("20M")
	if err := s.cl.Update(ctx, pol); err != nil {
		t.Fatal(err)
	}
	// Within 10 s: a pass follows the policy's event at once; the periodic
	// pass, every 30 s, would get there too within a wait as long as that.
	eventually(ctx, t, 10*time.Second, "the policy edit reaches the pod", func() (bool, string) {
		p, err := s.k.CoreV1().Pods(ns).Get(ctx, "limited", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.Annotations[annotations.IngressBandwidth] == "20000000" && p.Annotations[annotations.EgressBandwidth] == "5000000",
			fmt.Sprintf("%s=%s", annotations.IngressBandwidth, p.Annotations[annotations.IngressBandwidth])
	})
	if err := s.cl.Delete(ctx, pol); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 10*time.Second, "deleting the policy lifts the limits", func() (bool, string) {
		p, err := s.k.CoreV1().Pods(ns).Get(ctx, "limited", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return !annotations.HasBandwidth(p.Annotations) && p.Annotations[annotations.BandwidthPolicy] == "", fmt.Sprint(p.Annotations)
	})
}

func (s *suite) testPoolStatus(ctx context.Context, t *testing.T) {
	eventually(ctx, t, 30*time.Second, "IPPool status counts", func() (bool, string) {
		p := &v1alpha1.IPPool{}
		if err := s.cl.Get(ctx, client.ObjectKey{Name: "main"}, p); err != nil {
			return false, err.Error()
		}
		st := p.Status
		ok := st.Total == 253 && st.Allocated > 0 && st.Allocated+st.Held+st.Cooling+st.OtherPools+st.Free == st.Total
		return ok, fmt.Sprintf("%+v", st)
	})
}

// singleDB creates StatefulSet db of one replica in ns, its pods drawing
// from pool.
func (s *suite) singleDB(ctx context.Context, t *testing.T, ns, pool string) {
	t.Helper()
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Template: template("db", map[string]string{annotations.Pool: pool}),
		},
	}
	if _, err := s.k.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testEditedPool: an IPPool edited to exclude the address a StatefulSet's
// pod carries. The pool's Ready condition says that an address lies outside
// its spec while the pod runs; the pod, deleted, comes back with another
// address of the pool and its MAC, and the condition clears.
func (s *suite) testEditedPool(ctx context.Context, t *testing.T) {
	ns, pool := "edited", "edited"
	s.namespace(ctx, t, ns, nil)
	s.createPool(ctx, t, pool, v1alpha1.IPPoolSpec{CIDR: "10.79.0.0/28", Gateway: "10.79.0.1", ReuseDelaySeconds: ptr(int32(3))})
	s.singleDB(ctx, t, ns, pool)
	before := s.pods(ctx, t, ns, "db", 1)["db-0"]
	ip := netip.MustParsePrefix(before.ip).Addr()
	patch := client.RawPatch(types.MergePatchType, []byte(fmt.Sprintf(`{"spec":{"exclude":[%q]}}`, ip)))
	if err := s.cl.Patch(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: pool}}, patch); err != nil {
		t.Fatal(err)
	}
	ready := func(reason string) {
		t.Helper()
		eventually(ctx, t, 30*time.Second, "IPPool "+pool+" Ready with reason "+reason, func() (bool, string) {
			p := &v1alpha1.IPPool{}
			if err := s.cl.Get(ctx, client.ObjectKey{Name: pool}, p); err != nil {
				return false, err.Error()
			}
			c := meta.FindStatusCondition(p.Status.Conditions, "Ready")
			return c != nil && c.Status == metav1.ConditionTrue && c.Reason == reason && c.ObservedGeneration == p.Generation, fmt.Sprintf("%+v", p.Status)
		})
	}
	ready("AddressesOutsideSpec")
	old, err := s.k.CoreV1().Pods(ns).Get(ctx, "db-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.k.CoreV1().Pods(ns).Delete(ctx, "db-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 60*time.Second, "db-0 replaced", func() (bool, string) {
		p, err := s.k.CoreV1().Pods(ns).Get(ctx, "db-0", metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.UID != old.UID && p.Status.Phase == corev1.PodRunning, string(p.Status.Phase)
	})
	after := s.pods(ctx, t, ns, "db", 1)["db-0"]
	if after.ip == before.ip || after.mac != before.mac || !strings.HasPrefix(after.ip, "10.79.0.") {
		t.Fatalf("db-0 came back with %v after %s was excluded; had %v: want another address of the pool, the same MAC", after, ip, before)
	}
	t.Logf("db-0 moved from %v to %v", before, after)
	ready("Valid")
}

// testDeletedPool: an IPPool whose address a StatefulSet's pod carries has
// the in-use finalizer; deleted, it stays (Ready False, reason Deleting) and
// hands out no new address, and goes once the StatefulSet is deleted and
// its address has cooled.
func (s *suite) testDeletedPool(ctx context.Context, t *testing.T) {
	ns, pool := "leaving", "leaving"
	s.namespace(ctx, t, ns, nil)
	s.createPool(ctx, t, pool, v1alpha1.IPPoolSpec{CIDR: "10.80.0.0/28", ReuseDelaySeconds: ptr(int32(2))})
	s.singleDB(ctx, t, ns, pool)
	s.pods(ctx, t, ns, "db", 1)
	get := func() (*v1alpha1.IPPool, error) {
		p := &v1alpha1.IPPool{}
		return p, s.cl.Get(ctx, client.ObjectKey{Name: pool}, p)
	}
	eventually(ctx, t, 30*time.Second, "IPPool "+pool+" in use: its finalizer", func() (bool, string) {
		p, err := get()
		if err != nil {
			return false, err.Error()
		}
		return slices.Contains(p.Finalizers, v1alpha1.IPPoolInUseFinalizer), fmt.Sprintf("finalizers %v", p.Finalizers)
	})
	if err := s.cl.Delete(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: pool}}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 30*time.Second, "IPPool "+pool+" deleted in use: Ready False, reason Deleting", func() (bool, string) {
		p, err := get()
		if err != nil {
			return false, err.Error()
		}
		c := meta.FindStatusCondition(p.Status.Conditions, "Ready")
		return p.DeletionTimestamp != nil && c != nil && c.Status == metav1.ConditionFalse && c.Reason == "Deleting", fmt.Sprintf("%+v", p.Status)
	})
	bare := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: ns, Annotations: map[string]string{annotations.Pool: pool}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if _, err := s.k.CoreV1().Pods(ns).Create(ctx, bare, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "IPPool leaving is being deleted") {
		t.Fatalf("a new pod of IPPool %s being deleted: %v; want denied, naming the pool being deleted", pool, err)
	}
	if err := s.k.AppsV1().StatefulSets(ns).Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Its pod goes, the address is freed a grace later and cools 2 s; a
	// pass after that lets the pool go (the resync, or a nudge).
	eventually(ctx, t, 90*time.Second, "IPPool "+pool+" gone once none of its addresses is held", func() (bool, string) {
		p, err := get()
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		if len(s.alloc.List(func(e ipam.Entry) bool { return e.Pool == pool })) == 0 {
			s.nudgeRelease(ctx, t, time.Now().String())
		}
		return false, fmt.Sprintf("finalizers %v, %+v", p.Finalizers, p.Status)
	})
}

// testUnlabelled: the release controller's pod cache holds only pods
// labelled stickynet.io/managed. Live pods whose label was removed still
// carry their addresses: the controller must ask the API server before it
// believes them gone (one list for a namespace with many such pods, one
// read each for a few), and keep the addresses bound; once a pod is really
// gone, its address is freed.
func (s *suite) testUnlabelled(ctx context.Context, t *testing.T) {
	ns := "unlabelled"
	s.namespace(ctx, t, ns, nil)
	const n = 10 // more than the controller reads one by one
	for i := range n {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("solo-%d", i), Namespace: ns, Labels: map[string]string{"app": "solo"}}, Spec: template("solo", nil).Spec}
		if _, err := s.k.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	want := s.pods(ctx, t, ns, "solo", n)
	// bound says whether pod i's identity still has its address, bound to it.
	bound := func(i int) (bool, string) {
		name := fmt.Sprintf("solo-%d", i)
		got := s.alloc.Lookup("pod/" + ns + "/" + name)
		return len(got) == 1 && got[0].Pod == ns+"/"+name && got[0].IP.String()+"/24" == want[name].ip, fmt.Sprintf("%s: %+v", name, got)
	}
	// storedBound is bound as etcd has it (not the test's cache, which may
	// lag a release pass's writes).
	storedBound := func(i int) (bool, string) {
		name := fmt.Sprintf("solo-%d", i)
		got := s.stored(ctx, t, "pod/"+ns+"/"+name)
		return len(got) == 1 && got[0].Pod == ns+"/"+name && strings.HasSuffix(got[0].Key, "/"+strings.TrimSuffix(want[name].ip, "/24")), fmt.Sprintf("%s in etcd: %+v", name, got)
	}
	// gone says whether pod i's identity has no address any more.
	gone := func(i int) (bool, string) {
		got := s.alloc.Lookup(fmt.Sprintf("pod/%s/solo-%d", ns, i))
		return len(got) == 0, fmt.Sprintf("solo-%d: %+v", i, got)
	}
	// each holds while is holds for every pod in [from, to).
	each := func(from, to int, is func(int) (bool, string)) func() (bool, string) {
		return func() (bool, string) {
			for i := from; i < to; i++ {
				if ok, got := is(i); !ok {
					return false, got
				}
			}
			return true, ""
		}
	}
	eventually(ctx, t, 30*time.Second, "every identity bound to its pod", each(0, n, bound))

	patch := []byte(fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, annotations.ManagedLabel))
	for i := range n {
		if _, err := s.k.CoreV1().Pods(ns).Patch(ctx, fmt.Sprintf("solo-%d", i), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			t.Fatalf("remove the label %s: %v", annotations.ManagedLabel, err)
		}
	}
	// Past the grace, a full pass that began after it would have freed the
	// addresses if the controller believed its cache alone.
	time.Sleep(2*time.Second + 500*time.Millisecond) // ReleaseGrace is 2 s
	for i := range 2 {
		s.nudgeRelease(ctx, t, fmt.Sprintf("unlabelled-%d", i))
	}
	if ok, got := each(0, n, storedBound)(); !ok {
		t.Fatalf("a live pod without the label %s lost its address (%d such pods in the namespace): %s", annotations.ManagedLabel, n, got)
	}

	// Pods 1 to n-1 go: their addresses are freed, pod 0's stays.
	for i := 1; i < n; i++ {
		if err := s.k.CoreV1().Pods(ns).Delete(ctx, fmt.Sprintf("solo-%d", i), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The deletions of unlabelled pods are not in the controller's cache: nudge it.
	nudges := 0
	eventually(ctx, t, 60*time.Second, "the deleted pods' addresses freed", func() (bool, string) {
		nudges++
		s.nudgeRelease(ctx, t, fmt.Sprintf("gone-%d", nudges))
		return each(1, n, gone)()
	})
	// Now pod 0 is the only one to ask about: read by itself.
	for i := range 2 {
		s.nudgeRelease(ctx, t, fmt.Sprintf("alone-%d", i))
	}
	if ok, got := storedBound(0); !ok {
		t.Fatalf("the last live pod without the label %s lost its address: %s", annotations.ManagedLabel, got)
	}
	if err := s.k.CoreV1().Pods(ns).Delete(ctx, "solo-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, 60*time.Second, "solo-0's address freed", func() (bool, string) {
		nudges++
		s.nudgeRelease(ctx, t, fmt.Sprintf("gone-%d", nudges))
		return each(0, 1, gone)()
	})
}

// testLostState: etcd loses every record of a Deployment's two running
// pods (address, identity member and MAC keys), as after a restore from an
// older backup. The release controller records each pod's address and MAC
// again for the Deployment, bound to the pod, with a StickyAddressRecorded
// event, so that the addresses are not handed to anyone else.
func (s *suite) testLostState(ctx context.Context, t *testing.T, st store.Store) {
	ns := "lost"
	s.namespace(ctx, t, ns, nil)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "keep", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "keep"}},
			Template: template("keep", nil),
		},
	}
	if _, err := s.k.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := s.pods(ctx, t, ns, "keep", 2)
	identity := "deployment/" + ns + "/keep"
	// bound says whether the Deployment holds exactly its pods' addresses
	// and MACs, each bound to its pod.
	bound := func() (bool, string) {
		got := s.alloc.Lookup(identity)
		if len(got) != len(want) {
			return false, fmt.Sprintf("%+v", got)
		}
		for _, e := range got {
			_, name, _ := strings.Cut(e.Pod, "/")
			if w, ok := want[name]; !ok || w.ip != e.IP.String()+"/24" || w.mac != e.MAC.String() || e.Reserved {
				return false, fmt.Sprintf("%+v", got)
			}
		}
		return true, ""
	}
	eventually(ctx, t, 30*time.Second, "the Deployment's addresses bound to its pods", bound)

	var ops []store.Op
	for _, e := range s.alloc.Lookup(identity) {
		ops = append(ops,
			store.Delete("/stickynet/ipam/addr/"+e.Pool+"/"+e.IP.String()),
			store.Delete("/stickynet/ipam/ident/"+identity+"/"+e.IP.String()),
			store.Delete("/stickynet/ipam/mac/"+e.MAC.String()))
	}
	if _, err := st.Txn(ctx, nil, ops, nil); err != nil {
		t.Fatalf("delete the Deployment's records: %v", err)
	}
	// A pass may record them again at once: the events below show it did.
	s.nudgeRelease(ctx, t, "lost")
	eventually(ctx, t, 60*time.Second, "the pods' addresses and MACs recorded again", bound)
	eventually(ctx, t, 30*time.Second, "a StickyAddressRecorded event on each pod", func() (bool, string) {
		evs, err := s.k.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		seen := map[string]bool{}
		for _, e := range evs.Items {
			if e.Reason == "StickyAddressRecorded" && strings.Contains(e.Note, "recorded again for "+identity) {
				seen[e.Regarding.Name] = true
			}
		}
		return len(seen) == len(want), fmt.Sprintf("events on %v", seen)
	})
}

// storedAddr is an address record as etcd holds it.
type storedAddr struct {
	Key   string
	Pod   string `json:"pod"`
	State string `json:"st"`
}

// stored reads identity's addresses (those not cooling) from etcd itself.
// The test's allocator follows etcd's watch: right after a write (a release
// pass's), its cache may not have it yet, and a check that nothing was
// freed would pass on the cache alone.
func (s *suite) stored(ctx context.Context, t *testing.T, identity string) []storedAddr {
	t.Helper()
	kvs, _, err := s.st.List(ctx, "/stickynet/ipam/addr/")
	if err != nil {
		t.Fatalf("read stickynet's etcd: %v", err)
	}
	var got []storedAddr
	for _, kv := range kvs {
		var r struct {
			ID string `json:"id"`
			storedAddr
		}
		if strings.HasSuffix(kv.Key, "/hold") || json.Unmarshal(kv.Value, &r) != nil || r.ID != identity || r.State == "cooling" {
			continue
		}
		r.Key = kv.Key
		got = append(got, r.storedAddr)
	}
	return got
}

// nudgeRelease makes the release controller run a full pass and waits for
// one to end: it touches the IPPool "main" (an object the controller
// watches) and waits for the pass counter to move. The pass counted may
// have begun before the call; the one counted by a second call began after
// the first call returned.
func (s *suite) nudgeRelease(ctx context.Context, t *testing.T, value string) {
	t.Helper()
	before := passCount(t)
	patch := client.RawPatch(types.MergePatchType, []byte(fmt.Sprintf(`{"metadata":{"annotations":{"test.stickynet.io/nudge":%q}}}`, value)))
	if err := s.cl.Patch(ctx, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "main"}}, patch); err != nil {
		t.Fatalf("touch IPPool main: %v", err)
	}
	eventually(ctx, t, 60*time.Second, "a release pass after the nudge", func() (bool, string) {
		n := passCount(t)
		return n > before, fmt.Sprintf("%v passes, %v before", n, before)
	})
}

// leaderGauge reads stickynet_webhook_release_leader, which both replicas
// (in this process) set.
func leaderGauge(t *testing.T) float64 {
	var v float64
	for _, m := range testenv.Metrics(t, crmetrics.Registry, "stickynet_webhook_release_leader") {
		v += m.GetGauge().GetValue()
	}
	return v
}

// passCount reads how many passes the release controllers ran, from
// stickynet_webhook_release_pass_duration_seconds.
func passCount(t *testing.T) uint64 {
	var n uint64
	for _, m := range testenv.Metrics(t, crmetrics.Registry, "stickynet_webhook_release_pass_duration_seconds") {
		n += m.GetHistogram().GetSampleCount()
	}
	return n
}

// releasedMetric reads stickynet_webhook_released_addresses_total for an
// identity kind.
func releasedMetric(t *testing.T, kind string) float64 {
	for _, m := range testenv.Metrics(t, crmetrics.Registry, "stickynet_webhook_released_addresses_total") {
		for _, l := range m.GetLabel() {
			if l.GetName() == "kind" && l.GetValue() == kind {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
