package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/bandwidth"
	"github.com/stickynet/stickynet/nodeagent/datapath"
	"github.com/stickynet/stickynet/nodeagent/ovs"
	"github.com/stickynet/stickynet/nodeagent/podsource"
	"github.com/stickynet/stickynet/nodeagent/sriov"
	"github.com/stickynet/stickynet/nodeagent/sriov/sriovtest"
	"github.com/stickynet/stickynet/nodeagent/state"
)

// gatedOVS answers every ovs-vsctl call with no interfaces, and holds each
// listing of interfaces until gate closes (entered, buffered, says the
// first is there).
type gatedOVS struct {
	entered, gate chan struct{}
	fail          error // every command's answer, when set
}

func (g *gatedOVS) Run(_ context.Context, _ []byte, _ string, args ...string) ([]byte, error) {
	if g.fail != nil {
		return nil, g.fail
	}
	if strings.Contains(strings.Join(args, " "), "list Interface") {
		select {
		case g.entered <- struct{}{}:
		default:
		}
		<-g.gate
	}
	return []byte(`{"headings":["name"],"data":[]}`), nil
}

// vfAgent is an agent on the host's netns whose OVS is run (no interfaces),
// with n VFs of PF pf0 whose PF-side settings start as original and are
// recorded by the returned PF double.
func vfAgent(t *testing.T, run *gatedOVS, original sriov.Config, n int) (*agent, *sriovtest.Recorder) {
	t.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostNS.Close() })
	oc := ovs.New(ovs.Config{Bridge: "br-unit-test"}, run)
	root := t.TempDir()
	dp := datapath.New(datapath.Config{SysfsRoot: root, EgressMode: bandwidth.EgressPolicing}, h, hostNS, oc)
	vfs := map[string]sriov.Config{}
	var netdevs []string
	for i := range n {
		vfs[fmt.Sprintf("pf0/%d", i)] = original
		netdevs = append(netdevs, fmt.Sprintf("pf0v%d", i))
	}
	if err := sriovtest.MakeTree(root, "pf0", netdevs); err != nil { // the VFs exist
		t.Fatal(err)
	}
	pf := sriovtest.NewRecorder(vfs)
	dp.EnableSRIOV(pf)
	store, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return &agent{
		pods: podsource.NewStatic(), ovs: oc, dp: dp, store: store,
		atts: map[string]*datapath.Attachment{}, starting: map[string]*datapath.Attachment{},
		usedPorts: map[int]bool{}, usedVFs: map[string]bool{}, detached: make(chan struct{}), podChanged: make(chan struct{}),
		keyLocks: newKeyLocks(),
	}, pf
}

// gcConfig is the configuration of a GC of network sticky that lists no
// valid attachment.
func gcConfig(t *testing.T) []byte {
	t.Helper()
	conf, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "sticky", "type": "stickynet", "cni.dev/valid-attachments": []any{}})
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

// netConf parses a network configuration, as Handle does before GC.
func netConf(t *testing.T, conf []byte) *api.NetConf {
	t.Helper()
	c, err := api.ParseNetConf(conf)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestGCAfterDelLeavesNextPodAlone: a GC that took its list of stale
// attachments (X) before a DEL removed X, and before a new pod Y was given
// X's VF, must not remove X again: its second teardown put X's original PF
// settings back on Y's VF (Y lost its MAC and VLAN) and gave the VF back
// while Y held it. Found by a review; it failed so before the fix.
func TestGCAfterDelLeavesNextPodAlone(t *testing.T) {
	g := &gatedOVS{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	a, pf := vfAgent(t, g, sriov.Config{MAC: "00:00:00:00:00:00"}, 1)
	store := a.store
	conf := gcConfig(t)
	x := &datapath.Attachment{
		Network: "sticky", ContainerID: "cX", IfName: "net1", Netns: "/nonexistent/x", MAC: "02:00:00:00:00:0a",
		VF: &datapath.VFState{PF: "pf0", Index: 0, NetDev: "vfgctest0", Original: sriov.Config{MAC: "00:00:00:00:00:00"}},
	}
	a.track(x)
	if err := store.Put(x); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gcDone := make(chan error, 1)
	go func() { gcDone <- a.gc(ctx, netConf(t, conf)) }()
	<-g.entered // the GC has its list of stale attachments, X among them
	if _, err := a.del(ctx, api.Request{Command: "DEL", ContainerID: "cX", IfName: "net1", Config: conf}); err != nil {
		t.Fatal(err)
	}
	// A new pod Y gets the VF, set up on the PF's side as SetupVF does.
	cfgY := sriov.Config{MAC: "02:00:00:00:00:0b", VLAN: 100, SpoofChk: true, LinkState: sriov.LinkAuto}
	if err := sriov.Apply(pf, "pf0", 0, cfgY); err != nil {
		t.Fatal(err)
	}
	y := &datapath.Attachment{
		Network: "sticky", ContainerID: "cY", IfName: "net1", Netns: "/nonexistent/y", MAC: cfgY.MAC,
		VF: &datapath.VFState{PF: "pf0", Index: 0, NetDev: "vfgctest0", Applied: cfgY},
	}
	a.track(y)
	close(g.gate)
	if err := <-gcDone; err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got, err := pf.VfConfig("pf0", 0); err != nil || got != cfgY {
		t.Errorf("Y's VF after the GC: %+v, %v; want %+v", got, err, cfgY)
	}
	if !a.usedVFs["pf0/0"] || a.atts[y.Key()] != y {
		t.Errorf("after the GC the VF is taken %v, Y kept %v; want both", a.usedVFs["pf0/0"], a.atts[y.Key()] == y)
	}
}

// TestGCWithoutOVSRemovesVFs: a GC while OVS does not answer still gives
// back the VFs of the attachments the runtime no longer knows (their
// teardown needs no OVS), keeps the veth ones for the next GC, and fails
// naming OVS. Before, it returned at the failed port listing and removed
// nothing.
func TestGCWithoutOVSRemovesVFs(t *testing.T) {
	original := sriov.Config{MAC: "00:00:00:00:00:00"}
	a, pf := vfAgent(t, &gatedOVS{fail: errors.New("ovsdb-server does not answer")}, original, 1)
	conf := gcConfig(t)
	set := sriov.Config{MAC: "02:00:00:00:00:0a", VLAN: 100, SpoofChk: true, LinkState: sriov.LinkAuto}
	if err := sriov.Apply(pf, "pf0", 0, set); err != nil {
		t.Fatal(err)
	}
	x := &datapath.Attachment{
		Network: "sticky", ContainerID: "cX", IfName: "net1", Netns: "/nonexistent/x", MAC: set.MAC,
		VF: &datapath.VFState{PF: "pf0", Index: 0, NetDev: "vfgcovs0", Original: original, Applied: set},
	}
	a.track(x)
	if err := a.store.Put(x); err != nil {
		t.Fatal(err)
	}
	// A veth attachment's port needs OVS: it waits for the next GC.
	y := &datapath.Attachment{Network: "sticky", ContainerID: "cY", IfName: "eth0", Netns: "/nonexistent/y", HostVeth: "vethgcovs0", OFPort: 7}
	a.track(y)
	err := a.gc(context.Background(), netConf(t, conf))
	if err == nil || !strings.Contains(err.Error(), "ovsdb-server does not answer") {
		t.Errorf("GC with OVS not answering = %v; want an error naming OVS", err)
	}
	if got, _ := pf.VfConfig("pf0", 0); got != original || a.usedVFs["pf0/0"] || a.get(x.Key()) != nil {
		t.Errorf("the stale VF after the GC: %+v, taken %v, kept %v; want its original settings, free, removed", got, a.usedVFs["pf0/0"], a.get(x.Key()) != nil)
	}
	if a.get(y.Key()) != y {
		t.Error("the stale veth attachment was removed while OVS did not answer; want it kept for the next GC")
	}
}

// TestCNIErrorKeepsWrapping: a CNI error wrapped by a failed undo keeps its
// code and gains the undo's words; before, the answer said only the inner
// error ("timed out ... it was undone") while the attachment stayed.
func TestCNIErrorKeepsWrapping(t *testing.T) {
	inner := types.NewError(types.ErrTryAgainLater, "request timed out while the VF was being set up", "")
	got := cniError(fmt.Errorf("%w; its undo failed, and what is left stays until the pod's DEL: %w", inner, errors.New("restore VF 0 of pf0: busy")))
	if got.Code != types.ErrTryAgainLater || !strings.Contains(got.Msg, "timed out") || !strings.Contains(got.Msg, "its undo failed") || !strings.Contains(got.Msg, "busy") {
		t.Errorf("got %d %q; want code %d with both failures", got.Code, got.Msg, types.ErrTryAgainLater)
	}
	if got := cniError(inner); got != inner {
		t.Errorf("an unwrapped CNI error: %v; want it as it is", got)
	}
	if got := cniError(fmt.Errorf("add-port: %w", ovs.ErrNoAnswer)); got.Code != types.ErrTryAgainLater {
		t.Errorf("OVS not answering: code %d; want %d", got.Code, types.ErrTryAgainLater)
	}
	if got := cniError(errors.New("disk full")); got.Code != types.ErrInternal || got.Msg != "disk full" {
		t.Errorf("a plain error: %d %q", got.Code, got.Msg)
	}
}

// TestSweepRemovesAttachmentsOfGoneSandboxes: a VF attachment kept after a
// failed DEL (containerd does not send it again for a sandbox whose ADD
// failed) is removed by the resync's sweep once its netns file is gone: its
// VF gets its original settings back and is free again. One whose netns is
// there stays. Before, it stayed until the agent restarted (a review's
// finding).
func TestSweepRemovesAttachmentsOfGoneSandboxes(t *testing.T) {
	g := &gatedOVS{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	close(g.gate)
	original := sriov.Config{MAC: "00:00:00:00:00:00"}
	a, pf := vfAgent(t, g, original, 2)
	store := a.store
	netns := filepath.Join(t.TempDir(), "cni-live")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	set := sriov.Config{MAC: "02:00:00:00:00:0a", VLAN: 100, SpoofChk: true, LinkState: sriov.LinkAuto}
	var ats []*datapath.Attachment
	for i, path := range []string{filepath.Join(t.TempDir(), "cni-gone"), netns} {
		if err := sriov.Apply(pf, "pf0", i, set); err != nil {
			t.Fatal(err)
		}
		at := &datapath.Attachment{
			Network: "sticky", ContainerID: fmt.Sprintf("c%d", i), IfName: "net1", Netns: path, MAC: set.MAC,
			VF: &datapath.VFState{PF: "pf0", Index: i, NetDev: fmt.Sprintf("vfsweep%d", i), Original: original, Applied: set},
		}
		a.track(at)
		if err := store.Put(at); err != nil {
			t.Fatal(err)
		}
		ats = append(ats, at)
	}
	if err := a.sweep(context.Background()); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if got, _ := pf.VfConfig("pf0", 0); got != original || a.usedVFs["pf0/0"] || a.get(ats[0].Key()) != nil {
		t.Errorf("VF 0, whose netns is gone, after the sweep: %+v, taken %v, kept %v; want its original settings, free, removed", got, a.usedVFs["pf0/0"], a.get(ats[0].Key()) != nil)
	}
	if got, _ := pf.VfConfig("pf0", 1); got != set || !a.usedVFs["pf0/1"] || a.get(ats[1].Key()) != ats[1] {
		t.Errorf("VF 1, whose netns is there, after the sweep: %+v, taken %v, kept %v; want it as it was", got, a.usedVFs["pf0/1"], a.get(ats[1].Key()) == ats[1])
	}
}

// TestAttachmentLock: a lock another holds makes lockKey wait until its
// context ends, with code 11; once released it is taken; releasing it
// twice panics rather than releasing another holder's lock.
func TestAttachmentLock(t *testing.T) {
	a := &agent{keyLocks: newKeyLocks()}
	unlock, err := a.lockKey(context.Background(), "c1/eth0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.lockKey(ctx, "c1/eth0"); cniError(err).Code != types.ErrTryAgainLater || !strings.Contains(err.Error(), "c1/eth0") {
		t.Errorf("lockKey of a held lock: %v; want code %d naming the attachment", err, types.ErrTryAgainLater)
	}
	unlock()
	again, err := a.lockKey(ctx, "c1/eth0") // ctx has ended: a free lock is still taken
	if err != nil {
		t.Fatalf("lockKey of a released lock: %v", err)
	}
	defer again()
	defer func() {
		if recover() == nil {
			t.Error("releasing a lock twice did not panic")
		}
	}()
	unlock()
}
