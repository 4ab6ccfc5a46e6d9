package cluster

import (
	"context"
	"path/filepath"

	"github.com/stickynet/stickynet/e2e/internal/proc"
)

// process is one long-running program the cluster started.
type process = proc.Process

// waitFor polls check until it returns true, the process (if any) exits, or
// ctx ends.
var waitFor = proc.WaitFor

// startProcess starts argv (inside the network namespace netns when set) as
// a new process in cgroup rel, with its output appended to logs/<name>.log.
func (c *Cluster) startProcess(ctx context.Context, name, netns, rel string, env []string, argv ...string) (*process, error) {
	return proc.Start(ctx, c.host, name, netns, rel, filepath.Join(c.dir, "logs", name+".log"), env, argv...)
}
