// Package host owns the local cluster's dealings with the machine itself:
// network namespaces bound to files, links created through netlink, cgroup v1
// hierarchies that the cluster's processes are started in (so that every
// process the cluster started, directly or not, can be found by PID and
// stopped), mounts left under a folder, and running commands. The cluster and
// the node simulator hold a *Host; nothing here keeps package state.
package host

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Host performs operations on this machine. The zero value is not usable:
// build one with New.
type Host struct {
	// CgroupRoot is where the cgroup hierarchies are mounted (/sys/fs/cgroup).
	CgroupRoot string
	// MountInfo is the mount table to read (/proc/self/mountinfo).
	MountInfo string
	// Nsenter is the nsenter binary used to run commands in a network namespace.
	Nsenter string

	hier []hierarchy
}

// New returns a Host for this machine, with its cgroup hierarchies discovered.
func New() (*Host, error) {
	h := &Host{CgroupRoot: "/sys/fs/cgroup", MountInfo: "/proc/self/mountinfo"}
	p, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, fmt.Errorf("find nsenter (util-linux): %w", err)
	}
	h.Nsenter = p
	if err := h.discoverCgroups(); err != nil {
		return nil, err
	}
	return h, nil
}

// Run runs a command to completion and returns its standard output; a failure
// carries the command line and its standard error.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("run %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// RunIn runs a command inside the network namespace bound at netns (through
// nsenter, which keeps the mount namespace) and returns its combined output.
func (h *Host) RunIn(ctx context.Context, netns string, argv ...string) ([]byte, error) {
	args := append([]string{"--net=" + netns, "--"}, argv...)
	cmd := exec.CommandContext(ctx, h.Nsenter, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("run %s in %s: %w: %s", strings.Join(argv, " "), netns, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// InNetns returns the argv that runs argv inside the network namespace bound
// at netns; an empty netns returns argv unchanged.
func (h *Host) InNetns(netns string, argv []string) []string {
	if netns == "" {
		return argv
	}
	return append([]string{h.Nsenter, "--net=" + netns, "--"}, argv...)
}
