// Package sriov owns the SR-IOV side of the node agent: finding the virtual
// functions (VFs) of physical functions (PFs) in sysfs under a configurable
// root, and the PF-side VF settings (MAC, VLAN, spoof check, trust,
// max_tx_rate, link state) behind a small interface, applied and restored as
// they were found. Moving a VF's netdev into a pod's network namespace and
// back is package datapath's (SetupVF, teardownVF).
package sriov

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// VF is a virtual function of a PF as sysfs shows it.
type VF struct {
	PF     string // PF netdev name
	Index  int    // N of virtfnN
	PCI    string // PCI address of the VF ("" when sysfs does not link it)
	NetDev string // the VF's netdev name in the host ("" when it has none, e.g. bound to vfio)
}

// Discover lists the VFs of pf, sorted by index, from
// <root>/class/net/<pf>/device/virtfn<N>/net/<netdev>. On a real node root is
// /sys; tests point it at a generated tree.
func Discover(root, pf string) ([]VF, error) {
	dev := filepath.Join(root, "class", "net", pf, "device")
	entries, err := os.ReadDir(dev)
	if err != nil {
		return nil, fmt.Errorf("read VFs of PF %s: %w", pf, err)
	}
	var vfs []VF
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "virtfn")
		if !ok {
			continue
		}
		idx, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		vf := VF{PF: pf, Index: idx}
		p := filepath.Join(dev, e.Name())
		if target, err := os.Readlink(p); err == nil {
			vf.PCI = filepath.Base(target)
		}
		if nets, err := os.ReadDir(filepath.Join(p, "net")); err == nil && len(nets) > 0 {
			vf.NetDev = nets[0].Name()
		}
		vfs = append(vfs, vf)
	}
	sort.Slice(vfs, func(i, j int) bool { return vfs[i].Index < vfs[j].Index })
	return vfs, nil
}

// LinkState is a VF's administrative link state.
type LinkState string

// VF link states (the SriovNetwork API's values).
const (
	LinkAuto    LinkState = "auto"
	LinkEnable  LinkState = "enable"
	LinkDisable LinkState = "disable"
)

// Config is a VF's PF-side configuration.
type Config struct {
	MAC           string    `json:"mac"`
	VLAN          int       `json:"vlan"`
	SpoofChk      bool      `json:"spoofChk"`
	Trust         bool      `json:"trust"`
	MaxTxRateMbps int       `json:"maxTxRateMbps"` // 0: unlimited
	LinkState     LinkState `json:"linkState"`
}

// PF changes VFs through their physical function.
type PF interface {
	SetVfHardwareAddr(pf string, vf int, mac net.HardwareAddr) error
	SetVfVlan(pf string, vf, vlan int) error
	SetVfSpoofchk(pf string, vf int, on bool) error
	SetVfTrust(pf string, vf int, on bool) error
	SetVfMaxTxRate(pf string, vf, mbps int) error
	SetVfLinkState(pf string, vf int, state LinkState) error
	// VfConfig reads a VF's current configuration.
	VfConfig(pf string, vf int) (Config, error)
}

// Apply sets every field of c on the VF, in the order a driver accepts them
// (the MAC before trust, the VLAN before the link comes up), and stops at
// the first it cannot set. A driver that refuses a field is no error while
// the VF already has the value wanted: some have no VF link state or trust
// control (EOPNOTSUPP), and ixgbe refuses any max_tx_rate, 0 too, while its
// PF's link is down or not at 10 Gbit/s (EINVAL), which would fail every
// pod's ADD there, limited or not.
func Apply(p PF, pf string, vf int, c Config) error { return apply(p, pf, vf, c, false) }

// Restore is Apply for putting a VF back as it was: it tries every field
// even when one fails, so that a driver refusing one (a zero MAC, say)
// does not leave the VF with the last pod's VLAN, trust and rate limit,
// and returns the failures together.
func Restore(p PF, pf string, vf int, c Config) error { return apply(p, pf, vf, c, true) }

func apply(p PF, pf string, vf int, c Config, every bool) error {
	mac, err := net.ParseMAC(c.MAC)
	if err != nil {
		return fmt.Errorf("VF %d of %s: MAC %q: %w", vf, pf, c.MAC, err)
	}
	steps := []struct {
		what string
		to   any
		do   func() error
		has  func(cur Config) bool
	}{
		{"MAC", mac, func() error { return p.SetVfHardwareAddr(pf, vf, mac) }, func(cur Config) bool {
			m, err := net.ParseMAC(cur.MAC)
			return err == nil && m.String() == mac.String()
		}},
		{"VLAN", c.VLAN, func() error { return p.SetVfVlan(pf, vf, c.VLAN) }, func(cur Config) bool { return cur.VLAN == c.VLAN }},
		{"spoof check", c.SpoofChk, func() error { return p.SetVfSpoofchk(pf, vf, c.SpoofChk) }, func(cur Config) bool { return cur.SpoofChk == c.SpoofChk }},
		{"trust", c.Trust, func() error { return p.SetVfTrust(pf, vf, c.Trust) }, func(cur Config) bool { return cur.Trust == c.Trust }},
		{"max_tx_rate", fmt.Sprintf("%d Mbit/s", c.MaxTxRateMbps), func() error { return p.SetVfMaxTxRate(pf, vf, c.MaxTxRateMbps) }, func(cur Config) bool { return cur.MaxTxRateMbps == c.MaxTxRateMbps }},
		{"link state", c.LinkState, func() error { return p.SetVfLinkState(pf, vf, c.LinkState) }, func(cur Config) bool { return cur.LinkState == c.LinkState }},
	}
	var errs []error
	for _, s := range steps {
		err := s.do()
		if err != nil {
			if cur, rerr := p.VfConfig(pf, vf); rerr == nil && s.has(cur) {
				continue
			}
			errs = append(errs, fmt.Errorf("set %s of VF %d on %s to %v: %w", s.what, vf, pf, s.to, err))
			if !every {
				break
			}
		}
	}
	return errors.Join(errs...)
}

// NetlinkPF drives real PFs through netlink.
type NetlinkPF struct {
	Handle *netlink.Handle
}

var _ PF = NetlinkPF{}

func (n NetlinkPF) link(pf string) (netlink.Link, error) {
	l, err := n.Handle.LinkByName(pf)
	if err != nil {
		return nil, fmt.Errorf("PF %s: %w", pf, err)
	}
	return l, nil
}

// SetVfHardwareAddr sets the VF's MAC.
func (n NetlinkPF) SetVfHardwareAddr(pf string, vf int, mac net.HardwareAddr) error {
	l, err := n.link(pf)
	if err != nil {
		return err
	}
	return n.Handle.LinkSetVfHardwareAddr(l, vf, mac)
}

// SetVfVlan sets the VF's VLAN (0: none).
func (n NetlinkPF) SetVfVlan(pf string, vf, vlan int) error {
	l, err := n.link(pf)
	if err != nil {
		return err
	}
	return n.Handle.LinkSetVfVlan(l, vf, vlan)
}

// SetVfSpoofchk turns the VF's source MAC check on or off.
func (n NetlinkPF) SetVfSpoofchk(pf string, vf int, on bool) error {
	l, err := n.link(pf)
	if err != nil {
		return err
	}
	return n.Handle.LinkSetVfSpoofchk(l, vf, on)
}

// SetVfTrust sets the VF's trust.
func (n NetlinkPF) SetVfTrust(pf string, vf int, on bool) error {
	l, err := n.link(pf)
	if err != nil {
		return err
	}
	return n.Handle.LinkSetVfTrust(l, vf, on)
}

// SetVfMaxTxRate sets the VF's max_tx_rate in Mbit/s (0: unlimited).
func (n NetlinkPF) SetVfMaxTxRate(pf string, vf, mbps int) error {
	l, err := n.link(pf)
	if err != nil {
		return err
	}
	return n.Handle.LinkSetVfRate(l, vf, 0, mbps)
}

// SetVfLinkState sets the VF's administrative link state.
func (n NetlinkPF) SetVfLinkState(pf string, vf int, state LinkState) error {
	l, err := n.link(pf)
	if err != nil {
		return err
	}
	s, err := linkStateValue(state)
	if err != nil {
		return err
	}
	return n.Handle.LinkSetVfState(l, vf, s)
}

// VfConfig reads the VF's configuration from the PF's link attributes.
func (n NetlinkPF) VfConfig(pf string, vf int) (Config, error) {
	l, err := n.link(pf)
	if err != nil {
		return Config{}, err
	}
	for _, v := range l.Attrs().Vfs {
		if v.ID == vf {
			return configOf(v), nil
		}
	}
	return Config{}, fmt.Errorf("PF %s has no VF %d", pf, vf)
}

// configOf is a VF's configuration as the kernel reports it. The kernel
// reports -1 for a trust setting the driver leaves unset (one without
// trust control): such a VF is not trusted. (Its spoof check reads as on
// the same way, netlink turning -1 into true: the default.)
func configOf(v netlink.VfInfo) Config {
	c := Config{
		MAC: v.Mac.String(), VLAN: v.Vlan, SpoofChk: v.Spoofchk, Trust: v.Trust != 0 && v.Trust != math.MaxUint32,
		MaxTxRateMbps: int(v.MaxTxRate), LinkState: LinkAuto,
	}
	switch v.LinkState {
	case 1:
		c.LinkState = LinkEnable
	case 2:
		c.LinkState = LinkDisable
	}
	return c
}

// linkStateValue maps a link state to IFLA_VF_LINK_STATE_*.
func linkStateValue(s LinkState) (uint32, error) {
	switch s {
	case LinkAuto, "":
		return 0, nil
	case LinkEnable:
		return 1, nil
	case LinkDisable:
		return 2, nil
	}
	return 0, errors.New("VF link state " + string(s) + ": want auto, enable or disable")
}
