package datapath

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/netlinkdump"

	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/bandwidth"
	"github.com/stickynet/stickynet/nodeagent/ovs"
)

// Check verifies that the attachment is in place as set up: host veth and its
// OVS port (number, VLAN, labels), the pod interface's MAC, state, addresses
// and default routes, and the bandwidth limits. It returns a CNI error listing
// every difference.
func (d *Datapath) Check(ctx context.Context, a *Attachment) error {
	if a.VF != nil {
		return d.checkVF(a)
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	host, err := d.host.LinkByName(a.HostVeth)
	switch {
	case err != nil:
		add("host veth %s: %v", a.HostVeth, err)
	case host.Type() != "veth":
		add("host interface %s is a %s, not a veth", a.HostVeth, host.Type())
	case host.Attrs().Flags&net.FlagUp == 0:
		add("host veth %s is down", a.HostVeth)
	}
	ifcs, err := d.ovs.Interfaces(ctx)
	if err != nil {
		return err
	}
	var port *ovs.Interface
	for i := range ifcs {
		if ifcs[i].Name == a.HostVeth {
			port = &ifcs[i]
		}
	}
	if port == nil {
		add("OVS has no port %s", a.HostVeth)
	} else {
		if port.OFPort != a.OFPort {
			add("OVS port %s has OpenFlow port %d, want %d", a.HostVeth, port.OFPort, a.OFPort)
		}
		if port.VLAN != a.VLAN || port.VLANMode != "access" {
			add("OVS port %s is %s (%s), want access port on %s", a.HostVeth, vlanString(port.VLAN), port.VLANMode, vlanString(a.VLAN))
		}
		if port.ExternalIDs[IDContainerID] != a.ContainerID || port.ExternalIDs[IDPodUID] != a.PodUID {
			add("OVS port %s belongs to container %q of pod UID %q", a.HostVeth, port.ExternalIDs[IDContainerID], port.ExternalIDs[IDPodUID])
		}
		if port.Error != "" {
			add("OVS port %s: %s", a.HostVeth, port.Error)
		}
	}
	if host != nil {
		bw, err := d.checkBandwidth(ctx, a, host, port)
		if err != nil {
			return err // OVS did not answer: not a difference
		}
		problems = append(problems, bw...)
	}
	problems = append(problems, d.checkPod(a)...)
	if len(problems) == 0 {
		return nil
	}
	return types.NewError(api.ErrCheckFailed,
		fmt.Sprintf("attachment %s of pod %s differs from what was set up", a.Key(), a.Pod()), strings.Join(problems, "; "))
}

func (d *Datapath) checkPod(a *Attachment) []string {
	pn, err := d.enter(a.Netns)
	if err != nil {
		return []string{err.Error()}
	}
	defer pn.Close()
	link, err := pn.nl.LinkByName(a.IfName)
	if err != nil {
		return []string{fmt.Sprintf("%s in netns %s: %v", a.IfName, a.Netns, err)}
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if mac, _ := net.ParseMAC(a.MAC); !bytes.Equal(link.Attrs().HardwareAddr, mac) {
		add("%s has MAC %s, want %s", a.IfName, link.Attrs().HardwareAddr, a.MAC)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		add("%s is down", a.IfName)
	}
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return pn.nl.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		add("list addresses of %s: %v", a.IfName, err)
	}
	have := map[netip.Prefix]bool{}
	for _, ad := range addrs {
		ip, _ := netip.AddrFromSlice(ad.IP)
		ones, _ := ad.Mask.Size()
		have[netip.PrefixFrom(ip.Unmap(), ones)] = true
	}
	for _, p := range a.IPs {
		if !have[p] {
			add("%s lacks address %s", a.IfName, p)
		}
	}
	routes, err := netlinkdump.Retry(func() ([]netlink.Route, error) { return pn.nl.RouteList(link, netlink.FAMILY_ALL) })
	if err != nil {
		add("list routes of %s: %v", a.IfName, err)
	}
	for _, gw := range a.Gateways {
		found := false
		for _, r := range routes {
			ones := -1
			if r.Dst != nil {
				ones, _ = r.Dst.Mask.Size()
			}
			rgw, _ := netip.AddrFromSlice(r.Gw)
			if (r.Dst == nil || ones == 0) && rgw.Unmap() == gw {
				found = true
			}
		}
		if !found {
			add("no default route via %s on %s", gw, a.IfName)
		}
	}
	return problems
}

// checkBandwidth lists how the limits in force differ from a's; an error
// is a meter or flow listing that failed.
func (d *Datapath) checkBandwidth(ctx context.Context, a *Attachment, host netlink.Link, port *ovs.Interface) ([]string, error) {
	if a.LimitsUnknown {
		return nil, nil
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	tbf, err := d.rootTBF(host)
	if err != nil {
		add("%v", err)
	}
	if a.Bandwidth.Ingress.Rate == 0 {
		if tbf != nil {
			add("%s has a tbf (rate %d B/s) but the pod has no ingress limit", a.HostVeth, tbf.Rate)
		}
	} else if p, err := bandwidth.TBF(a.Bandwidth.Ingress, a.MTU); err != nil {
		add("ingress limit: %v", err)
	} else if !p.Matches(tbf) {
		add("%s lacks the tbf for %d bit/s", a.HostVeth, a.Bandwidth.Ingress.Rate)
	}
	switch a.EgressMode {
	case bandwidth.EgressMeter:
		meters, err := d.ovs.Meters(ctx)
		if err != nil {
			return nil, err
		}
		flows, err := d.ovs.MeterFlows(ctx)
		if err != nil {
			return nil, err
		}
		if a.Bandwidth.Egress.Rate == 0 {
			if _, ok := flows[a.OFPort]; ok {
				add("OpenFlow port %d goes through a meter but the pod has no egress limit", a.OFPort)
			}
			break
		}
		p, _ := d.policer(a.Bandwidth.Egress, a.MTU)
		want := ovs.Meter{ID: a.OFPort, RateKbps: p.RateKbps, BurstKbits: p.BurstKbits}
		if m, ok := meters[a.OFPort]; !ok || m != want {
			add("meter %d is %+v, want %+v", a.OFPort, m, want)
		}
		if flows[a.OFPort] != a.OFPort {
			add("OpenFlow port %d does not go through meter %d", a.OFPort, a.OFPort)
		}
	case bandwidth.EgressPolicing:
		var want ovs.Policing
		if a.Bandwidth.Egress.Rate > 0 {
			p, _ := d.policer(a.Bandwidth.Egress, a.MTU)
			want = ovs.Policing{RateKbps: p.RateKbps, BurstKbits: p.BurstKbits}
		}
		if port != nil && port.Policing != want {
			add("OVS interface %s polices at %+v, want %+v", a.HostVeth, port.Policing, want)
		}
	}
	return problems, nil
}
