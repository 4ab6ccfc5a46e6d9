package cluster

import (
	"context"
	"os"
	"strings"
	"testing"
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

// CheckNoLeaks fails t with what the stopped cluster whose state is s left
// on the machine since before.
func CheckNoLeaks(ctx context.Context, t testing.TB, before leakcheck.Snapshot, s State) {
	t.Helper()
	leaks, err := Leaks(ctx, before, s)
	if err != nil {
		t.Errorf("look for what the cluster left behind: %v", err)
		return
	}
	if len(leaks) > 0 {
		t.Errorf("left behind after Stop:\n  %s", strings.Join(leaks, "\n  "))
	}
}

// SnapshotForTest is Snapshot, failing t on error.
func SnapshotForTest(ctx context.Context, t testing.TB) leakcheck.Snapshot {
	t.Helper()
	before, err := Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return before
}

// StartForTest starts a cluster for t and, when t ends, stops it and fails
// t if Stop fails or the cluster left anything on the machine (processes,
// netns, links, mounts, folders). Cleanups t registers later run first.
func StartForTest(ctx context.Context, t testing.TB, cfg Config) *Cluster {
	t.Helper()
	before := SnapshotForTest(ctx, t)
	c, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	state := c.State()
	t.Cleanup(func() {
		ctx := context.Background()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
		CheckNoLeaks(ctx, t, before, state)
	})
	return c
}
