package release

import (
	"context"
	"errors"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
)

// A pass takes stickynet's resources off the Nodes that the node agents'
// DaemonSet does not select and where no agent runs (what an uninstall
// leaves, before a new install whose agents leave such a node out), and only
// those, only stickynet's, only once the DaemonSet is there; through a real
// kube-apiserver, on the chart's account for the webhook and under its
// node-status policy. A withdrawal the API server refuses does not fail the
// pass and waits before it is tried again.
func TestStaleNodeResourcesWithdrawn(t *testing.T) {
	apisrv := agenttest.StartAPIServer(t, filepath.Join("..", "..", "charts", "stickynet", "crds"))
	ctx := t.Context()
	admin := kubernetes.NewForConfigOrDie(apisrv.Config)
	const ns, name = "stickynet-system", "stickynet-nodeagent"
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", testenv.ChartAccountKubeconfig(t, apisrv.Config, filepath.Join("..", "..", "charts", "stickynet"), ns, "templates/webhook.yaml", "stickynet-webhook"))
	if err != nil {
		t.Fatal(err)
	}
	api, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme(t)})
	if err != nil {
		t.Fatal(err)
	}

	// served: selected by the DaemonSet; left: not, no agent (the stale
	// one); agent-there: not selected, but its agent pod still runs;
	// orphan-there: an agent pod there that no controller owns; leaving:
	// not selected, its agent pod being deleted (a node down when its
	// DaemonSet stopped selecting it); refused: stale, but the API server
	// refuses its patch; plain: nothing of stickynet's.
	stickynet := corev1.ResourceList{
		"stickynet.io/network":    resource.MustParse("110"),
		"stickynet.io/sriov-fast": resource.MustParse("4"),
	}
	other := corev1.ResourceList{"example.com/gpu": resource.MustParse("2"), corev1.ResourcePods: resource.MustParse("110")}
	for _, n := range []struct {
		name      string
		labels    map[string]string
		stickynet bool
	}{
		{"served", map[string]string{"stickynet": "yes"}, true},
		{"left", nil, true},
		{"agent-there", nil, true},
		{"orphan-there", nil, true},
		{"leaving", nil, true},
		{"refused", nil, true},
		{"plain", nil, false},
	} {
		node, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		res := other.DeepCopy()
		if n.stickynet {
			maps.Copy(res, stickynet)
		}
		node.Status.Capacity, node.Status.Allocatable = res, res.DeepCopy()
		must(admin.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}))
	}
	resources := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		list, err := admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range list.Items {
			var names []string
			for _, have := range []corev1.ResourceList{n.Status.Capacity, n.Status.Allocatable} {
				for k := range have {
					if k != corev1.ResourcePods {
						names = append(names, string(k))
					}
				}
			}
			slices.Sort(names)
			out[n.Name] = strings.Join(names, ",")
		}
		return out
	}
	before := resources()

	// The policy is in force once it refuses the account a change (a dry
	// run: nothing is written either way).
	testenv.Eventually(ctx, t, 30*time.Second, "the webhook's node-status policy in force", func() (bool, string) {
		err := api.Status().Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
			client.RawPatch(types.MergePatchType, []byte(`{"status":{"capacity":{"cpu":"64"}}}`)), client.DryRunAll)
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "may only remove stickynet.io/ resources"), "a raise of cpu: " + errString(err)
	})

	refusals := 0
	refusing := interceptor.NewClient(api, interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			if obj.GetName() == "refused" {
				refusals++
				return apierrors.NewForbidden(corev1.Resource("nodes"), "refused", errors.New("a policy of the cluster's"))
			}
			return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
		},
	})
	reg := prometheus.NewRegistry()
	rec := events.NewFakeRecorder(100)
	c := &Controller{
		Client: refusing, APIReader: api, Alloc: startAlloc(t, store.NewMemory()), Recorder: rec, Grace: time.Hour,
		Metrics: NewMetrics(reg), NodeAgent: types.NamespacedName{Namespace: ns, Name: name},
	}
	// No DaemonSet yet (an install's webhook before its agents): nothing
	// is known to be stale.
	if err := c.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := resources(); !maps.Equal(got, before) {
		t.Fatalf("without the DaemonSet, Nodes' resources changed:\n got  %v\n want %v", got, before)
	}

	labels := map[string]string{"app": name}
	ds, err := admin.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"stickynet": "yes"},
					Containers:   []corev1.Container{{Name: "nodeagent", Image: "stickynet"}},
				},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	must(admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	for _, node := range []string{"agent-there", "orphan-there", "leaving"} {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + node, Labels: labels},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "nodeagent", Image: "stickynet"}}},
		}
		if node != "orphan-there" {
			p.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(ds, appsv1.SchemeGroupVersion.WithKind("DaemonSet"))}
		}
		if node == "leaving" {
			p.Finalizers = []string{"stickynet.io/test"} // kept, Terminating, as on a node down
		}
		must(admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}))
	}
	must(nil, admin.CoreV1().Pods(ns).Delete(ctx, name+"-leaving", metav1.DeleteOptions{}))
	t.Cleanup(func() {
		_, _ = admin.CoreV1().Pods(ns).Patch(context.Background(), name+"-leaving", types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})

	if err := c.Reconcile(ctx); err != nil {
		t.Fatalf("pass with a withdrawal refused: %v; want the pass to succeed", err)
	}
	want := maps.Clone(before)
	want["left"], want["leaving"] = before["plain"], before["plain"]
	if got := resources(); !maps.Equal(got, want) {
		t.Errorf("after a pass, Nodes' resources:\n got  %v\n want %v", got, want)
	}
	var evs []string
	for len(rec.Events) > 0 {
		if e := <-rec.Events; strings.Contains(e, "StaleResourcesWithdrawn") {
			evs = append(evs, e)
		}
	}
	if len(evs) != 2 || !strings.Contains(evs[0], "stickynet.io/network") || !strings.Contains(evs[0], ns+"/"+name) {
		t.Errorf("events: %q; want one StaleResourcesWithdrawn for each of the two nodes, naming the resources and the DaemonSet", evs)
	}
	for result, n := range map[string]float64{"ok": 2, "error": 1} {
		if got := testutil.ToFloat64(c.Metrics.stale.WithLabelValues(result)); got != n {
			t.Errorf("stickynet_webhook_stale_node_resources_withdrawals_total{result=%q} = %g; want %g", result, got, n)
		}
	}
	// The refused node waits staleRetry; the others are done.
	if err := c.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if refusals != 1 {
		t.Errorf("the refused node's withdrawal was tried %d times in two passes; want once (then after %s)", refusals, staleRetry)
	}

	// The DaemonSet being deleted (an uninstall under way): its agents
	// withdraw what they can themselves.
	must(admin.CoreV1().Nodes().PatchStatus(ctx, "left", []byte(`{"status":{"capacity":{"stickynet.io/network":"110"},"allocatable":{"stickynet.io/network":"110"}}}`)))
	must(admin.AppsV1().DaemonSets(ns).Patch(ctx, name, types.MergePatchType, []byte(`{"metadata":{"finalizers":["stickynet.io/test"]}}`), metav1.PatchOptions{}))
	must(nil, admin.AppsV1().DaemonSets(ns).Delete(ctx, name, metav1.DeleteOptions{}))
	t.Cleanup(func() {
		_, _ = admin.AppsV1().DaemonSets(ns).Patch(context.Background(), name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	})
	if err := c.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got := resources()["left"]; !strings.Contains(got, "stickynet.io/network") {
		t.Errorf("node left while the DaemonSet is being deleted: %s; want stickynet.io/network kept", got)
	}
}

func errString(err error) string {
	if err == nil {
		return "passed"
	}
	return err.Error()
}
