package host

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/netlinkdump"
	"github.com/vishvananda/netns"
)

// AddBridge creates a Linux bridge in the host's network namespace with addr
// on it and sets it up.
func (h *Host) AddBridge(name string, addr netip.Prefix) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	if err := netlink.AddrAdd(br, toAddr(addr)); err != nil {
		return fmt.Errorf("add %s to bridge %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

// AddUplink creates a veth pair whose end hostName is a port of the host
// bridge and whose other end, named peerName, is in the network namespace
// bound at nsPath.
func (h *Host) AddUplink(bridge, hostName, nsPath, peerName string) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", bridge, err)
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostName, MasterIndex: br.Attrs().Index},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s: %w", hostName, peerName, err)
	}
	// A bridge port needs no address of its own. Without this, every uplink
	// coming up sends IPv6 DAD, MLD and router solicitations, which the
	// bridge floods to all its ports (see FabricSysctls).
	if err := disableIPv6(hostName); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", hostName, err)
	}
	return nil
}

// disableIPv6 turns IPv6 off on link name of the host's namespace; a
// kernel without IPv6 has nothing to turn off.
func disableIPv6(name string) error {
	err := os.WriteFile(filepath.Join("/proc/sys/net/ipv6/conf", name, "disable_ipv6"), []byte("1"), 0o644)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("turn IPv6 off on %s: %w", name, err)
	}
	return nil
}

// FabricSysctls turn IPv6 off in a namespace whose links only carry the
// cluster's IPv4 fabric (a simulated node's). On a fabric bridge with
// hundreds of ports, each multicast frame that links send when they come up
// is copied to every port. With 203 nodes and 200 pods, TestSimulatedNodes
// overflowed the kernel's receive backlog (net.core.netdev_max_backlog) by
// about 170,000 frames in a run, 3,300 with these settings; ARP requests
// lost with them are the likely cause of a pod found unreachable in CI.
var FabricSysctls = []Sysctl{
	{Key: "ipv6/conf/all/disable_ipv6", Value: "1"},
	{Key: "ipv6/conf/default/disable_ipv6", Value: "1"},
}

// NodeNet is how a node's namespace is wired behind its uplink.
type NodeNet struct {
	// Uplink is the name of the uplink's end inside the namespace.
	Uplink string
	// Bridge, if set, is a Linux bridge created in the namespace that
	// enslaves the uplink and carries Addr; otherwise Addr goes on the uplink.
	Bridge string
	// Addr is the node's address on the fabric.
	Addr netip.Prefix
}

// SetupNodeNet sets loopback up and wires the uplink inside the namespace
// bound at nsPath as n says.
func (h *Host) SetupNodeNet(nsPath string, n NodeNet) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", nsPath, err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", nsPath, err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", nsPath, err)
	}
	up, err := nh.LinkByName(n.Uplink)
	if err != nil {
		return fmt.Errorf("find uplink %s in %s: %w", n.Uplink, nsPath, err)
	}
	addrOn := up
	if n.Bridge != "" {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}
		if err := nh.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s in %s: %w", n.Bridge, nsPath, err)
		}
		if err := nh.LinkSetMaster(up, br); err != nil {
			return fmt.Errorf("enslave %s to %s in %s: %w", n.Uplink, n.Bridge, nsPath, err)
		}
		if err := nh.LinkSetUp(br); err != nil {
			return fmt.Errorf("set %s up in %s: %w", n.Bridge, nsPath, err)
		}
		addrOn = br
	}
	if err := nh.AddrAdd(addrOn, toAddr(n.Addr)); err != nil {
		return fmt.Errorf("add %s in %s: %w", n.Addr, nsPath, err)
	}
	if err := nh.LinkSetUp(up); err != nil {
		return fmt.Errorf("set %s up in %s: %w", n.Uplink, nsPath, err)
	}
	return nil
}

// DeleteLink removes a link of the host's namespace; a missing link is not
// an error.
func (h *Host) DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// Links returns the names of the host namespace's links that start with prefix.
func (h *Host) Links(prefix string) ([]string, error) {
	ls, err := netlinkdump.Retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range ls {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// HostPrefixes returns every address prefix and route destination of the
// host namespace, to choose a fabric subnet that collides with none.
func (h *Host) HostPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := fromIPNet(a.IPNet); ok {
			out = append(out, p.Masked())
		}
	}
	routes, err := netlinkdump.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if p, ok := fromIPNet(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func toAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

func fromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
