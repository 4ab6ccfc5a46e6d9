// Package v1alpha1 holds stickynet's custom resources (group stickynet.io):
// IPPool, BandwidthPolicy and SriovNetwork. Their fields follow the contract in
// DESIGN.md; OpenAPI and CEL markers here generate the CRD validation.
//
// +kubebuilder:object:generate=true
// +groupName=stickynet.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the API group and version of stickynet's resources.
	GroupVersion = schema.GroupVersion{Group: "stickynet.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&IPPool{}, &IPPoolList{},
		&BandwidthPolicy{}, &BandwidthPolicyList{},
		&SriovNetwork{}, &SriovNetworkList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
