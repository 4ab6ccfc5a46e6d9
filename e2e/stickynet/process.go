package stickynet

import (
	"context"
	"path/filepath"

	"github.com/stickynet/stickynet/e2e/internal/proc"
)

// process is one of stickynet's programs, started inside the cluster's cgroup.
type process = proc.Process

// waitFor polls check until it returns true, the process (if any) exits, or
// ctx ends.
var waitFor = proc.WaitFor

// start starts argv (inside the network namespace netns when set) with its
// output appended to the cluster's logs/stickynet-<name>.log.
func (s *System) start(ctx context.Context, name, netns string, env []string, argv ...string) (*process, error) {
	return proc.Start(ctx, s.host, name, netns, s.cgroup, filepath.Join(s.logDir, "stickynet-"+name+".log"), env, argv...)
}
