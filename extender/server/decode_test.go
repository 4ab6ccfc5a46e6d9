package server

import (
	"bytes"
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
				"stickynet.io/sriov-network": "fast", "stickynet.io/identity": "deployment/telco/dpdk", "stickynet.io/assigned-pool": "telco",
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

// TestIsPlain checks the word-at-a-time isPlain against a byte-at-a-time
// reading: every byte value at every position of buffers of 0 to 70 bytes
// (the 32-byte, 8-byte and 1-byte steps), on plain fillers that sit next
// to the special values ('!' after ' ', '[' before '\\', '~' before DEL).
func TestIsPlain(t *testing.T) {
	ref := func(b []byte) bool {
		for _, c := range b {
			if c < 0x20 || c >= 0x7f || c == '\\' {
				return false
			}
		}
		return true
	}
	for _, fill := range []byte{' ', '!', '[', ']', '~', 'a', '"'} {
		for n := 0; n <= 70; n++ {
			b := bytes.Repeat([]byte{fill}, n)
			if !isPlain(b) {
				t.Fatalf("isPlain(%q) = false, want true", b)
			}
			for p := range n {
				for c := range 256 {
					b[p] = byte(c)
					if got, want := isPlain(b), ref(b); got != want {
						t.Fatalf("isPlain(%q) = %v, want %v (byte %#x at %d of %d)", b, got, want, c, p, n)
					}
				}
				b[p] = fill
			}
		}
	}
}
