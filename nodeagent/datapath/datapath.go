// Package datapath owns what a pod's attachment is made of on a node: the veth
// pair, the host end's OVS port (VLAN tag, external_ids naming the pod and
// container), the pod end in the pod's network namespace (CNI ifname, sticky
// MAC, addresses, default routes, TX checksum offload, gratuitous ARP and
// unsolicited neighbour advertisement), and the bandwidth limits in both
// directions. It sets an attachment up, tears it down (also when the pod's
// netns is gone), checks it, and changes its limits live.
package datapath

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/netlinkdump"
	"github.com/vishvananda/netns"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/bandwidth"
	"github.com/stickynet/stickynet/nodeagent/ovs"
	"github.com/stickynet/stickynet/nodeagent/sriov"
)

// External IDs the agent puts on a pod's OVS interface.
const (
	IDNetwork      = "stickynet-network"
	IDContainerID  = "stickynet-container-id"
	IDIfName       = "stickynet-ifname"
	IDNetns        = "stickynet-netns"
	IDPodNamespace = "stickynet-pod-namespace"
	IDPodName      = "stickynet-pod-name"
	IDPodUID       = "stickynet-pod-uid"
	// IDIfaceID is the usual OVS key naming what the interface belongs to.
	IDIfaceID = "iface-id"
)

// Attachment is one pod interface the agent made: what it is attached for and
// what it is made of. The agent keeps it in its cache folder.
type Attachment struct {
	Network      string                `json:"network"`
	ContainerID  string                `json:"containerID"`
	IfName       string                `json:"ifName"`
	Netns        string                `json:"netns"`
	PodNamespace string                `json:"podNamespace"`
	PodName      string                `json:"podName"`
	PodUID       string                `json:"podUID"`
	HostVeth     string                `json:"hostVeth"`
	OFPort       int                   `json:"ofport"`
	MAC          string                `json:"mac"`
	IPs          []netip.Prefix        `json:"ips"`
	Gateways     []netip.Addr          `json:"gateways,omitempty"`
	VLAN         int                   `json:"vlan,omitempty"`
	MTU          int                   `json:"mtu,omitempty"`
	Bandwidth    annotations.Bandwidth `json:"bandwidth"` // limits in force
	// LimitsUnknown says that Bandwidth is not known to be in force (an
	// attachment rebuilt from OVS whose pod's bandwidth keys could not be
	// read): the next SetBandwidth compares with what is installed, and
	// CHECK does not check the limits.
	LimitsUnknown bool `json:"limitsUnknown,omitempty"`
	// EgressMode is how the egress limit is enforced (meter or policing).
	EgressMode bandwidth.EgressMode `json:"egressMode,omitempty"`
	// VF is set for an SR-IOV attachment, which has no veth and no OVS port.
	VF *VFState `json:"vf,omitempty"`
}

// Key identifies an attachment as the runtime does: container and ifname.
func (a *Attachment) Key() string { return a.ContainerID + "/" + a.IfName }

// Pod names the pod as namespace/name.
func (a *Attachment) Pod() string { return a.PodNamespace + "/" + a.PodName }

// ExternalIDs are the labels of the attachment's OVS interface.
func (a *Attachment) ExternalIDs() map[string]string {
	return map[string]string{
		IDNetwork:      a.Network,
		IDContainerID:  a.ContainerID,
		IDIfName:       a.IfName,
		IDNetns:        a.Netns,
		IDPodNamespace: a.PodNamespace,
		IDPodName:      a.PodName,
		IDPodUID:       a.PodUID,
		IDIfaceID:      a.PodNamespace + "/" + a.PodName,
	}
}

// ovsClient is what the datapath needs from Open vSwitch.
type ovsClient interface {
	AddPort(ctx context.Context, p ovs.Port) error
	DelPort(ctx context.Context, name string) error
	SetPolicing(ctx context.Context, port string, p ovs.Policing) error
	AddMeter(ctx context.Context, m ovs.Meter) error
	ModMeter(ctx context.Context, m ovs.Meter) error
	DelMeter(ctx context.Context, id int) error
	AddMeterFlow(ctx context.Context, port, id int) error
	AddMeterFlows(ctx context.Context, ports []int) error
	Interfaces(ctx context.Context) ([]ovs.Interface, error)
	Meters(ctx context.Context) (map[int]ovs.Meter, error)
	MeterFlows(ctx context.Context) (map[int]int, error)
}

// netnsOpener opens a network namespace by path.
type netnsOpener func(path string) (ns.NetNS, error)

// Config is the node's datapath setup.
type Config struct {
	// EgressMode is meter or policing (resolved, not auto).
	EgressMode bandwidth.EgressMode
	// TxChecksumOff switches TX checksum offload off on the pod's veth, which
	// the userspace datapath needs for TCP to work.
	TxChecksumOff bool
	// MTU of both veth ends; 0 leaves the kernel's default.
	MTU int
	// SysfsRoot is where VFs are looked up (/sys on a real node).
	SysfsRoot string
}

// Datapath sets pods' attachments up on one node.
//
// Egress meters: OpenFlow port number N (chosen by the agent) goes with meter
// N and the flow "in_port=N, meter N, NORMAL". Flow changes are what costs in
// ovs-vswitchd (hundreds of milliseconds under load, against tens for a meter
// change), so when a pod goes, its number keeps meter and flow: the next pod
// with an egress limit that gets the number only changes the meter's rate.
// Pods without an egress limit get numbers without a flow (see Metered).
type Datapath struct {
	cfg       Config
	host      netlinksafe.Handle // the node's network namespace
	ovs       ovsClient
	openNetns netnsOpener
	offload   offloadSwitch
	announcer announcer
	sysctl    sysctlWriter

	mu      sync.Mutex
	metered map[int]bool   // port numbers with meter and meter flow installed
	gen     uint64         // counts the changes to metered
	changed map[int]uint64 // port number → gen of its last change

	pf     sriov.PF // PF-side VF calls; nil: no SR-IOV
	hostNS ns.NetNS // the node's namespace, where VFs return
}

// New returns a datapath working in the node's network namespace hostNS,
// with host a netlink handle in it.
func New(cfg Config, host *netlink.Handle, hostNS ns.NetNS, o ovsClient) *Datapath {
	return &Datapath{
		cfg:       cfg,
		host:      netlinksafe.Handle{Handle: host},
		hostNS:    hostNS,
		ovs:       o,
		openNetns: ns.GetNS,
		offload:   ethtoolSwitch{},
		announcer: packetAnnouncer{},
		sysctl:    procSysctl{},
		metered:   map[int]bool{},
		changed:   map[int]uint64{},
	}
}

// Metered reports whether OpenFlow port number n has its meter and meter
// flow installed (as far as the datapath knows).
func (d *Datapath) Metered(n int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.metered[n]
}

// delMeter deletes meter n, and its flow with it. One that could not be
// deleted stays marked, so that the next try deletes it rather than
// finding nothing to do (a pod whose limit was lifted policed at the old
// rate, and the next pod on the number too).
func (d *Datapath) delMeter(ctx context.Context, n int) error {
	d.setMetered(n, false)
	if err := d.ovs.DelMeter(ctx, n); err != nil {
		d.setMetered(n, true)
		return err
	}
	return nil
}

func (d *Datapath) setMetered(n int, v bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	d.changed[n] = d.gen
	if v {
		d.metered[n] = true
	} else {
		delete(d.metered, n)
	}
}

// unlimitedMeter is the rate of a meter kept for a future pod (100 Gbit/s):
// no traffic goes through it until a pod with an egress limit takes its
// number and sets its own rate.
const unlimitedMeterKbps = 100_000_000

// WarmMeters installs, for each port number in ns, its meter at an
// unlimited rate and its flow (all flows in one flow-table change), so that a
// later pod with an egress limit only changes a rate. The caller keeps the
// numbers from being allocated meanwhile.
func (d *Datapath) WarmMeters(ctx context.Context, ns []int) error {
	if d.cfg.EgressMode != bandwidth.EgressMeter || len(ns) == 0 {
		return nil
	}
	for _, n := range ns {
		if err := d.ovs.AddMeter(ctx, ovs.Meter{ID: n, RateKbps: unlimitedMeterKbps, BurstKbits: unlimitedMeterKbps * bandwidth.PolicerBurstPercent / 100}); err != nil {
			return err
		}
	}
	if err := d.ovs.AddMeterFlows(ctx, ns); err != nil {
		return err
	}
	for _, n := range ns {
		d.setMetered(n, true)
	}
	return nil
}

// LearnMetered replaces what the datapath knows about installed meters with
// what snap shows, but for the ports whose meter it set or removed after
// snap began: an ADD or warm batch that finished meanwhile is newer than
// the snapshot (forgetting its meter, a pod without a limit that got the
// port number next kept the previous pod's).
func (d *Datapath) LearnMetered(snap *Snapshot) {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := map[int]bool{}
	for port, meter := range snap.MeterFlows {
		if _, ok := snap.Meters[meter]; ok && port == meter {
			next[port] = true
		}
	}
	for port, g := range d.changed {
		switch {
		case g <= snap.gen:
			delete(d.changed, port) // the snapshot is as new
		case d.metered[port]:
			next[port] = true
		default:
			delete(next, port)
		}
	}
	d.metered = next
}

// EnableSRIOV lets the datapath attach VFs, with pf making the PF-side calls.
func (d *Datapath) EnableSRIOV(pf sriov.PF) { d.pf = pf }

// MeterMode reports whether egress limits are OpenFlow meters.
func (d *Datapath) MeterMode() bool { return d.cfg.EgressMode == bandwidth.EgressMeter }

// EgressMode is how pods' egress limits are enforced on this node.
func (d *Datapath) EgressMode() bandwidth.EgressMode { return d.cfg.EgressMode }

// Config returns the datapath's configuration.
func (d *Datapath) Config() Config { return d.cfg }

// podNetns is a pod's network namespace with a netlink handle inside it.
type podNetns struct {
	ns ns.NetNS
	nl netlinksafe.Handle
}

func (p *podNetns) Close() {
	p.nl.Close()
	_ = p.ns.Close()
}

// ErrNetnsGone reports that the pod's network namespace no longer exists.
var ErrNetnsGone = errors.New("network namespace is gone")

// NetnsGone reports whether the network namespace at path is known to be
// gone; a namespace that cannot be opened for another reason is not.
func (d *Datapath) NetnsGone(path string) bool {
	n, err := d.openNetns(path)
	if err == nil {
		_ = n.Close()
		return false
	}
	return netnsMissing(err)
}

// netnsMissing reports whether opening a netns failed because it is not there.
func netnsMissing(err error) bool {
	var notExist ns.NSPathNotExistErr
	return errors.As(err, &notExist) || errors.Is(err, os.ErrNotExist)
}

func (d *Datapath) enter(path string) (*podNetns, error) {
	n, err := d.openNetns(path)
	if err != nil {
		if netnsMissing(err) {
			return nil, fmt.Errorf("open netns %s: %w", path, ErrNetnsGone)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		_ = n.Close()
		return nil, fmt.Errorf("netlink handle in netns %s: %w", path, err)
	}
	return &podNetns{ns: n, nl: h}, nil
}

// Setup makes the attachment and returns the host veth's MAC. On failure
// what it made stays, for the caller's Teardown: the agent's undo of a
// failed ADD, within what the plugin still waits (an OVS command that
// ovsdb-server does not answer would otherwise hold each teardown for its
// own timeout).
//
// Once the veth pair exists, the steps that do not depend on each other run
// at once: the OVS port (ovs-vsctl waits for ovs-vswitchd), the egress meter
// and its flow (ovs-ofctl; a flow may name a port number before the port
// exists), and the pod side (netlink). The ingress qdisc follows the port; the
// announcements go out last, when the port forwards.
func (d *Datapath) Setup(ctx context.Context, a *Attachment) (net.HardwareAddr, error) {
	log := klog.FromContext(ctx).WithValues("pod", a.Pod(), "containerID", a.ContainerID, "ifname", a.IfName)
	mac, err := net.ParseMAC(a.MAC)
	if err != nil {
		return nil, fmt.Errorf("MAC %q of %s: %w", a.MAC, a.Pod(), err)
	}
	pn, err := d.enter(a.Netns)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, err.Error(), "")
	}
	defer pn.Close()
	if l, err := pn.nl.LinkByName(a.IfName); err == nil {
		return nil, types.NewError(api.ErrInterfaceExists,
			fmt.Sprintf("interface %s already exists in netns %s (%s, MAC %s): pick another ifname or remove it", a.IfName, a.Netns, l.Type(), l.Attrs().HardwareAddr), "")
	}
	want := a.Bandwidth
	a.Bandwidth = annotations.Bandwidth{}
	a.EgressMode = d.EgressMode()
	start := time.Now()
	if err := d.addVeth(a, mac, pn); err != nil {
		return nil, err
	}
	host, err := d.host.LinkByName(a.HostVeth)
	if err != nil {
		return nil, fmt.Errorf("find host veth %s: %w", a.HostVeth, err)
	}
	// The host end is a switch port: no IPv6 of its own (no link-local
	// address, no router solicitations or MLD reports for OVS to flood).
	if err := d.inHost(func() error { return d.disableIPv6(a.HostVeth) }); err != nil {
		return nil, fmt.Errorf("disable IPv6 on host veth %s: %w", a.HostVeth, err)
	}
	if err := d.host.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("set host veth %s up: %w", a.HostVeth, err)
	}
	port := ovs.Port{Name: a.HostVeth, OFPort: a.OFPort, VLAN: a.VLAN, ExternalIDs: a.ExternalIDs()}
	if a.EgressMode == bandwidth.EgressPolicing && want.Egress.Rate > 0 {
		p, err := d.policer(want.Egress, a.MTU)
		if err != nil {
			return nil, fmt.Errorf("egress limit of %s: %w", a.Pod(), err)
		}
		port.Policing = &ovs.Policing{RateKbps: p.RateKbps, BurstKbits: p.BurstKbits}
	}
	var tPort, tMeter time.Duration
	// Each step's error is kept (errgroup keeps the first only: an egress
	// meter refused at once hid the port's "no answer" that came later).
	var g errgroup.Group
	var portErr, egressErr error
	// The qdisc goes on after the port: ovs-vswitchd clears the root qdisc of
	// an interface it adds when the port has no QoS of its own.
	g.Go(func() error {
		if portErr = d.ovs.AddPort(ctx, port); portErr == nil {
			tPort = time.Since(start)
			portErr = d.setIngress(a, want.Ingress, false)
		}
		return nil
	})
	switch {
	case a.EgressMode == bandwidth.EgressMeter && (want.Egress.Rate > 0 || d.Metered(a.OFPort)):
		g.Go(func() error {
			egressErr = d.setEgress(ctx, a, want.Egress, nil)
			tMeter = time.Since(start)
			return nil
		})
	case a.EgressMode != bandwidth.EgressMeter && d.Metered(a.OFPort):
		// A meter left on the number by a pod of before the egress mode
		// changed would police this pod too.
		g.Go(func() error { egressErr = d.delMeter(ctx, a.OFPort); return nil })
	}
	podErr := d.configurePodLink(a, pn, d.cfg.TxChecksumOff)
	tPod := time.Since(start)
	_ = g.Wait()
	if err := errors.Join(portErr, egressErr, podErr); err != nil {
		// What was made is recorded, so Teardown removes it.
		a.Bandwidth = want
		return nil, err
	}
	a.Bandwidth = want
	if err := d.announce(a, pn); err != nil {
		return nil, err
	}
	log.V(2).Info("Attachment set up", "hostVeth", a.HostVeth, "ofport", a.OFPort, "ips", a.IPs,
		"ovsPort", tPort, "meter", tMeter, "podSide", tPod, "total", time.Since(start))
	return host.Attrs().HardwareAddr, nil
}

// addVeth creates the pair with the pod end already in the pod's netns under
// its final name and MAC. A host end left over from an interrupted setup of
// the same attachment is replaced.
func (d *Datapath) addVeth(a *Attachment, mac net.HardwareAddr, pn *podNetns) error {
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.HostVeth, MTU: a.MTU},
		PeerName:         a.IfName,
		PeerHardwareAddr: mac,
		PeerNamespace:    netlink.NsFd(int(pn.ns.Fd())),
		PeerMTU:          uint32(max(a.MTU, 0)),
	}
	err := d.host.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		if old, lerr := d.host.LinkByName(a.HostVeth); lerr == nil {
			if derr := d.host.LinkDel(old); derr != nil {
				return fmt.Errorf("remove stale host veth %s: %w", a.HostVeth, derr)
			}
			err = d.host.LinkAdd(veth)
		}
	}
	if err != nil {
		return fmt.Errorf("create veth %s (peer %s in netns %s): %w", a.HostVeth, a.IfName, a.Netns, err)
	}
	return nil
}

// configurePodLink addresses the pod's interface, sets it up and routes via
// the gateways; txChecksumOff switches its TX checksum offload off.
func (d *Datapath) configurePodLink(a *Attachment, pn *podNetns, txChecksumOff bool) error {
	link, err := pn.nl.LinkByName(a.IfName)
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", a.IfName, a.Netns, err)
	}
	if lo, err := pn.nl.LinkByName("lo"); err == nil {
		if err := pn.nl.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up in netns %s: %w", a.Netns, err)
		}
	}
	if !hasIPv6(a.IPs) {
		// An IPv4-only pod: no link-local address, DAD, router solicitations
		// or MLD reports that OVS would flood to every port of the bridge.
		if err := pn.ns.Do(func(ns.NetNS) error { return d.disableIPv6(a.IfName) }); err != nil {
			return fmt.Errorf("disable IPv6 on %s in netns %s: %w", a.IfName, a.Netns, err)
		}
	}
	for _, p := range a.IPs {
		if err := pn.nl.AddrAdd(link, podAddr(p)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s to %s in netns %s: %w", p, a.IfName, a.Netns, err)
		}
	}
	if err := pn.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in netns %s: %w", a.IfName, a.Netns, err)
	}
	for _, r := range podRoutes(link.Attrs().Index, a.IPs, a.Gateways) {
		if err := pn.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s in netns %s: %w", r, a.Netns, err)
		}
	}
	if txChecksumOff {
		if err := pn.ns.Do(func(ns.NetNS) error { return d.offload.TxChecksumOff(a.IfName) }); err != nil {
			return fmt.Errorf("switch TX checksum offload off on %s in netns %s: %w", a.IfName, a.Netns, err)
		}
	}
	return nil
}

// announce tells the pod's neighbours where its addresses are now.
func (d *Datapath) announce(a *Attachment, pn *podNetns) error {
	link, err := pn.nl.LinkByName(a.IfName)
	if err != nil {
		return fmt.Errorf("find %s in netns %s: %w", a.IfName, a.Netns, err)
	}
	mac := link.Attrs().HardwareAddr
	frames := make([][]byte, 0, len(a.IPs))
	for _, p := range a.IPs {
		frames = append(frames, Announcement(mac, p.Addr()))
	}
	if err := pn.ns.Do(func(ns.NetNS) error { return d.announcer.Announce(link.Attrs().Index, frames) }); err != nil {
		return fmt.Errorf("announce %v from %s in netns %s: %w", a.IPs, a.IfName, a.Netns, err)
	}
	return nil
}

func hasIPv6(ips []netip.Prefix) bool {
	for _, p := range ips {
		if p.Addr().Is6() {
			return true
		}
	}
	return false
}

// disableIPv6 turns IPv6 off on an interface of the calling thread's network
// namespace, just found by its caller. A kernel booted with ipv6.disable=1
// has no net/ipv6 sysctls at all, and no IPv6 to turn off: its missing file
// is no failure (every ADD on such a node failed).
func (d *Datapath) disableIPv6(ifName string) error {
	err := d.sysctl.Set("net/ipv6/conf/"+ifName+"/disable_ipv6", "1")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// inHost runs fn in the node's network namespace.
func (d *Datapath) inHost(fn func() error) error {
	return d.hostNS.Do(func(ns.NetNS) error { return fn() })
}

// podAddr is the address as the pod gets it; IPv6 skips duplicate address
// detection: the address is the pod's by assignment, and DAD would hold it
// tentative (unusable) for a second or more.
func podAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// podRoutes are the pod's default routes, one per family with a gateway, plus
// an on-link host route to a gateway outside the pod's own prefix.
func podRoutes(linkIndex int, ips []netip.Prefix, gateways []netip.Addr) []*netlink.Route {
	var out []*netlink.Route
	for _, gw := range gateways {
		onLink := false
		for _, p := range ips {
			if p.Addr().Is4() == gw.Is4() && p.Masked().Contains(gw) {
				onLink = true
			}
		}
		bits := gw.BitLen()
		if !onLink {
			out = append(out, &netlink.Route{
				LinkIndex: linkIndex,
				Scope:     netlink.SCOPE_LINK,
				Dst:       &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(bits, bits)},
			})
		}
		out = append(out, &netlink.Route{
			LinkIndex: linkIndex,
			Dst:       &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)},
			Gw:        gw.AsSlice(),
		})
	}
	return out
}

// Teardown removes an attachment: its OVS port and its veth pair, at once.
// Its port number's meter and flow stay for the next pod (see Datapath).
// Missing parts are fine (DEL is idempotent, and the pod's netns may be
// gone, taking the veth pair with it).
func (d *Datapath) Teardown(ctx context.Context, a *Attachment) error {
	if a.VF != nil {
		return d.teardownVF(ctx, a)
	}
	var g errgroup.Group
	g.Go(func() error { return d.ovs.DelPort(ctx, a.HostVeth) })
	var linkErr error
	if l, err := d.host.LinkByName(a.HostVeth); err == nil {
		if err := d.host.LinkDel(l); err != nil && !isNotFound(err) {
			linkErr = fmt.Errorf("delete host veth %s: %w", a.HostVeth, err)
		}
	} else if !isNotFound(err) {
		linkErr = fmt.Errorf("find host veth %s: %w", a.HostVeth, err)
	}
	return errors.Join(g.Wait(), linkErr)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// Snapshot is the installed egress state of the bridge, read once for many
// attachments.
type Snapshot struct {
	Meters     map[int]ovs.Meter
	MeterFlows map[int]int // OpenFlow port -> meter
	Interfaces map[string]ovs.Interface
	gen        uint64 // the datapath's count of meter changes when it began
}

// Snapshot reads the bridge's meters, meter flows and interfaces.
func (d *Datapath) Snapshot(ctx context.Context) (*Snapshot, error) {
	d.mu.Lock()
	s := &Snapshot{Interfaces: map[string]ovs.Interface{}, gen: d.gen}
	d.mu.Unlock()
	var err error
	if s.Meters, err = d.ovs.Meters(ctx); err != nil {
		return nil, err
	}
	if s.MeterFlows, err = d.ovs.MeterFlows(ctx); err != nil {
		return nil, err
	}
	ifcs, err := d.ovs.Interfaces(ctx)
	if err != nil {
		return nil, err
	}
	for _, i := range ifcs {
		s.Interfaces[i.Name] = i
	}
	return s, nil
}

// SetBandwidth makes the limits in force equal want: a tbf on the host veth
// for ingress, a meter or policing for egress; a zero rate removes a limit.
// With snap == nil the attachment's record of what is in force is trusted
// (the agent made it); with a snapshot, what is installed is compared instead
// (after a restart of the agent or of ovs-vswitchd, which loses meters).
func (d *Datapath) SetBandwidth(ctx context.Context, a *Attachment, want annotations.Bandwidth, snap *Snapshot) error {
	if a.VF != nil {
		return d.setVFBandwidth(a, want)
	}
	if a.LimitsUnknown && snap == nil {
		var err error
		if snap, err = d.Snapshot(ctx); err != nil {
			return err
		}
	}
	if err := d.setIngress(a, want.Ingress, snap != nil); err != nil {
		return err
	}
	a.Bandwidth.Ingress = want.Ingress
	if err := d.setEgress(ctx, a, want.Egress, snap); err != nil {
		return err
	}
	a.Bandwidth.Egress = want.Egress
	a.LimitsUnknown = false
	return nil
}

func (d *Datapath) setIngress(a *Attachment, want annotations.Limit, verify bool) error {
	if !verify && want == a.Bandwidth.Ingress {
		return nil
	}
	link, err := d.host.LinkByName(a.HostVeth)
	if err != nil {
		return fmt.Errorf("find host veth %s: %w", a.HostVeth, err)
	}
	current, err := d.rootTBF(link)
	if err != nil {
		return err
	}
	if want.Rate == 0 {
		if current == nil {
			return nil
		}
		if err := d.host.QdiscDel(current); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove tbf from %s: %w", a.HostVeth, err)
		}
		return nil
	}
	p, err := bandwidth.TBF(want, a.MTU)
	if err != nil {
		return fmt.Errorf("ingress limit of %s: %w", a.Pod(), err)
	}
	if p.Matches(current) {
		return nil
	}
	if err := d.host.QdiscReplace(p.Qdisc(link.Attrs().Index)); err != nil {
		return fmt.Errorf("set tbf on %s: %w", a.HostVeth, err)
	}
	return nil
}

// rootTBF returns the tbf at the root of link, or nil.
func (d *Datapath) rootTBF(link netlink.Link) (*netlink.Tbf, error) {
	qs, err := netlinkdump.Retry(func() ([]netlink.Qdisc, error) { return d.host.QdiscList(link) })
	if err != nil {
		return nil, fmt.Errorf("list qdiscs of %s: %w", link.Attrs().Name, err)
	}
	for _, q := range qs {
		if t, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
			return t, nil
		}
	}
	return nil, nil
}

func (d *Datapath) setEgress(ctx context.Context, a *Attachment, want annotations.Limit, snap *Snapshot) error {
	// Nothing to change, unless a port without a limit still has a meter (a
	// port number reused after a pod whose meter was left behind).
	if snap == nil && want == a.Bandwidth.Egress && (want.Rate > 0 || a.EgressMode != bandwidth.EgressMeter || !d.Metered(a.OFPort)) {
		return nil
	}
	switch a.EgressMode {
	case bandwidth.EgressPolicing:
		var pol ovs.Policing
		if want.Rate > 0 {
			p, err := d.policer(want, a.MTU)
			if err != nil {
				return fmt.Errorf("egress limit of %s: %w", a.Pod(), err)
			}
			pol = ovs.Policing{RateKbps: p.RateKbps, BurstKbits: p.BurstKbits}
		}
		if snap != nil {
			if ifc, ok := snap.Interfaces[a.HostVeth]; ok && ifc.Policing == pol {
				return nil
			}
		}
		return d.ovs.SetPolicing(ctx, a.HostVeth, pol)
	case bandwidth.EgressMeter:
		id := a.OFPort
		if snap != nil {
			_, hasMeter := snap.Meters[id]
			d.setMetered(id, hasMeter && snap.MeterFlows[a.OFPort] == id)
		}
		if want.Rate == 0 {
			if !d.Metered(id) && (snap == nil || !hasKey(snap.Meters, id)) {
				return nil
			}
			return d.delMeter(ctx, id)
		}
		p, err := d.policer(want, a.MTU)
		if err != nil {
			return fmt.Errorf("egress limit of %s: %w", a.Pod(), err)
		}
		m := ovs.Meter{ID: id, RateKbps: p.RateKbps, BurstKbits: p.BurstKbits}
		if snap != nil && snap.Meters[id] == m && d.Metered(id) {
			return nil
		}
		if d.Metered(id) {
			err := d.ovs.ModMeter(ctx, m)
			if !errors.Is(err, ovs.ErrUnknownMeter) {
				return err
			}
			d.setMetered(id, false) // ovs-vswitchd restarted since
		}
		if err := d.ovs.AddMeter(ctx, m); err != nil {
			return err
		}
		if err := d.ovs.AddMeterFlow(ctx, a.OFPort, id); err != nil {
			return err
		}
		d.setMetered(id, true)
		return nil
	default:
		return fmt.Errorf("egress mode %q of %s: want meter or policing", a.EgressMode, a.Key())
	}
}

// SandboxGone reports whether the pod sandbox an attachment was made for
// is gone: for a veth, its host end (it goes with the pod's netns); for a
// VF, the netns file the runtime named (the VF itself returns to the host
// with the netns).
func (d *Datapath) SandboxGone(a *Attachment) bool {
	if a.VF != nil {
		if a.Netns == "" {
			return false // not known: kept
		}
		_, err := os.Stat(a.Netns)
		return errors.Is(err, fs.ErrNotExist)
	}
	return !d.HostVethExists(a.HostVeth)
}

// HostVethExists reports whether the host end of an attachment exists (it
// vanishes with the pod's netns); only the kernel saying there is no such
// link makes it false, not a failed lookup.
func (d *Datapath) HostVethExists(name string) bool {
	_, err := d.host.LinkByName(name)
	var nf netlink.LinkNotFoundError
	return !errors.As(err, &nf)
}

// EnsurePort puts the attachment's OVS port back if OVS lost it (a fresh
// OVS database); a port that exists is left alone.
func (d *Datapath) EnsurePort(ctx context.Context, a *Attachment, exists bool) error {
	if exists {
		return nil
	}
	return d.ovs.AddPort(ctx, ovs.Port{Name: a.HostVeth, OFPort: a.OFPort, VLAN: a.VLAN, ExternalIDs: a.ExternalIDs()})
}

// HostVethName is the host end's name for an attachment: "sn" and 13 hex
// digits of a hash of container ID and ifname (15 characters, IFNAMSIZ-1).
func HostVethName(containerID, ifName string) string {
	return "sn" + hash(containerID + "/" + ifName)[:13]
}

// vlanString renders a VLAN for messages.
func vlanString(v int) string {
	if v == 0 {
		return "untagged"
	}
	return "VLAN " + strconv.Itoa(v)
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}

// policer is bandwidth.Policer for this node: the pod's packets reach its
// port unsegmented (GSO) unless its veth's TX checksum offload is off, which
// takes TSO and GSO with it (the userspace datapath).
func (d *Datapath) policer(l annotations.Limit, mtu int) (bandwidth.PolicerParams, error) {
	return bandwidth.Policer(l, mtu, !d.cfg.TxChecksumOff)
}
