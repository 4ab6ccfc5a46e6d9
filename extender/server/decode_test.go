package server

import (
	"encoding/json"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"

	"github.com/stickynet/stickynet/extender/demand"
)

// TestPartialPod checks that the Pod DecodeArgs returns, which holds only
// the fields the extender reads, gives the same demand and identification
// as the whole Pod decoded by encoding/json.
func TestPartialPod(t *testing.T) {
	bodies := map[string][]byte{}
	paths, err := filepath.Glob(filepath.Join("testdata", "requests", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if !strings.HasPrefix(filepath.Base(p), "bad-") {
			bodies[filepath.Base(p)] = fixture(t, filepath.Join("requests", filepath.Base(p)))
		}
	}
	vf := func(n int64) corev1.ResourceList {
		return corev1.ResourceList{
			"stickynet.io/sriov-fast": *resource.NewQuantity(n, resource.DecimalSI),
			corev1.ResourceCPU:        resource.MustParse("250m"),
		}
	}
	sidecars := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "dpdk-3", Namespace: "telco", UID: "u-3", Labels: map[string]string{"app": "dpdk"},
			Annotations: map[string]string{
				"stickynet.io/sriov-network": "fast", "stickynet.io/identity": "deployment/telco/dpdk",
				"stickynet.io/assigned-ip": "10.0.0.3/24", "kubectl.kubernetes.io/last-applied-configuration": `{"big": "json"}`,
			},
		},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "proxy", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways), Resources: corev1.ResourceRequirements{Requests: vf(1)}},
				{Name: "setup", Resources: corev1.ResourceRequirements{Requests: vf(3), Limits: vf(3)}},
			},
			Containers: []corev1.Container{{Name: "main", Image: "x", Resources: corev1.ResourceRequirements{Requests: vf(1), Limits: vf(1)}}},
		},
	}
	names := []string{"n1"}
	b, err := json.Marshal(&extenderv1.ExtenderArgs{Pod: sidecars, NodeNames: &names})
	if err != nil {
		t.Fatal(err)
	}
	bodies["sidecars"] = b

	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			var full extenderv1.ExtenderArgs
			if err := json.Unmarshal(body, &full); err != nil {
				t.Fatal(err)
			}
			got, err := DecodeArgs(body)
			if err != nil {
				t.Fatal(err)
			}
			if dg, df := demand.Of(got.Pod), demand.Of(full.Pod); dg != df {
				t.Errorf("demand %+v, from the whole pod %+v", dg, df)
			}
			if got.Pod.Name != full.Pod.Name || got.Pod.Namespace != full.Pod.Namespace || got.Pod.UID != full.Pod.UID ||
				!maps.Equal(got.Pod.Annotations, full.Pod.Annotations) {
				t.Errorf("metadata %+v, from the whole pod %+v", got.Pod.ObjectMeta, full.Pod.ObjectMeta)
			}
		})
	}
	if d := demand.Of(sidecars); d.VFs != 4 || !d.Requested || d.StickyKey != "deployment/telco/dpdk@10.0.0.3/24" {
		t.Errorf("the sidecar pod's demand %+v: want 4 VFs requested (setup 3 + sidecar 1)", d)
	}
}
