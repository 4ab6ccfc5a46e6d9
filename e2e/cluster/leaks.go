package cluster

import (
	"context"
	"os"
	"time"

	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/e2e/leakcheck"
)

// Snapshot records the machine before a cluster starts, for Leaks.
// /run/netns is made a shared mount point first, as the first `ip netns add`
// on a machine does: machine setup, not a leak.
func Snapshot(ctx context.Context) (leakcheck.Snapshot, error) {
	h, err := host.New()
	if err != nil {
		return leakcheck.Snapshot{}, err
	}
	if err := h.PrepareNetnsDir(); err != nil {
		return leakcheck.Snapshot{}, err
	}
	return leakcheck.Take(ctx, h)
}

// Leaks lists what the stopped cluster whose state is s left on the machine
// since before (a snapshot taken before it started). Other clusters that run
// at the same time (tests of other packages) are told apart by their
// markers; the folders every cluster shares count only once none is left.
func Leaks(ctx context.Context, before leakcheck.Snapshot, s State) ([]string, error) {
	h, err := host.New()
	if err != nil {
		return nil, err
	}
	scope := func() leakcheck.Scope {
		sc := leakcheck.Scope{Strings: s.Markers(), SharedDirs: []string{host.NetnsDir}}
		others, _ := Registered()
		for _, o := range others {
			if o.ID != s.ID {
				// Another test's cluster runs: its things are its own, and
				// the folders every containerd makes, and the registry,
				// stay while it runs.
				sc.Foreign = append(sc.Foreign, o.Markers()...)
				sc.Foreign = append(sc.Foreign, SharedPaths()...)
				sc.SharedFolders = append(sc.SharedFolders, RegistryDir)
			}
		}
		return sc
	}
	leaks, err := leakcheck.Check(ctx, h, before, scope, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.Dir); err == nil {
		leaks = append(leaks, "folder "+s.Dir)
	}
	return leaks, nil
}
