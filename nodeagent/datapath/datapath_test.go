package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stickynet/stickynet/nodeagent/ovs"
)

func TestARPAnnouncement(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:0a:00:00:05")
	f := Announcement(mac, netip.MustParseAddr("10.0.0.5"))
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x0a, 0x00, 0x00, 0x05, 0x08, 0x06, // Ethernet, broadcast, ARP
		0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // Ethernet/IPv4, request
		0x02, 0x00, 0x0a, 0x00, 0x00, 0x05, 10, 0, 0, 5, // sender
		0, 0, 0, 0, 0, 0, 10, 0, 0, 5, // target: same address, zero MAC
	}
	if !bytes.Equal(f, want) {
		t.Fatalf("frame\n got %x\nwant %x", f, want)
	}
}

func TestUnsolicitedNA(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:0a:00:00:06")
	ip := netip.MustParseAddr("fd00::6")
	f := Announcement(mac, ip)
	if len(f) != 14+40+32 {
		t.Fatalf("length %d", len(f))
	}
	if !bytes.Equal(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 1}) || !bytes.Equal(f[6:12], mac) || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IPV6 {
		t.Errorf("Ethernet header %x", f[:14])
	}
	ip6 := f[14:54]
	src, dst := ip.As16(), netip.MustParseAddr("ff02::1").As16()
	if ip6[0]>>4 != 6 || binary.BigEndian.Uint16(ip6[4:6]) != 32 || ip6[6] != unix.IPPROTO_ICMPV6 || ip6[7] != 255 ||
		!bytes.Equal(ip6[8:24], src[:]) || !bytes.Equal(ip6[24:40], dst[:]) {
		t.Errorf("IPv6 header %x", ip6)
	}
	icmp := f[54:]
	if icmp[0] != 136 || icmp[1] != 0 || binary.BigEndian.Uint32(icmp[4:8]) != 1<<29 || !bytes.Equal(icmp[8:24], src[:]) ||
		icmp[24] != 2 || icmp[25] != 1 || !bytes.Equal(icmp[26:32], mac) {
		t.Errorf("ICMPv6 %x", icmp)
	}
	// A correct checksum makes the one's-complement sum over pseudo-header and message 0xffff.
	if c := icmpv6Checksum(src, dst, icmp); c != 0 {
		t.Errorf("checksum does not verify: residue %#04x", c)
	}
}

func TestICMPv6ChecksumKnownVector(t *testing.T) {
	// Echo request from fe80::1 to fe80::2, id 0x1234, seq 1, no payload:
	// checksum computed independently (RFC 1071 with Python's struct module).
	src := netip.MustParseAddr("fe80::1").As16()
	dst := netip.MustParseAddr("fe80::2").As16()
	msg := []byte{128, 0, 0, 0, 0x12, 0x34, 0x00, 0x01}
	// words: fe80+0001+fe80+0002 (addresses) + 0008 (length) + 003a (next header)
	// + 8000 + 1234 + 0001 = 0x28f7a -> 0x8f7c after the carry -> ^ = 0x7083
	if got := icmpv6Checksum(src, dst, msg); got != 0x7083 {
		t.Errorf("checksum %#04x, want 0x7083", got)
	}
}

func TestPodRoutes(t *testing.T) {
	ips := []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24"), netip.MustParsePrefix("fd00::5/64")}
	tests := []struct {
		name string
		gws  []netip.Addr
		want []string
	}{
		{name: "none", want: nil},
		{
			name: "on-link v4 and v6", gws: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
			want: []string{"0.0.0.0/0 via 10.0.0.1", "::/0 via fd00::1"},
		},
		{
			name: "gateway outside the prefix", gws: []netip.Addr{netip.MustParseAddr("192.168.1.1")},
			want: []string{"192.168.1.1/32 link", "0.0.0.0/0 via 192.168.1.1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := podRoutes(3, ips, tt.gws)
			var got []string
			for _, r := range rs {
				if r.LinkIndex != 3 {
					t.Errorf("route on link %d", r.LinkIndex)
				}
				s := r.Dst.String()
				if r.Gw != nil {
					s += " via " + r.Gw.String()
				} else {
					s += " link"
				}
				got = append(got, s)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("routes %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("route %d = %s, want %s", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	a, b := HostVethName("c1", "eth0"), HostVethName("c1", "net1")
	if len(a) != 15 || a[:2] != "sn" || a == b || HostVethName("c1", "eth0") != a {
		t.Errorf("names %q %q", a, b)
	}
}

func TestPodAddrSkipsDADForIPv6(t *testing.T) {
	if a := podAddr(netip.MustParsePrefix("fd00::5/64")); a.Flags&unix.IFA_F_NODAD == 0 || a.IPNet.String() != "fd00::5/64" {
		t.Errorf("v6 addr %+v", a)
	}
	if a := podAddr(netip.MustParsePrefix("10.0.0.5/24")); a.Flags != 0 || a.IPNet.String() != "10.0.0.5/24" {
		t.Errorf("v4 addr %+v", a)
	}
}

// TestLearnMeteredKeepsNewerChanges: a resync's snapshot, read before an ADD
// installed port 7's meter and removed port 9's, does not undo what the
// datapath knows of them; for the ports it did not touch meanwhile (8, now
// without its meter in OVS) the snapshot is the truth. Before, the resync
// forgot port 7's meter, so a pod without a limit that got port 7 next kept
// the previous pod's (a review's finding).
func TestLearnMeteredKeepsNewerChanges(t *testing.T) {
	d := &Datapath{metered: map[int]bool{}, changed: map[int]uint64{}}
	d.setMetered(8, true)
	d.setMetered(9, true)
	d.mu.Lock()
	snap := &Snapshot{gen: d.gen, Meters: map[int]ovs.Meter{9: {ID: 9}}, MeterFlows: map[int]int{9: 9}}
	d.mu.Unlock()
	d.setMetered(7, true)
	d.setMetered(9, false)
	d.LearnMetered(snap)
	for port, want := range map[int]bool{7: true, 8: false, 9: false} {
		if got := d.Metered(port); got != want {
			t.Errorf("port %d metered %v after the resync; want %v", port, got, want)
		}
	}
	// The next snapshot, newer than every change, is the truth again.
	d.mu.Lock()
	snap = &Snapshot{gen: d.gen, Meters: map[int]ovs.Meter{}, MeterFlows: map[int]int{}}
	d.mu.Unlock()
	d.LearnMetered(snap)
	if d.Metered(7) || len(d.changed) != 0 {
		t.Errorf("after a newer snapshot: port 7 metered %v, %d changes remembered; want false, 0", d.Metered(7), len(d.changed))
	}
}
