package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPRange is an inclusive range of addresses inside an IPPool's CIDR.
//
// +kubebuilder:validation:XValidation:rule="ip(self.start).family() == ip(self.end).family()",message="start and end must be of one address family"
type IPRange struct {
	// Start is the first address of the range.
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IP address such as 10.20.0.10 or fd00::10"
	Start string `json:"start"`
	// End is the last address of the range (inclusive).
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IP address such as 10.20.0.200 or fd00::ff"
	End string `json:"end"`
}

// IPPoolSpec describes a subnet that sticky addresses are drawn from.
//
// +kubebuilder:validation:XValidation:rule="!has(self.gateway) || cidr(self.cidr).containsIP(self.gateway)",message="gateway must lie inside cidr"
// +kubebuilder:validation:XValidation:rule="!has(self.ranges) || self.ranges.all(r, cidr(self.cidr).containsIP(r.start) && cidr(self.cidr).containsIP(r.end))",message="every range must lie inside cidr"
// +kubebuilder:validation:XValidation:rule="!has(self.exclude) || self.exclude.all(e, isIP(e) ? cidr(self.cidr).containsIP(e) : cidr(self.cidr).containsCIDR(e))",message="every exclude entry must be an address or CIDR inside cidr"
type IPPoolSpec struct {
	// CIDR is the pool's subnet in canonical form, such as 10.20.0.0/16 or fd00:20::/64.
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self) && cidr(self).masked() == cidr(self)",message="must be a network in canonical CIDR form such as 10.20.0.0/16 (no host bits set)"
	CIDR string `json:"cidr"`

	// Gateway is the default route given to pods; it is never handed out.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be an IP address"
	Gateway string `json:"gateway,omitempty"`

	// Ranges limit allocation to these inclusive ranges; empty means the whole CIDR.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	Ranges []IPRange `json:"ranges,omitempty"`

	// Exclude lists addresses or CIDRs inside the pool that are never handed out.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=49
	// +kubebuilder:validation:items:XValidation:rule="isIP(self) || isCIDR(self) && cidr(self).masked() == cidr(self)",message="must be an IP address or a network in canonical CIDR form such as 10.20.2.0/24 (no host bits set)"
	// +listType=atomic
	Exclude []string `json:"exclude,omitempty"`

	// VLAN is the 802.1Q tag of the pool's subnet on the node's OVS bridge; 0 means untagged.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4094
	VLAN int32 `json:"vlan,omitempty"`

	// NodeSelector selects the nodes where the subnet is reachable. Pods of the pool
	// are only scheduled there (through the stickynet scheduler extender). Empty: all nodes.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// NamespaceSelector selects the namespaces whose pods may use the pool. Empty: all.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// Default makes this the pool of pods that name none, in the namespaces it admits.
	// +optional
	Default bool `json:"default,omitempty"`

	// ReuseDelaySeconds is how long a freed address waits before another identity may take it.
	// +optional
	// +kubebuilder:default=60
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	ReuseDelaySeconds *int32 `json:"reuseDelaySeconds,omitempty"`

	// MACPrefix, one to five octets such as 02:42:ac, makes the pool's random MACs
	// start with it. It must be unicast. Empty: random locally administered unicast MACs.
	// +optional
	// +kubebuilder:validation:Pattern=`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){0,4}$`
	// +kubebuilder:validation:XValidation:rule="self.matches('^[0-9a-fA-F][02468aceACE]')",message="must be a unicast prefix (the low bit of the first octet clear), such as 02:42"
	MACPrefix string `json:"macPrefix,omitempty"`

	// AllowUniversalMAC lets pods request MACs that are not locally
	// administered (those under macPrefix are the pool's own either way).
	// +optional
	AllowUniversalMAC bool `json:"allowUniversalMAC,omitempty"`
}

// IPPoolStatus counts the pool's addresses.
type IPPoolStatus struct {
	// Total is the number of addresses the pool can hand out.
	Total int64 `json:"total"`
	// Allocated is the number of addresses carried by live pods or reserved for pods being created.
	Allocated int64 `json:"allocated"`
	// Held is the number of sticky addresses whose identity has no live pod right now.
	Held int64 `json:"held"`
	// Cooling is the number of freed addresses waiting out reuseDelaySeconds.
	Cooling int64 `json:"cooling"`
	// OtherPools is the number of the pool's addresses that other IPPools
	// have: pools that can hand out the same addresses, or identities of
	// pools whose spec allowed them before. None is handed out here; with
	// the counts above and Free they add up to Total.
	// +optional
	OtherPools int64 `json:"otherPools,omitempty"`
	// Free is the number of addresses available to a new identity now.
	Free int64 `json:"free"`
	// ObservedGeneration is the generation these counts were computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions: Ready is False with the reason InvalidSpec when the spec
	// cannot be used, False with the reason Deleting while the IPPool, being
	// deleted, waits for its addresses to be freed, and True with the reason
	// AddressesOutsideSpec while identities hold addresses, claimed under an
	// earlier spec, that the current one does not allow (none is handed out
	// again).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// IPPoolInUseFinalizer is on every IPPool the release controller has seen.
// It takes it off an IPPool being deleted once none of the pool's addresses
// is held (allocated, reserved, held or cooling): an IPPool deleted while in
// use waits, handing out no address to an identity that holds none of it,
// until the identities holding its addresses are gone.
const IPPoolInUseFinalizer = "stickynet.io/addresses-in-use"

// IPPool is a cluster-wide subnet from which pods get sticky IP and MAC addresses.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ipp
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.spec.cidr`
// +kubebuilder:printcolumn:name="VLAN",type=integer,JSONPath=`.spec.vlan`
// +kubebuilder:printcolumn:name="Default",type=boolean,JSONPath=`.spec.default`
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=`.status.total`
// +kubebuilder:printcolumn:name="Allocated",type=integer,JSONPath=`.status.allocated`
// +kubebuilder:printcolumn:name="Held",type=integer,JSONPath=`.status.held`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.free`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   IPPoolSpec   `json:"spec"`
	Status IPPoolStatus `json:"status,omitempty"`
}

// IPPoolList is a list of IPPools.
//
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}
