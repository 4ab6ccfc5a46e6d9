package annotations

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Assignment is what the webhook decided for a pod: the output keys of the contract
// plus the resolved bandwidth. The node agent reads it back with ParseAssignment.
type Assignment struct {
	Identity        string
	Pool            string
	IPs             []netip.Prefix // address with the pool's prefix length; v4 first
	MAC             net.HardwareAddr
	Gateways        []netip.Addr
	VLAN            int
	Bandwidth       Bandwidth
	BandwidthPolicy string // empty when the pod set its own limits or none matched
}

// Annotations renders the assignment as the output annotations (bandwidth keys included).
func (a Assignment) Annotations() map[string]string {
	out := a.Bandwidth.Annotations()
	out[Identity] = a.Identity
	out[AssignedPool] = a.Pool
	ips := make([]string, len(a.IPs))
	for i, p := range a.IPs {
		ips[i] = p.String()
	}
	out[AssignedIP] = strings.Join(ips, ",")
	out[AssignedMAC] = a.MAC.String()
	if len(a.Gateways) > 0 {
		gws := make([]string, len(a.Gateways))
		for i, g := range a.Gateways {
			gws[i] = g.String()
		}
		out[Gateway] = strings.Join(gws, ",")
	}
	if a.VLAN != 0 {
		out[VLAN] = strconv.Itoa(a.VLAN)
	}
	if a.BandwidthPolicy != "" {
		out[BandwidthPolicy] = a.BandwidthPolicy
	}
	return out
}

// ErrNotAssigned is returned by ParseAssignment for a pod the webhook did not admit.
var ErrNotAssigned = errors.New("pod has no " + AssignedIP + " annotation: it was not admitted by the stickynet webhook (is its namespace labelled " + EnabledLabel + "=true?)")

// ParseAssignment reads an assignment from a pod's annotations.
func ParseAssignment(ann map[string]string) (Assignment, error) {
	a, err := ParseAddressing(ann)
	if err != nil {
		return a, err
	}
	if a.Bandwidth, err = AssignedBandwidth(ann); err != nil {
		return a, err
	}
	return a, nil
}

// ParseAddressing reads what ParseAssignment does but the bandwidth keys: a
// pod's addresses, MAC and VLAN, which a bandwidth key edited into a form
// the agent refuses leaves as they are.
func ParseAddressing(ann map[string]string) (Assignment, error) {
	var a Assignment
	ipv, ok := ann[AssignedIP]
	if !ok {
		return a, ErrNotAssigned
	}
	var err error
	if a.IPs, err = ParsePrefixes(AssignedIP, ipv); err != nil {
		return a, err
	}
	if a.MAC, err = ParseMAC(AssignedMAC, ann[AssignedMAC]); err != nil {
		return a, err
	}
	if gw, ok := ann[Gateway]; ok && gw != "" {
		if a.Gateways, err = ParseAddrs(Gateway, gw); err != nil {
			return a, err
		}
	}
	if v, ok := ann[VLAN]; ok {
		if a.VLAN, err = ParseVLAN(VLAN, v); err != nil {
			return a, err
		}
	}
	a.Identity = ann[Identity]
	a.Pool = ann[AssignedPool]
	a.BandwidthPolicy = ann[BandwidthPolicy]
	return a, nil
}
