package admission

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/storetest"
)

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

type env struct {
	t     *testing.T
	h     *Handler
	store *store.Memory
	alloc *ipam.Allocator
	c     client.Client
}

func i32(v int32) *int32 { return &v }

func newEnv(t *testing.T, objs ...client.Object) *env {
	t.Helper()
	base := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{annotations.EnabledLabel: "true", "team": "a"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "blue"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1", VLAN: 100, Default: true, ReuseDelaySeconds: i32(60)}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "tiny"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/30"}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "red"}, Spec: v1alpha1.IPPoolSpec{
			CIDR: "10.40.0.0/24", NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}},
		}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "racked"}, Spec: v1alpha1.IPPoolSpec{
			CIDR: "10.50.0.0/24", NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "1"}},
		}},
	}
	// The workloads the tests' controller references (ctrl) name, unless
	// the test brings its own.
	for _, w := range []client.Object{
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", UID: "x"}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web2", UID: "x"}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "db", UID: "x"}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "b", UID: "x"}},
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "agent", UID: "x"}},
	} {
		if !slices.ContainsFunc(objs, func(o client.Object) bool {
			return fmt.Sprintf("%T", o) == fmt.Sprintf("%T", w) && o.GetNamespace() == w.GetNamespace() && o.GetName() == w.GetName()
		}) {
			base = append(base, w)
		}
	}
	sch := scheme(t)
	c := fake.NewClientBuilder().WithScheme(sch).WithObjects(append(base, objs...)...).Build()
	s := store.NewMemory()
	a := ipam.New(s, ipam.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Every read of the handler's Reader must be of a kind Reads lists (the
	// webhook watches those before it is ready).
	watched := map[string]bool{}
	for _, o := range Reads() {
		watched[fmt.Sprintf("%T", o)] = true
	}
	check := func(obj any) {
		if kind := strings.TrimSuffix(fmt.Sprintf("%T", obj), "List"); !watched[kind] {
			t.Errorf("the handler read a %s, which Reads does not list", kind)
		}
	}
	reader := interceptor.NewClient(c, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			check(obj)
			return c.Get(ctx, key, obj, opts...)
		},
		List: func(ctx context.Context, c client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			check(list)
			return c.List(ctx, list, opts...)
		},
	})
	h := &Handler{Reader: reader, Alloc: a, Decoder: admission.NewDecoder(sch), SchedulerName: "stickynet-scheduler", NetworkResource: true, StoreTimeout: time.Second}
	n := 0
	h.NewToken = func() string { n++; return fmt.Sprintf("tok%d", n) }
	return &env{t: t, h: h, store: s, alloc: a, c: c}
}

func (e *env) admit(pod *corev1.Pod, dryRun bool) (admission.Response, *corev1.Pod) {
	e.t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		e.t.Fatal(err)
	}
	req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "u", Operation: admissionv1.Create, Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Namespace: pod.Namespace, Name: pod.Name, Object: runtime.RawExtension{Raw: raw}, DryRun: &dryRun,
	}}
	resp := e.h.Handle(context.Background(), req)
	if !resp.Allowed {
		return resp, nil
	}
	if len(resp.Patches) == 0 {
		return resp, pod.DeepCopy()
	}
	ops, _ := json.Marshal(resp.Patches)
	patch, err := jsonpatchDecode(ops)
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := patch.Apply(raw)
	if err != nil {
		e.t.Fatalf("apply patch: %v", err)
	}
	got := &corev1.Pod{}
	if err := json.Unmarshal(out, got); err != nil {
		e.t.Fatal(err)
	}
	return resp, got
}

func (e *env) mustAdmit(pod *corev1.Pod) *corev1.Pod {
	e.t.Helper()
	resp, got := e.admit(pod, false)
	if !resp.Allowed || got == nil {
		e.t.Fatalf("pod %s/%s not admitted: %+v", pod.Namespace, podName(pod), resp.Result)
	}
	return got
}

// editPool changes IPPool name's spec in the fake API server (the handler's
// cache) and returns the pool as it was.
func (e *env) editPool(name string, edit func(*v1alpha1.IPPoolSpec)) *v1alpha1.IPPool {
	e.t.Helper()
	p := &v1alpha1.IPPool{}
	if err := e.c.Get(context.Background(), client.ObjectKey{Name: name}, p); err != nil {
		e.t.Fatal(err)
	}
	was := p.DeepCopy()
	edit(&p.Spec)
	if err := e.c.Update(context.Background(), p); err != nil {
		e.t.Fatal(err)
	}
	return was
}

func (e *env) mustDeny(pod *corev1.Pod, parts ...string) {
	e.t.Helper()
	resp, _ := e.admit(pod, false)
	if resp.Allowed {
		e.t.Fatalf("pod %s admitted; want denial containing %q", podName(pod), parts)
	}
	for _, p := range parts {
		if !strings.Contains(resp.Result.Message, p) {
			e.t.Errorf("denial %q lacks %q", resp.Result.Message, p)
		}
	}
}

func jsonpatchDecode(ops []byte) (jsonpatch.Patch, error) { return jsonpatch.DecodePatch(ops) }

func pod(ns, name string, ann map[string]string, owner ...metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann, Labels: map[string]string{"app": "x"}, OwnerReferences: owner},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if name == "" {
		p.GenerateName = "gen-"
	}
	return p
}

func ctrl(kind, name string) metav1.OwnerReference {
	yes := true
	return metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: name, UID: "x", Controller: &yes}
}

func TestNotOptedInPassesThrough(t *testing.T) {
	e := newEnv(t)
	resp, _ := e.admit(pod("other", "a", nil), false)
	if !resp.Allowed || len(resp.Patches) != 0 {
		t.Fatalf("pod in a namespace without %s was changed: %+v", annotations.EnabledLabel, resp)
	}
}

// What the webhook's cache has not seen yet (a namespace labelled, a pool or
// SriovNetwork created a moment ago, as in one kubectl apply with the pods)
// is read from the API server before the pod is passed through or denied.
func TestCacheBehindAPIServer(t *testing.T) {
	e := newEnv(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "late"}})
	api := fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "late", Labels: map[string]string{annotations.EnabledLabel: "true"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "new", Labels: map[string]string{annotations.EnabledLabel: "true"}}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "green"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.60.0.0/24"}},
		&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fresh"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}, Pool: "green"}},
	).Build()
	e.h.APIReader = api
	for _, p := range []*corev1.Pod{
		pod("late", "a", map[string]string{annotations.Pool: "green"}),
		pod("new", "b", map[string]string{annotations.SriovNetwork: "fresh"}),
	} {
		if got := e.mustAdmit(p); got.Annotations[annotations.AssignedPool] != "green" {
			t.Errorf("pod %s/%s: %v; want an address of pool green", p.Namespace, p.Name, got.Annotations)
		}
	}
}

// A pod whose owner does not resolve is denied, naming the owner; a read of
// it that fails (the API server slow or down) is an error, not a denial that
// blames the pod.
func TestOwnerErrors(t *testing.T) {
	e := newEnv(t)
	e.mustDeny(pod("app", "", nil, ctrl("ReplicaSet", "gone-1")), "owner ReplicaSet app/gone-1 does not exist")
	e.mustDeny(pod("app", "db-x", nil, ctrl("StatefulSet", "db")), `StatefulSet pod "db-x" of db has no ordinal`)
	e.h.Reader = interceptor.NewClient(e.c.(client.WithWatch), interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*appsv1.ReplicaSet); ok {
				return apierrors.NewTimeoutError("the server was too slow", 1)
			}
			return c.Get(ctx, key, obj, opts...)
		},
	})
	resp, _ := e.admit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), false)
	if resp.Allowed || resp.Result.Code != http.StatusInternalServerError || !strings.Contains(resp.Result.Message, "read owner ReplicaSet app/api-5d8f") {
		t.Errorf("ReplicaSet read timing out: %+v; want a 500 naming the ReplicaSet", resp.Result)
	}
	// An API server that does not answer within the store timeout (the
	// ReplicaSet not in the cache yet, read from the API server, whose
	// client is a real one here) is named, not etcd.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hung.Close() }()
	go func() { // accepts, never answers
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			defer func() { _ = c.Close() }()
		}
	}()
	mapper := meta.NewDefaultRESTMapper(nil) // no discovery from a server that does not answer
	mapper.Add(appsv1.SchemeGroupVersion.WithKind("ReplicaSet"), meta.RESTScopeNamespace)
	api, err := client.New(&rest.Config{Host: "http://" + hung.Addr().String()}, client.Options{Scheme: scheme(t), Mapper: mapper})
	if err != nil {
		t.Fatal(err)
	}
	e.h.Reader, e.h.APIReader = e.c, api
	resp, _ = e.admit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), false)
	if resp.Allowed || resp.Result.Code != http.StatusServiceUnavailable || !strings.Contains(resp.Result.Message, "could not reach the API server within 1s") || strings.Contains(resp.Result.Message, "etcd)") {
		t.Errorf("API server not answering: %+v; want a 503 naming the API server, not etcd", resp.Result)
	}
}

func TestStatefulSetSticky(t *testing.T) {
	e := newEnv(t)
	first := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	a, err := annotations.ParseAssignment(first.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	if a.Identity != "statefulset/app/web/0" || a.Pool != "blue" || a.VLAN != 100 || a.IPs[0].Bits() != 24 ||
		len(a.Gateways) != 1 || a.Gateways[0].String() != "10.20.0.1" {
		t.Fatalf("assignment %+v", a)
	}
	if _, ok := first.Annotations[annotations.Reservation]; ok {
		t.Fatal("a named pod got a reservation token")
	}
	if first.Labels[annotations.ManagedLabel] != "true" || first.Labels["app"] != "x" {
		t.Fatalf("labels %v; want the pod's own plus %s=true (the webhook's pod cache selects on it)", first.Labels, annotations.ManagedLabel)
	}
	// The pod is deleted and comes back (on any node): same address and MAC,
	// even if it carries stale or forged output annotations.
	back := pod("app", "web-0", map[string]string{annotations.AssignedIP: "10.20.0.99/24", annotations.Identity: "pod/x/y"}, ctrl("StatefulSet", "web"))
	again := e.mustAdmit(back)
	if again.Annotations[annotations.AssignedIP] != first.Annotations[annotations.AssignedIP] ||
		again.Annotations[annotations.AssignedMAC] != first.Annotations[annotations.AssignedMAC] ||
		again.Annotations[annotations.Identity] != "statefulset/app/web/0" {
		t.Fatalf("recreated pod got %v; want %v", again.Annotations, first.Annotations)
	}
	other := e.mustAdmit(pod("app", "web-1", nil, ctrl("StatefulSet", "web")))
	if other.Annotations[annotations.AssignedIP] == first.Annotations[annotations.AssignedIP] {
		t.Fatal("two ordinals share an address")
	}
}

// A StatefulSet pod's ordinal comes from its name, which the controller
// always sets: a pod-index label copied into the template (which a
// controller without the PodIndexLabel gate leaves as it is) does not give
// every pod ordinal 0.
func TestStatefulSetOrdinalFromName(t *testing.T) {
	e := newEnv(t)
	p := pod("app", "web-3", nil, ctrl("StatefulSet", "web"))
	p.Labels["apps.kubernetes.io/pod-index"] = "0"
	if got := e.mustAdmit(p); got.Annotations[annotations.Identity] != "statefulset/app/web/3" {
		t.Errorf("identity %q; want statefulset/app/web/3", got.Annotations[annotations.Identity])
	}
	// A pod of another name takes no ordinal from the label: a StatefulSet
	// pod's manifest copied and renamed, its controller reference with it.
	for _, name := range []string{"x", "web-03", "web-+3", "db-3"} {
		p := pod("app", name, nil, ctrl("StatefulSet", "web"))
		p.Labels["apps.kubernetes.io/pod-index"] = "3"
		e.mustDeny(p, "StatefulSet pod \""+name+"\" of web has no ordinal: a StatefulSet's pods are named web-<ordinal>")
	}
}

// A pod whose controller reference names an existing StatefulSet,
// DaemonSet or ReplicaSet under another UID (written by hand: anyone who
// may create pods in the namespace could take web-0's address and MAC while
// its pod is gone) is denied; the controller's own pods are admitted.
func TestForgedControllerReference(t *testing.T) {
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "app", Name: name, UID: "real"}
	}
	e := newEnv(t,
		&appsv1.StatefulSet{ObjectMeta: meta("web")},
		&appsv1.DaemonSet{ObjectMeta: meta("agent")},
		&appsv1.ReplicaSet{ObjectMeta: meta("api-5d8f")},
	)
	own := func(kind, name string) metav1.OwnerReference {
		r := ctrl(kind, name)
		r.UID = "real"
		return r
	}
	onNode := func(p *corev1.Pod) *corev1.Pod {
		p.Spec.NodeName = "n1"
		return p
	}
	e.mustDeny(pod("app", "web-0", nil, ctrl("StatefulSet", "web")), "names StatefulSet app/web with UID x, but StatefulSet app/web has UID real")
	e.mustDeny(onNode(pod("app", "", nil, ctrl("DaemonSet", "agent"))), "names DaemonSet app/agent with UID x")
	e.mustDeny(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), "names ReplicaSet app/api-5d8f with UID x")
	if got := e.mustAdmit(pod("app", "web-0", nil, own("StatefulSet", "web"))); got.Annotations[annotations.Identity] != "statefulset/app/web/0" {
		t.Errorf("the StatefulSet's own pod: identity %q", got.Annotations[annotations.Identity])
	}
	e.mustAdmit(onNode(pod("app", "", nil, own("DaemonSet", "agent"))))
	e.mustAdmit(pod("app", "", nil, own("ReplicaSet", "api-5d8f")))
	// Nor does a reference to a controller that does not exist: a
	// StatefulSet deleted a moment ago (or with --cascade=orphan) still
	// holds its ordinals' addresses.
	e.mustDeny(pod("app", "gone-0", nil, ctrl("StatefulSet", "gone")), "owner StatefulSet app/gone does not exist")
	e.mustDeny(onNode(pod("app", "", nil, ctrl("DaemonSet", "gone"))), "owner DaemonSet app/gone does not exist")
}

func TestStatefulSetIPs(t *testing.T) {
	e := newEnv(t)
	ips := map[string]string{annotations.IPs: "10.20.0.10, 10.20.0.11"}
	got := e.mustAdmit(pod("app", "db-1", ips, ctrl("StatefulSet", "db")))
	if got.Annotations[annotations.AssignedIP] != "10.20.0.11/24" {
		t.Fatalf("ordinal 1 got %s; want 10.20.0.11/24", got.Annotations[annotations.AssignedIP])
	}
	e.mustDeny(pod("app", "db-2", ips, ctrl("StatefulSet", "db")), annotations.IPs, "ordinal 2 of statefulset/app/db has none")
	e.mustDeny(pod("app", "db-0", map[string]string{annotations.IPs: "10.20.0.10,nope"}, ctrl("StatefulSet", "db")), annotations.IPs, `"nope"`)
	e.mustDeny(pod("app", "db-0", map[string]string{annotations.IPs: "10.21.0.10"}, ctrl("StatefulSet", "db")), annotations.IPs, "outside pool blue")
}

func TestDeploymentReservation(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	e := newEnv(t, rs)
	p := pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f"))
	got := e.mustAdmit(p)
	if got.Annotations[annotations.Identity] != "deployment/app/api" || got.Annotations[annotations.Reservation] != "tok1" {
		t.Fatalf("annotations %v", got.Annotations)
	}
	// The API server re-invokes the webhook with the pod as mutated: same answer.
	again := e.mustAdmit(got)
	if again.Annotations[annotations.AssignedIP] != got.Annotations[annotations.AssignedIP] || again.Annotations[annotations.Reservation] != "tok1" {
		t.Fatalf("re-invocation got %v; want %v", again.Annotations, got.Annotations)
	}
	// A second pod of the deployment gets another member.
	second := e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")))
	if second.Annotations[annotations.AssignedIP] == got.Annotations[annotations.AssignedIP] {
		t.Fatal("two live pods of a deployment share an address")
	}
	// With the Deployment in place its set is capped at replicas + maxSurge
	// (1 + 25 % rounded up = 2): a third pod waits for a member, then is denied.
	if err := e.c.Create(context.Background(), &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "api"}, Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(1))}}); err != nil {
		t.Fatal(err)
	}
	e.mustDeny(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), "all 2 addresses of deployment/app/api are in use", "capped at 2")
}

// A pod of a full set frees the members of pods that are gone, but not
// those bound within the release grace: their pods may still be in their
// admission chain, not yet stored.
func TestFullSetFreesOnlyMembersPastTheGrace(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "api"}, Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(1))}}
	e := newEnv(t, rs, dep)
	// Two named pods (say, of a custom controller) bound at admission, never stored.
	for _, name := range []string{"api-a", "api-b"} {
		e.mustAdmit(pod("app", name, nil, ctrl("ReplicaSet", "api-5d8f")))
	}
	e.mustDeny(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), "all 2 addresses of deployment/app/api are in use")
	if l := e.alloc.Lookup("deployment/app/api"); len(l) != 2 || l[0].Pod == "" || l[1].Pod == "" {
		t.Fatalf("members bound within the grace were freed: %+v", l)
	}
	e.h.Grace = time.Nanosecond
	// A dry run frees nothing: the members it could free stay as they are
	// (sideEffects: NoneOnDryRun).
	before := e.store.Revision()
	// It is denied as the set is full (freeing is the side effect it may not
	// have), which shows it reached the set's members.
	if resp, _ := e.admit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), true); resp.Allowed || !strings.Contains(resp.Result.Message, "all 2 addresses of deployment/app/api are in use") {
		t.Fatalf("dry run of a pod of the full set: %+v; want it denied as full", resp.Result)
	}
	if e.store.Revision() != before {
		t.Fatal("a dry run of a pod of a full set wrote to the store")
	}
	e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")))
}

// A full set grows past the members of pods stuck terminating (a node out
// of reach keeps its evicted pods Terminating), not past those of pods still
// within their termination grace period (a rollout's old pods).
func TestFullSetGrowsPastPodsStuckTerminating(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "api"}, Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(2))}} // cap 3
	objs := []client.Object{rs, dep}
	deleted := map[string]time.Duration{"api-b": 10 * time.Second, "api-c": 5 * time.Minute} // ago; the grace is 30 s
	for _, name := range []string{"api-a", "api-b", "api-c"} {
		p := pod("app", name, nil, ctrl("ReplicaSet", "api-5d8f"))
		p.Labels = map[string]string{annotations.ManagedLabel: "true"}
		p.Status.Phase = corev1.PodRunning
		if ago, ok := deleted[name]; ok {
			p.DeletionTimestamp = &metav1.Time{Time: time.Now().Add(-ago)}
			p.Finalizers = []string{"example.com/hold"}
		}
		objs = append(objs, p)
	}
	e := newEnv(t, objs...)
	blue, err := ipam.NewPool("blue", v1alpha1.IPPoolSpec{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1", VLAN: 100, Default: true, ReuseDelaySeconds: i32(60)})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"api-a", "api-b", "api-c"} {
		if _, err := e.alloc.Allocate(context.Background(), ipam.Request{Pool: blue, Identity: "deployment/app/api", Shared: true, Pod: "app/" + name, MaxMembers: 3}); err != nil {
			t.Fatal(err)
		}
	}
	e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")))
	if n := len(e.alloc.Lookup("deployment/app/api")); n != 4 {
		t.Errorf("set of %d members, want 4: the cap of 3 and one for api-c's stuck member", n)
	}
	e.mustDeny(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")), "all 4 addresses of deployment/app/api are in use")
}

// A Deployment whose ips list is used up is denied naming the list and
// what it needs, not told to add addresses to the pool (which would not
// help: before, the denial named no annotation and said just that).
func TestDeploymentIPsListUsedUp(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "api"}, Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(4))}}
	e := newEnv(t, rs, dep)
	ann := map[string]string{annotations.IPs: "10.20.0.10,10.20.0.11"}
	for range 2 {
		e.mustAdmit(pod("app", "", ann, ctrl("ReplicaSet", "api-5d8f")))
	}
	e.mustDeny(pod("app", "", ann, ctrl("ReplicaSet", "api-5d8f")),
		`annotation stickynet.io/ips: invalid value "10.20.0.10,10.20.0.11"`, "an address for each pod the workload runs at once",
		"the 2 addresses listed for deployment/app/api in pool blue are all taken", "list more")
}

// A set that cannot grow past a stuck pod (its ips list, as long as its cap,
// has no address left) waits for a member as it does without one: here a
// rollout's old pod, in its grace period, that ends during the admission.
func TestStuckPodWithoutRoomWaitsForAMember(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "api"}, Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(2))}} // cap 3
	ips := []string{"10.20.0.10", "10.20.0.11", "10.20.0.12"}
	ann := map[string]string{annotations.IPs: strings.Join(ips, ",")}
	objs := []client.Object{rs, dep}
	deletion := map[string]time.Duration{"api-b": -5 * time.Minute, "api-c": 20 * time.Second} // stuck; within its grace period
	for _, name := range []string{"api-a", "api-b", "api-c"} {
		p := pod("app", name, ann, ctrl("ReplicaSet", "api-5d8f"))
		p.Labels = map[string]string{annotations.ManagedLabel: "true"}
		p.Status.Phase = corev1.PodRunning
		if d, ok := deletion[name]; ok {
			p.DeletionTimestamp = &metav1.Time{Time: time.Now().Add(d)}
			p.Finalizers = []string{"example.com/hold"}
		}
		objs = append(objs, p)
	}
	e := newEnv(t, objs...)
	e.h.Grace = time.Nanosecond
	blue, err := ipam.NewPool("blue", v1alpha1.IPPoolSpec{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1", VLAN: 100, Default: true, ReuseDelaySeconds: i32(60)})
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"api-a", "api-b", "api-c"} {
		if _, err := e.alloc.Allocate(context.Background(), ipam.Request{Pool: blue, Identity: "deployment/app/api", Shared: true, Pod: "app/" + name, MaxMembers: 3, IP: netip.MustParseAddr(ips[i])}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1100 * time.Millisecond) // past the grace at the records' one-second resolution
	e.h.StoreTimeout = 10 * time.Second // the wait for a member: 1 s leaves little room after the 300 ms below
	gone := later(t, 300*time.Millisecond, func() error {
		p := &corev1.Pod{}
		if err := e.c.Get(context.Background(), client.ObjectKey{Namespace: "app", Name: "api-c"}, p); err != nil {
			return err
		}
		p.Finalizers = nil
		return e.c.Update(context.Background(), p) // api-c is gone
	})
	if got := e.mustAdmit(pod("app", "", ann, ctrl("ReplicaSet", "api-5d8f"))); assignedIP(got).String() != ips[2] {
		t.Errorf("new pod got %s; want api-c's %s once api-c is gone", got.Annotations[annotations.AssignedIP], ips[2])
	}
	if !gone.Load() {
		t.Error("admitted before api-c was gone: it took the address of a pod in its grace period")
	}
}

// later makes change after d in the background, and reports through the
// flag it returns whether it has begun to (set just before change runs):
// a test tells from it that an admission waited for the change. The test
// ends after change has.
func later(t *testing.T, d time.Duration, change func() error) *atomic.Bool {
	t.Helper()
	var began atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(d)
		began.Store(true)
		if err := change(); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(func() { <-done })
	return &began
}

// A full set whose cap rises while a pod waits for a member (a ReplicaSet
// scaled up directly, racing its new pods' admissions) admits the pod.
func TestFullSetSeesScaleUpWhileWaiting(t *testing.T) {
	rollout := metav1.OwnerReference{APIVersion: "argoproj.io/v1alpha1", Kind: "Rollout", Name: "api", UID: "r", Controller: ptr(true)}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-6c9f", OwnerReferences: []metav1.OwnerReference{rollout}}, Spec: appsv1.ReplicaSetSpec{Replicas: ptr(int32(1))}}
	e := newEnv(t, rs)
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-6c9f")))
	running := first.DeepCopy()
	running.Name, running.Status.Phase = "api-6c9f-aaaaa", corev1.PodRunning
	if err := e.c.Create(ctx, running); err != nil {
		t.Fatal(err)
	}
	if err := e.alloc.Bind(ctx, ipam.Binding{Pool: "blue", IP: assignedIP(first), Identity: "replicaset/app/api-6c9f", Pod: "app/api-6c9f-aaaaa", Token: first.Annotations[annotations.Reservation]}); err != nil {
		t.Fatal(err)
	}
	e.h.StoreTimeout = 10 * time.Second // the wait for a member: 1 s leaves little room after the 300 ms below
	scaled := later(t, 300*time.Millisecond, func() error {
		r := &appsv1.ReplicaSet{}
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: "app", Name: "api-6c9f"}, r); err != nil {
			return err
		}
		r.Spec.Replicas = ptr(int32(2))
		return e.c.Update(ctx, r)
	})
	e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-6c9f")))
	if !scaled.Load() {
		t.Error("admitted before the scale-up: the full set's cap was not applied")
	}
}

// A reservation token is taken back only while its reservation is pending
// for the same identity: output annotations copied into a template (from a
// live pod, say) must not make the pods of a scale-up share one address.
func TestCopiedReservationToken(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	e := newEnv(t, rs)
	copied := func() map[string]string {
		return map[string]string{annotations.Identity: "deployment/app/api", annotations.Reservation: "stale", annotations.AssignedIP: "10.20.0.9/24"}
	}
	a := e.mustAdmit(pod("app", "", copied(), ctrl("ReplicaSet", "api-5d8f")))
	b := e.mustAdmit(pod("app", "", copied(), ctrl("ReplicaSet", "api-5d8f")))
	if a.Annotations[annotations.AssignedIP] == b.Annotations[annotations.AssignedIP] {
		t.Fatalf("two new pods both got %s", a.Annotations[annotations.AssignedIP])
	}
	if a.Annotations[annotations.Reservation] == "stale" || b.Annotations[annotations.Reservation] == "stale" {
		t.Fatalf("a copied token was taken over: %q, %q", a.Annotations[annotations.Reservation], b.Annotations[annotations.Reservation])
	}
}

// lagging is a replica whose cache has not yet seen what another replica
// wrote, until it reads etcd (ipam's TestRefresh checks that reading).
type lagging struct {
	*ipam.Allocator
	caughtUp bool
}

func (l *lagging) Lookup(identity string) []ipam.Entry {
	if !l.caughtUp {
		return nil
	}
	return l.Allocator.Lookup(identity)
}

func (l *lagging) Refresh(ctx context.Context, identity string) error {
	l.caughtUp = true
	return l.Allocator.Refresh(ctx, identity)
}

// The re-invoked round of an admission may reach the other webhook replica
// before that replica's cache has seen the first round's reservation: it
// reads etcd and keeps the reservation rather than making a second one.
func TestReinvocationOnAnotherReplica(t *testing.T) {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	e := newEnv(t, rs)
	first := e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")))
	other := *e.h
	other.Alloc = &lagging{Allocator: e.alloc}
	e.h = &other
	again := e.mustAdmit(first)
	for _, k := range []string{annotations.AssignedIP, annotations.AssignedMAC, annotations.Reservation} {
		if again.Annotations[k] != first.Annotations[k] {
			t.Errorf("the other replica changed %s from %q to %q", k, first.Annotations[k], again.Annotations[k])
		}
	}
	if n := len(e.alloc.Lookup("deployment/app/api")); n != 1 {
		t.Errorf("the set has %d members after one pod's two rounds; want 1", n)
	}
}

// A bare pod with generateName has an identity made of the name prefix and
// its token: a re-invoked admission keeps both.
func TestGenerateNameReinvocation(t *testing.T) {
	e := newEnv(t)
	p := pod("app", "", nil)
	p.GenerateName = "gen-"
	got := e.mustAdmit(p)
	again := e.mustAdmit(got)
	for _, k := range []string{annotations.Identity, annotations.AssignedIP, annotations.AssignedMAC, annotations.Reservation} {
		if again.Annotations[k] != got.Annotations[k] {
			t.Errorf("re-invocation changed %s from %q to %q", k, got.Annotations[k], again.Annotations[k])
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestDaemonSetIdentity(t *testing.T) {
	e := newEnv(t)
	p := pod("app", "", nil, ctrl("DaemonSet", "agent"))
	p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"node-2"}}}}},
	}}}
	got := e.mustAdmit(p)
	if got.Annotations[annotations.Identity] != "daemonset/app/agent/node-2" {
		t.Fatalf("identity %q", got.Annotations[annotations.Identity])
	}
	bare := pod("app", "", nil, ctrl("DaemonSet", "agent"))
	e.mustDeny(bare, "names no node: expected spec.nodeName, or a required node affinity term matchFields metadata.name In [one node]")
}

// A node's DaemonSet address goes to one pod at a time: a rolling update
// with maxSurge, whose new pod starts next to the running old one, is denied
// until the old pod is terminating or gone.
func TestDaemonSetSurgeDenied(t *testing.T) {
	e := newEnv(t)
	ds := daemonSetPod
	ctx := context.Background()
	first, old := e.runningDaemonSetPod()
	ip := assignedIP(first)
	before := e.store.Revision()
	e.mustDeny(ds(), ip.String(), "daemonset/app/agent/n1", "app/agent-old", "maxSurge: 0")
	if after := e.store.Revision(); after != before {
		t.Errorf("the denial wrote to the store: revision %d before, %d after", before, after)
	}
	// The old pod has terminated: the next pod takes the node's address over.
	old.Status.Phase = corev1.PodSucceeded
	if err := e.c.Status().Update(ctx, old); err != nil {
		t.Fatal(err)
	}
	next := e.mustAdmit(ds())
	if next.Annotations[annotations.AssignedIP] != first.Annotations[annotations.AssignedIP] || next.Annotations[annotations.AssignedMAC] != first.Annotations[annotations.AssignedMAC] {
		t.Fatalf("after the old pod: %s %s; want the node's %s %s", next.Annotations[annotations.AssignedIP], next.Annotations[annotations.AssignedMAC],
			first.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedMAC])
	}
}

// daemonSetPod is a pod of DaemonSet app/agent for node n1.
func daemonSetPod() *corev1.Pod {
	p := pod("app", "", nil, ctrl("DaemonSet", "agent"))
	p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"n1"}}}}},
	}}}
	return p
}

// runningDaemonSetPod admits a daemonSetPod, makes it the running pod
// app/agent-old in the cache and binds its address to it.
func (e *env) runningDaemonSetPod() (admitted, running *corev1.Pod) {
	e.t.Helper()
	ctx := context.Background()
	admitted = e.mustAdmit(daemonSetPod())
	running = admitted.DeepCopy()
	running.Name, running.Status.Phase = "agent-old", corev1.PodRunning
	if err := e.c.Create(ctx, running); err != nil {
		e.t.Fatal(err)
	}
	ip := assignedIP(admitted)
	if err := e.alloc.Bind(ctx, ipam.Binding{Pool: "blue", IP: ip, Identity: "daemonset/app/agent/n1", Pod: "app/agent-old", Token: admitted.Annotations[annotations.Reservation]}); err != nil {
		e.t.Fatal(err)
	}
	return admitted, running
}

// A cache behind the API server that still shows the node's old DaemonSet
// pod running does not deny its successor: the API server, asked before a
// denial, says the old pod is gone. Where it confirms the pod, the denial
// stands.
func TestDaemonSetStaleCacheConfirmed(t *testing.T) {
	e := newEnv(t)
	first, old := e.runningDaemonSetPod()
	e.h.APIReader = fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(old.DeepCopy()).Build()
	e.mustDeny(daemonSetPod(), "app/agent-old", "still running")
	e.h.APIReader = fake.NewClientBuilder().WithScheme(scheme(t)).Build() // deleted meanwhile
	if next := e.mustAdmit(daemonSetPod()); next.Annotations[annotations.AssignedIP] != first.Annotations[annotations.AssignedIP] {
		t.Fatalf("successor of a pod the API server no longer has: %s; want the node's %s", next.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedIP])
	}
}

func TestBarePodRequests(t *testing.T) {
	e := newEnv(t)
	e.mustAdmit(pod("app", "a", map[string]string{annotations.IP: "10.20.0.50", annotations.MAC: "02:00:00:00:00:50"}))
	e.mustDeny(pod("app", "b", map[string]string{annotations.IP: "10.20.0.50"}), annotations.IP, `"10.20.0.50"`, "held by pod/app/a")
	e.mustDeny(pod("app", "b", map[string]string{annotations.MAC: "02:00:00:00:00:50"}), annotations.MAC, "held by pod/app/a")
	e.mustDeny(pod("app", "b", map[string]string{annotations.IP: "10.20.0.1"}), annotations.IP, "gateway of pool blue")
	e.mustDeny(pod("app", "b", map[string]string{annotations.MAC: "01:00:00:00:00:50"}), annotations.MAC, "multicast")
	e.mustDeny(pod("app", "b-0", map[string]string{annotations.IP: "10.20.0.60"}, ctrl("StatefulSet", "b")), annotations.IP, "use "+annotations.IPs)
	if l := e.alloc.Lookup("pod/app/b"); len(l) != 0 {
		t.Fatalf("denied pod left allocations %v", l)
	}
}

// A second create of a running bare pod's name asking for another address
// is denied (the API server would refuse the duplicate after admission): it
// does not move the running pod's address. Once the pod is gone, it moves.
func TestDuplicateCreateDoesNotMoveAddress(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "a", nil))
	ip := first.Annotations[annotations.AssignedIP]
	running := first.DeepCopy()
	running.Status.Phase = corev1.PodRunning
	if err := e.c.Create(ctx, running); err != nil {
		t.Fatal(err)
	}
	before := e.store.Revision()
	e.mustDeny(pod("app", "a", map[string]string{annotations.IP: "10.20.0.99"}), "pod app/a exists already", strings.TrimSuffix(ip, "/24"))
	if after := e.store.Revision(); after != before {
		t.Errorf("the denial wrote to the store: revision %d before, %d after", before, after)
	}
	if l := e.alloc.Lookup("pod/app/a"); len(l) != 1 || l[0].Cooling || l[0].IP.String()+"/24" != ip {
		t.Fatalf("the running pod's identity after the duplicate: %+v; want %s bound", l, ip)
	}
	if err := e.c.Delete(ctx, running); err != nil {
		t.Fatal(err)
	}
	if got := e.mustAdmit(pod("app", "a", map[string]string{annotations.IP: "10.20.0.99"})); got.Annotations[annotations.AssignedIP] != "10.20.0.99/24" {
		t.Fatalf("after the pod is gone: %s; want 10.20.0.99/24", got.Annotations[annotations.AssignedIP])
	}
}

func TestPoolChoice(t *testing.T) {
	e := newEnv(t)
	e.mustDeny(pod("app", "a", map[string]string{annotations.Pool: "green"}), annotations.Pool, `"green"`, "have: blue, racked, red, tiny")
	e.mustDeny(pod("app", "a", map[string]string{annotations.Pool: "red"}), "annotation "+annotations.Pool, `"red"`, "spec.namespaceSelector matches namespace app's labels (have: blue, racked, tiny)")
	got := e.mustAdmit(pod("app", "a", map[string]string{annotations.Pool: "racked"}))
	if got.Spec.SchedulerName != "stickynet-scheduler" {
		t.Fatalf("pod of a pool with a nodeSelector kept scheduler %q", got.Spec.SchedulerName)
	}
	// Spaces around the name are trimmed, as around every other value.
	if got := e.mustAdmit(pod("app", "s", map[string]string{annotations.Pool: "tiny "})); got.Annotations[annotations.AssignedPool] != "tiny" {
		t.Fatalf("pool %q: %v", "tiny ", got.Annotations)
	}
	if got := e.mustAdmit(pod("app", "b", nil)); got.Annotations[annotations.AssignedPool] != "blue" || got.Spec.SchedulerName != "" {
		t.Fatalf("default pool: %v, scheduler %q", got.Annotations, got.Spec.SchedulerName)
	}
	// An empty nodeSelector selects every node: nothing for the extender
	// to place by.
	e.editPool("blue", func(s *v1alpha1.IPPoolSpec) { s.NodeSelector = &metav1.LabelSelector{} })
	if got := e.mustAdmit(pod("app", "c", nil)); got.Annotations[annotations.AssignedPool] != "blue" || got.Spec.SchedulerName != "" {
		t.Fatalf("default pool with an empty nodeSelector: %v, scheduler %q; want the default scheduler", got.Annotations, got.Spec.SchedulerName)
	}
	// Without a default pool the denial says what to do.
	// (a new identity: c keeps blue, where it holds its address).
	e.editPool("blue", func(s *v1alpha1.IPPoolSpec) { s.Default = false })
	e.mustDeny(pod("app", "d", nil), "no IPPool for pod app/d", "spec.default: true")
	// The namespace annotation names the pool.
	ns := &corev1.Namespace{}
	_ = e.c.Get(context.Background(), client.ObjectKey{Name: "app"}, ns)
	ns.Annotations = map[string]string{annotations.Pool: " tiny"}
	if err := e.c.Update(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	if got := e.mustAdmit(pod("app", "c", nil)); got.Annotations[annotations.AssignedPool] != "tiny" {
		t.Fatalf("namespace pool: %v", got.Annotations)
	}
	ns.Annotations[annotations.Pool] = "Tiny"
	if err := e.c.Update(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	e.mustDeny(pod("app", "d", nil), "namespace app annotation "+annotations.Pool, `"Tiny"`, "a Kubernetes object name")
}

func TestExhausted(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b"} {
		e.mustAdmit(pod("app", n, map[string]string{annotations.Pool: "tiny"}))
	}
	e.mustDeny(pod("app", "c", map[string]string{annotations.Pool: "tiny"}), "pool tiny is exhausted", "all 2 addresses")
}

func TestBandwidth(t *testing.T) {
	gold := &v1alpha1.BandwidthPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "gold"}, Spec: v1alpha1.BandwidthPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}, Priority: 10,
		Ingress: &v1alpha1.BandwidthLimit{Rate: resource.MustParse("100M")}, Egress: &v1alpha1.BandwidthLimit{Rate: resource.MustParse("50M"), Burst: ptr(resource.MustParse("1M"))},
	}}
	bronze := &v1alpha1.BandwidthPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "bronze"}, Spec: v1alpha1.BandwidthPolicySpec{
		PodSelector: metav1.LabelSelector{}, Ingress: &v1alpha1.BandwidthLimit{Rate: resource.MustParse("1M")},
	}}
	e := newEnv(t, gold, bronze)
	got := e.mustAdmit(pod("app", "a", nil))
	want := map[string]string{annotations.IngressBandwidth: "100000000", annotations.EgressBandwidth: "50000000", annotations.EgressBurst: "1000000", annotations.BandwidthPolicy: "gold"}
	for k, v := range want {
		if got.Annotations[k] != v {
			t.Errorf("%s = %q; want %q", k, got.Annotations[k], v)
		}
	}
	if _, ok := got.Annotations[annotations.IngressBurst]; ok {
		t.Error("ingress burst set without one in the policy")
	}
	// The pod's own keys win (the kubernetes.io ones too); no policy is named.
	own := e.mustAdmit(pod("app", "b", map[string]string{annotations.KubernetesEgressBandwidth: "10M"}))
	if own.Annotations[annotations.EgressBandwidth] != "10000000" || own.Annotations[annotations.BandwidthPolicy] != "" || own.Annotations[annotations.IngressBandwidth] != "" {
		t.Fatalf("own limits: %v", own.Annotations)
	}
	// Keys a policy filled count as the policy's only while they are what it
	// gives (a re-invocation); edited (a manifest copied from a running pod),
	// they are the pod's own.
	again := e.mustAdmit(pod("app", "g", got.Annotations))
	if again.Annotations[annotations.BandwidthPolicy] != "gold" || again.Annotations[annotations.IngressBandwidth] != "100000000" {
		t.Errorf("re-admitted with gold's keys: %v; want gold's limits", again.Annotations)
	}
	edited := maps.Clone(got.Annotations)
	edited[annotations.IngressBandwidth] = "5M"
	mine := e.mustAdmit(pod("app", "h", edited))
	if mine.Annotations[annotations.IngressBandwidth] != "5000000" || mine.Annotations[annotations.BandwidthPolicy] != "" {
		t.Errorf("gold's keys with the ingress rate edited to 5M: %v; want the pod's own limits, no policy", mine.Annotations)
	}
	e.mustDeny(pod("app", "c", map[string]string{annotations.IngressBandwidth: "fast"}), annotations.IngressBandwidth, `"fast"`, "such as 10M")
	// Limits that cannot work are refused at admission, not at the node.
	e.mustDeny(pod("app", "d", map[string]string{annotations.IngressBandwidth: "10M", annotations.IngressBurst: "100M"}), annotations.IngressBurst, `"100M"`, "4.295s")
	e.mustDeny(pod("app", "d", map[string]string{annotations.EgressBandwidth: "10M", annotations.EgressBurst: "1k"}), annotations.EgressBurst, `"1k"`, "at least 12144 bits")
	long := &v1alpha1.BandwidthPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "long"}, Spec: v1alpha1.BandwidthPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "long"}}, Priority: 20,
		Ingress: &v1alpha1.BandwidthLimit{Rate: resource.MustParse("10M"), Burst: ptr(resource.MustParse("100M"))},
	}}
	if err := e.c.Create(context.Background(), long); err != nil {
		t.Fatal(err)
	}
	p := pod("app", "e", nil)
	p.Labels["tier"] = "long"
	e.mustDeny(p, "BandwidthPolicy app/long spec.ingress.burst", `"100M"`, "4.295s")
	// A podSelector the API server takes but that does not parse selects no
	// pod; it holds up no pod of the namespace.
	unparsable := &v1alpha1.BandwidthPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "broken"}, Spec: v1alpha1.BandwidthPolicySpec{
		PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn}}}, Priority: 99,
		Ingress: &v1alpha1.BandwidthLimit{Rate: resource.MustParse("5M")},
	}}
	if err := e.c.Create(context.Background(), unparsable); err != nil {
		t.Fatal(err)
	}
	if got := e.mustAdmit(pod("app", "f", nil)); got.Annotations[annotations.BandwidthPolicy] != "gold" {
		t.Errorf("with an unparsable policy beside gold: %v; want gold's limits", got.Annotations)
	}
}

// A pod created with spec.nodeName (no scheduler, so no extender) on a
// node its pool's or SriovNetwork's nodeSelector leaves out is denied,
// naming the node and the selector. Before, it was admitted and ran with an
// address its node could not reach.
func TestNamedNodeOutsidePlacement(t *testing.T) {
	served := corev1.ResourceList{annotations.NetworkResource: resource.MustParse("110")}
	node := func(name string, l map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}, Status: corev1.NodeStatus{Capacity: served, Allocatable: served}}
	}
	agentless := node("n4", nil)
	agentless.Status = corev1.NodeStatus{}
	e := newEnv(t, node("n1", map[string]string{"rack": "1"}), node("n3", map[string]string{"rack": "2"}), agentless,
		&v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{
			PFNames: []string{"ens1f0"}, Pool: "racked", NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"sriov": "true"}},
		}})
	e.h.APIReader = e.c
	on := func(name, nodeName string, ann map[string]string) *corev1.Pod {
		p := pod("app", name, ann)
		p.Spec.NodeName = nodeName
		return p
	}
	e.mustDeny(on("a", "n3", map[string]string{annotations.Pool: "racked"}), "names node n3 in spec.nodeName", "IPPool racked (rack=1) leaves out")
	if n := len(e.alloc.Lookup("pod/app/a")); n != 0 {
		t.Errorf("the denied pod's identity holds %d addresses; want none", n)
	}
	e.mustAdmit(on("b", "n1", map[string]string{annotations.Pool: "racked"}))
	e.mustAdmit(on("c", "gone", map[string]string{annotations.Pool: "racked"})) // no such node: nothing runs it
	e.mustAdmit(on("d", "n3", nil))                                             // pool blue selects every node
	e.mustDeny(on("e", "n1", map[string]string{annotations.SriovNetwork: "fast"}), "names node n1 in spec.nodeName", "SriovNetwork fast (sriov=true) leaves out")
	// A node whose agent does not serve (it advertises no
	// stickynet.io/network, which the kubelet would drop from the request).
	e.mustDeny(on("f", "n4", nil), "names node n4 in spec.nodeName, which advertises no stickynet.io/network")
	e.h.NetworkResource = false
	e.mustAdmit(on("g", "n4", nil))
}

func TestSriov(t *testing.T) {
	net := &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}, Pool: "tiny"}}
	e := newEnv(t, net)
	got := e.mustAdmit(pod("app", "a", map[string]string{annotations.SriovNetwork: "fast"}))
	res := corev1.ResourceName("stickynet.io/sriov-fast")
	c := got.Spec.Containers[0]
	if q := c.Resources.Requests[res]; q.Value() != 1 {
		t.Fatalf("requests %v", c.Resources.Requests)
	}
	if q := c.Resources.Limits[res]; q.Value() != 1 {
		t.Fatalf("limits %v", c.Resources.Limits)
	}
	if got.Annotations[annotations.AssignedPool] != "tiny" || got.Spec.SchedulerName != "stickynet-scheduler" {
		t.Fatalf("pool %q scheduler %q", got.Annotations[annotations.AssignedPool], got.Spec.SchedulerName)
	}
	e.mustDeny(pod("app", "b", map[string]string{annotations.SriovNetwork: "slow"}), annotations.SriovNetwork, `"slow"`, "have: fast")
	// A value that is no object name is denied as such (the API server's
	// client refused to look it up: an internal error); spaces around a name
	// are trimmed, in the pod too, for the extender and the node agent.
	for _, v := range []string{"", "fast/x", ".."} {
		e.mustDeny(pod("app", "b", map[string]string{annotations.SriovNetwork: v}), annotations.SriovNetwork, fmt.Sprintf("%q", v), "a Kubernetes object name")
	}
	if got := e.mustAdmit(pod("app", "c", map[string]string{annotations.SriovNetwork: " fast "})); got.Annotations[annotations.SriovNetwork] != "fast" || got.Annotations[annotations.AssignedPool] != "tiny" {
		t.Fatalf("%s %q: the pod's annotation %q, pool %q; want fast, tiny", annotations.SriovNetwork, " fast ", got.Annotations[annotations.SriovNetwork], got.Annotations[annotations.AssignedPool])
	}
	e.mustDeny(pod("app", "b", map[string]string{annotations.SriovNetwork: "fast", annotations.Pool: "blue"}), annotations.Pool, "draws its addresses from pool tiny")

	// One VF per pod: none added where a container asks for it already (a
	// manifest that asks in its second container; a re-invocation after
	// another webhook put a container first), and more than one denied.
	// Before, each added one to the first container: the pod asked for two.
	vfs := func(p *corev1.Pod) (total int64, in string) {
		for _, c := range p.Spec.Containers {
			if q, ok := c.Resources.Limits[res]; ok {
				total, in = total+q.Value(), c.Name
			}
		}
		return total, in
	}
	e = newEnv(t, &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}, Pool: "blue"}})
	got = e.mustAdmit(pod("app", "a", map[string]string{annotations.SriovNetwork: "fast"}))
	own := pod("app", "own", map[string]string{annotations.SriovNetwork: "fast"})
	one := corev1.ResourceList{res: resource.MustParse("1")}
	own.Spec.Containers = append(own.Spec.Containers, corev1.Container{Name: "app", Image: "busybox", Resources: corev1.ResourceRequirements{Requests: one, Limits: one}})
	if n, in := vfs(e.mustAdmit(own)); n != 1 || in != "app" {
		t.Errorf("pod asking for the VF in its container app: %d VFs, last in %s; want 1, in app", n, in)
	}
	again := got.DeepCopy()
	again.Spec.Containers = append([]corev1.Container{{Name: "proxy", Image: "busybox"}}, again.Spec.Containers...)
	if n, in := vfs(e.mustAdmit(again)); n != 1 || in != "c" {
		t.Errorf("re-invoked with a container put first: %d VFs, last in %s; want 1, in c", n, in)
	}
	two := own.DeepCopy()
	two.Name = "two"
	two.Spec.Containers[0].Resources = corev1.ResourceRequirements{Requests: one, Limits: one}
	e.mustDeny(two, "pod app/two asks for 2 VFs of SriovNetwork fast (container c: 1, container app: 1); a pod gets one")
}

// Every pod that gets an address asks for one stickynet.io/network, which
// only nodes whose agent serves advertise, so that the scheduler never puts
// it on a node whose own network would attach it; once, however often it is
// admitted. Pods stickynet passes by ask for nothing.
func TestNetworkResource(t *testing.T) {
	res := corev1.ResourceName(annotations.NetworkResource)
	asked := func(p *corev1.Pod) (requests, limits int64, in []string) {
		for _, c := range p.Spec.Containers {
			r, rok := c.Resources.Requests[res]
			l, lok := c.Resources.Limits[res]
			if rok || lok {
				requests, limits, in = requests+r.Value(), limits+l.Value(), append(in, c.Name)
			}
		}
		return requests, limits, in
	}
	e := newEnv(t)
	got := e.mustAdmit(pod("app", "a", nil))
	if r, l, in := asked(got); r != 1 || l != 1 || len(in) != 1 || in[0] != "c" {
		t.Errorf("%s: requests %d, limits %d, in %v; want 1 and 1 in the first container, c", res, r, l, in)
	}
	again := got.DeepCopy()
	again.Spec.Containers = append([]corev1.Container{{Name: "proxy", Image: "busybox"}}, again.Spec.Containers...)
	if r, _, in := asked(e.mustAdmit(again)); r != 1 || len(in) != 1 || in[0] != "c" {
		t.Errorf("re-invoked with a container put first: %s requests %d in %v; want 1, in c", res, r, in)
	}
	three := pod("app", "three", nil)
	three.Spec.Containers[0].Resources.Limits = corev1.ResourceList{res: resource.MustParse("3")}
	e.mustDeny(three, "pod app/three asks for 3 stickynet.io/network (container c: 3); a pod takes one")
	out := pod("other", "b", nil) // namespace not opted in
	if r, _, in := asked(e.mustAdmit(out)); r != 0 {
		t.Errorf("a pod of a namespace not opted in asks for %d %s (in %v); want none", r, res, in)
	}

	e = newEnv(t)
	e.h.NetworkResource = false
	if r, _, in := asked(e.mustAdmit(pod("app", "a", nil))); r != 0 {
		t.Errorf("with NetworkResource off: %d %s asked (in %v); want none", r, res, in)
	}
}

// Traffic into a VF comes from the wire: an SR-IOV pod's own ingress limit
// is refused, a BandwidthPolicy's is admitted with a warning (the egress
// limit, the VF's max_tx_rate, is enforced).
func TestSriovIngressLimit(t *testing.T) {
	net := &v1alpha1.SriovNetwork{ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Spec: v1alpha1.SriovNetworkSpec{PFNames: []string{"ens1f0"}, Pool: "blue"}}
	e := newEnv(t, net)
	for _, key := range []string{annotations.IngressBandwidth, annotations.KubernetesIngressBandwidth} {
		e.mustDeny(pod("app", "own", map[string]string{annotations.SriovNetwork: "fast", key: "10M"}), key, `"10M"`, "sriov-network=fast", annotations.EgressBandwidth+" only")
	}
	if resp, _ := e.admit(pod("app", "egress", map[string]string{annotations.SriovNetwork: "fast", annotations.EgressBandwidth: "10M"}), false); !resp.Allowed || len(resp.Warnings) != 0 {
		t.Errorf("egress limit on an SR-IOV pod: allowed %v, warnings %q", resp.Allowed, resp.Warnings)
	}
	// A VF's max_tx_rate is whole Mbit/s: 500k is enforced as 1M.
	resp, _ := e.admit(pod("app", "slow", map[string]string{annotations.SriovNetwork: "fast", annotations.KubernetesEgressBandwidth: "500k"}), false)
	if !resp.Allowed || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "annotation "+annotations.KubernetesEgressBandwidth+": an egress limit of 500000 bit/s on a VF of SriovNetwork fast is enforced as 1 Mbit/s") {
		t.Errorf("egress limit of 500k on an SR-IOV pod: allowed %v, warnings %q; want one naming the key and 1 Mbit/s", resp.Allowed, resp.Warnings)
	}
	gold := &v1alpha1.BandwidthPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "gold"}, Spec: v1alpha1.BandwidthPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
		Ingress:     &v1alpha1.BandwidthLimit{Rate: resource.MustParse("10M")},
		Egress:      &v1alpha1.BandwidthLimit{Rate: resource.MustParse("5M")},
	}}
	if err := e.c.Create(context.Background(), gold); err != nil {
		t.Fatal(err)
	}
	resp, got := e.admit(pod("app", "vf", map[string]string{annotations.SriovNetwork: "fast"}), false)
	if !resp.Allowed || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "BandwidthPolicy gold") || !strings.Contains(resp.Warnings[0], "only the egress limit") {
		t.Fatalf("SR-IOV pod selected by a policy with an ingress limit: allowed %v, warnings %q", resp.Allowed, resp.Warnings)
	}
	if got.Annotations[annotations.BandwidthPolicy] != "gold" {
		t.Errorf("annotations %v; want gold's limits", got.Annotations)
	}
	if resp, _ := e.admit(pod("app", "veth", nil), false); !resp.Allowed || len(resp.Warnings) != 0 {
		t.Errorf("pod without a VF: allowed %v, warnings %q", resp.Allowed, resp.Warnings)
	}
}

// A pod that asks for host ports is admitted with a warning naming each:
// nothing maps them for a pod stickynet attaches.
func TestHostPortWarning(t *testing.T) {
	e := newEnv(t)
	p := pod("app", "hp", nil)
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "d", Image: "busybox", Ports: []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 8443, HostPort: 443}}})
	p.Spec.InitContainers = []corev1.Container{{Name: "i", Image: "busybox", Ports: []corev1.ContainerPort{{ContainerPort: 53, HostPort: 53}}}}
	resp, got := e.admit(p, false)
	want := "spec.initContainers[0].ports[0].hostPort=53, spec.containers[1].ports[1].hostPort=443: host ports are not mapped for pods stickynet attaches"
	if !resp.Allowed || got == nil || got.Annotations[annotations.AssignedIP] == "" || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], want) {
		t.Errorf("pod with host ports: allowed %v, warnings %q; want an address and one warning containing %q", resp.Allowed, resp.Warnings, want)
	}
	if resp, _ := e.admit(pod("app", "plain", nil), false); !resp.Allowed || len(resp.Warnings) != 0 {
		t.Errorf("pod without host ports: allowed %v, warnings %q", resp.Allowed, resp.Warnings)
	}
}

// A host-network pod gets no address, and loses output annotations and the
// managed label copied from another pod's manifest.
func TestHostNetworkPodLosesCopiedOutputs(t *testing.T) {
	e := newEnv(t)
	p := pod("app", "web-0-debug", map[string]string{annotations.Identity: "statefulset/app/web/0", annotations.AssignedIP: "10.20.0.7/24", "keep": "me"})
	p.Labels[annotations.ManagedLabel] = "true"
	p.Spec.HostNetwork = true
	resp, got := e.admit(p, false)
	if !resp.Allowed || got == nil {
		t.Fatalf("host-network pod: %+v", resp.Result)
	}
	if _, ok := got.Annotations[annotations.Identity]; ok || got.Annotations[annotations.AssignedIP] != "" || got.Labels[annotations.ManagedLabel] != "" ||
		got.Annotations["keep"] != "me" || got.Labels["app"] != "x" {
		t.Errorf("host-network pod admitted with annotations %v, labels %v; want its own only", got.Annotations, got.Labels)
	}
	if len(e.alloc.Lookup("statefulset/app/web/0")) != 0 {
		t.Error("a host-network pod got an address")
	}
}

func TestDryRunAllocatesNothing(t *testing.T) {
	e := newEnv(t)
	before := e.store.Revision()
	resp, got := e.admit(pod("app", "a", nil), true)
	if !resp.Allowed || got == nil || got.Annotations[annotations.AssignedIP] == "" {
		t.Fatalf("dry run: %+v", resp.Result)
	}
	if e.store.Revision() != before {
		t.Fatal("dry run wrote to the store")
	}
}

// unreachable is a store whose transactions wait until the caller gives up,
// as a partitioned etcd's do; it counts them.
type unreachable struct {
	*store.Memory
	txns *atomic.Int32
}

func (u unreachable) Txn(ctx context.Context, _ []store.Cmp, _, _ []store.Op) (store.TxnResult, error) {
	u.txns.Add(1)
	<-ctx.Done()
	return store.TxnResult{}, ctx.Err()
}

func TestStoreUnreachable(t *testing.T) {
	e := newEnv(t)
	txns := new(atomic.Int32)
	a := ipam.New(unreachable{store.NewMemory(), txns}, ipam.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.h.Alloc = a
	start := time.Now()
	resp, _ := e.admit(pod("app", "a", nil), false)
	if resp.Allowed || resp.Result.Code != http.StatusServiceUnavailable || !strings.Contains(resp.Result.Message, "state store (etcd)") {
		t.Fatalf("response %+v", resp.Result)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("denial took %s; want it within the store timeout (1s)", d)
	}
	// Nothing can be written (every transaction waits): what counts is that
	// the denial came from the store's transaction, not before it.
	if txns.Load() == 0 {
		t.Fatal("the admission was denied without trying the store")
	}
}

// A bare pod named by generateName whose claim etcd took while its answer
// was lost is denied, and its claim given back once etcd answers: no later
// pod has its identity (named after the admission's token), so the address
// would otherwise stay reserved until --reservation-ttl.
func TestStoreTimeoutGivesBackGenerateNameClaim(t *testing.T) {
	e := newEnv(t)
	ls := storetest.NewLossy()
	ls.Set(true, false)
	a := ipam.New(ls, ipam.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.h.Alloc = a
	p := pod("app", "", nil)
	p.GenerateName = "job-"
	resp, _ := e.admit(p, false)
	if resp.Allowed || resp.Result.Code != http.StatusServiceUnavailable || !strings.Contains(resp.Result.Message, "bare pod's named by generateName") {
		t.Fatalf("response %+v", resp.Result)
	}
	const id = "pod/app/job-tok1"
	// waitFor waits until id has n addresses.
	waitFor := func(n int, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(a.Lookup(id)) != n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s has %+v", what, id, a.Lookup(id))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(1, "etcd took the claim") // from the watch
	ls.Set(false, false)
	waitFor(0, "the orphaned reservation given back once etcd answers")
}

func TestInvalidRetentionDenied(t *testing.T) {
	e := newEnv(t)
	e.mustDeny(pod("app", "db-0", map[string]string{annotations.IPRetention: "release"}, ctrl("StatefulSet", "db")),
		annotations.IPRetention, `"release"`, "Retain or Release")
}

func TestUniversalMACDenied(t *testing.T) {
	e := newEnv(t)
	e.mustDeny(pod("app", "m", map[string]string{annotations.MAC: "00:11:22:33:44:55"}),
		annotations.MAC, `"00:11:22:33:44:55"`, "locally administered", "spec.allowUniversalMAC")
	// A MAC under the pool's macPrefix is the pool's own, universally
	// administered or not.
	e.editPool("tiny", func(s *v1alpha1.IPPoolSpec) { s.MACPrefix = "00:16:3e" })
	if got := e.mustAdmit(pod("app", "v", map[string]string{annotations.Pool: "tiny", annotations.MAC: "00:16:3e:00:00:01"})); got.Annotations[annotations.AssignedMAC] != "00:16:3e:00:00:01" {
		t.Errorf("MAC under the pool's prefix: got %s", got.Annotations[annotations.AssignedMAC])
	}
	e.mustDeny(pod("app", "w", map[string]string{annotations.Pool: "tiny", annotations.MAC: "00:11:22:33:44:55"}),
		"or one under the pool's spec.macPrefix 00:16:3e", "spec.allowUniversalMAC on pool tiny")
}

// A Deployment whose set is at its cap (replicas + maxSurge) and whose
// template now names another pool: the surge pod of the rollout gets an
// address there, and the free member it can never use in the old pool cools
// down (a rollback takes it back).
// newSetEnv is newEnv with Deployment app/api (replicas 1: its set is
// capped at 2) and its ReplicaSet api-5d8f.
func newSetEnv(t *testing.T) *env {
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{UID: "x", Namespace: "app", Name: "api-5d8f", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "api", UID: "d", Controller: ptr(true)}}}}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "api"}, Spec: appsv1.DeploymentSpec{Replicas: ptr(int32(1))}}
	return newEnv(t, rs, dep)
}

// exclude sets pool blue's spec.exclude to ips and returns the pool as it
// was.
func (e *env) exclude(ips ...netip.Addr) *v1alpha1.IPPool {
	e.t.Helper()
	return e.editPool("blue", func(s *v1alpha1.IPPoolSpec) {
		s.Exclude = nil
		for _, ip := range ips {
			s.Exclude = append(s.Exclude, ip.String())
		}
	})
}

// assignedIP is the address of the pod's stickynet.io/assigned-ip.
func assignedIP(p *corev1.Pod) netip.Addr {
	return netip.MustParsePrefix(p.Annotations[annotations.AssignedIP]).Addr()
}

// fullSet admits two pods of ReplicaSet api-5d8f (newSetEnv) in pool blue:
// the first runs, the second is gone, and its member, returned, is free.
func (e *env) fullSet() (free netip.Addr) {
	e.t.Helper()
	ctx := context.Background()
	for i, name := range []string{"api-5d8f-aaaaa", "api-5d8f-bbbbb"} {
		got := e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")))
		ip := assignedIP(got)
		if err := e.alloc.Bind(ctx, ipam.Binding{Pool: "blue", IP: ip, Identity: "deployment/app/api", Pod: "app/" + name, Token: got.Annotations[annotations.Reservation]}); err != nil {
			e.t.Fatal(err)
		}
		if i == 1 {
			if err := e.alloc.Unbind(ctx, "blue", ip, "app/"+name); err != nil {
				e.t.Fatal(err)
			}
			return ip
		}
		running := got.DeepCopy()
		running.Name, running.Status.Phase = name, corev1.PodRunning
		if err := e.c.Create(ctx, running); err != nil {
			e.t.Fatal(err)
		}
	}
	return netip.Addr{}
}

func TestFullSetMovesToAnotherPool(t *testing.T) {
	e := newSetEnv(t)
	// After a rollout: two members in pool blue, one carried by the live pod, one free.
	free := e.fullSet()
	surge := e.mustAdmit(pod("app", "", map[string]string{annotations.Pool: "tiny"}, ctrl("ReplicaSet", "api-5d8f")))
	if surge.Annotations[annotations.AssignedPool] != "tiny" {
		t.Fatalf("surge pod got pool %q", surge.Annotations[annotations.AssignedPool])
	}
	members := e.alloc.Lookup("deployment/app/api")
	if len(members) != 2 {
		t.Fatalf("set has %d members after the move; want 2 (the live pod's and the surge pod's): %v", len(members), members)
	}
	for _, m := range members {
		if m.IP == free {
			t.Fatalf("the free member %s of pool blue is still in the set", free)
		}
	}
	if cooling := e.alloc.List(func(en ipam.Entry) bool { return en.Cooling && en.IP == free }); len(cooling) != 1 {
		t.Fatalf("the free member %s does not cool down", free)
	}
}

// An IPPool edited so that it no longer allows addresses its identities
// hold: a StatefulSet's pod, created again, moves to another address of the
// pool with its MAC; a second create of a running pod's name does not move
// the running pod's address; a full Deployment set gives up its free member
// that the pool no longer allows, so that its next pod is admitted.
func TestEditedPoolMovesAddresses(t *testing.T) {
	e := newSetEnv(t)
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	e.exclude(assignedIP(first))
	moved := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	if assignedIP(moved) == assignedIP(first) || moved.Annotations[annotations.AssignedMAC] != first.Annotations[annotations.AssignedMAC] {
		t.Fatalf("after %s was excluded web-0 got %s %s; want another address, MAC %s", assignedIP(first), assignedIP(moved), moved.Annotations[annotations.AssignedMAC], first.Annotations[annotations.AssignedMAC])
	}
	// web-0 runs with it; then that address is excluded too.
	running := moved.DeepCopy()
	running.Status.Phase = corev1.PodRunning
	if err := e.c.Create(ctx, running); err != nil {
		t.Fatal(err)
	}
	if err := e.alloc.Bind(ctx, ipam.Binding{Pool: "blue", IP: assignedIP(moved), Identity: "statefulset/app/web/0", Pod: "app/web-0"}); err != nil {
		t.Fatal(err)
	}
	e.exclude(assignedIP(first), assignedIP(moved))
	e.mustDeny(pod("app", "web-0", nil, ctrl("StatefulSet", "web")), "pod app/web-0 exists already and carries "+assignedIP(moved).String())
	// An ips list that names an excluded address for the ordinal is denied.
	e.mustDeny(pod("app", "db-0", map[string]string{annotations.IPs: assignedIP(first).String()}, ctrl("StatefulSet", "db")), assignedIP(first).String(), "excluded")
	if l := e.alloc.Lookup("statefulset/app/web/0"); len(l) != 1 || l[0].IP != assignedIP(moved) {
		t.Fatalf("after the denied create web-0's identity holds %v; want %s", l, assignedIP(moved))
	}

	// A full Deployment set: one member carried by a live pod, one free.
	free := e.fullSet()
	e.exclude(assignedIP(first), assignedIP(moved), free)
	next := e.mustAdmit(pod("app", "", nil, ctrl("ReplicaSet", "api-5d8f")))
	if assignedIP(next) == free {
		t.Fatalf("the set's next pod got %s, which the pool no longer allows", free)
	}
	if cooling := e.alloc.List(func(en ipam.Entry) bool { return en.Cooling && en.IP == free }); len(cooling) != 1 {
		t.Fatalf("the free member %s does not cool down", free)
	}
	// An ips list that names an excluded address is denied.
	e.mustDeny(pod("app", "", map[string]string{annotations.IPs: free.String() + "," + assignedIP(next).String()}, ctrl("ReplicaSet", "api-5d8f")), free.String(), "excluded")
}

// A replica whose copy of an IPPool is behind an edit does not move an
// identity that another replica has moved into the new spec back out of it:
// before a move off an address its copy does not allow, it reads the pool
// from the API server.
func TestEditedPoolOnLaggingReplica(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	// The API server has the new cidr; another replica moved web-0 into it.
	renum := v1alpha1.IPPoolSpec{CIDR: "10.21.0.0/24", Gateway: "10.21.0.1", VLAN: 100, Default: true, ReuseDelaySeconds: i32(60)}
	newPool, err := ipam.NewPool("blue", renum)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := e.alloc.Allocate(ctx, ipam.Request{Pool: newPool, Identity: "statefulset/app/web/0", Pod: "app/web-0"})
	if err != nil {
		t.Fatal(err)
	}
	e.h.APIReader = fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "blue"}, Spec: renum},
	).Build()
	got := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	if got.Annotations[annotations.AssignedIP] != moved.Prefix.String() || got.Annotations[annotations.AssignedMAC] != first.Annotations[annotations.AssignedMAC] {
		t.Fatalf("web-0 admitted by a replica whose pool is behind got %s %s; want %s %s (the API server's spec)",
			got.Annotations[annotations.AssignedIP], got.Annotations[annotations.AssignedMAC], moved.Prefix, first.Annotations[annotations.AssignedMAC])
	}
	if got.Annotations[annotations.Gateway] != "10.21.0.1" {
		t.Errorf("gateway %q; want the API server's 10.21.0.1", got.Annotations[annotations.Gateway])
	}
}

// The same for an identity whose address, released, cools: a replica whose
// copy of the pool still excludes it (an edit already undone) reads the pool
// from the API server and gives the address back, not another one.
func TestEditedPoolOnLaggingReplicaCooling(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "web-1", nil, ctrl("StatefulSet", "web")))
	ip := assignedIP(first)
	if err := e.alloc.Unbind(ctx, "blue", ip, "app/web-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.alloc.Release(ctx, "blue", ip, "statefulset/app/web/1", false); err != nil {
		t.Fatal(err)
	}
	current := e.exclude(ip) // this replica's cache excludes it; the API server's (current) does not
	e.h.APIReader = fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(current).Build()
	got := e.mustAdmit(pod("app", "web-1", nil, ctrl("StatefulSet", "web")))
	if got.Annotations[annotations.AssignedIP] != first.Annotations[annotations.AssignedIP] || got.Annotations[annotations.AssignedMAC] != first.Annotations[annotations.AssignedMAC] {
		t.Fatalf("web-1 admitted by a replica whose pool is behind got %s %s; want %s %s back",
			got.Annotations[annotations.AssignedIP], got.Annotations[annotations.AssignedMAC], first.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedMAC])
	}
}

// An IPPool deleted under its claims frees nothing: its pods' next creations
// are denied (the pool is unknown), and the IPPool created again under the
// same name gives each identity its address and MAC back.
func TestDeletedPoolKeepsClaims(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	ipp := &v1alpha1.IPPool{}
	if err := e.c.Get(ctx, client.ObjectKey{Name: "blue"}, ipp); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Delete(ctx, ipp); err != nil {
		t.Fatal(err)
	}
	e.mustDeny(pod("app", "web-0", nil, ctrl("StatefulSet", "web")),
		"IPPool blue, where statefulset/app/web/0 holds "+assignedIP(first).String()+", does not exist: create it again to give the address back")
	e.mustDeny(pod("app", "web-0", map[string]string{annotations.Pool: "blue"}, ctrl("StatefulSet", "web")), `invalid value "blue"`,
		"(statefulset/app/web/0 holds "+assignedIP(first).String()+" of IPPool blue, which no longer exists: an IPPool of that name created again gives it back)")
	again := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "blue"}, Spec: ipp.Spec}
	if err := e.c.Create(ctx, again); err != nil {
		t.Fatal(err)
	}
	back := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	if back.Annotations[annotations.AssignedIP] != first.Annotations[annotations.AssignedIP] || back.Annotations[annotations.AssignedMAC] != first.Annotations[annotations.AssignedMAC] {
		t.Fatalf("web-0 after its pool was created again got %s %s; want %s %s",
			back.Annotations[annotations.AssignedIP], back.Annotations[annotations.AssignedMAC], first.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedMAC])
	}
}

// An IPPool being deleted (kept by its finalizer while addresses are held)
// hands out no address to an identity that holds none of it: a new identity
// or one moving into it is denied naming the pool, and a second default pool
// takes the new identities. An identity that holds one keeps it, and may
// move within the pool (it gives one back as it takes one).
func TestDeletingPoolHandsOutNothingNew(t *testing.T) {
	e := newEnv(t, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "zz-green"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.70.0.0/24", Default: true}})
	ctx := context.Background()
	first := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	if got := first.Annotations[annotations.AssignedPool]; got != "blue" {
		t.Fatalf("web-0 got pool %s; want blue, the first default by name", got)
	}
	solo := e.mustAdmit(pod("app", "solo", map[string]string{annotations.Pool: "tiny"}))
	for _, name := range []string{"blue", "tiny"} {
		ipp := &v1alpha1.IPPool{}
		if err := e.c.Get(ctx, client.ObjectKey{Name: name}, ipp); err != nil {
			t.Fatal(err)
		}
		ipp.Finalizers = []string{v1alpha1.IPPoolInUseFinalizer}
		if err := e.c.Update(ctx, ipp); err != nil {
			t.Fatal(err)
		}
		if err := e.c.Delete(ctx, ipp); err != nil {
			t.Fatal(err)
		}
	}
	again := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	if again.Annotations[annotations.AssignedIP] != first.Annotations[annotations.AssignedIP] || again.Annotations[annotations.AssignedPool] != "blue" {
		t.Errorf("web-0 created again while its pool is being deleted got %s of %s; want its %s of blue",
			again.Annotations[annotations.AssignedIP], again.Annotations[annotations.AssignedPool], first.Annotations[annotations.AssignedIP])
	}
	if next := e.mustAdmit(pod("app", "web-1", nil, ctrl("StatefulSet", "web"))); next.Annotations[annotations.AssignedPool] != "zz-green" {
		t.Errorf("web-1, new, got pool %s; want zz-green, the default pool not being deleted", next.Annotations[annotations.AssignedPool])
	}
	e.mustDeny(pod("app", "web-2", map[string]string{annotations.Pool: "blue"}, ctrl("StatefulSet", "web")), "IPPool blue is being deleted: it hands out no address to an identity that holds none")
	other := "10.30.0.2" // of tiny's two addresses, the one solo does not have
	if solo.Annotations[annotations.AssignedIP] == other+"/30" {
		other = "10.30.0.1"
	}
	if moved := e.mustAdmit(pod("app", "solo", map[string]string{annotations.Pool: "tiny", annotations.IP: other})); moved.Annotations[annotations.AssignedIP] != other+"/30" {
		t.Errorf("solo asking for %s of tiny, being deleted, got %s; want it (a move within the pool)", other, moved.Annotations[annotations.AssignedIP])
	}
	if got := e.alloc.Lookup("pod/app/solo"); len(got) != 1 || got[0].IP.String() != other {
		t.Errorf("pod/app/solo holds %+v after its move; want %s alone", got, other)
	}
	e.mustDeny(pod("app", "web-0", map[string]string{annotations.Pool: "tiny"}, ctrl("StatefulSet", "web")), "IPPool tiny is being deleted")
	if got := e.alloc.Lookup("statefulset/app/web/0"); len(got) != 1 || got[0].Pool != "blue" {
		t.Errorf("statefulset/app/web/0 holds %v after the denied move; want its address of blue alone", got)
	}
}

// Pools that share addresses hand each out once: an address one of them
// has is not handed out by the other (addresses are keyed by pool), neither
// picked nor asked for, also after an edit makes them overlap; pools that
// share a CIDR with ranges apart hand out as before.
func TestSharedAddressesHandedOutOnce(t *testing.T) {
	e := newEnv(t,
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "tiny-copy"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/30"}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "half-a"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.60.0.0/24", Ranges: []v1alpha1.IPRange{{Start: "10.60.0.10", End: "10.60.0.10"}}}},
		&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "half-b"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.60.0.0/24", Ranges: []v1alpha1.IPRange{{Start: "10.60.0.11", End: "10.60.0.11"}}}})
	// tiny and tiny-copy: one /30, two addresses between them.
	a := e.mustAdmit(pod("app", "a", map[string]string{annotations.Pool: "tiny"}))
	b := e.mustAdmit(pod("app", "b", map[string]string{annotations.Pool: "tiny-copy"}))
	if a.Annotations[annotations.AssignedIP] == b.Annotations[annotations.AssignedIP] {
		t.Fatalf("pools tiny and tiny-copy both gave out %s", a.Annotations[annotations.AssignedIP])
	}
	e.mustDeny(pod("app", "c", map[string]string{annotations.Pool: "tiny"}), "pool tiny is exhausted", "1 by IPPools tiny-copy")
	aIP := strings.Split(a.Annotations[annotations.AssignedIP], "/")[0]
	e.mustDeny(pod("app", "d", map[string]string{annotations.Pool: "tiny-copy", annotations.IP: aIP}), "address "+aIP, "pod/app/a")

	// half-a and half-b: ranges apart, then half-a edited over half-b's.
	db := e.mustAdmit(pod("app", "db-0", map[string]string{annotations.Pool: "half-b"}, ctrl("StatefulSet", "db")))
	x := e.mustAdmit(pod("app", "x", map[string]string{annotations.Pool: "half-a"}))
	if db.Annotations[annotations.AssignedIP] != "10.60.0.11/24" || x.Annotations[annotations.AssignedIP] != "10.60.0.10/24" {
		t.Fatalf("half-b gave %s, half-a %s; want 10.60.0.11 and 10.60.0.10", db.Annotations[annotations.AssignedIP], x.Annotations[annotations.AssignedIP])
	}
	e.editPool("half-a", func(s *v1alpha1.IPPoolSpec) { s.Ranges = []v1alpha1.IPRange{{Start: "10.60.0.10", End: "10.60.0.11"}} })
	e.mustDeny(pod("app", "y", map[string]string{annotations.Pool: "half-a"}), "pool half-a is exhausted")
	if again := e.mustAdmit(pod("app", "db-0", map[string]string{annotations.Pool: "half-b"}, ctrl("StatefulSet", "db"))); again.Annotations[annotations.AssignedIP] != "10.60.0.11/24" {
		t.Errorf("db-0 created again got %s; want its 10.60.0.11", again.Annotations[annotations.AssignedIP])
	}
}

// A second default pool added for a namespace moves no sticky identity: a
// StatefulSet pod created again keeps its address in the pool it holds it
// in, a new identity gets the first default pool by name, and both are told
// that the namespace has two default pools.
func TestSecondDefaultPoolMovesNoIdentity(t *testing.T) {
	e := newEnv(t)
	first := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")))
	if err := e.c.Create(context.Background(), &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "aaa"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.99.0.0/24", Default: true}}); err != nil {
		t.Fatal(err)
	}
	resp, again := e.admit(pod("app", "web-0", nil, ctrl("StatefulSet", "web")), false)
	if !resp.Allowed {
		t.Fatalf("web-0 denied: %s", resp.Result.Message)
	}
	if got, want := again.Annotations[annotations.AssignedIP], first.Annotations[annotations.AssignedIP]; got != want || again.Annotations[annotations.AssignedPool] != "blue" {
		t.Errorf("web-0 created again after a second default pool was added got %s of pool %s; want %s of blue", got, again.Annotations[annotations.AssignedPool], want)
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "IPPools aaa, blue all have spec.default: true") || !strings.Contains(resp.Warnings[0], "where statefulset/app/web/0 holds its address") {
		t.Errorf("warnings %q; want one naming both default pools and why blue", resp.Warnings)
	}
	resp, fresh := e.admit(pod("app", "web2-0", nil, ctrl("StatefulSet", "web2")), false)
	if !resp.Allowed || fresh.Annotations[annotations.AssignedPool] != "aaa" || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "the first by name") {
		t.Errorf("a new identity: allowed %v, pool %s, warnings %q; want pool aaa (the first by name), with a warning saying so", resp.Allowed, fresh.Annotations[annotations.AssignedPool], resp.Warnings)
	}
}

// A default pool whose spec is refused (its range backwards, which the
// CRD's rules do not check) is passed over, with a warning, for an identity
// without an address in it: sorted first by name, it denied every new
// identity that the valid default pool blue admits. An identity that holds
// its address there is denied, naming the spec's fault, rather than moved.
func TestRefusedDefaultPoolPassedOver(t *testing.T) {
	e := newEnv(t, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "aaa"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.98.0.0/24", Default: true}})
	if got := e.mustAdmit(pod("app", "web-0", nil, ctrl("StatefulSet", "web"))); got.Annotations[annotations.AssignedPool] != "aaa" {
		t.Fatalf("web-0 got pool %s; want aaa, the first default by name", got.Annotations[annotations.AssignedPool])
	}
	e.editPool("aaa", func(s *v1alpha1.IPPoolSpec) { s.Ranges = []v1alpha1.IPRange{{Start: "10.98.0.20", End: "10.98.0.10"}} })
	resp, got := e.admit(pod("app", "fresh", nil), false)
	if !resp.Allowed || got.Annotations[annotations.AssignedPool] != "blue" {
		t.Fatalf("a new identity: allowed %v (%s), pool %q; want blue", resp.Allowed, resp.Result.Message, got.Annotations[annotations.AssignedPool])
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "default pool passed over: IPPool aaa: spec.ranges") {
		t.Errorf("warnings %q; want one naming aaa's fault", resp.Warnings)
	}
	e.mustDeny(pod("app", "web-0", nil, ctrl("StatefulSet", "web")), "IPPool aaa: spec.ranges", "10.98.0.20-10.98.0.10")
}

// A StatefulSet ordinal whose default pool stopped admitting its namespace
// (a selector edited, or one that does not parse) or was deleted moved to
// another default pool at its next pod, its address cooling for anyone. Now
// the pod is denied, naming the pool, the address and the way out, and the
// address stays held; naming a pool moves it.
func TestHeldAddressKeepsItsPool(t *testing.T) {
	e := newEnv(t, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "aaa"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.98.0.0/24", Default: true}})
	web0 := func() *corev1.Pod { return pod("app", "web-0", nil, ctrl("StatefulSet", "web")) }
	first := e.mustAdmit(web0())
	ip := first.Annotations[annotations.AssignedIP]
	if first.Annotations[annotations.AssignedPool] != "aaa" {
		t.Fatalf("web-0 got pool %s; want aaa, the first default by name", first.Annotations[annotations.AssignedPool])
	}
	stillHeld := func(step string) {
		t.Helper()
		got := e.alloc.Lookup("statefulset/app/web/0")
		if len(got) != 1 || got[0].Pool != "aaa" || got[0].IP.String()+"/24" != ip {
			t.Errorf("%s: statefulset/app/web/0 holds %v; want %s in aaa", step, got, ip)
		}
	}
	addr := strings.TrimSuffix(ip, "/24")
	restore := e.editPool("aaa", func(*v1alpha1.IPPoolSpec) {}).Spec
	for _, tc := range []struct {
		name string
		edit func(*v1alpha1.IPPoolSpec)
		want string
	}{
		{"selector no longer matching", func(s *v1alpha1.IPPoolSpec) {
			s.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}
		}, "no longer admits namespace app (spec.namespaceSelector)"},
		{"selector not parsing", func(s *v1alpha1.IPPoolSpec) {
			s.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "In"}}}
		}, "spec.namespaceSelector that is not a label selector"},
	} {
		e.editPool("aaa", tc.edit)
		e.mustDeny(web0(), "IPPool aaa, where statefulset/app/web/0 holds "+addr, tc.want, "name another pool with the annotation stickynet.io/pool")
		stillHeld(tc.name)
		if got := e.mustAdmit(pod("app", "fresh-"+strings.ReplaceAll(tc.name, " ", "-"), nil)); got.Annotations[annotations.AssignedPool] != "blue" {
			t.Errorf("%s: a new identity got pool %s; want blue", tc.name, got.Annotations[annotations.AssignedPool])
		}
		e.editPool("aaa", func(s *v1alpha1.IPPoolSpec) { *s = restore })
	}

	// A cache that has not seen aaa yet is not believed: the API server has it.
	lagging := fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(e.editPool("aaa", func(*v1alpha1.IPPoolSpec) {}).DeepCopy()).Build()
	e.h.APIReader = lagging
	if err := e.c.Delete(context.Background(), &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "aaa"}}); err != nil {
		t.Fatal(err)
	}
	if got := e.mustAdmit(web0()); got.Annotations[annotations.AssignedPool] != "aaa" || got.Annotations[annotations.AssignedIP] != ip {
		t.Errorf("aaa only in the API server: %s from %s; want %s from aaa", got.Annotations[annotations.AssignedIP], got.Annotations[annotations.AssignedPool], ip)
	}
	e.h.APIReader = nil
	e.mustDeny(web0(), "IPPool aaa, where statefulset/app/web/0 holds "+addr, "does not exist: create it again to give the address back")
	stillHeld("deleted")

	moved := e.mustAdmit(pod("app", "web-0", map[string]string{annotations.Pool: "blue"}, ctrl("StatefulSet", "web")))
	if moved.Annotations[annotations.AssignedPool] != "blue" {
		t.Errorf("web-0 naming pool blue got %s; want blue", moved.Annotations[annotations.AssignedPool])
	}

	// An address in a pool that is not a default pool came from naming it:
	// without the name the identity goes to the default pool, as a rollback
	// to a template without the annotation does.
	db0 := func(ann map[string]string) *corev1.Pod { return pod("app", "db-0", ann, ctrl("StatefulSet", "db")) }
	if got := e.mustAdmit(db0(map[string]string{annotations.Pool: "tiny"})); got.Annotations[annotations.AssignedPool] != "tiny" {
		t.Fatalf("db-0 naming tiny got %s", got.Annotations[annotations.AssignedPool])
	}
	if got := e.mustAdmit(db0(nil)); got.Annotations[annotations.AssignedPool] != "blue" {
		t.Errorf("db-0 naming no pool, its address in tiny (not a default pool): got %s; want blue, the default", got.Annotations[annotations.AssignedPool])
	}
}

// A pool out of MACs under its macPrefix denies the pod, naming the prefix;
// it was an internal error (HTTP 500).
func TestMACPrefixExhaustedDenied(t *testing.T) {
	e := newEnv(t, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "few-macs"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.70.0.0/16", MACPrefix: "02:42:ac:11:00"}})
	for i := range 256 {
		e.mustAdmit(pod("app", fmt.Sprintf("p%d", i), map[string]string{annotations.Pool: "few-macs"}))
	}
	e.mustDeny(pod("app", "one-more", map[string]string{annotations.Pool: "few-macs"}), "pool few-macs is out of MACs", "spec.macPrefix 02:42:ac:11:00")
}

// A default pool whose namespaceSelector is not a label selector (the API
// server takes an In without values) is named in the denial of a pod that
// would have had it, rather than the pod being told there is no pool.
func TestDefaultPoolWithBrokenSelectorNamed(t *testing.T) {
	e := newEnv(t)
	e.editPool("blue", func(s *v1alpha1.IPPoolSpec) {
		s.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "In"}}}
	})
	e.mustDeny(pod("app", "a", nil), "no IPPool for pod app/a", "IPPool blue has spec.default: true, but its spec.namespaceSelector is not a label selector", "values set can't be empty")
}

// Denials are counted by reason, so that a pool running out is told apart
// from users' mistakes.
func TestDenialsCountedByReason(t *testing.T) {
	e := newEnv(t, &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "broken"}, Spec: v1alpha1.IPPoolSpec{
		CIDR: "10.71.0.0/24", NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "In"}}},
	}})
	reg := prometheus.NewRegistry()
	e.h.Metrics = NewMetrics(reg)
	a := e.mustAdmit(pod("app", "a", map[string]string{annotations.Pool: "tiny"}))
	e.mustAdmit(pod("app", "b", map[string]string{annotations.Pool: "tiny"}))
	e.mustDeny(pod("app", "c", map[string]string{annotations.Pool: "tiny"}), "exhausted")
	e.mustDeny(pod("app", "d", map[string]string{annotations.Pool: "no-such-pool"}), "no-such-pool")
	ip := strings.Split(a.Annotations[annotations.AssignedIP], "/")[0]
	e.mustDeny(pod("app", "e", map[string]string{annotations.Pool: "tiny", annotations.IP: ip}), ip)
	e.mustDeny(pod("app", "f", map[string]string{annotations.Pool: "broken"}), "spec.namespaceSelector", "not a label selector")
	for reason, want := range map[string]float64{"exhausted": 1, "request": 1, "conflict": 1, "set_full": 0, "pool": 1} {
		if got := testutil.ToFloat64(e.h.Metrics.denials.WithLabelValues(reason)); got != want {
			t.Errorf("stickynet_webhook_denials_total{reason=%q} = %v; want %v", reason, got, want)
		}
	}
}
