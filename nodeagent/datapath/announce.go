package datapath

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/safchain/ethtool"
	"golang.org/x/sys/unix"
)

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Announcement is the frame that tells a pod's neighbours its address is now
// at mac: for IPv4 a gratuitous ARP request (an "ARP announcement", RFC 5227:
// sender and target address both the pod's, broadcast), for IPv6 an
// unsolicited neighbour advertisement with the override flag to all nodes
// (RFC 4861 7.2.6). Neighbours that cached the address at another MAC (the pod
// ran elsewhere before) update their entry.
func Announcement(mac net.HardwareAddr, ip netip.Addr) []byte {
	if ip.Is4() {
		return arpAnnouncement(mac, ip)
	}
	return unsolicitedNA(mac, ip)
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ethernet(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], etherType)
	return append(f, payload...)
}

func arpAnnouncement(mac net.HardwareAddr, ip netip.Addr) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:2], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(a[2:4], 0x0800) // protocol: IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], 1) // request
	copy(a[8:14], mac)
	ip4 := ip.As4()
	copy(a[14:18], ip4[:])
	// target hardware address stays zero
	copy(a[24:28], ip4[:])
	return ethernet(broadcast, mac, unix.ETH_P_ARP, a)
}

var allNodes = netip.MustParseAddr("ff02::1")

func unsolicitedNA(mac net.HardwareAddr, ip netip.Addr) []byte {
	icmp := make([]byte, 32)
	icmp[0] = 136                                // neighbour advertisement
	binary.BigEndian.PutUint32(icmp[4:8], 1<<29) // override flag
	target := ip.As16()
	copy(icmp[8:24], target[:])
	icmp[24], icmp[25] = 2, 1 // option: target link-layer address, 8 bytes
	copy(icmp[26:32], mac)
	dst := allNodes.As16()
	binary.BigEndian.PutUint16(icmp[2:4], icmpv6Checksum(target, dst, icmp))

	ip6 := make([]byte, 40, 40+len(icmp))
	ip6[0] = 6 << 4
	binary.BigEndian.PutUint16(ip6[4:6], uint16(len(icmp)))
	ip6[6] = unix.IPPROTO_ICMPV6
	ip6[7] = 255 // hop limit: receivers drop neighbour discovery with any other
	copy(ip6[8:24], target[:])
	copy(ip6[24:40], dst[:])
	return ethernet(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, mac, unix.ETH_P_IPV6, append(ip6, icmp...))
}

// icmpv6Checksum is the checksum over the IPv6 pseudo-header and msg (whose
// checksum field is zero).
func icmpv6Checksum(src, dst [16]byte, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i : i+2]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	var pseudo [8]byte
	binary.BigEndian.PutUint32(pseudo[0:4], uint32(len(msg)))
	pseudo[7] = unix.IPPROTO_ICMPV6
	add(pseudo[:])
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// announcer sends prepared frames out of an interface of the calling
// thread's network namespace.
type announcer interface {
	Announce(ifindex int, frames [][]byte) error
}

// packetAnnouncer sends through an AF_PACKET socket.
type packetAnnouncer struct{}

// Announce sends each frame once.
func (packetAnnouncer) Announce(ifindex int, frames [][]byte) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open packet socket: %w", err)
	}
	defer unix.Close(fd)
	for _, f := range frames {
		to := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6, Protocol: htons(binary.BigEndian.Uint16(f[12:14]))}
		copy(to.Addr[:], f[0:6])
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			return fmt.Errorf("send announcement: %w", err)
		}
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// offloadSwitch changes offloads of an interface in the calling thread's
// network namespace.
type offloadSwitch interface {
	TxChecksumOff(ifName string) error
}

// ethtoolSwitch uses the ethtool ioctl.
type ethtoolSwitch struct{}

// txChecksumFeature is the kernel's name of veth's TX checksum offload
// (NETIF_F_HW_CSUM); switching it off also switches off the segmentation
// offloads that depend on it.
const txChecksumFeature = "tx-checksum-ip-generic"

// TxChecksumOff switches TX checksum offload off.
func (ethtoolSwitch) TxChecksumOff(ifName string) error {
	e, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("open ethtool: %w", err)
	}
	defer e.Close()
	if err := e.Change(ifName, map[string]bool{txChecksumFeature: false}); err != nil {
		return fmt.Errorf("ethtool %s %s off: %w", ifName, txChecksumFeature, err)
	}
	return nil
}

// sysctlWriter sets sysctls of the calling thread's network namespace.
type sysctlWriter interface {
	Set(name, value string) error
}

// procSysctl writes /proc/sys (per network namespace for net/*: the
// namespace of the thread that opens the file).
type procSysctl struct{}

// Set writes value to /proc/sys/<name>.
func (procSysctl) Set(name, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644)
}
