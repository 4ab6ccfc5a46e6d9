package cluster

import (
	"context"
	"fmt"
	"os/exec"

	corev1 "k8s.io/api/core/v1"
)

// PodNetns returns the path of a running pod's network namespace: on a real
// node, the one of the pod's ready sandbox, asked from the node's containerd
// through CRI (as crictl inspectp would); on a simulated node, the one the
// simulator made.
func (c *Cluster) PodNetns(ctx context.Context, pod *corev1.Pod) (string, error) {
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s is not scheduled", pod.Namespace, pod.Name)
	}
	for _, n := range c.nodes {
		if n.Name == pod.Spec.NodeName {
			p, err := sandboxNetns(ctx, n.ContainerdSocket, string(pod.UID))
			if err != nil {
				return "", fmt.Errorf("netns of pod %s/%s on %s: %w", pod.Namespace, pod.Name, n.Name, err)
			}
			return p, nil
		}
	}
	c.simMu.Lock()
	sim := c.sim
	c.simMu.Unlock()
	if sim != nil {
		if p, ok := sim.PodNetns(pod.UID); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("netns of pod %s/%s: no network set up for it on %s", pod.Namespace, pod.Name, pod.Spec.NodeName)
}

// PodNetnsCommand returns a command (not started) that runs argv from the
// host inside the pod's network namespace, with the host's binaries and
// files: busybox ping, iperf3 -s, ip addr.
func (c *Cluster) PodNetnsCommand(ctx context.Context, pod *corev1.Pod, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command to run in pod %s/%s", pod.Namespace, pod.Name)
	}
	ns, err := c.PodNetns(ctx, pod)
	if err != nil {
		return nil, err
	}
	full := c.host.InNetns(ns, argv)
	return exec.CommandContext(ctx, full[0], full[1:]...), nil
}

// InPodNetns runs argv from the host inside the pod's network namespace
// and returns its combined output.
func (c *Cluster) InPodNetns(ctx context.Context, pod *corev1.Pod, argv ...string) ([]byte, error) {
	ns, err := c.PodNetns(ctx, pod)
	if err != nil {
		return nil, err
	}
	return c.host.RunIn(ctx, ns, argv...)
}
