// Package annotations owns stickynet's pod annotation contract (DESIGN.md,
// "Contract: pod annotations"): the keys, the parsers and validators of the
// values users write, and the Assignment that the webhook writes and the node
// agent reads. Every parse error names the key, the value and the accepted form.
package annotations

// Input keys, set by users on a pod, a workload's pod template or (pool only) a namespace.
const (
	// Pool names the IPPool to draw from.
	Pool = "stickynet.io/pool"
	// IP requests one address for a bare pod.
	IP = "stickynet.io/ip"
	// IPs lists addresses: per ordinal on a StatefulSet template, the set a
	// Deployment or DaemonSet draws from otherwise.
	IPs = "stickynet.io/ips"
	// MAC requests a MAC address.
	MAC = "stickynet.io/mac"
	// IngressBandwidth is the rate into the pod in bit/s.
	IngressBandwidth = "stickynet.io/ingress-bandwidth"
	// EgressBandwidth is the rate out of the pod in bit/s.
	EgressBandwidth = "stickynet.io/egress-bandwidth"
	// IngressBurst is the burst into the pod in bits.
	IngressBurst = "stickynet.io/ingress-burst"
	// EgressBurst is the burst out of the pod in bits.
	EgressBurst = "stickynet.io/egress-burst"
	// KubernetesIngressBandwidth is the upstream key that stickynet accepts as well.
	KubernetesIngressBandwidth = "kubernetes.io/ingress-bandwidth"
	// KubernetesEgressBandwidth is the upstream key that stickynet accepts as well.
	KubernetesEgressBandwidth = "kubernetes.io/egress-bandwidth"
	// SriovNetwork names the SriovNetwork whose VF the pod gets instead of an OVS port.
	SriovNetwork = "stickynet.io/sriov-network"
	// IPRetention is Retain or Release, on a StatefulSet.
	IPRetention = "stickynet.io/ip-retention"
)

// Output keys, written by the webhook only.
const (
	// Identity is the sticky identity that owns the pod's addresses.
	Identity = "stickynet.io/identity"
	// AssignedIP is the pod's address(es) with prefix length, comma-separated.
	AssignedIP = "stickynet.io/assigned-ip"
	// AssignedMAC is the pod's MAC.
	AssignedMAC = "stickynet.io/assigned-mac"
	// Gateway is the default gateway(s), comma-separated.
	Gateway = "stickynet.io/gateway"
	// VLAN is the pool's VLAN tag (absent or 0: untagged).
	VLAN = "stickynet.io/vlan"
	// AssignedPool is the IPPool the addresses came from.
	AssignedPool = "stickynet.io/assigned-pool"
	// BandwidthPolicy names the BandwidthPolicy the bandwidth keys were filled from.
	BandwidthPolicy = "stickynet.io/bandwidth-policy"
	// Reservation is the token a pod without a name at admission was reserved
	// under; the release controller confirms the reservation with it.
	Reservation = "stickynet.io/reservation"
)

// PlacementChanged is written by the release controller on a pod the
// scheduler found no node for, when the nodeSelector of its IPPool or
// SriovNetwork changes ("IPPool/<name> generation <n>"): the pod's update
// makes the scheduler try it again at once rather than within 5 min. It
// carries no meaning beyond that.
const PlacementChanged = "stickynet.io/placement-changed"

// OutputKeys are the keys only the webhook writes; it drops any a user sets.
var OutputKeys = []string{Identity, AssignedIP, AssignedMAC, Gateway, VLAN, AssignedPool, BandwidthPolicy, Reservation}

// Other names of the contract.
const (
	// EnabledLabel on a namespace opts its pods in.
	EnabledLabel = "stickynet.io/enabled"
	// ManagedLabel ("true") is set by the webhook on every pod it gives an
	// address; the webhook's own pod cache watches only those pods, so the
	// rest of the cluster's pods cost it nothing.
	ManagedLabel = "stickynet.io/managed"
	// SriovResourcePrefix + SriovNetwork name is the extended resource of the network's VFs.
	SriovResourcePrefix = "stickynet.io/sriov-"
	// NetworkResource is the extended resource each node agent advertises
	// (as many as the node's pods) once it serves pods, and that the webhook
	// asks one of for every pod it gives an address: the scheduler then
	// places such pods only on nodes where stickynet attaches them, not on a
	// node without an agent, whose own network would give them another address.
	NetworkResource = "stickynet.io/network"
)

// Retention values of IPRetention.
const (
	RetentionRetain  = "Retain"
	RetentionRelease = "Release"
)
