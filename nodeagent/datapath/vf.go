package datapath

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/sriov"
)

// VFState is an SR-IOV attachment's VF: where it is and how it was before the
// pod, to be restored on detach.
type VFState struct {
	PF       string       `json:"pf"`
	Index    int          `json:"index"`
	PCI      string       `json:"pci,omitempty"`
	NetDev   string       `json:"netdev"` // name in the node before the move
	OrigMAC  string       `json:"origMAC"`
	OrigMTU  int          `json:"origMTU"`
	Original sriov.Config `json:"original"` // PF-side, before the pod
	Applied  sriov.Config `json:"applied"`  // PF-side, for the pod
}

// HostLinkExists reports whether the node's namespace has an interface name.
func (d *Datapath) HostLinkExists(name string) bool {
	_, err := d.host.LinkByName(name)
	return err == nil
}

// VFOutOfPod reports whether nothing of the attachment's VF is the pod's any
// more, whatever else of its former state is still to be put back: its
// netdev is in the node, and the PF no longer gives the VF the pod's MAC
// (were it brought up, the VF would send as the pod, whose identity may be
// running elsewhere by then). false when that cannot be read.
func (d *Datapath) VFOutOfPod(a *Attachment) bool {
	if a.VF == nil || d.pf == nil || !d.HostLinkExists(a.VF.NetDev) {
		return false
	}
	cur, err := d.pf.VfConfig(a.VF.PF, a.VF.Index)
	return err == nil && !strings.EqualFold(cur.MAC, a.MAC)
}

// PrepareVF records how the attachment's VF is now (netdev MAC and MTU,
// PF-side settings), changing nothing: the caller stores the record before
// SetupVF changes anything.
func (d *Datapath) PrepareVF(a *Attachment) error {
	if d.pf == nil {
		return types.NewError(api.ErrUnsupported, "SR-IOV is not enabled on this node agent", "")
	}
	l, err := d.host.LinkByName(a.VF.NetDev)
	if err != nil {
		return fmt.Errorf("VF %d of %s: netdev %s: %w", a.VF.Index, a.VF.PF, a.VF.NetDev, err)
	}
	a.VF.OrigMAC, a.VF.OrigMTU = l.Attrs().HardwareAddr.String(), l.Attrs().MTU
	if a.VF.Original, err = d.pf.VfConfig(a.VF.PF, a.VF.Index); err != nil {
		return fmt.Errorf("read VF %d of %s: %w", a.VF.Index, a.VF.PF, err)
	}
	return nil
}

// RestoreError says that a SetupVF that failed could not put the VF back as
// it was: the VF is not free for another pod until a teardown succeeds.
type RestoreError struct{ Err error }

func (e *RestoreError) Error() string { return "restore the VF: " + e.Err.Error() }
func (e *RestoreError) Unwrap() error { return e.Err }

// SetupVF gives the pod the VF: PF-side settings, then the netdev moves into
// the pod's namespace under the CNI ifname with the pod's MAC, addresses and
// routes. On failure the VF is restored, or the error holds a *RestoreError.
func (d *Datapath) SetupVF(ctx context.Context, a *Attachment, cfg sriov.Config) (err error) {
	pn, err := d.enter(a.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, err.Error(), "")
	}
	defer pn.Close()
	if l, err := pn.nl.LinkByName(a.IfName); err == nil {
		return types.NewError(api.ErrInterfaceExists,
			fmt.Sprintf("interface %s already exists in netns %s (%s, MAC %s): pick another ifname or remove it", a.IfName, a.Netns, l.Type(), l.Attrs().HardwareAddr), "")
	}
	defer func() {
		if err == nil {
			return
		}
		if terr := d.teardownVF(ctx, a); terr != nil {
			err = errors.Join(err, &RestoreError{Err: terr})
		}
	}()
	if err := sriov.Apply(d.pf, a.VF.PF, a.VF.Index, cfg); err != nil {
		return err
	}
	a.VF.Applied = cfg
	mac, err := net.ParseMAC(a.MAC)
	if err != nil {
		return err
	}
	l, err := d.host.LinkByName(a.VF.NetDev)
	if err != nil {
		return fmt.Errorf("VF netdev %s: %w", a.VF.NetDev, err)
	}
	if err := d.host.LinkSetDown(l); err != nil {
		return fmt.Errorf("set VF netdev %s down: %w", a.VF.NetDev, err)
	}
	if err := d.host.LinkSetNsFd(l, int(pn.ns.Fd())); err != nil {
		return fmt.Errorf("move VF netdev %s into netns %s: %w", a.VF.NetDev, a.Netns, err)
	}
	pl, err := pn.nl.LinkByName(a.VF.NetDev)
	if err != nil {
		return fmt.Errorf("find VF netdev %s in netns %s: %w", a.VF.NetDev, a.Netns, err)
	}
	if err := pn.nl.LinkSetName(pl, a.IfName); err != nil {
		return fmt.Errorf("rename VF netdev %s to %s: %w", a.VF.NetDev, a.IfName, err)
	}
	if err := pn.nl.LinkSetHardwareAddr(pl, mac); err != nil {
		return fmt.Errorf("set MAC of %s: %w", a.IfName, err)
	}
	// The agent's MTU, but not above the PF's: a VF's traffic leaves
	// through its PF, and drivers refuse a VF an MTU above the PF's (--mtu
	// 9000 for the OVS fabric beside a PF at 1500 would fail every VF
	// pod's ADD). 0 leaves the VF's own. The record keeps the MTU the VF
	// has.
	mtu := a.MTU
	if pf, err := d.host.LinkByName(a.VF.PF); err == nil && mtu > pf.Attrs().MTU {
		mtu = pf.Attrs().MTU
	}
	if mtu > 0 && mtu != pl.Attrs().MTU {
		if err := pn.nl.LinkSetMTU(pl, mtu); err != nil {
			return fmt.Errorf("set MTU of %s to %d: %w", a.IfName, mtu, err)
		}
	}
	a.MTU = cmp.Or(mtu, pl.Attrs().MTU)
	if err := d.configurePodLink(a, pn, false); err != nil {
		return err
	}
	if cfg.LinkState != sriov.LinkDisable && !awaitCarrier(ctx, pn, a.IfName, carrierWait) {
		klog.FromContext(ctx).Info("VF has no carrier yet; announcing its address anyway, which the wire may not get",
			"pod", a.Pod(), "ifname", a.IfName, "vf", a.VF.NetDev, "waited", carrierWait)
	}
	return d.announce(a, pn)
}

// carrierWait is how long SetupVF waits for a VF it has just set up to have
// carrier before it announces the pod's address (not for a VF whose
// SriovNetwork disables its link, which gets none). A VF's driver brings its
// link up a while after it is set up (a review's reading of drivers such as iavf, not tried on
// hardware), and until then the kernel drops what is sent out of it while
// the sender sees success: the announcement was lost, and the switches kept
// a moved pod's MAC on its old node's port, the pod unreachable until it
// sent something itself or their entry aged out.
const carrierWait = 3 * time.Second

// awaitCarrier reports whether link ifName of the pod's namespace has
// carrier (IFF_LOWER_UP) within wait.
func awaitCarrier(ctx context.Context, pn *podNetns, ifName string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		l, err := pn.nl.LinkByName(ifName)
		if err == nil && l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// teardownVF brings the VF back to the node under its old name, MAC and
// MTU, and restores its PF-side settings. When the pod's netns is gone the
// kernel has already moved a physical VF's netdev back to the initial
// namespace (found again through sysfs); whatever cannot be found is
// skipped, the PF side is restored regardless, unless the VF itself is
// gone.
func (d *Datapath) teardownVF(ctx context.Context, a *Attachment) error {
	v := a.VF
	var errs []error
	if pn, err := d.enter(a.Netns); err == nil {
		// Under the pod's ifname, or still under its node name when a setup
		// failed between the move and the rename.
		for _, name := range []string{a.IfName, v.NetDev} {
			if l, err := pn.nl.LinkByName(name); err == nil {
				errs = append(errs, d.moveBack(pn, l.Attrs().Name, v.NetDev))
				break
			}
		}
		pn.Close()
	}
	if !d.HostLinkExists(v.NetDev) {
		// Back in the node under another name (the pod's ifname, or devN)?
		if vfs, err := sriov.Discover(d.cfg.SysfsRoot, v.PF); err == nil {
			for _, cur := range vfs {
				if cur.Index == v.Index && cur.NetDev != "" && cur.NetDev != v.NetDev && d.HostLinkExists(cur.NetDev) {
					l, _ := d.host.LinkByName(cur.NetDev)
					errs = append(errs, d.host.LinkSetDown(l), d.host.LinkSetName(l, v.NetDev))
				}
			}
		}
	}
	// The PF side first: drivers such as ixgbe, i40e and ice refuse an
	// untrusted VF's own MAC change while the PF holds another MAC for it
	// (the pod's), as sriov-cni's DEL also says. A VF that is gone (its PF's
	// sriov_numvfs lowered, the driver unloaded) has nothing to restore:
	// trying would fail every DEL, and the pod would stay Terminating.
	if v.Original.MAC != "" {
		if gone := d.vfGone(v); gone != "" {
			klog.FromContext(ctx).Info("The VF is gone from the node: nothing to restore on its PF", "pf", v.PF, "vf", v.Index, "why", gone)
		} else {
			errs = append(errs, sriov.Restore(d.pf, v.PF, v.Index, v.Original))
		}
	}
	if l, err := d.host.LinkByName(v.NetDev); err == nil {
		if mac, err := net.ParseMAC(v.OrigMAC); err == nil && l.Attrs().HardwareAddr.String() != v.OrigMAC {
			errs = append(errs, wrapf(d.host.LinkSetHardwareAddr(l, mac), "restore MAC of %s", v.NetDev))
		}
		if v.OrigMTU > 0 && l.Attrs().MTU != v.OrigMTU {
			errs = append(errs, wrapf(d.host.LinkSetMTU(l, v.OrigMTU), "restore MTU of %s", v.NetDev))
		}
	}
	return errors.Join(errs...)
}

// vfGone says why v's VF no longer exists in sysfs ("" while it does, or
// when sysfs cannot be read for another reason).
func (d *Datapath) vfGone(v *VFState) string {
	vfs, err := sriov.Discover(d.cfg.SysfsRoot, v.PF)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("PF %s is not in sysfs any more (its driver unloaded, or renamed)", v.PF)
	}
	if err != nil {
		return ""
	}
	for _, cur := range vfs {
		if cur.Index == v.Index {
			return ""
		}
	}
	return fmt.Sprintf("PF %s has no VF %d any more (sriov_numvfs lowered)", v.PF, v.Index)
}

// moveBack renames the pod's VF netdev to its node name inside the pod's
// namespace (no clash there) and moves it to the node.
func (d *Datapath) moveBack(pn *podNetns, cur, name string) error {
	l, err := pn.nl.LinkByName(cur)
	if err != nil {
		return err
	}
	if err := pn.nl.LinkSetDown(l); err != nil {
		return fmt.Errorf("set %s down: %w", cur, err)
	}
	if err := pn.nl.LinkSetName(l, name); err != nil {
		return fmt.Errorf("rename %s back to %s: %w", cur, name, err)
	}
	if d.hostNS == nil {
		return errors.New("node netns unknown: cannot move the VF back")
	}
	if err := pn.nl.LinkSetNsFd(l, int(d.hostNS.Fd())); err != nil {
		return fmt.Errorf("move %s back to the node: %w", name, err)
	}
	return nil
}

func wrapf(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// setVFBandwidth applies the egress limit as the VF's max_tx_rate; a VF has
// no place for an ingress limit on the host side, so that one is not enforced.
func (d *Datapath) setVFBandwidth(a *Attachment, want annotations.Bandwidth) error {
	rate := want.Egress.VFRateMbps()
	if rate != a.VF.Applied.MaxTxRateMbps {
		if err := d.pf.SetVfMaxTxRate(a.VF.PF, a.VF.Index, rate); err != nil {
			return fmt.Errorf("set max_tx_rate of VF %d on %s to %d Mbit/s (the egress limit): %w", a.VF.Index, a.VF.PF, rate, err)
		}
		a.VF.Applied.MaxTxRateMbps = rate
	}
	a.Bandwidth = want
	return nil
}

// checkVF compares the VF with what was set up.
func (d *Datapath) checkVF(a *Attachment) error {
	problems := d.checkPod(a)
	if got, err := d.pf.VfConfig(a.VF.PF, a.VF.Index); err != nil {
		problems = append(problems, err.Error())
	} else if got != a.VF.Applied {
		problems = append(problems, fmt.Sprintf("VF %d of %s is %+v, want %+v", a.VF.Index, a.VF.PF, got, a.VF.Applied))
	}
	if len(problems) == 0 {
		return nil
	}
	return types.NewError(api.ErrCheckFailed,
		fmt.Sprintf("attachment %s of pod %s differs from what was set up", a.Key(), a.Pod()), strings.Join(problems, "; "))
}
