package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/internal/testenv"
)

// Labels the harness puts on nodes.
const (
	// SimulatedLabel is "true" on simulated nodes and "false" on real ones.
	SimulatedLabel = "e2e.stickynet.io/simulated"
	// uplinkName is the uplink's name inside every node namespace.
	uplinkName = "eth0"
	// nodeBridgeName is the Linux bridge holding the uplink in a node namespace.
	nodeBridgeName = "cni0"
)

// realNode is a node with its own kubelet, containerd and Open vSwitch.
type realNode struct {
	Node
	c *Cluster

	cgroup, sysCgroup         string // kubelet's cgroupRoot; where its daemons run
	containerdConfig          string
	kubeletConfig, kubeconfig string
	ovsDir                    string

	ovsdb, vswitchd, containerd, kubelet *process
}

// newNode fills the parts of Node common to real and simulated nodes and
// wires its namespace: the uplink into the fabric bridge and, unless the
// CNI configuration wants a plain uplink, the node bridge holding it.
func (c *Cluster) newNode(name string, index int, simulated bool) (Node, error) {
	first, last := c.plan.podRange(index)
	n := Node{
		Name:          name,
		Index:         index,
		Simulated:     simulated,
		IP:            c.plan.nodeIP(index),
		Netns:         filepath.Join(host.NetnsDir, c.state.Prefix()+"-"+name),
		Uplink:        uplinkName,
		Bridge:        nodeBridgeName,
		Subnet:        c.plan.subnet,
		PodRangeStart: first,
		PodRangeEnd:   last,
		Gateway:       c.plan.gateway(),
		Dir:           filepath.Join(c.dir, "nodes", name),
	}
	n.CNIBinDir = filepath.Join(n.Dir, "cni", "bin")
	n.CNIConfDir = filepath.Join(n.Dir, "cni", "net.d")
	cni := c.cniFor(n)
	if cni.PlainUplink {
		n.Bridge = ""
	}
	for _, d := range []string{n.CNIBinDir, n.CNIConfDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return n, fmt.Errorf("create node folder: %w", err)
		}
	}
	var sysctls []host.Sysctl
	if simulated {
		// A simulated node's links carry only the IPv4 fabric; real nodes
		// keep the kernel's defaults.
		sysctls = host.FabricSysctls
	}
	if err := c.host.NewNetns(n.Netns, sysctls...); err != nil {
		return n, fmt.Errorf("node %s: %w", name, err)
	}
	if err := c.host.AddUplink(c.state.Bridge(), fmt.Sprintf("%s-%d", c.state.Prefix(), index), n.Netns, uplinkName); err != nil {
		return n, fmt.Errorf("node %s: %w", name, err)
	}
	if err := c.host.SetupNodeNet(n.Netns, host.NodeNet{Uplink: uplinkName, Bridge: n.Bridge, Addr: c.plan.nodePrefix(index)}); err != nil {
		return n, fmt.Errorf("node %s: %w", name, err)
	}
	if err := c.installCNI(n, cni); err != nil {
		return n, err
	}
	return n, nil
}

func (c *Cluster) cniFor(n Node) CNI {
	if c.cfg.CNI == nil {
		return CNI{}
	}
	return c.cfg.CNI(n)
}

// installCNI puts the reference plugins and cni's plugins into the node's
// bin folder and cni's conflist (or the reference one) as the node's only
// network configuration.
func (c *Cluster) installCNI(n Node, cni CNI) error {
	plugins := map[string]string{}
	for _, p := range []string{"bridge", "host-local", "loopback", "bandwidth"} {
		plugins[p] = filepath.Join(c.bin.CNIPlugins, p)
	}
	for name, p := range cni.Plugins {
		plugins[name] = p
	}
	for name, p := range plugins {
		dst := filepath.Join(n.CNIBinDir, name)
		tmp := dst + ".new"
		_ = os.Remove(tmp)
		if err := os.Symlink(p, tmp); err != nil {
			return fmt.Errorf("install CNI plugin %s on %s: %w", name, n.Name, err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return fmt.Errorf("install CNI plugin %s on %s: %w", name, n.Name, err)
		}
	}
	conf := cni.ConfList
	if len(conf) == 0 {
		conf = ReferenceConfList(n, filepath.Join(n.Dir, "cni", "ipam"))
	}
	var probe struct {
		Name    string          `json:"name"`
		Plugins json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(conf, &probe); err != nil || probe.Name == "" || len(probe.Plugins) == 0 {
		if err == nil {
			err = errors.New("no name or no plugins")
		}
		return fmt.Errorf("CNI conflist for %s: want a JSON object with name and plugins: %w", n.Name, err)
	}
	old, _ := filepath.Glob(filepath.Join(n.CNIConfDir, "*"))
	dst := filepath.Join(n.CNIConfDir, "10-"+probe.Name+".conflist")
	tmp := filepath.Join(n.Dir, "cni", ".conflist.new")
	if err := os.WriteFile(tmp, conf, 0o644); err != nil {
		return fmt.Errorf("write CNI conflist for %s: %w", n.Name, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("install CNI conflist for %s: %w", n.Name, err)
	}
	for _, o := range old {
		if o != dst {
			_ = os.Remove(o)
		}
	}
	return nil
}

// SetCNI replaces the network configuration of node name (real or
// simulated). Pods created afterwards use it; running pods keep theirs. The
// uplink's wiring (CNI.PlainUplink) stays as Start made it.
func (c *Cluster) SetCNI(name string, cni CNI) error {
	n, ok := c.Node(name)
	if !ok {
		return fmt.Errorf("no node %s", name)
	}
	return c.installCNI(n, cni)
}

func (c *Cluster) prepareRealNode(i int) (*realNode, error) {
	name := fmt.Sprintf("node-%d", i+1)
	node, err := c.newNode(name, i, false)
	if err != nil {
		return nil, err
	}
	n := &realNode{Node: node, c: c}
	n.cgroup = c.state.Cgroup() + "/" + name
	n.sysCgroup = c.state.Cgroup() + "/system/" + name
	for _, cg := range []string{n.cgroup, n.sysCgroup} {
		if err := c.host.CreateCgroup(cg); err != nil {
			return nil, err
		}
	}
	ctrd := filepath.Join(n.Dir, "containerd")
	n.ContainerdSocket = filepath.Join(ctrd, "containerd.sock")
	n.KubeletDir = filepath.Join(n.Dir, "kubelet")
	n.ovsDir = filepath.Join(n.Dir, "ovs")
	n.OVSDBSocket = filepath.Join(n.ovsDir, "db.sock")
	for _, d := range []string{ctrd, n.KubeletDir, n.ovsDir, filepath.Join(n.Dir, "pod-logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create node folder: %w", err)
		}
	}
	n.containerdConfig = filepath.Join(ctrd, "config.toml")
	cfg := containerdConfig(containerdPaths{
		Root:         filepath.Join(ctrd, "root"),
		State:        filepath.Join(ctrd, "state"),
		Socket:       n.ContainerdSocket,
		RuncRoot:     filepath.Join(ctrd, "runc"),
		Runc:         c.bin.Runc,
		CNIBin:       n.CNIBinDir,
		CNIConf:      n.CNIConfDir,
		Opt:          filepath.Join(ctrd, "opt"),
		SandboxImage: PauseImage,
	})
	if err := os.WriteFile(n.containerdConfig, []byte(cfg), 0o644); err != nil {
		return nil, fmt.Errorf("write containerd config of %s: %w", name, err)
	}

	ip := net.IP(n.IP.AsSlice())
	client, err := c.pki.Issue(name, testenv.CertSpec{CN: "system:node:" + name, Orgs: []string{"system:nodes"}, Client: true})
	if err != nil {
		return nil, err
	}
	n.kubeconfig = filepath.Join(n.KubeletDir, "kubeconfig")
	if err := writeKubeconfig(n.kubeconfig, c.APIServerURL(), c.pki.CAPEM, "system:node:"+name, client); err != nil {
		return nil, err
	}
	serving, err := c.pki.Issue(name+"-serving", testenv.CertSpec{CN: name, IPs: []net.IP{ip}, DNS: []string{name}, Server: true})
	if err != nil {
		return nil, err
	}
	kcfg, err := kubeletConfig(kubeletParams{
		NodeIP:                   n.IP,
		CgroupRoot:               n.cgroup,
		CgroupV1:                 c.host.CgroupV1(),
		ClientCAFile:             c.pki.CAFile,
		TLSCertFile:              serving.CertFile,
		TLSKeyFile:               serving.KeyFile,
		ContainerRuntimeEndpoint: "unix://" + n.ContainerdSocket,
		PodLogsDir:               filepath.Join(n.Dir, "pod-logs"),
	})
	if err != nil {
		return nil, err
	}
	n.kubeletConfig = filepath.Join(n.KubeletDir, "config.yaml")
	if err := os.WriteFile(n.kubeletConfig, kcfg, 0o644); err != nil {
		return nil, fmt.Errorf("write kubelet config of %s: %w", name, err)
	}
	return n, nil
}

// startRuntime starts the node's Open vSwitch and containerd, inside its
// network namespace, and waits until both answer.
func (n *realNode) startRuntime(ctx context.Context) error {
	if err := n.startOVS(ctx); err != nil {
		return err
	}
	var err error
	n.containerd, err = n.c.startProcess(ctx, n.Name+"-containerd", n.Netns, n.sysCgroup, nil,
		n.c.bin.Containerd, "--config", n.containerdConfig)
	if err != nil {
		return err
	}
	return waitFor(ctx, n.Name+" containerd", 50*time.Millisecond, n.containerd, func(ctx context.Context) (bool, error) {
		if _, err := os.Stat(n.ContainerdSocket); err != nil {
			return false, nil
		}
		rt, conn, err := criClient(n.ContainerdSocket)
		if err != nil {
			return false, err
		}
		defer conn.Close()
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err = rt.Version(rctx, &runtimeapi.VersionRequest{})
		return err == nil, err
	})
}

// startOVS starts an ovsdb-server and an ovs-vswitchd with their own
// database, run folder and sockets, inside the node's namespace. Bridges
// made through them use the userspace datapath (datapath_type=netdev): this
// machine has no OVS kernel module.
func (n *realNode) startOVS(ctx context.Context) error {
	db := filepath.Join(n.ovsDir, "conf.db")
	if _, err := n.c.host.Run(ctx, n.c.bin.OVSDBTool, "create", db, n.c.bin.OVSSchema); err != nil {
		return fmt.Errorf("create OVS database of %s: %w", n.Name, err)
	}
	var err error
	n.ovsdb, err = n.c.startProcess(ctx, n.Name+"-ovsdb-server", n.Netns, n.sysCgroup, n.ovsEnv(),
		n.c.bin.OVSDBServer, db,
		"--remote=punix:"+n.OVSDBSocket,
		"--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
		"--unixctl="+filepath.Join(n.ovsDir, "ovsdb-server.ctl"),
		"--pidfile="+filepath.Join(n.ovsDir, "ovsdb-server.pid"),
		"--log-file="+filepath.Join(n.ovsDir, "ovsdb-server.log"),
		"-vconsole:off")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, n.Name+" ovsdb-server", 50*time.Millisecond, n.ovsdb, func(ctx context.Context) (bool, error) {
		if _, err := os.Stat(n.OVSDBSocket); err != nil {
			return false, nil
		}
		_, err := n.vsctl(ctx, "--no-wait", "init")
		return err == nil, err
	}); err != nil {
		return err
	}
	return n.startVswitchd(ctx)
}

// ovsEnv points the OVS programs at the node's own folder.
func (n *realNode) ovsEnv() []string {
	return []string{
		"OVS_RUNDIR=" + n.ovsDir, "OVS_LOGDIR=" + n.ovsDir, "OVS_DBDIR=" + n.ovsDir,
		"OVS_SYSCONFDIR=" + n.ovsDir, "OVS_PKGDATADIR=" + filepath.Dir(n.c.bin.OVSSchema),
	}
}

func (n *realNode) vsctl(ctx context.Context, args ...string) ([]byte, error) {
	return n.c.host.Run(ctx, n.c.bin.OVSVsctl, append([]string{"--db=unix:" + n.OVSDBSocket, "--timeout=5"}, args...)...)
}

// startVswitchd starts the node's ovs-vswitchd and waits until it applies
// its database.
func (n *realNode) startVswitchd(ctx context.Context) error {
	var err error
	n.vswitchd, err = n.c.startProcess(ctx, n.Name+"-ovs-vswitchd", n.Netns, n.sysCgroup, n.ovsEnv(),
		n.c.bin.OVSVswitchd, "unix:"+n.OVSDBSocket,
		"--unixctl="+filepath.Join(n.ovsDir, "ovs-vswitchd.ctl"),
		"--pidfile="+filepath.Join(n.ovsDir, "ovs-vswitchd.pid"),
		"--log-file="+filepath.Join(n.ovsDir, "ovs-vswitchd.log"),
		"-vconsole:off")
	if err != nil {
		return err
	}
	// Without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the
	// change: the daemon is up and reading its database.
	return waitFor(ctx, n.Name+" ovs-vswitchd", 50*time.Millisecond, n.vswitchd, func(ctx context.Context) (bool, error) {
		_, err := n.vsctl(ctx, "set", "Open_vSwitch", ".", "external_ids:system-id="+n.Name)
		return err == nil, err
	})
}

// StopVswitchd stops the ovs-vswitchd of real node name, as a crash would
// (its ovsdb-server, and so the bridge's configuration, stay), until
// StartVswitchd. Cluster.Stop stops it either way.
func (c *Cluster) StopVswitchd(name string) error {
	n, err := c.realNode(name)
	if err != nil {
		return err
	}
	n.vswitchd.Stop(5 * time.Second)
	return nil
}

// StartVswitchd starts the ovs-vswitchd of real node name again after
// StopVswitchd.
func (c *Cluster) StartVswitchd(ctx context.Context, name string) error {
	n, err := c.realNode(name)
	if err != nil {
		return err
	}
	if !n.vswitchd.Exited() {
		return fmt.Errorf("ovs-vswitchd of %s is running", name)
	}
	return n.startVswitchd(ctx)
}

func (c *Cluster) realNode(name string) (*realNode, error) {
	for _, n := range c.nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no real node %q", name)
}

// importImages loads the image archives into the node's containerd, in
// the namespace CRI uses.
func (n *realNode) importImages(ctx context.Context, tars ...string) error {
	for _, tar := range tars {
		if _, err := n.c.host.Run(ctx, n.c.bin.Ctr, "--address", n.ContainerdSocket, "-n", "k8s.io",
			"images", "import", "--local", tar); err != nil {
			return fmt.Errorf("import %s into %s: %w", filepath.Base(tar), n.Name, err)
		}
	}
	return nil
}

// ImportImage loads a docker-archive image (package images) into real node
// node's containerd, for its pods (imagePullPolicy Never).
func (c *Cluster) ImportImage(ctx context.Context, node, tar string) error {
	n, err := c.realNode(node)
	if err != nil {
		return err
	}
	return n.importImages(ctx, tar)
}

// startKubelet starts the node's kubelet inside its namespace.
func (n *realNode) startKubelet(ctx context.Context) error {
	var err error
	n.kubelet, err = n.c.startProcess(ctx, n.Name+"-kubelet", n.Netns, n.sysCgroup, nil,
		n.c.bin.Kubelet,
		"--config="+n.kubeletConfig,
		"--kubeconfig="+n.kubeconfig,
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--root-dir="+n.KubeletDir,
		"--cert-dir="+filepath.Join(n.KubeletDir, "pki"),
		"--node-labels="+nodeLabels(SimulatedLabel+"=false", n.c.cniFor(n.Node).NodeLabels),
		"--v=1",
	)
	return err
}

// stop takes the node down in the order a clean shutdown needs: kubelet
// first (it would restart what follows), then every pod sandbox through CRI
// (containerd runs CNI DEL for each), containerd, Open vSwitch, whatever is
// left in the node's cgroups (shims, containers), the node's mounts and its
// namespace.
func (n *realNode) stop(ctx context.Context) error {
	log := klog.FromContext(ctx).WithValues("node", n.Name)
	var errs []error
	n.kubelet.Stop(10 * time.Second)
	if n.containerd != nil && !n.containerd.Exited() {
		if err := removeSandboxes(ctx, n.ContainerdSocket); err != nil {
			log.Error(err, "Removing pod sandboxes through CRI")
			errs = append(errs, err)
		}
	}
	n.containerd.Stop(10 * time.Second)
	// Open vSwitch last: a CNI plugin's DEL may still have needed it.
	n.vswitchd.Stop(5 * time.Second)
	n.ovsdb.Stop(5 * time.Second)
	for _, cg := range []string{n.sysCgroup, n.cgroup} {
		errs = append(errs, n.c.host.KillCgroup(cg, 10*time.Second))
	}
	errs = append(errs, n.c.host.UnmountUnder(n.Dir), n.c.host.DeleteNetns(n.Netns))
	return errors.Join(errs...)
}

// nodeLabels joins kubelet's --node-labels: first, then extra sorted by key.
func nodeLabels(first string, extra map[string]string) string {
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := []string{first}
	for _, k := range keys {
		out = append(out, k+"="+extra[k])
	}
	return strings.Join(out, ",")
}

func criClient(socket string) (runtimeapi.RuntimeServiceClient, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to CRI at %s: %w", socket, err)
	}
	return runtimeapi.NewRuntimeServiceClient(conn), conn, nil
}

// removeSandboxes stops and removes every pod sandbox of a containerd.
func removeSandboxes(ctx context.Context, socket string) error {
	rt, conn, err := criClient(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range list.Items {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod sandbox %s: %w", sb.Metadata.GetName(), err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod sandbox %s: %w", sb.Metadata.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// sandboxNetns returns the network namespace path of the ready sandbox of
// the pod with uid on the containerd at socket.
func sandboxNetns(ctx context.Context, socket, uid string) (string, error) {
	rt, conn, err := criClient(socket)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": uid},
	}})
	if err != nil {
		return "", fmt.Errorf("list pod sandboxes: %w", err)
	}
	if len(list.Items) == 0 {
		return "", fmt.Errorf("no ready sandbox for pod %s", uid)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].CreatedAt > list.Items[j].CreatedAt })
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: list.Items[0].Id, Verbose: true})
	if err != nil {
		return "", fmt.Errorf("pod sandbox status: %w", err)
	}
	return netnsFromSandboxInfo(st.Info["info"])
}

// netnsFromSandboxInfo reads the network namespace path from the verbose
// sandbox status of containerd's CRI (its runtime spec's namespaces).
func netnsFromSandboxInfo(info string) (string, error) {
	var v struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		return "", fmt.Errorf("parse sandbox info: %w", err)
	}
	for _, ns := range v.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path, nil
		}
	}
	return "", fmt.Errorf("sandbox info names no network namespace: %.200s", strings.TrimSpace(info))
}
