//go:build tools

// Package helm only records the Helm command that hack/build-tools.sh builds.
package helm

import _ "helm.sh/helm/v3/cmd/helm"
