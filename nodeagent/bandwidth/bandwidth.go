// Package bandwidth turns a pod's rate limits (annotations.Limit, bit/s and
// bits) into the settings that enforce them on a node: a tbf qdisc on the host
// end of the pod's veth for traffic into the pod, and an OpenFlow meter or OVS
// ingress policing for traffic out of it. It owns the burst and queue
// defaults; everything here is pure.
//
// Defaults (DESIGN.md, "Datapath on a node"): the tbf queue holds at least
// 25 ms at the rate (50 ms here: on the userspace datapath a single TCP
// stream at 300 Mbit/s reached only ~92 % of the rate with a 25 ms queue),
// and at least the burst (below about 10.5 Mbit/s the 64 KiB burst is the
// longer: half a second of queue at 1 Mbit/s); the
// tbf burst is 8 ms at the rate but at least 64 KiB (with 2 ms, 300 Mbit/s
// reached 89-99 % from run to run, with 8 ms 99-100 %); the meter and policing
// burst is 80 % of one second at the rate, which a drop-only policer needs
// for TCP to stay near the rate (with 10 % TCP got 50-60 % of it).
package bandwidth

import (
	"fmt"
	"math"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/annotations"
)

// EgressMode says how traffic out of a pod is limited.
type EgressMode string

// Egress modes.
const (
	// EgressAuto picks what works on the bridge's datapath.
	EgressAuto EgressMode = "auto"
	// EgressMeter uses an OpenFlow meter on the pod's port (any datapath).
	EgressMeter EgressMode = "meter"
	// EgressPolicing uses the interface's ingress_policing_rate/burst; OVS
	// enforces it with the kernel's act_police, so only where that exists.
	EgressPolicing EgressMode = "policing"
)

// ResolveEgressMode turns auto into a concrete mode for the datapath type
// ("netdev" or "system"): meters on the userspace datapath, where policing is
// done by tc and does not see the packets OVS reads; policing on the kernel
// datapath.
func ResolveEgressMode(m EgressMode, datapathType string) (EgressMode, error) {
	switch m {
	case EgressMeter, EgressPolicing:
		return m, nil
	case EgressAuto, "":
		if datapathType == "netdev" {
			return EgressMeter, nil
		}
		return EgressPolicing, nil
	default:
		return "", fmt.Errorf("egress mode %q: want auto, meter or policing", m)
	}
}

// Queue and burst anchors.
const (
	// TBFQueueTime is how long the tbf queue holds at the rate.
	TBFQueueTime = 50 * time.Millisecond
	// TBFBurstTime is the default tbf burst as time at the rate.
	TBFBurstTime = 8 * time.Millisecond
	// MinTBFBurst is the smallest default tbf burst in bytes.
	MinTBFBurst = 64 << 10
	// PolicerBurstPercent is the default meter and policing burst in percent
	// of one second at the rate.
	PolicerBurstPercent = 80
)

// TBFParams are the tbf settings in the kernel's units.
type TBFParams struct {
	RateBytes  uint64 // bytes/s
	BurstBytes uint32 // bucket size
	LimitBytes uint32 // queue size
}

// frameOverhead is an Ethernet frame's bytes beyond its MTU: header and
// checksum, no VLAN tag (the pod's veth is an access port;
// annotations.MinBurst is one frame of MTU 1500).
const frameOverhead = annotations.MinBurst/8 - 1500

// frameBytes is the largest frame on a link of MTU mtu (0: the kernel's
// default, 1500): the smallest bucket that passes every packet.
func frameBytes(mtu int) uint64 {
	return uint64(max(mtu, 1500)) + frameOverhead
}

// TBF computes tbf settings for a limit (Rate > 0) on a pod interface of
// MTU mtu (0: 1500).
func TBF(l annotations.Limit, mtu int) (TBFParams, error) {
	if l.Rate <= 0 {
		return TBFParams{}, fmt.Errorf("tbf rate %d bit/s: want a positive rate", l.Rate)
	}
	rate := uint64(l.Rate) / 8
	if rate == 0 {
		rate = 1
	}
	// The kernel caps a tbf bucket at annotations.MaxBurstTime at the rate,
	// silently: cap it here (a millisecond short, for the kernel's rounding),
	// so that what is read back matches. Admission refuses longer explicit
	// bursts; the default is cut for low rates.
	maxBurst := uint64(float64(rate) * (annotations.MaxBurstTime - time.Millisecond).Seconds())
	var burst uint64
	if l.Burst > 0 {
		burst = uint64(l.Burst) / 8
	} else {
		burst = max(uint64(float64(rate)*TBFBurstTime.Seconds()), MinTBFBurst)
	}
	// At least one full frame of the MTU (a live annotation edit skips
	// admission's checks, which know 1518-byte frames only), within the
	// kernel's cap (below MinIngressRate no frame fits; below about six times
	// it, no 9000-byte one).
	burst = min(max(burst, frameBytes(mtu)), maxBurst, math.MaxUint32)
	limit := max(uint64(float64(rate)*TBFQueueTime.Seconds()), burst)
	if limit > math.MaxUint32 {
		limit = math.MaxUint32
	}
	return TBFParams{RateBytes: rate, BurstBytes: uint32(burst), LimitBytes: uint32(limit)}, nil
}

// Qdisc returns the tbf root qdisc (handle 1:) for link.
func (p TBFParams) Qdisc(linkIndex int) *netlink.Tbf {
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: linkIndex,
			Handle:    netlink.MakeHandle(1, 0),
			Parent:    netlink.HANDLE_ROOT,
		},
		Rate:   p.RateBytes,
		Limit:  p.LimitBytes,
		Buffer: p.bufferTicks(),
	}
}

// bufferTicks is the bucket as the kernel keeps it: the time to send
// BurstBytes at the rate, in the packet scheduler's ticks, rounded up so that
// the bucket holds the burst. (netlink.Xmittime rounds down, to whole
// microseconds, then to whole ticks: at 1 Gbit/s a one-frame bucket came out
// 1,496 bytes, which tbf drops full-size frames for, and at 20 Gbit/s 0
// ticks, which the kernel refuses.)
func (p TBFParams) bufferTicks() uint32 {
	t := math.Ceil(float64(p.BurstBytes) / float64(p.RateBytes) * 1e6 * netlink.TickInUsec())
	return uint32(min(t, math.MaxUint32))
}

// Matches reports whether an installed tbf enforces p. The kernel keeps the
// bucket in its own time unit, so the burst may come back off by a tick.
func (p TBFParams) Matches(q *netlink.Tbf) bool {
	if q == nil || q.Rate != p.RateBytes || q.Limit != p.LimitBytes {
		return false
	}
	want := p.bufferTicks()
	diff := int64(q.Buffer) - int64(want)
	return diff >= -1-int64(want/100) && diff <= 1+int64(want/100)
}

// PolicerParams are a meter's or OVS policing's settings: kbit/s and kbits.
type PolicerParams struct {
	RateKbps   uint64
	BurstKbits uint64
}

// Policer computes meter or policing settings for a limit (Rate > 0) on a
// pod interface of MTU mtu (0: 1500); gso says whether the pod's packets
// reach the port unsegmented (GSO/TSO, up to 64 KiB: the kernel datapath,
// where the pod's veth keeps its offloads).
func Policer(l annotations.Limit, mtu int, gso bool) (PolicerParams, error) {
	if l.Rate <= 0 {
		return PolicerParams{}, fmt.Errorf("policer rate %d bit/s: want a positive rate", l.Rate)
	}
	rate := max(uint64(l.Rate)/1000, 1)
	burst := rate * PolicerBurstPercent / 100
	if l.Burst > 0 {
		burst = (uint64(l.Burst) + 999) / 1000
	}
	// At least one full frame of the MTU plus a millisecond at the rate, in
	// whole kbits (rounded up): a meter's bucket is refilled for at most
	// burst/rate whole milliseconds of idle time (the kernel datapath's
	// meter code does so; the userspace datapath dropped frames here as if
	// it did too), so a bucket of one frame refilled to less than one (at
	// 10 Mbit/s every other full-size frame was dropped, as 13 kbits
	// refilled by 10); and admission's smallest burst, rounded down to 12
	// kbits, passed none.
	//
	// With GSO, at least the largest packet (64 KiB) plus a millisecond:
	// tc's police action, which OVS's ingress policing is, charges a GSO
	// packet's whole length against a bucket it caps at the burst, so a
	// packet longer than the burst is never within the limit and is
	// dropped, and TCP out of a pod given a smaller burst collapses (as a review
	// read in the kernel's act_police; this kernel lacks it). Meters in older
	// kernels cap their bucket at the burst too.
	largest := frameBytes(mtu)
	if gso {
		largest = max(largest, gsoMaxBytes)
	}
	return PolicerParams{RateKbps: rate, BurstKbits: max(burst, (largest*8+rate+999)/1000)}, nil
}

// gsoMaxBytes is the largest packet GSO makes (the kernel's GSO_LEGACY_MAX_SIZE).
const gsoMaxBytes = 64 << 10
