// Package v1alpha1 holds stickynet's custom resources (group stickynet.io):
// IPPool, BandwidthPolicy and SriovNetwork. Their fields follow the contract in
// DESIGN.md; OpenAPI and CEL markers here generate the CRD validation.
//
// +kubebuilder:object:generate=true
// +groupName=stickynet.io
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the API group and version of stickynet's resources.
	GroupVersion = schema.GroupVersion{Group: "stickynet.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types of this package with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the types of this package to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
