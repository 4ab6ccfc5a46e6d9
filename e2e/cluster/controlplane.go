package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"golang.org/x/sync/errgroup"

	"github.com/stickynet/stickynet/internal/testenv"
)

const (
	apiserverPort = 6443
	// ServiceCIDR is the cluster's service IP range. No kube-proxy runs:
	// services exist as API objects only.
	ServiceCIDR = "10.96.0.0/16"
)

// controlPlaneCerts are the credentials of the control plane.
type controlPlaneCerts struct {
	serving, kubeletClient testenv.KeyPair
	saPub, saKey           string
	kcmConfig, schedConfig string
	adminKeyPair           testenv.KeyPair
	controlPlaneCgroup     string
}

func (c *Cluster) startControlPlaneAndNodes(ctx context.Context) error {
	var err error
	c.pki, err = testenv.NewPKI(filepath.Join(c.dir, "pki"))
	if err != nil {
		return err
	}
	cp, err := c.issueControlPlane()
	if err != nil {
		return err
	}
	if c.restConfig, c.client, err = loadRESTConfig(c.kubeconfig); err != nil {
		return err
	}
	if err := c.host.CreateCgroup(cp.controlPlaneCgroup); err != nil {
		return err
	}

	for i := range c.cfg.Nodes {
		n, err := c.prepareRealNode(i)
		if err != nil {
			return err
		}
		c.nodes = append(c.nodes, n)
	}

	// The control plane, the images and the nodes' runtimes come up side by side.
	g, gctx := errgroup.WithContext(ctx)
	imgs := make(chan imageArchives, 1)
	g.Go(func() error {
		a, err := c.buildImages(gctx)
		imgs <- a
		return err
	})
	g.Go(func() error { return c.startAPIServer(gctx, cp) })
	for _, n := range c.nodes {
		g.Go(func() error { return n.startRuntime(gctx) })
	}
	g.Go(func() error { return c.prepareSimNodes(gctx) })
	if err := g.Wait(); err != nil {
		return err
	}
	archives := <-imgs

	g, gctx = errgroup.WithContext(ctx)
	g.Go(func() error { return c.startControllers(gctx, cp) })
	for _, n := range c.nodes {
		g.Go(func() error {
			if err := n.importImages(gctx, archives.Pause, archives.Toolbox); err != nil {
				return err
			}
			return n.startKubelet(gctx)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if c.cfg.BeforeReady != nil {
		if err := c.cfg.BeforeReady(ctx, c); err != nil {
			return err
		}
	}
	if err := c.waitNodesReady(ctx); err != nil {
		return err
	}
	if c.cfg.SimNodes > 0 {
		if err := c.startSimulator(ctx); err != nil {
			return err
		}
	}
	return c.waitServiceAccount(ctx, metav1.NamespaceDefault)
}

func (c *Cluster) issueControlPlane() (controlPlaneCerts, error) {
	cp := controlPlaneCerts{controlPlaneCgroup: c.state.Cgroup() + "/system/control-plane"}
	var err error
	gw := net.IP(c.plan.gateway().AsSlice())
	if cp.serving, err = c.pki.Issue("apiserver", testenv.CertSpec{
		CN:     "kube-apiserver",
		IPs:    []net.IP{gw, net.ParseIP("10.96.0.1"), net.ParseIP("127.0.0.1")},
		DNS:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		Server: true,
	}); err != nil {
		return cp, err
	}
	if cp.kubeletClient, err = c.pki.Issue("apiserver-kubelet-client", testenv.CertSpec{
		CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}, Client: true,
	}); err != nil {
		return cp, err
	}
	if cp.saPub, cp.saKey, err = c.pki.ServiceAccountKeys(); err != nil {
		return cp, err
	}
	server := c.APIServerURL()
	if cp.adminKeyPair, err = c.pki.Issue("admin", testenv.CertSpec{CN: "kubernetes-admin", Orgs: []string{"system:masters"}, Client: true}); err != nil {
		return cp, err
	}
	if err := writeKubeconfig(c.kubeconfig, server, c.pki.CAPEM, "kubernetes-admin", cp.adminKeyPair); err != nil {
		return cp, err
	}
	for _, u := range []struct {
		name, cn string
		dst      *string
	}{
		{"kube-controller-manager", "system:kube-controller-manager", &cp.kcmConfig},
		{"kube-scheduler", "system:kube-scheduler", &cp.schedConfig},
	} {
		kp, err := c.pki.Issue(u.name, testenv.CertSpec{CN: u.cn, Client: true})
		if err != nil {
			return cp, err
		}
		*u.dst = filepath.Join(c.pki.Dir, u.name+".kubeconfig")
		if err := writeKubeconfig(*u.dst, server, c.pki.CAPEM, u.cn, kp); err != nil {
			return cp, err
		}
	}
	return cp, nil
}

func (c *Cluster) startAPIServer(ctx context.Context, cp controlPlaneCerts) error {
	var err error
	c.etcd, err = testenv.RunEtcd(testenv.EtcdOptions{
		Binary: c.bin.Etcd,
		Dir:    filepath.Join(c.dir, "etcd"),
		Start:  func(cmd *exec.Cmd) error { return c.host.StartInCgroup(cmd, cp.controlPlaneCgroup) },
	})
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	gw := c.plan.gateway().String()
	args := []string{
		c.bin.APIServer,
		"--etcd-servers=" + c.etcd.Endpoint,
		"--bind-address=" + gw,
		"--advertise-address=" + gw,
		fmt.Sprintf("--secure-port=%d", apiserverPort),
		"--tls-cert-file=" + cp.serving.CertFile,
		"--tls-private-key-file=" + cp.serving.KeyFile,
		"--client-ca-file=" + c.pki.CAFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + cp.saPub,
		"--service-account-signing-key-file=" + cp.saKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate=" + cp.kubeletClient.CertFile,
		"--kubelet-client-key=" + cp.kubeletClient.KeyFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	args = append(args, c.cfg.APIServerFlags...)
	c.apiserver, err = c.startProcess(ctx, "kube-apiserver", "", cp.controlPlaneCgroup, nil, args...)
	if err != nil {
		return err
	}
	return waitFor(ctx, "kube-apiserver /readyz", 100*time.Millisecond, c.apiserver, func(ctx context.Context) (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		b, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		return err == nil && strings.TrimSpace(string(b)) == "ok", err
	})
}

func (c *Cluster) startControllers(ctx context.Context, cp controlPlaneCerts) error {
	var err error
	c.kcm, err = c.startProcess(ctx, "kube-controller-manager", "", cp.controlPlaneCgroup, nil,
		c.bin.ControllerManager,
		"--kubeconfig="+cp.kcmConfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+cp.saKey,
		"--root-ca-file="+c.pki.CAFile,
		"--kube-api-qps=100",
		"--kube-api-burst=200",
		"--v=1",
	)
	if err != nil {
		return err
	}
	s, err := c.startProcess(ctx, "kube-scheduler", "", cp.controlPlaneCgroup, nil,
		c.bin.Scheduler,
		"--kubeconfig="+cp.schedConfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--v=1",
	)
	if err != nil {
		return err
	}
	c.scheds = append(c.scheds, s)
	c.schedKubeconfig = cp.schedConfig
	for _, sc := range c.cfg.Schedulers {
		if err := c.StartScheduler(ctx, sc); err != nil {
			return err
		}
	}
	return nil
}

// StartScheduler starts one more kube-scheduler with s's configuration,
// using the default scheduler's credentials (system:kube-scheduler). Pods
// choose it through spec.schedulerName, as named in its profiles.
func (c *Cluster) StartScheduler(ctx context.Context, s Scheduler) error {
	if s.Name == "" {
		return fmt.Errorf("scheduler needs a name")
	}
	cfg, err := schedulerConfig(s.Config, c.schedKubeconfig)
	if err != nil {
		return fmt.Errorf("scheduler %s: %w", s.Name, err)
	}
	path := filepath.Join(c.dir, "schedulers", s.Name+".yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create scheduler config folder: %w", err)
	}
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		return fmt.Errorf("write scheduler config: %w", err)
	}
	p, err := c.startProcess(ctx, "kube-scheduler-"+s.Name, "", c.state.Cgroup()+"/system/control-plane", nil,
		c.bin.Scheduler, "--config="+path, "--secure-port=0", "--v=1")
	if err != nil {
		return err
	}
	c.schedMu.Lock()
	c.scheds = append(c.scheds, p)
	c.schedMu.Unlock()
	// A bad configuration makes the scheduler exit at once: report it here.
	select {
	case <-p.Done():
		return p.ExitError()
	case <-time.After(time.Second):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StopScheduler stops the scheduler that StartScheduler started as s.Name.
func (c *Cluster) StopScheduler(name string) error {
	c.schedMu.Lock()
	var p *process
	for i, s := range c.scheds {
		if s.Name == "kube-scheduler-"+name {
			p = s
			c.scheds = append(c.scheds[:i:i], c.scheds[i+1:]...)
			break
		}
	}
	c.schedMu.Unlock()
	if p == nil {
		return fmt.Errorf("no scheduler %s runs", name)
	}
	p.Stop(5 * time.Second)
	return nil
}

// waitServiceAccount waits until the controller manager has made the
// default service account of ns, without which pods are refused.
func (c *Cluster) waitServiceAccount(ctx context.Context, ns string) error {
	return waitFor(ctx, "service account "+ns+"/default", 100*time.Millisecond, c.kcm, func(ctx context.Context) (bool, error) {
		_, err := c.client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// CreateNamespace creates namespace name with labels and waits until pods
// can be created in it (its default service account exists).
func (c *Cluster) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return c.waitServiceAccount(ctx, name)
}

// Kubectl runs kubectl against the cluster as admin and returns its
// combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.bin.Kubectl, append([]string{"--kubeconfig=" + c.kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// waitNodesReady waits until every real node is Ready and removes the
// not-ready taint that the node lifecycle controller may not have lifted
// yet.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	if len(c.nodes) == 0 {
		return nil
	}
	log := klog.FromContext(ctx)
	ready := map[string]bool{}
	return waitFor(ctx, "real nodes Ready", 200*time.Millisecond, nil, func(ctx context.Context) (bool, error) {
		for _, n := range c.nodes {
			if n.kubelet != nil && n.kubelet.Exited() {
				return false, n.kubelet.ExitError()
			}
		}
		list, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for i := range list.Items {
			node := &list.Items[i]
			if ready[node.Name] || !nodeReady(node) {
				continue
			}
			done, err := c.untaintNotReady(ctx, node)
			if err != nil {
				return false, err
			}
			if !done {
				continue
			}
			ready[node.Name] = true
			log.V(1).Info("Node ready", "node", node.Name)
		}
		for _, n := range c.nodes {
			if !ready[n.Name] {
				return false, nil
			}
		}
		return true, nil
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// untaintNotReady removes the not-ready taint from a Ready node; false
// means another writer got there first and the node must be looked at again.
func (c *Cluster) untaintNotReady(ctx context.Context, node *corev1.Node) (bool, error) {
	var keep []corev1.Taint
	for _, t := range node.Spec.Taints {
		if t.Key != corev1.TaintNodeNotReady {
			keep = append(keep, t)
		}
	}
	if len(keep) == len(node.Spec.Taints) {
		return true, nil
	}
	n := node.DeepCopy()
	n.Spec.Taints = keep
	_, err := c.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("remove not-ready taint of %s: %w", node.Name, err)
	}
	return true, nil
}
