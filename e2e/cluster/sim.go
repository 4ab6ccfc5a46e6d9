package cluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/e2e/nodesim"
)

// prepareSimNodes makes the namespace, uplink, bridge and CNI folders of
// every simulated node, a few at a time.
func (c *Cluster) prepareSimNodes(ctx context.Context) error {
	if c.cfg.SimNodes == 0 {
		return nil
	}
	begin := time.Now()
	defer func() {
		klog.FromContext(ctx).Info("Simulated nodes wired", "nodes", c.cfg.SimNodes, "elapsed", time.Since(begin).Round(time.Millisecond))
	}()
	nodes := make([]Node, c.cfg.SimNodes)
	work := make(chan int)
	errc := make(chan error, c.cfg.SimNodes)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				n, err := c.newNode(fmt.Sprintf("sim-%d", k+1), c.cfg.Nodes+k, true)
				nodes[k] = n
				errc <- err
			}
		}()
	}
	for k := range c.cfg.SimNodes {
		if ctx.Err() != nil {
			break
		}
		work <- k
	}
	close(work)
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.simNodes = nodes
	return ctx.Err()
}

// startSimulator registers the simulated nodes and runs the node simulator
// in the background until Stop (or RestartSimulator).
func (c *Cluster) startSimulator(ctx context.Context) error {
	begin := time.Now()
	rc := c.RESTConfig()
	rc.QPS, rc.Burst = 500, 1000
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("node simulator client: %w", err)
	}
	var nodes []nodesim.Node
	for _, n := range c.simNodes {
		labels := map[string]string{}
		for k, v := range c.cniFor(n).NodeLabels {
			labels[k] = v
		}
		labels[SimulatedLabel] = "true"
		nodes = append(nodes, nodesim.Node{
			Name: n.Name, IP: n.IP, Netns: n.Netns,
			CNIConfDir: n.CNIConfDir, CNIBinDir: n.CNIBinDir,
			Labels: labels,
		})
	}
	sim, err := nodesim.New(nodesim.Options{
		Client:   cs,
		Nodes:    nodes,
		StateDir: filepath.Join(c.dir, "sim"),
		Host:     c.host,
	})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	end := make(chan struct{})
	var runErr error
	go func() {
		defer close(end)
		runErr = sim.Run(runCtx)
		if runErr != nil {
			klog.FromContext(ctx).Error(runErr, "Node simulator stopped")
		}
	}()
	c.simMu.Lock()
	c.sim, c.simRun, c.simEnd = sim, cancel, end
	c.simMu.Unlock()
	select {
	case <-sim.Registered():
		klog.FromContext(ctx).Info("Simulated nodes registered", "nodes", len(nodes), "elapsed", time.Since(begin).Round(time.Millisecond))
		return nil
	case <-end:
		if runErr == nil {
			runErr = errors.New("stopped before registering its nodes")
		}
		return fmt.Errorf("node simulator: %w", runErr)
	case <-ctx.Done():
		return fmt.Errorf("register simulated nodes: %w", ctx.Err())
	}
}

// stopSimulator stops the node simulator; with teardown, it then removes
// the networks of the pods it set up (CNI DEL, namespaces).
func (c *Cluster) stopSimulator(ctx context.Context, teardown bool) error {
	c.simMu.Lock()
	sim, cancel, end := c.sim, c.simRun, c.simEnd
	c.sim, c.simRun, c.simEnd = nil, nil, nil
	c.simMu.Unlock()
	if sim == nil {
		return nil
	}
	cancel()
	<-end
	if teardown {
		return sim.TearDown(ctx)
	}
	return nil
}

// RestartSimulator stops the node simulator as a crash would (pod networks
// stay) and starts a new one on the same state, which finishes or undoes
// what the last one left.
func (c *Cluster) RestartSimulator(ctx context.Context) error {
	if len(c.simNodes) == 0 {
		return errors.New("the cluster has no simulated nodes")
	}
	if err := c.stopSimulator(ctx, false); err != nil {
		return err
	}
	return c.startSimulator(ctx)
}

// StopSimulator stops the node simulator without touching the pod
// networks it set up, as a crash would; RestartSimulator brings it back.
func (c *Cluster) StopSimulator(ctx context.Context) error { return c.stopSimulator(ctx, false) }

// SimulatedPodNetns lists the pod namespaces the simulator holds (for leak
// checks after pods are deleted).
func (c *Cluster) SimulatedPodNetns() ([]string, error) {
	return c.host.ListNetns(filepath.Join(c.dir, "sim", "netns"), "")
}
