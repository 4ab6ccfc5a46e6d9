package cluster

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/internal/testenv"
)

// A cluster does not take the ID of a live one: its failed start's
// teardown would take that cluster down (its cgroup, netns and links are
// named after the ID). The ID is drawn again while registered or in use.
func TestClusterIDNotTaken(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A live cluster's registration (this process owns it, so no sweep
	// takes it for a dead one's).
	live := State{ID: "beef", Dir: t.TempDir(), OwnedDir: true, OwnerPID: os.Getpid()} // OwnedDir: were it left by a crash, a sweep removes it whole
	if me, err := host.ReadProcess(os.Getpid()); err == nil {
		live.OwnerStart = me.Start
	}
	b, err := json.Marshal(live)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(RegistryDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(live.registryPath(), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(live.registryPath()) })
	draws := []string{"beef", "cafe"}
	defer func(f func() (string, error)) { randomID = f }(randomID)
	randomID = func() (string, error) {
		id := draws[0]
		if len(draws) > 1 {
			draws = draws[1:]
		}
		return id, nil
	}
	c := StartForTest(ctx, t, Config{Nodes: -1, SimNodes: 1})
	if c.ID() != "cafe" {
		t.Errorf("cluster ID %s; want cafe, beef being a live cluster's", c.ID())
	}
	if _, err := os.Stat(filepath.Join(RegistryDir, "beef.json")); err != nil {
		t.Errorf("the live cluster's registration: %v", err)
	}
}
