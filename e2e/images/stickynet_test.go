package images_test

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/e2e/images"
	"github.com/stickynet/stickynet/e2e/stickynet"
	"github.com/stickynet/stickynet/internal/testenv"
)

// TestStickynetImageRuns builds stickynet's image from e2e's static build
// (make image strips its own) and runs it on a real node (kubelet,
// containerd): each of its four programs answers --help (the CNI plugin
// VERSION), the webhook and extender as the chart's user 65532 with a
// read-only root, and ovs-vsctl, with the libraries the image carries,
// reads the node's ovsdb-server, as the node agent's does. Before, no image
// was built at all (the chart named one nobody made).
func TestStickynetImageRuns(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := stickynet.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	src, err := images.FindStickynetSources(filepath.Dir(bin.Webhook))
	if err != nil {
		t.Fatal(err)
	}
	const name = "stickynet.local/stickynet:test"
	img, err := images.StickynetImage(name, src)
	if err != nil {
		t.Fatal(err)
	}
	tar := filepath.Join(t.TempDir(), "stickynet.tar")
	if err := images.WriteArchiveFile(tar, img); err != nil {
		t.Fatal(err)
	}
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: 1})
	node := c.Nodes()[0]
	if err := c.ImportImage(ctx, node.Name, tar); err != nil {
		t.Fatal(err)
	}

	nonroot := &corev1.SecurityContext{RunAsUser: ptr.To(int64(65532)), RunAsNonRoot: ptr.To(true), ReadOnlyRootFilesystem: ptr.To(true)}
	ctr := func(n string, sc *corev1.SecurityContext, env []corev1.EnvVar, cmd ...string) corev1.Container {
		return corev1.Container{
			Name: n, Image: name, ImagePullPolicy: corev1.PullNever, Command: cmd, Env: env, SecurityContext: sc,
			VolumeMounts: []corev1.VolumeMount{{Name: "ovs", MountPath: "/ovs"}},
		}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "image", Namespace: metav1.NamespaceDefault},
		Spec: corev1.PodSpec{
			NodeName: node.Name, RestartPolicy: corev1.RestartPolicyNever, HostNetwork: true,
			Volumes: []corev1.Volume{{Name: "ovs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: filepath.Dir(node.OVSDBSocket)}}}},
			Containers: []corev1.Container{
				ctr("webhook", nonroot, nil, "stickynet-webhook", "--help"),
				ctr("extender", nonroot, nil, "stickynet-extender", "--help"),
				ctr("nodeagent", nil, nil, "stickynet-nodeagent", "--help"),
				ctr("cni", nil, []corev1.EnvVar{{Name: "CNI_COMMAND", Value: "VERSION"}}, "stickynet"),
				ctr("ovs-vsctl", nil, nil, "ovs-vsctl", "--db=unix:/ovs/"+filepath.Base(node.OVSDBSocket), "show"),
				ctr("ovs-ofctl", nil, nil, "ovs-ofctl", "--version"),
			},
		},
	}
	cs := c.Client()
	if _, err := cs.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	testenv.Eventually(ctx, t, 3*time.Minute, "the image's pod done", func() (bool, string) {
		if got, err = cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
		return got.Status.Phase == corev1.PodSucceeded || got.Status.Phase == corev1.PodFailed, fmt.Sprintf("%+v", got.Status)
	})
	// The node's OVS database as the host's ovs-vsctl shows it: its UUID first.
	show, err := exec.CommandContext(ctx, "ovs-vsctl", "--db=unix:"+node.OVSDBSocket, "show").Output()
	if err != nil || len(strings.Fields(string(show))) == 0 {
		t.Fatalf("ovs-vsctl show on the host: %v %q", err, show)
	}
	want := map[string]string{"cni": `"cniVersion"`, "ovs-vsctl": strings.Fields(string(show))[0], "ovs-ofctl": "Open vSwitch", "webhook": "-etcd-endpoints"}
	for _, st := range got.Status.ContainerStatuses {
		log := logs(ctx, t, c, pod.Namespace, pod.Name, st.Name)
		if term := st.State.Terminated; term == nil || term.ExitCode != 0 {
			t.Errorf("container %s of the image: %+v; want exit 0\n%s", st.Name, st.State, log)
		}
		if w := want[st.Name]; w != "" && !strings.Contains(log, w) {
			t.Errorf("container %s printed %q; want %q in it", st.Name, log, w)
		}
	}
	if len(got.Status.ContainerStatuses) != len(pod.Spec.Containers) {
		t.Errorf("%d container statuses; want %d", len(got.Status.ContainerStatuses), len(pod.Spec.Containers))
	}
}

func logs(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, pod, container string) string {
	t.Helper()
	rc, err := c.Client().CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).Stream(ctx)
	if err != nil {
		return "(no logs: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}
