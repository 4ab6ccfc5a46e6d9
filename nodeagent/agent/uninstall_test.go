package agent_test

import (
	"os"
	"path/filepath"
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
	must(admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}))
	must(admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: name}},
	}, metav1.CreateOptions{}))
	labels := map[string]string{"app": name}
	must(admin.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nodeagent", Image: "stickynet"}}},
			},
		},
	}, metav1.CreateOptions{}))
	tok, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
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

	a := agenttest.StartAgent(t, opts)
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
