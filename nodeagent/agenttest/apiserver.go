package agenttest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/stickynet/stickynet/internal/testenv"
)

// APIServer is a real kube-apiserver with its etcd (the binaries `make
// tools` builds), for tests of the agent's informer and for benchmarks that
// run the agent binary.
type APIServer struct {
	Config     *rest.Config
	Kubeconfig string // a kubeconfig file for Config
}

// StartAPIServer starts etcd and kube-apiserver with the CustomResourceDefinitions
// in crdDirs installed; the test's cleanup stops them.
func StartAPIServer(t testing.TB, crdDirs ...string) *APIServer {
	t.Helper()
	testenv.Integration(t)
	env := &envtest.Environment{
		CRDDirectoryPaths:     crdDirs,
		ErrorIfCRDPathMissing: len(crdDirs) > 0,
		// envtest's default of 20 s for each of etcd and kube-apiserver is
		// short on a busy 2-vCPU machine.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlane: envtest.ControlPlane{
			APIServer: &envtest.APIServer{Path: testenv.NeedTool(t, "kube", "kube-apiserver")},
			Etcd:      &envtest.Etcd{Path: testenv.NeedTool(t, "etcd", "etcd")},
		},
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube-apiserver: %v", err)
		}
	})
	dir := t.TempDir()
	path := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return &APIServer{Config: cfg, Kubeconfig: path}
}
