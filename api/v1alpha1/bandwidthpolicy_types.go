package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BandwidthLimit is a rate limit in one direction.
type BandwidthLimit struct {
	// Rate in bit/s as a quantity, such as 10M or 1G; from 1k to 1T.
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('999')) && !quantity(string(self)).isGreaterThan(quantity('1T'))",message="must be a rate in bit/s from 1k to 1T, such as 10M or 1G"
	Rate resource.Quantity `json:"rate"`
	// Burst in bits as a quantity, such as 1M; at least one 1518-byte frame
	// (12144). Empty: a default sized to the rate.
	// +optional
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).isGreaterThan(quantity('12143')) && !quantity(string(self)).isGreaterThan(quantity('34359738360'))",message="must be a burst in bits from 12144 (one 1518-byte Ethernet frame) to 4Gi bytes (34359738360), such as 1M"
	Burst *resource.Quantity `json:"burst,omitempty"`
}

// BandwidthPolicySpec limits the bandwidth of the pods it selects.
//
// +kubebuilder:validation:XValidation:rule="has(self.ingress) || has(self.egress)",message="at least one of ingress and egress must be set"
// +kubebuilder:validation:XValidation:rule="!has(self.ingress) || quantity(string(self.ingress.rate)).isGreaterThan(quantity('2831'))",message="ingress.rate must be at least 2832 bit/s: below it the kernel's tbf bucket (at most 4.295 s at the rate) holds no full frame"
// +kubebuilder:validation:XValidation:rule="!has(self.ingress) || !has(self.ingress.burst) || quantity(string(self.ingress.burst)).asApproximateFloat() <= quantity(string(self.ingress.rate)).asApproximateFloat() * 4.294967295",message="ingress.burst must last at most 4.295 s at ingress.rate, as the kernel's tbf allows"
type BandwidthPolicySpec struct {
	// PodSelector selects the pods of the policy's namespace it applies to.
	PodSelector metav1.LabelSelector `json:"podSelector"`
	// Ingress limits traffic into the pod.
	// +optional
	Ingress *BandwidthLimit `json:"ingress,omitempty"`
	// Egress limits traffic out of the pod.
	// +optional
	Egress *BandwidthLimit `json:"egress,omitempty"`
	// Priority orders policies that select the same pod: the highest wins; ties go to the
	// policy whose name sorts first.
	// +optional
	Priority int32 `json:"priority,omitempty"`
}

// BandwidthPolicy sets the default bandwidth limits of pods in its namespace.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=bwp
// +kubebuilder:printcolumn:name="Ingress",type=string,JSONPath=`.spec.ingress.rate`
// +kubebuilder:printcolumn:name="Egress",type=string,JSONPath=`.spec.egress.rate`
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type BandwidthPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec BandwidthPolicySpec `json:"spec"`
}

// BandwidthPolicyList is a list of BandwidthPolicies.
//
// +kubebuilder:object:root=true
type BandwidthPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BandwidthPolicy `json:"items"`
}
