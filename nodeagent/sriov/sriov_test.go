package sriov_test

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/stickynet/stickynet/nodeagent/sriov"
	"github.com/stickynet/stickynet/nodeagent/sriov/sriovtest"
)

func TestDiscover(t *testing.T) {
	root := t.TempDir()
	if err := sriovtest.MakeTree(root, "pf0", []string{"vf0a", "vf1a", "vf2a"}); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(root, "class", "net", "pf0", "device")
	// virtfn10 sorts after virtfn2; virtfn3 has no netdev (bound to vfio);
	// a symlinked VF names its PCI address.
	if err := os.MkdirAll(filepath.Join(dev, "virtfn10", "net", "vf10a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dev, "virtfn3"), 0o755); err != nil {
		t.Fatal(err)
	}
	pci := filepath.Join(root, "bus", "pci", "devices", "0000:3b:02.4")
	if err := os.MkdirAll(filepath.Join(pci, "net", "vf4a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(pci, filepath.Join(dev, "virtfn4")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dev, "sriov_numvfs"), []byte("6\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := sriov.Discover(root, "pf0")
	if err != nil {
		t.Fatal(err)
	}
	want := []sriov.VF{
		{PF: "pf0", Index: 0, NetDev: "vf0a"},
		{PF: "pf0", Index: 1, NetDev: "vf1a"},
		{PF: "pf0", Index: 2, NetDev: "vf2a"},
		{PF: "pf0", Index: 3},
		{PF: "pf0", Index: 4, PCI: "0000:3b:02.4", NetDev: "vf4a"},
		{PF: "pf0", Index: 10, NetDev: "vf10a"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if _, err := sriov.Discover(root, "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing PF: %v", err)
	}
}

func TestApplyOrderAndErrors(t *testing.T) {
	r := sriovtest.NewRecorder(map[string]sriov.Config{"pf0/1": {MAC: "00:00:00:00:00:00"}})
	c := sriov.Config{MAC: "02:00:00:00:00:01", VLAN: 100, SpoofChk: true, Trust: false, MaxTxRateMbps: 50, LinkState: sriov.LinkEnable}
	if err := sriov.Apply(r, "pf0", 1, c); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"SetVfHardwareAddr pf0/1 02:00:00:00:00:01", "SetVfVlan pf0/1 100", "SetVfSpoofchk pf0/1 true",
		"SetVfTrust pf0/1 false", "SetVfMaxTxRate pf0/1 50", "SetVfLinkState pf0/1 enable",
	}
	if got := r.Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("calls %v\nwant  %v", got, want)
	}
	if got, _ := r.VfConfig("pf0", 1); got != c {
		t.Errorf("VF config %+v, want %+v", got, c)
	}
	r.Fail = map[string]error{"SetVfTrust": errors.New("operation not supported")}
	trusted := c
	trusted.Trust = true
	err := sriov.Apply(r, "pf0", 1, trusted)
	if err == nil || !strings.Contains(err.Error(), "set trust of VF 1 on pf0 to true: operation not supported") {
		t.Errorf("Apply with a failing driver = %v", err)
	}
	// A driver that refuses any max_tx_rate (ixgbe while its PF's link is
	// down or below 10 Gbit/s: EINVAL, 0 too): no error while the VF has
	// the rate wanted (before, every pod's ADD there failed, limited or
	// not), an error naming the field and the rate when it has not.
	r.Fail = map[string]error{"SetVfMaxTxRate": unix.EINVAL}
	if err := sriov.Apply(r, "pf0", 1, c); err != nil {
		t.Errorf("Apply of max_tx_rate %d, which the VF has, on a driver that refuses it = %v; want nil", c.MaxTxRateMbps, err)
	}
	unlimited := c
	unlimited.MaxTxRateMbps = 0
	if err := sriov.Apply(r, "pf0", 1, unlimited); err == nil || !strings.Contains(err.Error(), "set max_tx_rate of VF 1 on pf0 to 0 Mbit/s: invalid argument") {
		t.Errorf("Apply of max_tx_rate 0, which the VF has not, on a driver that refuses it = %v; want the error", err)
	}
	if err := sriov.Apply(r, "pf0", 1, sriov.Config{MAC: "bad"}); err == nil {
		t.Error("bad MAC: want error")
	}
	// A driver without VF link state control: no error while the VF has
	// the state wanted, an error naming the field when it has not.
	r.Fail = map[string]error{"SetVfLinkState": fmt.Errorf("netlink: %w", unix.EOPNOTSUPP)}
	if err := sriov.Apply(r, "pf0", 1, c); err != nil {
		t.Errorf("Apply of link state %s, which the VF has, on a driver that cannot set it = %v; want nil", c.LinkState, err)
	}
	c.LinkState = sriov.LinkDisable
	if err := sriov.Apply(r, "pf0", 1, c); err == nil || !strings.Contains(err.Error(), "set link state of VF 1 on pf0") {
		t.Errorf("Apply of link state %s, which the VF has not, on a driver that cannot set it = %v; want the error", c.LinkState, err)
	}
}

// Restore tries every field even when one fails, and names the failures;
// Apply stops at the first.
func TestRestoreTriesEveryField(t *testing.T) {
	pod := sriov.Config{MAC: "02:00:00:00:00:01", VLAN: 100, SpoofChk: false, Trust: true, MaxTxRateMbps: 10, LinkState: sriov.LinkEnable}
	orig := sriov.Config{MAC: "00:00:00:00:00:00", SpoofChk: true, LinkState: sriov.LinkAuto}
	r := sriovtest.NewRecorder(map[string]sriov.Config{"pf0/1": pod})
	r.SetFail("SetVfHardwareAddr", errors.New("invalid argument")) // a driver refusing a zero MAC
	if err := sriov.Apply(r, "pf0", 1, orig); err == nil || len(r.Calls()) != 1 {
		t.Fatalf("Apply with the MAC refused = %v; want the error, after that one call", err)
	}
	err := sriov.Restore(r, "pf0", 1, orig)
	if err == nil || !strings.Contains(err.Error(), "set MAC of VF 1 on pf0 to 00:00:00:00:00:00: invalid argument") {
		t.Errorf("Restore with the MAC refused = %v; want the MAC's error", err)
	}
	want := orig
	want.MAC = pod.MAC
	if got, _ := r.VfConfig("pf0", 1); got != want {
		t.Errorf("VF after Restore %+v; want every other field restored: %+v", got, want)
	}
}

// The kernel reports -1 for a trust setting a driver leaves unset: not
// trusted. Read as trusted, every VF of such a driver failed its ADD (trust
// off wanted, EOPNOTSUPP, and "has" true).
func TestConfigOfUnreportedTrust(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	for trust, want := range map[uint32]bool{0: false, 1: true, math.MaxUint32: false} {
		got := sriov.ConfigOf(netlink.VfInfo{ID: 1, Mac: mac, Trust: trust, Spoofchk: true})
		if got.Trust != want {
			t.Errorf("trust %d read as %v; want %v", trust, got.Trust, want)
		}
	}
}
