package cluster

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	"sigs.k8s.io/yaml"
)

func TestPlan(t *testing.T) {
	subnet := netip.MustParsePrefix("10.201.0.0/16")
	tests := []struct {
		name           string
		nodes          int
		wantBlock      int
		node           int
		wantIP         string
		wantFirst      string
		wantLast       string
		wantBlockNotes string
	}{
		{"3 nodes get a /24 each", 3, 256, 0, "10.201.0.16", "10.201.8.1", "10.201.8.254", "10.201.8.0/24"},
		{"third of 3", 3, 256, 2, "10.201.0.18", "10.201.10.1", "10.201.10.254", "10.201.10.0/24"},
		{"203 nodes still a /24", 203, 256, 202, "10.201.0.218", "10.201.210.1", "10.201.210.254", "10.201.210.0/24"},
		{"1000 nodes get a /27", 1000, 32, 999, "10.201.3.247", "10.201.132.225", "10.201.132.254", "10.201.132.224/27"},
		{"1020 nodes, the most", 1020, 32, 1019, "10.201.4.11", "10.201.135.97", "10.201.135.126", "10.201.135.96/27"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newPlan(subnet, tt.nodes)
			if err != nil {
				t.Fatal(err)
			}
			if p.block != tt.wantBlock {
				t.Errorf("block = %d, want %d", p.block, tt.wantBlock)
			}
			if got := p.nodeIP(tt.node).String(); got != tt.wantIP {
				t.Errorf("nodeIP = %s, want %s", got, tt.wantIP)
			}
			first, last := p.podRange(tt.node)
			if first.String() != tt.wantFirst || last.String() != tt.wantLast {
				t.Errorf("podRange = %s-%s, want %s-%s", first, last, tt.wantFirst, tt.wantLast)
			}
			if got := p.podBlock(tt.node).String(); got != tt.wantBlockNotes {
				t.Errorf("podBlock = %s, want %s", got, tt.wantBlockNotes)
			}
			if got := p.gatewayPrefix().String(); got != "10.201.0.1/16" {
				t.Errorf("gateway = %s", got)
			}
			if !p.subnet.Contains(last) {
				t.Errorf("last pod address %s outside %s", last, p.subnet)
			}
		})
	}
	for _, bad := range []struct {
		subnet string
		nodes  int
	}{{"10.201.0.0/24", 3}, {"10.201.0.0/16", 0}, {"10.201.0.0/16", 1021}, {"fd00::/16", 3}} {
		if _, err := newPlan(netip.MustParsePrefix(bad.subnet), bad.nodes); err == nil {
			t.Errorf("newPlan(%s, %d) accepted", bad.subnet, bad.nodes)
		}
	}
}

func TestPlanNodeIPsStayBelowPods(t *testing.T) {
	p, err := newPlan(netip.MustParsePrefix("10.202.0.0/16"), maxNodes)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := p.podRange(0)
	if !p.nodeIP(maxNodes - 1).Less(first) {
		t.Errorf("node IP %s reaches the pod area starting at %s", p.nodeIP(maxNodes-1), first)
	}
	for i := 1; i < maxNodes; i++ {
		_, prevLast := p.podRange(i - 1)
		first, _ := p.podRange(i)
		if !prevLast.Less(first) {
			t.Fatalf("ranges of nodes %d and %d overlap", i-1, i)
		}
	}
}

func TestContainerdConfig(t *testing.T) {
	cfg := containerdConfig(containerdPaths{
		Root: "/c/root", State: "/c/state", Socket: "/c/containerd.sock", RuncRoot: "/c/runc",
		Runc: "/usr/sbin/runc", CNIBin: "/c/cni/bin", CNIConf: "/c/cni/net.d", Opt: "/c/opt",
		SandboxImage: PauseImage,
	})
	var v map[string]any
	if err := toml.Unmarshal([]byte(cfg), &v); err != nil {
		t.Fatalf("config is not TOML: %v\n%s", err, cfg)
	}
	get := func(path ...string) any {
		var cur any = v
		for _, p := range path {
			m, ok := cur.(map[string]any)
			if !ok {
				return nil
			}
			cur = m[p]
		}
		return cur
	}
	rt := []string{"plugins", "io.containerd.cri.v1.runtime"}
	tests := []struct {
		path []string
		want any
	}{
		{[]string{"version"}, int64(3)},
		{[]string{"root"}, "/c/root"},
		{[]string{"state"}, "/c/state"},
		{[]string{"grpc", "address"}, "/c/containerd.sock"},
		{[]string{"ttrpc", "address"}, "/c/containerd.sock.ttrpc"},
		{[]string{"plugins", "io.containerd.nri.v1.nri", "disable"}, true},
		{append(rt, "restrict_oom_score_adj"), true},
		{append(rt, "netns_mounts_under_state_dir"), true},
		{append(rt, "cni", "conf_dir"), "/c/cni/net.d"},
		{append(rt, "containerd", "runtimes", "runc", "options", "Root"), "/c/runc"},
		{append(rt, "containerd", "runtimes", "runc", "options", "SystemdCgroup"), false},
		{[]string{"plugins", "io.containerd.cri.v1.images", "pinned_images", "sandbox"}, PauseImage},
		{[]string{"plugins", "io.containerd.internal.v1.opt", "path"}, "/c/opt"},
	}
	for _, tt := range tests {
		if got := get(tt.path...); got != tt.want {
			t.Errorf("%s = %#v, want %#v", strings.Join(tt.path, "."), got, tt.want)
		}
	}
	if bins, _ := get(append(rt, "cni", "bin_dirs")...).([]any); len(bins) != 1 || bins[0] != "/c/cni/bin" {
		t.Errorf("cni.bin_dirs = %v", get(append(rt, "cni", "bin_dirs")...))
	}
}

func TestKubeletConfig(t *testing.T) {
	for _, v1 := range []bool{true, false} {
		b, err := kubeletConfig(kubeletParams{
			NodeIP: netip.MustParseAddr("10.201.0.16"), CgroupRoot: "/stickynet-ab12/node-1", CgroupV1: v1,
			ClientCAFile: "/p/ca.crt", TLSCertFile: "/p/n.crt", TLSKeyFile: "/p/n.key",
			ContainerRuntimeEndpoint: "unix:///c/containerd.sock", PodLogsDir: "/n/pod-logs",
		})
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]any{
			"kind": "KubeletConfiguration", "address": "10.201.0.16", "cgroupDriver": "cgroupfs",
			"cgroupRoot": "/stickynet-ab12/node-1", "podLogsDir": "/n/pod-logs", "failSwapOn": false,
			"containerRuntimeEndpoint": "unix:///c/containerd.sock",
		} {
			if cfg[k] != want {
				t.Errorf("%s = %#v, want %#v", k, cfg[k], want)
			}
		}
		if got, ok := cfg["failCgroupV1"]; v1 != ok || (ok && got != false) {
			t.Errorf("cgroup v1 %v: failCgroupV1 = %v (set %v)", v1, got, ok)
		}
		x509, _ := cfg["authentication"].(map[string]any)["x509"].(map[string]any)
		if x509["clientCAFile"] != "/p/ca.crt" {
			t.Errorf("authentication.x509.clientCAFile = %v", x509["clientCAFile"])
		}
		if ev, _ := cfg["evictionHard"].(map[string]any); ev["nodefs.available"] != "1%" {
			t.Errorf("evictionHard = %v, want loosened thresholds", ev)
		}
	}
}

func TestReferenceConfList(t *testing.T) {
	n := Node{
		Name: "node-2", Bridge: "cni0", Subnet: netip.MustParsePrefix("10.201.0.0/16"),
		PodRangeStart: netip.MustParseAddr("10.201.5.1"), PodRangeEnd: netip.MustParseAddr("10.201.5.254"),
	}
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type      string `json:"type"`
			Bridge    string `json:"bridge"`
			IsGateway bool   `json:"isGateway"`
			IPMasq    bool   `json:"ipMasq"`
			IPAM      struct {
				Type    string                `json:"type"`
				DataDir string                `json:"dataDir"`
				Ranges  [][]map[string]string `json:"ranges"`
				Routes  []any                 `json:"routes"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(ReferenceConfList(n, "/n/ipam"), &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Name == "" || len(conf.Plugins) != 1 {
		t.Fatalf("conflist = %+v", conf)
	}
	p := conf.Plugins[0]
	if p.Type != "bridge" || p.Bridge != "cni0" || p.IsGateway || p.IPMasq {
		t.Errorf("bridge plugin = %+v, want L2 only on cni0", p)
	}
	if p.IPAM.Type != "host-local" || p.IPAM.DataDir != "/n/ipam" || len(p.IPAM.Routes) != 0 {
		t.Errorf("ipam = %+v, want host-local in /n/ipam without routes", p.IPAM)
	}
	want := map[string]string{"subnet": "10.201.0.0/16", "rangeStart": "10.201.5.1", "rangeEnd": "10.201.5.254"}
	if len(p.IPAM.Ranges) != 1 || len(p.IPAM.Ranges[0]) != 1 {
		t.Fatalf("ranges = %v", p.IPAM.Ranges)
	}
	for k, v := range want {
		if p.IPAM.Ranges[0][0][k] != v {
			t.Errorf("range %s = %q, want %q", k, p.IPAM.Ranges[0][0][k], v)
		}
	}
}

func TestSchedulerConfig(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{"extender profile", string(ExtenderSchedulerConfig("sticky", "http://127.0.0.1:8888/", "stickynet.io/sriov-a")), false},
		{"bare profile", "profiles:\n- schedulerName: second\n", false},
		{"leader election asked", "leaderElection: {leaderElect: true}\nclientConnection: {qps: 50}\n", false},
		{"wrong kind", "kind: KubeletConfiguration\n", true},
		{"not yaml", "{", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := schedulerConfig([]byte(tt.in), "/p/sched.kubeconfig")
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			var cfg struct {
				APIVersion       string         `json:"apiVersion"`
				Kind             string         `json:"kind"`
				ClientConnection map[string]any `json:"clientConnection"`
				LeaderElection   map[string]any `json:"leaderElection"`
				Extenders        []map[string]any
			}
			if err := yaml.Unmarshal(b, &cfg); err != nil {
				t.Fatal(err)
			}
			if cfg.APIVersion != "kubescheduler.config.k8s.io/v1" || cfg.Kind != "KubeSchedulerConfiguration" {
				t.Errorf("type = %s %s", cfg.APIVersion, cfg.Kind)
			}
			if cfg.ClientConnection["kubeconfig"] != "/p/sched.kubeconfig" || cfg.LeaderElection["leaderElect"] != false {
				t.Errorf("connection = %v, leader election = %v", cfg.ClientConnection, cfg.LeaderElection)
			}
			if tt.name == "leader election asked" && cfg.ClientConnection["qps"] != float64(50) {
				t.Errorf("caller's clientConnection.qps lost: %v", cfg.ClientConnection)
			}
			if tt.name == "extender profile" {
				if len(cfg.Extenders) != 1 || cfg.Extenders[0]["urlPrefix"] != "http://127.0.0.1:8888" || cfg.Extenders[0]["nodeCacheCapable"] != true {
					t.Errorf("extenders = %v", cfg.Extenders)
				}
			}
		})
	}
}

func TestNetnsFromSandboxInfo(t *testing.T) {
	info := `{"pid":42,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/c/state/netns/cni-1234"}]}}}`
	got, err := netnsFromSandboxInfo(info)
	if err != nil || got != "/c/state/netns/cni-1234" {
		t.Errorf("netnsFromSandboxInfo = %q, %v", got, err)
	}
	if _, err := netnsFromSandboxInfo(`{"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}`); err == nil {
		t.Error("a sandbox on the host network gave a path")
	}
}

func TestNodeLabels(t *testing.T) {
	tests := []struct {
		extra map[string]string
		want  string
	}{
		{nil, "e2e.stickynet.io/simulated=false"},
		{map[string]string{"b": "2", "a": "1"}, "e2e.stickynet.io/simulated=false,a=1,b=2"},
	}
	for _, tt := range tests {
		if got := nodeLabels(SimulatedLabel+"=false", tt.extra); got != tt.want {
			t.Errorf("nodeLabels(%v) = %q, want %q", tt.extra, got, tt.want)
		}
	}
}
