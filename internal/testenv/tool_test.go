package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// Tool finds the version hack/tool-versions pins, whatever other versions
// the cache holds: one whose name sorts after it (v1.37.2 against v1.37.10
// sorts the other way), a newer one another clone built, a half-built .tmp.
// Before, the last name in sort order won.
func TestToolPinnedVersion(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("STICKYNET_CACHE", cache)
	pinned, err := ToolVersion("kube")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{pinned, "v1.37.10", "v9.99.0", pinned + ".tmp"} {
		dir := filepath.Join(cache, "kube-"+v)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "kubelet"), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Tool("kube", "kubelet")
	if want := filepath.Join(cache, "kube-"+pinned, "kubelet"); err != nil || got != want {
		t.Errorf("Tool(kube, kubelet): %q, %v; want %q", got, err, want)
	}
	if err := os.Remove(filepath.Join(cache, "kube-"+pinned, "kubelet")); err != nil {
		t.Fatal(err)
	}
	if got, err := Tool("kube", "kubelet"); err == nil {
		t.Errorf("Tool(kube, kubelet) without the pinned version built: %q; want an error telling to run make tools", got)
	}
}

// FreePort never hands out a port twice in a process, though the kernel
// may give a port just closed to the next bind.
func TestFreePortOnce(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
