// Package cni benchmarks pod network setup on one node: CNI ADD and DEL
// latency (p50, p99) over 200 pods through the stickynet plugin and node agent
// (a real agent process with its informer on a real kube-apiserver, a private
// Open vSwitch with the userspace datapath), against the reference chain
// bridge + host-local + bandwidth (containernetworking/plugins v1.10.0, built
// by `make tools`) in the same run, both through libcni, pod by pod
// alternately, with the same limits in both directions. Each chain has a
// node network namespace of its own, as on a real node that runs one of
// them (ovs-vswitchd follows every link change of its namespace, and the
// reference chain makes a veth and an ifb device per pod). It also reports
// the agent's resident memory with 200 pods. Run it with `make bench-cni`.
package cni

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/agenttest"
)

const (
	pods     = 200
	nodeName = "bench-node"
	rate     = 100_000_000 // bit/s, both directions, both chains
	burst    = 800_000     // bits, for the reference chain (stickynet's defaults apply on its side)
)

func TestMain(m *testing.M) {
	code := m.Run()
	agenttest.Cleanup()
	os.Exit(code)
}

type chain struct {
	name     string
	node     ns.NetNS
	cfg      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	rts      []*libcni.RuntimeConf
	add, del []time.Duration
}

func (c *chain) run(op string, i int) error {
	rt := c.rts[i]
	start := time.Now()
	// Plugins run in the node's namespace, as a runtime on the node runs them.
	err := c.node.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if op == "ADD" {
			_, err := c.cfg.AddNetworkList(ctx, c.list, rt)
			return err
		}
		return c.cfg.DelNetworkList(ctx, c.list, rt)
	})
	d := time.Since(start)
	if err != nil {
		return fmt.Errorf("%s %s pod %d: %w", c.name, op, i, err)
	}
	if op == "ADD" {
		c.add = append(c.add, d)
	} else {
		c.del = append(c.del, d)
	}
	return nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func rssKiB(b *testing.B, pid int) int {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	var u syscall.Utsname
	_ = syscall.Uname(&u)
	rel := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	return fmt.Sprintf("%d CPUs (%s), kernel %s", runtime.NumCPU(), model, rel)
}

func BenchmarkCNI(b *testing.B) {
	testenv.Root(b)
	bridge := testenv.NeedTool(b, "cniplugins", "bridge")
	refDir := filepath.Dir(bridge)
	for _, p := range []string{"host-local", "bandwidth"} {
		testenv.NeedTool(b, "cniplugins", p)
	}
	api := agenttest.StartAPIServer(b)
	client := kubernetes.NewForConfigOrDie(api.Config)
	node := agenttest.NewNode(b)
	ctx := context.Background()

	// The pods, as the webhook leaves them.
	for i := range pods {
		mac := fmt.Sprintf("02:00:0a:c8:%02x:%02x", (i+10)/256, (i+10)%256)
		ip := fmt.Sprintf("10.200.%d.%d/16", (i+10)/256, (i+10)%256)
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("pod-%03d", i), Annotations: map[string]string{
				annotations.Identity: fmt.Sprintf("pod/default/pod-%03d", i), annotations.AssignedIP: ip,
				annotations.AssignedMAC: mac, annotations.Gateway: "10.200.0.1",
				annotations.IngressBandwidth: "100M", annotations.EgressBandwidth: "100M",
			}},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "pause"}}},
		}
		created, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_ = client.CoreV1().Pods("default").Delete(context.Background(), created.Name, metav1.DeleteOptions{})
		})
	}

	// The agent, as a process of its own (its memory is measured).
	agentBin := agenttest.AgentBinary(b)
	confDir := filepath.Join(node.Dir, "net.d")
	logf, err := os.Create(filepath.Join(node.Dir, "agent.log"))
	if err != nil {
		b.Fatal(err)
	}
	agentCmd := exec.Command(agentBin, "--node-name", nodeName, "--kubeconfig", api.Kubeconfig,
		"--netns", node.Netns.Path(), "--socket", node.Socket, "--cache-dir", filepath.Join(node.Dir, "cache"),
		"--ovs-db", node.OVS.DB, "--ovs-rundir", node.OVS.RunDir, "--cni-conf-dir", confDir, "--resync-period", "0")
	// STICKYNET_BENCH_AGENT_ARGS adds agent flags (such as -v=2 for per-step
	// timings); STICKYNET_BENCH_AGENT_LOG keeps the agent's log at that path.
	agentCmd.Args = append(agentCmd.Args, strings.Fields(os.Getenv("STICKYNET_BENCH_AGENT_ARGS"))...)
	agentCmd.Stdout, agentCmd.Stderr = logf, logf
	if err := testenv.StartTied(agentCmd); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = agentCmd.Process.Signal(syscall.SIGTERM)
		_ = agentCmd.Wait()
		logf.Close()
		if keep := os.Getenv("STICKYNET_BENCH_AGENT_LOG"); keep != "" {
			if out, err := os.ReadFile(logf.Name()); err == nil {
				_ = os.WriteFile(keep, out, 0o644)
			}
		}
		if b.Failed() {
			if out, err := os.ReadFile(logf.Name()); err == nil {
				b.Logf("agent log:\n%s", out)
			}
		}
	})
	conflist := filepath.Join(confDir, agent.DefaultCNIConfName)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(conflist); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("agent did not install its conflist within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rssIdle := rssKiB(b, agentCmd.Process.Pid)

	sn := &chain{name: "stickynet", node: node.Netns}
	snBytes, err := os.ReadFile(conflist)
	if err != nil {
		b.Fatal(err)
	}
	if sn.list, err = libcni.ConfListFromBytes(snBytes); err != nil {
		b.Fatal(err)
	}
	sn.cfg = libcni.NewCNIConfigWithCacheDir([]string{agenttest.PluginDir(b)}, filepath.Join(node.Dir, "cache-sn"), nil)

	ref := &chain{name: "bridge+host-local+bandwidth", node: agenttest.NewNetns(b)}
	refConf, _ := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": "ref",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "cnibench0", "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{
					"type": "host-local", "dataDir": filepath.Join(node.Dir, "host-local"),
					"ranges": [][]map[string]string{{{"subnet": "10.201.0.0/16"}}},
				},
			},
			map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}},
		},
	})
	if ref.list, err = libcni.ConfListFromBytes(refConf); err != nil {
		b.Fatal(err)
	}
	ref.cfg = libcni.NewCNIConfigWithCacheDir([]string{refDir}, filepath.Join(node.Dir, "cache-ref"), nil)

	for i := range pods {
		name := fmt.Sprintf("pod-%03d", i)
		p, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		sn.rts = append(sn.rts, agenttest.RuntimeConf(fmt.Sprintf("sn-%03d", i), agenttest.NewNetns(b), "eth0", p))
		rt := agenttest.RuntimeConf(fmt.Sprintf("ref-%03d", i), agenttest.NewNetns(b), "eth0", p)
		rt.CapabilityArgs = map[string]any{"bandwidth": map[string]any{
			"ingressRate": rate, "ingressBurst": burst, "egressRate": rate, "egressBurst": burst,
		}}
		ref.rts = append(ref.rts, rt)
	}

	b.ResetTimer()
	for i := range pods {
		for _, c := range []*chain{sn, ref} {
			if err := c.run("ADD", i); err != nil {
				b.Fatal(err)
			}
		}
	}
	rssFull := rssKiB(b, agentCmd.Process.Pid)
	for i := range pods {
		for _, c := range []*chain{sn, ref} {
			if err := c.run("DEL", i); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()

	fmt.Printf("\nCNI benchmark: %d pods, ADD then DEL, chains alternating pod by pod, limits %d Mbit/s both ways\n", pods, rate/1_000_000)
	fmt.Printf("machine: %s\n", machine())
	fmt.Printf("%-30s %10s %10s %10s %10s\n", "chain", "ADD p50", "ADD p99", "DEL p50", "DEL p99")
	for _, c := range []*chain{sn, ref} {
		fmt.Printf("%-30s %8.1fms %8.1fms %8.1fms %8.1fms\n", c.name,
			ms(percentile(c.add, 0.5)), ms(percentile(c.add, 0.99)), ms(percentile(c.del, 0.5)), ms(percentile(c.del, 0.99)))
	}
	ratio := func(get func(*chain) []time.Duration, p float64) float64 {
		return float64(percentile(get(sn), p)) / float64(percentile(get(ref), p))
	}
	addOf := func(c *chain) []time.Duration { return c.add }
	delOf := func(c *chain) []time.Duration { return c.del }
	fmt.Printf("stickynet ÷ reference: ADD p50 %.2f, ADD p99 %.2f, DEL p50 %.2f, DEL p99 %.2f   (goal ≤ 1.0)\n",
		ratio(addOf, 0.5), ratio(addOf, 0.99), ratio(delOf, 0.5), ratio(delOf, 0.99))
	fmt.Printf("agent RSS: %.1f MiB idle, %.1f MiB with %d pods\n", float64(rssIdle)/1024, float64(rssFull)/1024, pods)
	b.ReportMetric(ms(percentile(sn.add, 0.5)), "add-p50-ms")
	b.ReportMetric(ms(percentile(sn.add, 0.99)), "add-p99-ms")
	b.ReportMetric(ratio(addOf, 0.5), "ratio-add-p50")
	b.ReportMetric(ratio(addOf, 0.99), "ratio-add-p99")
	b.ReportMetric(ratio(delOf, 0.5), "ratio-del-p50")
	b.ReportMetric(ratio(delOf, 0.99), "ratio-del-p99")
	b.ReportMetric(float64(rssFull)/1024, "agent-rss-MiB")
}
