package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// Helm runs helm for the Kubernetes version the tests run (hack/tool-versions'
// kube; helm's built-in default is older than the chart allows) unless args
// name one, with folders of its own.
func Helm(t testing.TB, args ...string) (stdout []byte, stderr string, err error) {
	t.Helper()
	bin := NeedTool(t, "helm", "helm")
	if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--kube-version") }) {
		kube, err := ToolVersion("kube")
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--kube-version", kube)
	}
	cmd := exec.Command(bin, args...)
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	stdout, err = cmd.Output()
	return stdout, errBuf.String(), err
}

// chartAccountKinds are the kinds ApplyChartAccount creates.
var chartAccountKinds = []string{
	"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Secret",
	"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
}

// ApplyChartAccount renders template of the chart for a release in ns and
// creates, through cfg, what it has of a component's account: its
// ServiceAccount, RBAC and Secret objects and the admission policies that
// limit it, but those of the kinds in skip.
// It returns how many it created.
func ApplyChartAccount(t testing.TB, cfg *rest.Config, chart, ns, template string, skip ...string) int {
	t.Helper()
	out, stderr, err := Helm(t, "template", "sn", chart, "--namespace", ns, "--show-only", template)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, stderr)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, doc := range strings.Split(string(out), "\n---") {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatal(err)
		}
		if kind := obj.GetKind(); !slices.Contains(chartAccountKinds, kind) || slices.Contains(skip, kind) {
			continue
		}
		if err := c.Create(t.Context(), obj); err != nil {
			t.Fatalf("create the chart's %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		n++
	}
	return n
}

// ServiceAccountKubeconfig writes a kubeconfig for cfg's API server that
// authenticates with a token of the ServiceAccount ns/name.
func ServiceAccountKubeconfig(t testing.TB, cfg *rest.Config, ns, name string) string {
	t.Helper()
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	expiry := int64(3 * 3600)
	tok, err := k.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: "c", AuthInfo: name}
	kc.CurrentContext = name
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// ChartAccountKubeconfig creates namespace ns (if missing), then the
// account of the chart's template for a release there (ApplyChartAccount,
// but the kinds in skip; a template that renders none fails the test), and
// returns a kubeconfig with a token of its ServiceAccount account.
func ChartAccountKubeconfig(t testing.TB, cfg *rest.Config, chart, ns, template, account string, skip ...string) string {
	t.Helper()
	k, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if ApplyChartAccount(t, cfg, chart, ns, template, skip...) == 0 {
		t.Fatalf("the chart's %s renders no ServiceAccount or RBAC", template)
	}
	return ServiceAccountKubeconfig(t, cfg, ns, account)
}
