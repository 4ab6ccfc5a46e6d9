package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LinkState is the administrative link state of a VF.
// +kubebuilder:validation:Enum=auto;enable;disable
type LinkState string

// The VF link states.
const (
	LinkStateAuto    LinkState = "auto"
	LinkStateEnable  LinkState = "enable"
	LinkStateDisable LinkState = "disable"
)

// SriovNetworkSpec says which physical functions serve the network and how their VFs are set up.
type SriovNetworkSpec struct {
	// NodeSelector selects the nodes that offer this network. Empty: all nodes with a listed PF.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`
	// PFNames are the physical function netdev names (such as ens1f0) whose VFs serve the network.
	// A PF serves one network on a node: listed by several that select the node, its VFs
	// are offered to the first of them by name only.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Pattern=`^[a-zA-Z0-9_.-]{1,15}$`
	// +listType=set
	PFNames []string `json:"pfNames"`
	// VLAN set on the VF through the PF; 0 means the pod's pool's VLAN (untagged when
	// that is 0 too). Edits reach the VFs of new pods only.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4094
	VLAN int32 `json:"vlan,omitempty"`
	// Pool is the IPPool the VF's address comes from. Empty: the pod's pool.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Pool string `json:"pool,omitempty"`
	// SpoofChk turns the VF's source MAC spoof check on or off. Empty: on.
	// +optional
	SpoofChk *bool `json:"spoofChk,omitempty"`
	// Trust lets the VF change its MAC and enter promiscuous mode. Empty: off.
	// +optional
	Trust *bool `json:"trust,omitempty"`
	// LinkState of the VF: auto (follows the PF), enable or disable. Empty: auto.
	// +optional
	LinkState LinkState `json:"linkState,omitempty"`
}

// SriovNetwork is a network whose pods get an SR-IOV virtual function instead of an OVS port.
// Nodes advertise free VFs as the extended resource stickynet.io/sriov-<name>.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=sriovnet
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 57",message="name must be at most 57 characters: it becomes the resource name stickynet.io/sriov-<name>"
// +kubebuilder:printcolumn:name="PFs",type=string,JSONPath=`.spec.pfNames`
// +kubebuilder:printcolumn:name="VLAN",type=integer,JSONPath=`.spec.vlan`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SriovNetwork struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec SriovNetworkSpec `json:"spec"`
}

// SriovNetworkList is a list of SriovNetworks.
//
// +kubebuilder:object:root=true
type SriovNetworkList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SriovNetwork `json:"items"`
}
