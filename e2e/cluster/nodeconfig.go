package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"sigs.k8s.io/yaml"
)

// containerdPaths are the folders and sockets of one node's containerd.
type containerdPaths struct {
	Root, State, Socket, RuncRoot, Runc, CNIBin, CNIConf, Opt, SandboxImage string
}

// containerdConfig returns a node's containerd configuration (version 3):
// its own root, state, sockets and runc root so several run side by side,
// CNI folders of the node, NRI off, the OOM score restriction this VM needs
// (no CAP_SYS_RESOURCE), pod network namespaces under the state folder, and
// the locally built pause image pinned as the sandbox image.
func containerdConfig(p containerdPaths) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	return fmt.Sprintf(`version = 3
root = %s
state = %s

[grpc]
  address = %s

[ttrpc]
  address = %s

[debug]
  level = "info"

[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = %s

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %s

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%s]
    conf_dir = %s
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %s
        Root = %s
        SystemdCgroup = false
`, q(p.Root), q(p.State), q(p.Socket), q(p.Socket+".ttrpc"), q(p.Opt), q(p.SandboxImage),
		q(p.CNIBin), q(p.CNIConf), q(p.Runc), q(p.RuncRoot))
}

// kubeletParams are the per-node settings of a kubelet.
type kubeletParams struct {
	NodeIP                   netip.Addr
	CgroupRoot               string
	CgroupV1                 bool
	ClientCAFile             string
	TLSCertFile, TLSKeyFile  string
	ContainerRuntimeEndpoint string
	PodLogsDir               string
}

// kubeletConfig returns a KubeletConfiguration for one node: serving on the
// node's address with x509 client authentication against the cluster CA (the
// apiserver's kubelet client certificate), cgroupfs under the node's own
// cgroup root, and eviction and image GC thresholds loosened because the
// disk is shared with everything else on the machine.
func kubeletConfig(p kubeletParams) ([]byte, error) {
	cfg := map[string]any{
		"apiVersion":         "kubelet.config.k8s.io/v1beta1",
		"kind":               "KubeletConfiguration",
		"address":            p.NodeIP.String(),
		"port":               10250,
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"healthzPort":        10248,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": false},
			"x509":      map[string]any{"clientCAFile": p.ClientCAFile},
		},
		"authorization":               map[string]any{"mode": "AlwaysAllow"},
		"tlsCertFile":                 p.TLSCertFile,
		"tlsPrivateKeyFile":           p.TLSKeyFile,
		"cgroupDriver":                "cgroupfs",
		"cgroupRoot":                  p.CgroupRoot,
		"cgroupsPerQOS":               true,
		"failSwapOn":                  false,
		"containerRuntimeEndpoint":    p.ContainerRuntimeEndpoint,
		"podLogsDir":                  p.PodLogsDir,
		"registerNode":                true,
		"rotateCertificates":          false,
		"serverTLSBootstrap":          false,
		"serializeImagePulls":         false,
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available":  "100Mi",
			"nodefs.available":  "1%",
			"nodefs.inodesFree": "1%",
			"imagefs.available": "1%",
		},
		"evictionPressureTransitionPeriod": "10s",
		"nodeStatusUpdateFrequency":        "10s",
		"syncFrequency":                    "10s",
		"fileCheckFrequency":               "60s",
		"maxPods":                          110,
		"kubeAPIQPS":                       50,
		"kubeAPIBurst":                     100,
		"shutdownGracePeriod":              "0s",
		"containerLogMaxSize":              "10Mi",
		"localStorageCapacityIsolation":    true,
	}
	if p.CgroupV1 {
		cfg["failCgroupV1"] = false
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode kubelet config: %w", err)
	}
	return b, nil
}

// referenceNetworkName is the network name of the reference conflist.
const referenceNetworkName = "localcluster"

// ReferenceConfList returns the conflist of the reference CNI chain for a
// node: the bridge plugin on the node's bridge (which also holds the uplink,
// so pods of all nodes share one L2 network), L2 only (no gateway address,
// no masquerade), and host-local handing out the node's own range of the
// shared subnet, with its state in ipamDir. Pods get no default route:
// nothing leaves the cluster's subnet.
func ReferenceConfList(n Node, ipamDir string) []byte {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       referenceNetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      n.Bridge,
				"isGateway":   false,
				"ipMasq":      false,
				"hairpinMode": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": ipamDir,
					"ranges": [][]map[string]string{{{
						"subnet":     n.Subnet.String(),
						"rangeStart": n.PodRangeStart.String(),
						"rangeEnd":   n.PodRangeEnd.String(),
					}}},
				},
			},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return b
}

// schedulerConfig returns a KubeSchedulerConfiguration given by the caller
// with the harness's connection settings in place: the kubeconfig to use and
// leader election off (each scheduler here is alone with its profiles).
func schedulerConfig(user []byte, kubeconfig string) ([]byte, error) {
	var cfg map[string]any
	if err := yaml.Unmarshal(user, &cfg); err != nil {
		return nil, fmt.Errorf("parse scheduler config: %w", err)
	}
	if cfg == nil {
		cfg = map[string]any{}
	}
	if v, _ := cfg["apiVersion"].(string); v == "" {
		cfg["apiVersion"] = "kubescheduler.config.k8s.io/v1"
	}
	if k, _ := cfg["kind"].(string); k == "" {
		cfg["kind"] = "KubeSchedulerConfiguration"
	}
	if k := cfg["kind"].(string); k != "KubeSchedulerConfiguration" {
		return nil, fmt.Errorf("scheduler config kind %q: want KubeSchedulerConfiguration", k)
	}
	cc, _ := cfg["clientConnection"].(map[string]any)
	if cc == nil {
		cc = map[string]any{}
	}
	cc["kubeconfig"] = kubeconfig
	cfg["clientConnection"] = cc
	le, _ := cfg["leaderElection"].(map[string]any)
	if le == nil {
		le = map[string]any{}
	}
	le["leaderElect"] = false
	cfg["leaderElection"] = le
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode scheduler config: %w", err)
	}
	return b, nil
}

// ExtenderSchedulerConfig returns a KubeSchedulerConfiguration with one
// profile named schedulerName whose filter and prioritize calls go to the
// HTTP extender at url (nodeCacheCapable: the extender gets node names
// only). Managed resources, if any, are extended resources the extender
// accounts for (ignoredByScheduler is false).
func ExtenderSchedulerConfig(schedulerName, url string, managedResources ...string) []byte {
	ext := map[string]any{
		"urlPrefix":        strings.TrimSuffix(url, "/"),
		"filterVerb":       "filter",
		"prioritizeVerb":   "prioritize",
		"weight":           1,
		"nodeCacheCapable": true,
		"enableHTTPS":      false,
	}
	var mr []map[string]any
	for _, r := range managedResources {
		mr = append(mr, map[string]any{"name": r, "ignoredByScheduler": false})
	}
	if len(mr) > 0 {
		ext["managedResources"] = mr
	}
	cfg := map[string]any{
		"apiVersion": "kubescheduler.config.k8s.io/v1",
		"kind":       "KubeSchedulerConfiguration",
		"profiles":   []any{map[string]any{"schedulerName": schedulerName}},
		"extenders":  []any{ext},
	}
	b, _ := yaml.Marshal(cfg)
	return b
}
