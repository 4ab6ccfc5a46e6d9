package cluster

import (
	"fmt"
	"math/bits"
	"net/netip"
)

// Address plan of one cluster: a /16 shared by the fabric and the pods.
//
//	x.y.0.1             fabric bridge in the host namespace; the apiserver listens here
//	x.y.0.16 + i        node i (0-based: real nodes first, then simulated ones)
//	x.y.8.0 - x.y.255.x one block per node, handed to that node's host-local range
//
// Pods of all nodes share the /16 and reach each other over L2 through the
// fabric; nothing routes out of it.
const (
	firstNodeHost = 16
	podAreaStart  = 8 * 256 // x.y.8.0
	maxNodes      = 1020    // a Linux bridge takes 1024 ports (one per node uplink)
)

type plan struct {
	subnet netip.Prefix
	block  int // addresses per node block
}

func newPlan(subnet netip.Prefix, nodes int) (plan, error) {
	if !subnet.Addr().Is4() || subnet.Bits() != 16 {
		return plan{}, fmt.Errorf("fabric subnet %s: want an IPv4 /16", subnet)
	}
	if nodes < 1 || nodes > maxNodes {
		return plan{}, fmt.Errorf("%d nodes: the plan holds 1 to %d", nodes, maxNodes)
	}
	area := 65536 - podAreaStart
	per := area / nodes
	if per > 256 {
		per = 256
	}
	// Round down to a power of two so blocks align.
	block := 1 << (bits.Len(uint(per)) - 1)
	if block < 8 {
		return plan{}, fmt.Errorf("%d nodes leave %d addresses per node", nodes, block)
	}
	return plan{subnet: subnet.Masked(), block: block}, nil
}

func (p plan) at(offset int) netip.Addr {
	b := p.subnet.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(offset)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// gateway is the fabric bridge's address, where the apiserver listens.
func (p plan) gateway() netip.Addr { return p.at(1) }

// gatewayPrefix is the gateway address with the subnet's length.
func (p plan) gatewayPrefix() netip.Prefix { return netip.PrefixFrom(p.gateway(), p.subnet.Bits()) }

// nodeIP is the address of node i (0-based).
func (p plan) nodeIP(i int) netip.Addr { return p.at(firstNodeHost + i) }

// nodePrefix is node i's address with the subnet's length.
func (p plan) nodePrefix(i int) netip.Prefix {
	return netip.PrefixFrom(p.nodeIP(i), p.subnet.Bits())
}

// podRange is the first and last address host-local hands out on node i:
// its block less the block's first and last address.
func (p plan) podRange(i int) (first, last netip.Addr) {
	start := podAreaStart + i*p.block
	return p.at(start + 1), p.at(start + p.block - 2)
}

// podBlock is node i's block as a prefix.
func (p plan) podBlock(i int) netip.Prefix {
	return netip.PrefixFrom(p.at(podAreaStart+i*p.block), 32-bits.TrailingZeros(uint(p.block)))
}
