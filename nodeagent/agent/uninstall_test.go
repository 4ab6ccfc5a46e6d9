package agent_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
)

// TestUninstallRemovesConflist: an agent that stops while its DaemonSet
// exists (a rolling update, a crash) leaves its conflist and plugin, so
// that pods created meanwhile wait for it; one that stops after its
// DaemonSet was deleted (helm uninstall) removes them, although helm deleted
// its ServiceAccount with the DaemonSet and the API server now refuses the
// agent. A file another install wrote since is left.
func TestUninstallRemovesConflist(t *testing.T) {
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
	// The agent runs on the chart's ServiceAccount and RBAC.
	kubeconfig := testenv.ChartAccountKubeconfig(t, apisrv.Config, chartDir, ns, "templates/nodeagent.yaml", name)
	must(admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}))
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nodeagent", Image: "stickynet"}}},
			},
		},
	}
	must(admin.AppsV1().DaemonSets(ns).Create(ctx, ds.DeepCopy(), metav1.CreateOptions{}))

	node := agenttest.NewNode(t)
	opts := node.Options(nil)
	opts.Pods, opts.Kubeconfig, opts.ResyncPeriod = nil, kubeconfig, time.Hour
	opts.DaemonSet = ns + "/" + name
	opts.CNIBinDir, opts.CNIPluginSource = filepath.Join(node.Dir, "bin"), filepath.Join(node.Dir, "plugin")
	if err := os.WriteFile(opts.CNIPluginSource, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	conflist, plugin := filepath.Join(opts.CNIConfDir, agent.DefaultCNIConfName), filepath.Join(opts.CNIBinDir, "stickynet")
	exists := func(path string) bool {
		_, err := os.Stat(path)
		return err == nil
	}

	// The agent's resources, too, stay on the node across a stop that is
	// not a leave, and go with its conflist when it leaves.
	network := func() string {
		t.Helper()
		n, err := admin.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		q, ok := n.Status.Allocatable[annotations.NetworkResource]
		if !ok {
			return "none"
		}
		return q.String()
	}

	a := agenttest.StartAgent(t, opts)
	waitFor(t, annotations.NetworkResource+" advertised", func() bool { return network() == "110" })
	a.Stop(t)
	if !exists(conflist) || !exists(plugin) || network() != "110" {
		t.Fatalf("after a stop with the DaemonSet there: conflist there %v, plugin there %v, %s %s; want both, and 110", exists(conflist), exists(plugin), annotations.NetworkResource, network())
	}
	// A DaemonSet deleted and made again (its pods orphaned, then adopted)
	// while the agent runs takes it back.
	a = agenttest.StartAgent(t, opts)
	if err := admin.AppsV1().DaemonSets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	must(admin.AppsV1().DaemonSets(ns).Create(ctx, ds.DeepCopy(), metav1.CreateOptions{}))
	time.Sleep(3 * time.Second) // for the watch to bring both (no event tells when)
	// Taken off the Node (a Node registered again, a kubelet that zeroed
	// it), it is put back at once through the agent's watch of its Node
	// (the resync period is an hour here), which the chart's RBAC allows.
	remove := []byte(`[{"op":"remove","path":"/status/capacity/stickynet.io~1network"},{"op":"remove","path":"/status/allocatable/stickynet.io~1network"}]`)
	must(admin.CoreV1().Nodes().Patch(ctx, "node-1", types.JSONPatchType, remove, metav1.PatchOptions{}, "status"))
	waitFor(t, annotations.NetworkResource+" put back", func() bool { return network() == "110" })
	a.Stop(t)
	if !exists(conflist) || !exists(plugin) {
		t.Fatalf("after a stop with the DaemonSet made again: conflist there %v, plugin there %v; want both", exists(conflist), exists(plugin))
	}
	// A DaemonSet narrowed off the node (nodeAgent.nodeSelector): the agent
	// leaves the node for good.
	a = agenttest.StartAgent(t, opts)
	narrowed, err := admin.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	narrowed.Spec.Template.Spec.NodeSelector = map[string]string{"openvswitch": "yes"}
	must(admin.AppsV1().DaemonSets(ns).Update(ctx, narrowed, metav1.UpdateOptions{}))
	// The conflist removed by hand meanwhile is no other agent's: the
	// resources go all the same.
	if err := os.Remove(conflist); err != nil {
		t.Fatal(err)
	}
	a.Stop(t) // at once: the stop reads the DaemonSet, whether or not the watch has brought the edit
	if exists(conflist) || exists(plugin) || network() != "none" {
		t.Fatalf("after a stop with the DaemonSet no longer selecting the node: conflist there %v, plugin there %v, %s %s; want neither, and none", exists(conflist), exists(plugin), annotations.NetworkResource, network())
	}

	a = agenttest.StartAgent(t, opts)
	// helm uninstall: the DaemonSet, then the agent's account.
	if err := admin.AppsV1().DaemonSets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := admin.CoreV1().ServiceAccounts(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	asAgent := kubernetes.NewForConfigOrDie(rest.CopyConfig(cfg))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := asAgent.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{}); err != nil {
			break // the deleted account's token is refused
		}
		if time.Now().After(deadline) {
			t.Fatal("the API server still takes the deleted ServiceAccount's token")
		}
	}
	// A new install on the node, meanwhile, wrote its own plugin.
	replaced := plugin + ".new"
	if err := os.WriteFile(replaced, []byte("#!/bin/sh\n# new\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(replaced, plugin); err != nil {
		t.Fatal(err)
	}
	a.Stop(t)
	if exists(conflist) {
		t.Error("conflist still there after the agent stopped with its DaemonSet deleted; want it removed")
	}
	if !exists(plugin) {
		t.Error("plugin binary another install wrote was removed; want it left")
	}
}

// An agent that may not watch its DaemonSet (the chart's Role missing) still
// starts and serves, without the uninstall's clean-up: the watch is not a
// reason to hold up pods.
func TestUninstallWatchRefusedDoesNotBlock(t *testing.T) {
	apisrv := agenttest.StartAPIServer(t, filepath.Join("..", "..", "charts", "stickynet", "crds"))
	const ns, name = "stickynet-system", "stickynet-nodeagent"
	kubeconfig := testenv.ChartAccountKubeconfig(t, apisrv.Config, chartDir, ns, "templates/nodeagent.yaml", name, "Role", "RoleBinding")
	node := agenttest.NewNode(t)
	opts := node.Options(nil)
	opts.Pods, opts.Kubeconfig, opts.ResyncPeriod = nil, kubeconfig, time.Hour
	opts.DaemonSet = ns + "/" + name
	agenttest.StartAgent(t, opts) // fails unless it serves within 30 s
}

// chartDir is the chart, whose accounts the agent runs on.
var chartDir = filepath.Join("..", "..", "charts", "stickynet")
