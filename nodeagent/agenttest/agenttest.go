// Package agenttest runs real node agents for tests and benchmarks: a
// throwaway node network namespace with a private Open vSwitch (userspace
// datapath) in it, the agent in-process against a static pod source, pod
// network namespaces, and the stickynet CNI plugin binary invoked the way a
// container runtime does (libcni).
package agenttest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/testenv"
	"github.com/stickynet/stickynet/nodeagent/agent"
	"github.com/stickynet/stickynet/nodeagent/podsource"
)

var (
	buildMu    sync.Mutex
	buildDir   string
	buildCache = map[string]string{}
)

// build compiles pkg into a folder shared by the test process, once.
func build(t testing.TB, out, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildCache[out]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "stickynet-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	p := filepath.Join(buildDir, out)
	if b, err := exec.Command("go", "build", "-o", p, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v: %s", pkg, err, b)
	}
	buildCache[out] = p
	return p
}

// PluginDir builds the stickynet CNI plugin once per test process and
// returns the folder holding it (as "stickynet", a CNI_PATH entry).
func PluginDir(t testing.TB) string {
	t.Helper()
	return filepath.Dir(build(t, "stickynet", "github.com/stickynet/stickynet/cni"))
}

// AgentBinary builds the node agent binary once per test process.
func AgentBinary(t testing.TB) string {
	t.Helper()
	return build(t, "stickynet-nodeagent", "github.com/stickynet/stickynet/nodeagent")
}

// Cleanup removes the binaries built by this process; call it from TestMain.
func Cleanup() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Netns is a throwaway network namespace.
type Netns struct {
	ns.NetNS
}

// NewNetns creates a network namespace that is removed when the test ends.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	nn := &Netns{n}
	t.Cleanup(func() { _ = nn.remove() })
	return nn
}

// Remove deletes the namespace now (as a container runtime does when a pod
// sandbox goes), taking its interfaces with it.
func (n *Netns) Remove(t testing.TB) {
	t.Helper()
	if err := n.remove(); err != nil {
		t.Fatalf("remove netns %s: %v", n.Path(), err)
	}
}

func (n *Netns) remove() error {
	_ = n.Close()
	if _, err := os.Stat(n.Path()); os.IsNotExist(err) {
		return nil
	}
	if err := testutils.UnmountNS(n); err == nil {
		return nil
	}
	// A mount namespace made meanwhile by another process on the machine can
	// hold a copy of the bind mount (EBUSY): detach it instead.
	if err := unix.Unmount(n.Path(), unix.MNT_DETACH); err != nil {
		return err
	}
	return os.Remove(n.Path())
}

// Command returns argv run inside the namespace (nsenter keeps the PID).
func (n *Netns) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path(), "--"}, argv...)...)
}

// Run runs argv inside the namespace and fails the test on error.
func (n *Netns) Run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := n.Command(context.Background(), argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", n.Path(), strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// Node is a node's network namespace with its own Open vSwitch and the
// folders of an agent.
type Node struct {
	Netns  *Netns
	OVS    *testenv.OVS
	Dir    string
	Socket string
	Bridge string
}

// NewNode makes a node namespace and starts OVS in it.
func NewNode(t testing.TB) *Node {
	t.Helper()
	testenv.Root(t)
	n := &Node{Netns: NewNetns(t), Bridge: "br-stickynet"}
	var err error
	if n.Dir, err = os.MkdirTemp("", "sn-node-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(n.Dir) })
	n.Socket = filepath.Join(n.Dir, "agent.sock")
	n.OVS = testenv.StartOVS(t, n.Netns.Path())
	return n
}

// Options returns agent options for this node with pods as the pod source.
func (n *Node) Options(pods agent.PodSource) agent.Options {
	return agent.Options{
		NodeName:   "node-1",
		Pods:       pods,
		Netns:      n.Netns.Path(),
		Socket:     n.Socket,
		CacheDir:   filepath.Join(n.Dir, "cache"),
		Bridge:     n.Bridge,
		OVSDB:      n.OVS.DB,
		OVSRunDir:  n.OVS.RunDir,
		CNIConfDir: filepath.Join(n.Dir, "net.d"),
	}
}

// Agent is an agent running in-process.
type Agent struct {
	cancel context.CancelFunc
	done   chan error
}

// StartAgent runs agent.Run with opts and waits until it serves; the test's
// cleanup stops it.
func StartAgent(t testing.TB, opts agent.Options) *Agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctx = klog.NewContext(ctx, ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2))))
	ready := make(chan struct{})
	opts.Ready = func() { close(ready) }
	a := &Agent{cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- agent.Run(ctx, opts) }()
	t.Cleanup(func() { a.Stop(t) })
	select {
	case <-ready:
	case err := <-a.done:
		a.done <- err
		t.Fatalf("agent stopped before serving: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not serve within 30s")
	}
	return a
}

// Stop stops the agent (it leaves the datapath in place) and waits for it.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("agent: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("agent did not stop within 30s")
	}
}

// Pod is a pod as the webhook leaves it: with the assignment annotations.
func Pod(namespace, name, uid string, asg annotations.Assignment, extra map[string]string) *corev1.Pod {
	ann := asg.Annotations()
	for k, v := range extra {
		ann[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: k8stypes.UID(uid), Annotations: ann},
		Spec:       corev1.PodSpec{NodeName: "node-1"},
	}
}

// NewStatic returns an empty static pod source.
func NewStatic() *podsource.Static { return podsource.NewStatic() }

// CNI invokes the stickynet plugin binary through libcni, as a runtime would.
type CNI struct {
	Config  *libcni.CNIConfig
	List    *libcni.NetworkConfigList
	BinDir  string
	Timeout time.Duration
}

// NewCNI loads the conflist the agent installed on node.
func NewCNI(t testing.TB, node *Node, conflist string) *CNI {
	t.Helper()
	bin := PluginDir(t)
	b, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatalf("read conflist: %v", err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("parse conflist %s: %v", conflist, err)
	}
	// The exec is libcni's default, given here: without one, each call
	// sets it up again, a data race between calls made at once (tests run
	// ADDs concurrently; go test -race reports it).
	plugins := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return &CNI{
		Config:  libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(node.Dir, "libcni-cache"), plugins),
		List:    list,
		BinDir:  bin,
		Timeout: 30 * time.Second,
	}
}

// RuntimeConf is what a runtime passes for one pod interface.
func RuntimeConf(containerID string, netns *Netns, ifName string, pod *corev1.Pod) *libcni.RuntimeConf {
	path := ""
	if netns != nil {
		path = netns.Path()
	}
	return &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       path,
		IfName:      ifName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", containerID},
			{"K8S_POD_UID", string(pod.UID)},
		},
	}
}

func (c *CNI) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.Timeout)
}

// Add runs ADD.
func (c *CNI) Add(rt *libcni.RuntimeConf) (types.Result, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	return c.Config.AddNetworkList(ctx, c.List, rt)
}

// Del runs DEL.
func (c *CNI) Del(rt *libcni.RuntimeConf) error {
	ctx, cancel := c.ctx()
	defer cancel()
	return c.Config.DelNetworkList(ctx, c.List, rt)
}

// Check runs CHECK.
func (c *CNI) Check(rt *libcni.RuntimeConf) error {
	ctx, cancel := c.ctx()
	defer cancel()
	return c.Config.CheckNetworkList(ctx, c.List, rt)
}

// Status runs STATUS.
func (c *CNI) Status() error {
	ctx, cancel := c.ctx()
	defer cancel()
	return c.Config.GetStatusNetworkList(ctx, c.List)
}

// GC runs the plugin's GC with valid as the runtime's attachments. It calls
// the plugin directly: libcni would first DEL what its own cache lists, and
// the test is about what the agent does.
func (c *CNI) GC(valid []types.GCAttachment) error {
	ctx, cancel := c.ctx()
	defer cancel()
	var conf map[string]any
	if err := json.Unmarshal(c.List.Plugins[0].Bytes, &conf); err != nil {
		return err
	}
	conf["name"] = c.List.Name
	conf["cniVersion"] = c.List.CNIVersion
	conf["cni.dev/valid-attachments"] = valid
	b, err := json.Marshal(conf)
	if err != nil {
		return err
	}
	return invoke.ExecPluginWithoutResult(ctx, filepath.Join(c.BinDir, "stickynet"), b,
		&invoke.Args{Command: "GC", Path: c.BinDir}, nil)
}

// Raw runs the plugin binary with a hand-made configuration (bad input tests).
func (c *CNI) Raw(command string, conf []byte, rt *libcni.RuntimeConf) ([]byte, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	var pairs []string
	for _, kv := range rt.Args {
		pairs = append(pairs, kv[0]+"="+kv[1])
	}
	args := &invoke.Args{
		Command: command, ContainerID: rt.ContainerID, NetNS: rt.NetNS, IfName: rt.IfName,
		PluginArgsStr: strings.Join(pairs, ";"), Path: c.BinDir,
	}
	return (&invoke.RawExec{Stderr: os.Stderr}).ExecPlugin(ctx, filepath.Join(c.BinDir, "stickynet"), conf, args.AsEnv())
}
