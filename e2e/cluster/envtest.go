package cluster

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// InstallCRDs installs the CustomResourceDefinitions in the given files or
// folders (such as charts/stickynet/crds) and waits until they are served.
func (c *Cluster) InstallCRDs(ctx context.Context, paths ...string) error {
	deadline := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		deadline = time.Until(d)
	}
	if _, err := envtest.InstallCRDs(c.RESTConfig(), envtest.CRDInstallOptions{
		Paths:              paths,
		ErrorIfPathMissing: true,
		MaxTime:            deadline,
	}); err != nil {
		return fmt.Errorf("install CRDs: %w", err)
	}
	return nil
}

// Environment returns a controller-runtime envtest.Environment bound to
// this cluster (UseExistingCluster, with the admin config), so a suite
// written for envtest runs here unchanged: its Start installs the CRDs and
// webhook configurations it lists and returns this cluster's config; its
// Stop leaves the cluster running. Webhook servers it starts listen on the
// host, which the apiserver (in the host namespace) reaches.
func (c *Cluster) Environment() *envtest.Environment {
	existing := true
	return &envtest.Environment{
		UseExistingCluster: &existing,
		Config:             c.RESTConfig(),
	}
}
