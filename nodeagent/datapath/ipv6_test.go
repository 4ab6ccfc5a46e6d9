package datapath

import (
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/testenv"
)

// kernelWithoutIPv6 is /proc/sys as a kernel booted with ipv6.disable=1 has
// it: no net/ipv6 at all.
type kernelWithoutIPv6 struct{ wrote []string }

func (k *kernelWithoutIPv6) Set(name, value string) error {
	if strings.HasPrefix(name, "net/ipv6/") {
		return &fs.PathError{Op: "open", Path: filepath.Join("/proc/sys", name), Err: fs.ErrNotExist}
	}
	k.wrote = append(k.wrote, name)
	return nil
}

// An IPv4 pod on a node booted with ipv6.disable=1 is set up: there is no
// IPv6 to turn off on its interface. Its ADD failed there ("disable IPv6 on
// eth0 ...: no such file or directory"), every ADD of the node, retried by
// the kubelet without end. Another failure to write still fails.
func TestIPv4PodWithoutKernelIPv6(t *testing.T) {
	testenv.Root(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close(); _ = testutils.UnmountNS(n) })
	if err := n.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"})
	}); err != nil {
		t.Fatal(err)
	}
	k := &kernelWithoutIPv6{}
	d := &Datapath{openNetns: ns.GetNS, sysctl: k}
	pn, err := d.enter(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer pn.Close()
	a := &Attachment{IfName: "eth0", Netns: n.Path(), IPs: []netip.Prefix{netip.MustParsePrefix("10.77.0.5/24")}, Gateways: []netip.Addr{netip.MustParseAddr("10.77.0.1")}}
	if err := d.configurePodLink(a, pn, false); err != nil {
		t.Fatalf("set up eth0 on a kernel without IPv6: %v", err)
	}
	link, err := pn.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := pn.nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.5/24" {
		t.Errorf("eth0's addresses %v (%v); want 10.77.0.5/24", addrs, err)
	}

	d.sysctl = failingSysctl{}
	if err := d.configurePodLink(a, pn, false); err == nil || !strings.Contains(err.Error(), "disable IPv6 on eth0") {
		t.Errorf("a write refused for another reason: %v; want it named", err)
	}
}

type failingSysctl struct{}

func (failingSysctl) Set(name, _ string) error {
	return &fs.PathError{Op: "open", Path: filepath.Join("/proc/sys", name), Err: os.ErrPermission}
}
