package admission

import (
	"encoding/json"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestBuildPatch(t *testing.T) {
	base := func() *corev1.Pod {
		return &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}
	}
	tests := []struct {
		name    string
		orig    func() *corev1.Pod
		mutate  func(p *corev1.Pod)
		wantOps int
	}{
		{"no change", base, func(*corev1.Pod) {}, 0},
		{"annotations from none", base, func(p *corev1.Pod) {
			p.Annotations = map[string]string{"stickynet.io/assigned-ip": "10.0.0.5/24", "a/b~c": "x"}
		}, 1},
		{
			"add, replace and remove keys",
			func() *corev1.Pod {
				p := base()
				p.Annotations = map[string]string{"keep": "1", "change": "old", "drop/me": "x"}
				return p
			},
			func(p *corev1.Pod) {
				p.Annotations = map[string]string{"keep": "1", "change": "new", "new~key": "y"}
			}, 3,
		},
		{
			"VF resource and scheduler",
			func() *corev1.Pod {
				p := base()
				p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}
				return p
			},
			func(p *corev1.Pod) {
				c := &p.Spec.Containers[0]
				c.Resources.Requests = corev1.ResourceList{"stickynet.io/sriov-fast": resource.MustParse("1")}
				c.Resources.Limits["stickynet.io/sriov-fast"] = resource.MustParse("1")
				p.Spec.SchedulerName = "stickynet-scheduler"
			}, 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := tt.orig()
			out := orig.DeepCopy()
			tt.mutate(out)
			ops := buildPatch(orig, out)
			if len(ops) != tt.wantOps {
				t.Fatalf("%d ops %v; want %d", len(ops), ops, tt.wantOps)
			}
			raw, _ := json.Marshal(orig)
			opsJSON, _ := json.Marshal(ops)
			patch, err := jsonpatch.DecodePatch(opsJSON)
			if err != nil {
				t.Fatal(err)
			}
			applied, err := patch.Apply(raw)
			if err != nil {
				t.Fatalf("apply %s: %v", opsJSON, err)
			}
			got := &corev1.Pod{}
			if err := json.Unmarshal(applied, got); err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(got, out) {
				t.Fatalf("patched pod differs:\n got %+v\nwant %+v", got.Annotations, out.Annotations)
			}
		})
	}
}
