package release

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
)

// setup returns a controller over a fake API with the objects and pool blue,
// an allocator on the in-memory store, and the controller's event recorder.
func setup(t *testing.T, objs ...client.Object) (*Controller, *ipam.Allocator, *ipam.Pool, *events.FakeRecorder) {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	pool := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "blue"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.20.0.0/24"}}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(append(objs, pool)...).WithStatusSubresource(pool).Build()
	a := ipam.New(store.NewMemory(), ipam.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := ipam.NewPool("blue", pool.Spec)
	if err != nil {
		t.Fatal(err)
	}
	rec := events.NewFakeRecorder(100)
	return &Controller{Client: c, APIReader: c, Alloc: a, Recorder: rec, Grace: time.Nanosecond}, a, p, rec
}

// vacate allocates the identities' addresses and unbinds them, as if their
// pods were gone, then runs one reconcile.
func vacate(t *testing.T, c *Controller, a *ipam.Allocator, p *ipam.Pool, identities ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range identities {
		pod := "app/" + strings.ReplaceAll(strings.TrimPrefix(id, "statefulset/app/"), "/", "-")
		al, err := a.Allocate(ctx, ipam.Request{Pool: p, Identity: id, Pod: pod})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Unbind(ctx, p.Name, al.IP, pod); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(10 * time.Millisecond)
	if err := c.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
}

func kept(a *ipam.Allocator, identity string) bool { return len(a.Lookup(identity)) > 0 }

// With Release, a StatefulSet frees the addresses of ordinals outside
// spec.ordinals.start .. start+replicas-1, and keeps those inside.
func TestStatefulSetReleaseHonoursOrdinalsStart(t *testing.T) {
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db", Annotations: map[string]string{annotations.IPRetention: annotations.RetentionRelease}},
		Spec:       appsv1.StatefulSetSpec{Replicas: new(int32(3)), Ordinals: &appsv1.StatefulSetOrdinals{Start: 5}},
	}
	c, a, p, _ := setup(t, sts)
	vacate(t, c, a, p, "statefulset/app/db/4", "statefulset/app/db/5", "statefulset/app/db/7", "statefulset/app/db/8")
	for id, want := range map[string]bool{"statefulset/app/db/4": false, "statefulset/app/db/5": true, "statefulset/app/db/7": true, "statefulset/app/db/8": false} {
		if got := kept(a, id); got != want {
			t.Errorf("%s kept %v; want %v (ordinals 5..7, %s on the StatefulSet)", id, got, want, annotations.RetentionRelease)
		}
	}
}

// ip-retention is read from the pod template when the StatefulSet itself has
// none; an invalid value keeps every address and is reported on the StatefulSet.
func TestStatefulSetRetentionSources(t *testing.T) {
	tmpl := func(v string) *appsv1.StatefulSet {
		return &appsv1.StatefulSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db"},
			Spec: appsv1.StatefulSetSpec{Replicas: new(int32(1)), Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{annotations.IPRetention: v}},
			}},
		}
	}
	c, a, p, _ := setup(t, tmpl(annotations.RetentionRelease))
	vacate(t, c, a, p, "statefulset/app/db/1")
	if kept(a, "statefulset/app/db/1") {
		t.Errorf("ordinal 1 of a 1-replica StatefulSet whose template says %s kept its address", annotations.RetentionRelease)
	}

	c, a, p, rec := setup(t, tmpl("release"))
	vacate(t, c, a, p, "statefulset/app/db/1")
	if !kept(a, "statefulset/app/db/1") {
		t.Error("an invalid ip-retention released an address")
	}
	select {
	case ev := <-rec.Events:
		if !strings.Contains(ev, "InvalidIPRetention") || !strings.Contains(ev, `"release"`) || !strings.Contains(ev, annotations.IPRetention) {
			t.Errorf("event %q does not name the key and value", ev)
		}
	default:
		t.Error("no event for an invalid ip-retention")
	}
}
