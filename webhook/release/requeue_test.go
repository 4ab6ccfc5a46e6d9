package release

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/store"
)

// Pods the scheduler found no node for get PlacementChanged written when
// their pool's or SR-IOV network's nodeSelector changes (or the network
// appears), once per change, and no other pod does; a write that fails is
// made again in the next pass. The scheduler tries a pod again on that
// update (e2e/system TestStickynet/PodOfWidenedPoolScheduled shows it with a
// real kube-scheduler and the extender).
func TestRequeueOnPlacementChange(t *testing.T) {
	pending := func(name, pool string, tried bool, extra ...string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name, Annotations: map[string]string{
				annotations.Identity: "pod/app/" + name, annotations.AssignedIP: "10.20.0.9/24", annotations.AssignedPool: pool,
			}},
			Status: corev1.PodStatus{Phase: corev1.PodPending},
		}
		for i := 0; i+1 < len(extra); i += 2 {
			p.Annotations[extra[i]] = extra[i+1]
		}
		if tried {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable}}
		}
		return p
	}
	bound := pending("bound", "blue", false)
	bound.Spec.NodeName = "node-1"
	objs := []client.Object{
		pending("waiting", "blue", true),
		pending("other-pool", "red", true),
		pending("untried", "blue", false),
		bound,
		pending("vf", "red", true, annotations.SriovNetwork, "fast"),
	}
	spec := v1alpha1.IPPoolSpec{CIDR: "10.20.0.0/24"}
	failPatch, forbid, replacedOnce := true, false, false
	api := interceptor.NewClient(apiWith(t, spec, objs...).(client.WithWatch), interceptor.Funcs{
		Patch: func(ctx context.Context, c client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			if failPatch && obj.GetName() == "waiting" {
				failPatch = false
				return errors.New("injected")
			}
			if forbid && obj.GetName() == "waiting" {
				return apierrors.NewForbidden(corev1.Resource("pods"), "waiting", errors.New("a policy"))
			}
			if replacedOnce && obj.GetName() == "waiting" {
				replacedOnce = false // the API server's answer to the old pod's UID (see TestBandwidthPatchSparesPodMadeAgain)
				return uidRefused("waiting", "old")
			}
			return c.Patch(ctx, obj, patch, opts...)
		},
	})
	reg := prometheus.NewRegistry()
	rec := events.NewFakeRecorder(100)
	c := &Controller{Client: api, APIReader: api, Alloc: startAlloc(t, store.NewMemory()), Recorder: rec, Grace: time.Hour, Metrics: NewMetrics(reg)}
	ctx := context.Background()
	written := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		list := &corev1.PodList{}
		if err := c.Client.List(ctx, list); err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Items {
			if v, ok := p.Annotations[annotations.PlacementChanged]; ok {
				out[p.Name] = v
			}
		}
		return out
	}
	pass := func() error {
		time.Sleep(10 * time.Millisecond)
		return c.Reconcile(ctx)
	}

	if err := pass(); err != nil {
		t.Fatal(err)
	}
	if got := written(); len(got) != 0 {
		t.Fatalf("the term's first pass wrote %v; it has nothing to compare with", got)
	}

	blue := &v1alpha1.IPPool{}
	if err := c.Client.Get(ctx, client.ObjectKey{Name: "blue"}, blue); err != nil {
		t.Fatal(err)
	}
	blue.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "a"}}
	if err := c.Client.Update(ctx, blue); err != nil {
		t.Fatal(err)
	}
	if err := pass(); err == nil || !strings.Contains(err.Error(), "ask the scheduler to try pod app/waiting again: injected") {
		t.Fatalf("pass with the write failing: %v; want the pod and the error named", err)
	}
	if got := written(); len(got) != 0 {
		t.Fatalf("written %v with the write failing", got)
	}
	if err := pass(); err != nil {
		t.Fatal(err)
	}
	got := written()
	if len(got) != 1 || !strings.HasPrefix(got["waiting"], "IPPool/blue generation ") {
		t.Fatalf("after blue's nodeSelector changed: written %v; want only pod waiting (unschedulable, of pool blue), IPPool/blue generation <n>", got)
	}
	if evs := drained(rec, "PlacementChanged"); len(evs) != 1 || !strings.Contains(evs[0], "IPPool/blue") {
		t.Errorf("events %q; want one PlacementChanged naming IPPool/blue", evs)
	}

	if err := c.Client.Create(ctx, &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := pass(); err != nil {
			t.Fatal(err)
		}
	}
	got = written()
	if len(got) != 2 || !strings.HasPrefix(got["vf"], "SriovNetwork/fast generation ") {
		t.Errorf("after network fast appeared: written %v; want pod vf too, SriovNetwork/fast generation <n>", got)
	}
	if n := testutil.ToFloat64(c.Metrics.requeues); n != 2 {
		t.Errorf("stickynet_webhook_requeued_pods_total %v, want 2 (one per change and pod)", n)
	}

	// A write refused for good (a policy on pod updates) fails no pass:
	// each would fail, and be run again at once.
	forbid = true
	blue.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "b"}}
	blue.Generation++ // as the API server does on a spec change; the fake client does not
	if err := c.Client.Update(ctx, blue); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := pass(); err != nil {
			t.Errorf("pass with the write forbidden: %v; want no error", err)
		}
	}

	// The pod made again under its name before the write (the cache
	// behind): no failed pass, and the next pass writes it. Before, that
	// change was not written again: the new pod waited for the scheduler's
	// own retry.
	forbid, replacedOnce = false, true
	if err := c.Client.Get(ctx, client.ObjectKey{Name: "blue"}, blue); err != nil {
		t.Fatal(err)
	}
	blue.Spec.NodeSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "c"}}
	blue.Generation++
	if err := c.Client.Update(ctx, blue); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("IPPool/blue generation %d", blue.Generation)
	if err := pass(); err != nil {
		t.Errorf("pass with the pod replaced: %v; want no error", err)
	}
	if got := written()["waiting"]; got == want || replacedOnce {
		t.Fatalf("written %q (refused: %t) for a replaced pod; want the write tried and refused", got, !replacedOnce)
	}
	if err := pass(); err != nil {
		t.Fatal(err)
	}
	if got := written()["waiting"]; got != want {
		t.Errorf("after the pass that sees the pod made again: %q; want %q", got, want)
	}
}

// A new leader's first pass has no earlier pass to compare nodeSelectors
// with: it asks the scheduler to try again the unschedulable pods of the
// IPPools whose spec changed since a pass last wrote their status (an edit
// made while the lead changed hands), and of no other pool. Before, it only
// remembered, and those pods waited for the scheduler's own retry (5 min).
func TestRequeueAfterLeaderChange(t *testing.T) {
	unschedulable := func(name, pool string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name, Annotations: map[string]string{
				annotations.Identity: "pod/app/" + name, annotations.AssignedIP: "10.20.0.9/24", annotations.AssignedPool: pool,
			}},
			Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable},
			}},
		}
	}
	spec := v1alpha1.IPPoolSpec{CIDR: "10.20.0.0/24"}
	edited := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "edited", Generation: 5}, Spec: spec, Status: v1alpha1.IPPoolStatus{ObservedGeneration: 4}}
	seen := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "seen", Generation: 5}, Spec: spec, Status: v1alpha1.IPPoolStatus{ObservedGeneration: 5}}
	api := apiWith(t, spec, edited, seen, unschedulable("of-edited", "edited"), unschedulable("of-seen", "seen"))
	rec := events.NewFakeRecorder(100)
	c := &Controller{Client: api, APIReader: api, Alloc: startAlloc(t, store.NewMemory()), Recorder: rec, Grace: time.Hour, Metrics: NewMetrics(prometheus.NewRegistry())}
	ctx := context.Background()
	if err := c.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	list := &corev1.PodList{}
	if err := api.List(ctx, list); err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if v, ok := p.Annotations[annotations.PlacementChanged]; ok {
			got[p.Name] = v
		}
	}
	if len(got) != 1 || got["of-edited"] != "IPPool/edited generation 5" {
		t.Errorf("a new term's first pass wrote %v; want only pod of-edited, IPPool/edited generation 5", got)
	}
	if evs := drained(rec, "PlacementChanged"); len(evs) != 1 || !strings.Contains(evs[0], "IPPool/edited changed (created, or edited since the release controller last looked)") {
		t.Errorf("events %q; want one PlacementChanged naming IPPool/edited", evs)
	}
}
