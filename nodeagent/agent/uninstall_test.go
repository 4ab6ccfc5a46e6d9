package agent_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

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
	must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	must(admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, metav1.CreateOptions{}))
	// The agent runs on the chart's ServiceAccount and RBAC.
	applyChartRBAC(t, admin, ns, "templates/nodeagent.yaml")
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
	kubeconfig := tokenKubeconfig(t, apisrv, admin, ns, name)

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

	agenttest.StartAgent(t, opts).Stop(t)
	if !exists(conflist) || !exists(plugin) {
		t.Fatalf("after a stop with the DaemonSet there: conflist there %v, plugin there %v; want both", exists(conflist), exists(plugin))
	}
	// A DaemonSet deleted and made again (its pods orphaned, then adopted)
	// while the agent runs takes it back.
	a := agenttest.StartAgent(t, opts)
	if err := admin.AppsV1().DaemonSets(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	must(admin.AppsV1().DaemonSets(ns).Create(ctx, ds.DeepCopy(), metav1.CreateOptions{}))
	time.Sleep(3 * time.Second) // for the watch to bring both (no event tells when)
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
	time.Sleep(3 * time.Second) // for the watch to bring it
	a.Stop(t)
	if exists(conflist) || exists(plugin) {
		t.Fatalf("after a stop with the DaemonSet no longer selecting the node: conflist there %v, plugin there %v; want neither", exists(conflist), exists(plugin))
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

// applyChartRBAC creates the ServiceAccount and RBAC objects that the chart
// renders in template for a release in ns, but those of the kinds in skip.
func applyChartRBAC(t *testing.T, k kubernetes.Interface, ns, template string, skip ...string) {
	t.Helper()
	cmd := exec.Command(testenv.NeedTool(t, "helm", "helm"), "template", "sn", filepath.Join("..", "..", "charts", "stickynet"),
		"--namespace", ns, "--kube-version", "v1.37.2", "--show-only", template)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	ctx := t.Context()
	n := 0
	for _, doc := range strings.Split(string(out), "\n---") {
		var kind struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &kind); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(skip, kind.Kind) {
			continue
		}
		var err error
		switch kind.Kind {
		case "ServiceAccount":
			o := &corev1.ServiceAccount{}
			if err = yaml.Unmarshal([]byte(doc), o); err == nil {
				_, err = k.CoreV1().ServiceAccounts(ns).Create(ctx, o, metav1.CreateOptions{})
			}
		case "ClusterRole":
			o := &rbacv1.ClusterRole{}
			if err = yaml.Unmarshal([]byte(doc), o); err == nil {
				_, err = k.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
			}
		case "ClusterRoleBinding":
			o := &rbacv1.ClusterRoleBinding{}
			if err = yaml.Unmarshal([]byte(doc), o); err == nil {
				_, err = k.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
			}
		case "Role":
			o := &rbacv1.Role{}
			if err = yaml.Unmarshal([]byte(doc), o); err == nil {
				_, err = k.RbacV1().Roles(ns).Create(ctx, o, metav1.CreateOptions{})
			}
		case "RoleBinding":
			o := &rbacv1.RoleBinding{}
			if err = yaml.Unmarshal([]byte(doc), o); err == nil {
				_, err = k.RbacV1().RoleBindings(ns).Create(ctx, o, metav1.CreateOptions{})
			}
		default:
			continue
		}
		if err != nil {
			t.Fatalf("create the chart's %s: %v", kind.Kind, err)
		}
		n++
	}
	if n == 0 {
		t.Fatalf("the chart's %s renders no ServiceAccount or RBAC", template)
	}
}

// tokenKubeconfig writes a kubeconfig with a token of the ServiceAccount.
func tokenKubeconfig(t *testing.T, apisrv *agenttest.APIServer, admin kubernetes.Interface, ns, name string) string {
	t.Helper()
	tok, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: apisrv.Config.Host, CertificateAuthorityData: apisrv.Config.CAData}
	kc.AuthInfos["agent"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	kc.Contexts["agent"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "agent"}
	kc.CurrentContext = "agent"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}

// An agent that may not watch its DaemonSet (the chart's Role missing) still
// starts and serves, without the uninstall's clean-up: the watch is not a
// reason to hold up pods.
func TestUninstallWatchRefusedDoesNotBlock(t *testing.T) {
	apisrv := agenttest.StartAPIServer(t, filepath.Join("..", "..", "charts", "stickynet", "crds"))
	admin := kubernetes.NewForConfigOrDie(apisrv.Config)
	const ns, name = "stickynet-system", "stickynet-nodeagent"
	if _, err := admin.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	applyChartRBAC(t, admin, ns, "templates/nodeagent.yaml", "Role", "RoleBinding")
	node := agenttest.NewNode(t)
	opts := node.Options(nil)
	opts.Pods, opts.Kubeconfig, opts.ResyncPeriod = nil, tokenKubeconfig(t, apisrv, admin, ns, name), time.Hour
	opts.DaemonSet = ns + "/" + name
	agenttest.StartAgent(t, opts) // fails unless it serves within 30 s
}
