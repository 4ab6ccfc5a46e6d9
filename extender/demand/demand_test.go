package demand

import (
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const fast = corev1.ResourceName("stickynet.io/sriov-fast")

func container(req corev1.ResourceList) corev1.Container {
	return corev1.Container{Name: "c", Resources: corev1.ResourceRequirements{Requests: req}}
}

func vfs(n int64) corev1.ResourceList {
	return corev1.ResourceList{fast: *resource.NewQuantity(n, resource.DecimalSI), corev1.ResourceCPU: resource.MustParse("1")}
}

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		ann  map[string]string
		reqs corev1.ResourceList
		want Demand
	}{
		{name: "no annotations", want: Demand{}},
		{name: "foreign annotations only", ann: map[string]string{"example.com/x": "y"}, want: Demand{}},
		{
			name: "pool and statefulset identity",
			ann:  map[string]string{"stickynet.io/assigned-pool": "blue", "stickynet.io/identity": "statefulset/ns/web/0"},
			want: Demand{Pool: "blue", StickyKey: "statefulset/ns/web/0"},
		},
		{
			name: "network without request needs one VF",
			ann:  map[string]string{"stickynet.io/sriov-network": "fast", "stickynet.io/assigned-pool": "p"},
			want: Demand{Pool: "p", Network: "fast", Resource: fast, VFs: 1},
		},
		// A pod the webhook did not admit (host network, a namespace not
		// opted in) asks for nothing, whatever it carries: before, its
		// network and copied identity were enforced and counted.
		{
			name: "network on a pod not admitted",
			ann:  map[string]string{"stickynet.io/sriov-network": "fast"},
			reqs: vfs(1),
			want: Demand{},
		},
		{
			name: "identity on a pod not admitted",
			ann:  map[string]string{"stickynet.io/identity": "statefulset/ns/web/0"},
			want: Demand{},
		},
		{
			name: "network with request of two VFs",
			ann:  map[string]string{"stickynet.io/sriov-network": "fast", "stickynet.io/assigned-pool": "p"},
			reqs: vfs(2),
			want: Demand{Pool: "p", Network: "fast", Resource: fast, VFs: 2, Requested: true},
		},
		{
			name: "deployment identity is keyed by address",
			ann:  map[string]string{"stickynet.io/identity": "deployment/ns/api", "stickynet.io/assigned-ip": "10.0.0.5/24,fd00::5/64", "stickynet.io/assigned-pool": "p"},
			want: Demand{Pool: "p", StickyKey: "deployment/ns/api@10.0.0.5/24"},
		},
		{
			name: "deployment identity without address has no key",
			ann:  map[string]string{"stickynet.io/identity": "replicaset/ns/api", "stickynet.io/assigned-pool": "p"},
			want: Demand{Pool: "p"},
		},
		{
			name: "unparsable identity is used as is",
			ann:  map[string]string{"stickynet.io/identity": "weird", "stickynet.io/assigned-pool": "p"},
			want: Demand{Pool: "p", StickyKey: "weird"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}}
			if tc.reqs != nil {
				pod.Spec.Containers = []corev1.Container{container(tc.reqs)}
			}
			got := Of(pod)
			if got != tc.want {
				t.Errorf("Of = %+v, want %+v", got, tc.want)
			}
			if got.Placed() != (tc.want.Pool != "" || tc.want.Network != "") {
				t.Errorf("Placed = %v for %+v", got.Placed(), got)
			}
		})
	}
}

func TestRequestsAndUsage(t *testing.T) {
	always := ptr.To(corev1.ContainerRestartPolicyAlways)
	other := corev1.ResourceName("stickynet.io/sriov-slow")
	for _, tc := range []struct {
		name      string
		pod       corev1.PodSpec
		ann       map[string]string
		wantReq   map[corev1.ResourceName]int64
		wantUsage map[corev1.ResourceName]int64
	}{
		{name: "no requests", pod: corev1.PodSpec{Containers: []corev1.Container{container(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")})}}},
		{
			name:      "containers add up",
			pod:       corev1.PodSpec{Containers: []corev1.Container{container(vfs(1)), container(vfs(2))}},
			wantReq:   map[corev1.ResourceName]int64{fast: 3},
			wantUsage: map[corev1.ResourceName]int64{fast: 3},
		},
		{
			name: "init container peak wins when larger",
			pod: corev1.PodSpec{
				InitContainers: []corev1.Container{container(vfs(4))},
				Containers:     []corev1.Container{container(vfs(1))},
			},
			wantReq:   map[corev1.ResourceName]int64{fast: 4},
			wantUsage: map[corev1.ResourceName]int64{fast: 4},
		},
		{
			name: "sidecars add to containers and to later init containers",
			pod: corev1.PodSpec{
				InitContainers: []corev1.Container{
					{Name: "side", RestartPolicy: always, Resources: corev1.ResourceRequirements{Requests: vfs(1)}},
					container(vfs(2)),
				},
				Containers: []corev1.Container{container(vfs(1))},
			},
			wantReq:   map[corev1.ResourceName]int64{fast: 3}, // init peak 2+1 = 3 > 1+1
			wantUsage: map[corev1.ResourceName]int64{fast: 3},
		},
		{
			name:      "annotation without request holds one VF",
			ann:       map[string]string{"stickynet.io/sriov-network": "fast", "stickynet.io/assigned-pool": "p"},
			pod:       corev1.PodSpec{Containers: []corev1.Container{container(corev1.ResourceList{other: resource.MustParse("1")})}},
			wantReq:   map[corev1.ResourceName]int64{other: 1},
			wantUsage: map[corev1.ResourceName]int64{other: 1, fast: 1},
		},
		{
			name:      "annotation on a pod not admitted holds no VF",
			ann:       map[string]string{"stickynet.io/sriov-network": "fast"},
			pod:       corev1.PodSpec{Containers: []corev1.Container{container(corev1.ResourceList{other: resource.MustParse("1")})}},
			wantReq:   map[corev1.ResourceName]int64{other: 1},
			wantUsage: map[corev1.ResourceName]int64{other: 1},
		},
		{
			name: "prefix alone is not a VF resource",
			pod:  corev1.PodSpec{Containers: []corev1.Container{container(corev1.ResourceList{"stickynet.io/sriov-": resource.MustParse("1")})}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}, Spec: tc.pod}
			if got := Requests(pod); !maps.Equal(got, tc.wantReq) {
				t.Errorf("Requests = %v, want %v", got, tc.wantReq)
			}
			if got := Usage(pod); !maps.Equal(got, tc.wantUsage) {
				t.Errorf("Usage = %v, want %v", got, tc.wantUsage)
			}
		})
	}
}
