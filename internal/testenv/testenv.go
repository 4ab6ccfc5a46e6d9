// Package testenv owns what stickynet's tests need from the machine: finding the
// pinned third-party binaries that `make tools` builds, the rule for tests that
// need the real thing (skipped only under -short, and then saying why), and a
// real etcd server process for tests to start, kill and restart, and a poll
// helper for conditions that come true in their own time, and one for pings.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
)

// CacheDir is where hack/build-tools.sh puts the binaries it builds.
func CacheDir() string {
	if d := os.Getenv("STICKYNET_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "stickynet")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "stickynet")
}

// toolVersions reads hack/tool-versions, the version of each tool
// hack/build-tools.sh builds, found from this file's place in the source
// (the tests, and localcluster, which make builds from the clone without
// -trimpath).
var toolVersions = sync.OnceValues(func() (map[string]string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return nil, errors.New("the pinned tool versions: this file's path is not known")
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(self), "..", "..", "hack", "tool-versions"))
	if err != nil {
		return nil, fmt.Errorf("the pinned tool versions: %w", err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			out[f[0]] = f[1]
		}
	}
	return out, nil
})

// ToolVersion returns the version of tool that hack/tool-versions pins.
func ToolVersion(tool string) (string, error) {
	vs, err := toolVersions()
	if err != nil {
		return "", err
	}
	v, ok := vs[tool]
	if !ok {
		return "", fmt.Errorf("no version of %s in hack/tool-versions", tool)
	}
	return v, nil
}

// Tool returns the path of a binary built by hack/build-tools.sh for tool (such as
// "etcd" or "kube") at the version hack/tool-versions pins, or an error telling how
// to build it. Other versions in the cache (another clone's, an older pin's) are
// not used: before, the one whose name sorted last was, so v1.37.2 won over
// v1.37.10, and another clone's newer pin over this one's.
func Tool(tool, binary string) (string, error) {
	v, err := ToolVersion(tool)
	if err != nil {
		return "", err
	}
	p := filepath.Join(CacheDir(), tool+"-"+v, binary)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	return "", fmt.Errorf("%s %s not found at %s: run `make tools` (hack/build-tools.sh %s)", tool, v, p, tool)
}

// NeedTool returns the tool's binary or fails the test (never skips: a missing
// install step must show).
func NeedTool(t testing.TB, tool, binary string) string {
	t.Helper()
	p, err := Tool(tool, binary)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// NeedCommand returns the path of a system command or fails the test.
func NeedCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found in PATH: .ci/run installs it (apt-get)", name)
	}
	return p
}

// Integration marks a test that needs real components (etcd, Kubernetes, OVS,
// the kernel). Under `go test -short` (make test-unit) it is skipped, with the
// reason; otherwise it runs, and whatever it needs must be there.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs real components; run without -short (make test)")
	}
}

// Root is Integration plus a check that the test runs as root, failing if not.
func Root(t testing.TB) {
	t.Helper()
	Integration(t)
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (network namespaces, OVS, qdiscs); run make test as root")
	}
}

// Eventually polls cond every 250 ms until it holds, and fails the test with
// what and cond's last detail once timeout has passed or ctx has ended.
func Eventually(ctx context.Context, t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s: not within %s: %s", what, timeout, detail)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// PingAll runs ping, a command that sends a few echo requests and prints
// busybox's or iputils' summary, up to three times until one run has every
// request answered, and otherwise reports what (an error, not fatal) with
// the last run's error and output. Busybox's ping waits about a second for
// the last reply, which a userspace datapath starved for that long on a busy
// machine misses; a network that does not work loses replies every time.
func PingAll(t testing.TB, what string, ping func() ([]byte, error)) {
	t.Helper()
	var out []byte
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		out, err = ping()
		if err == nil && strings.Contains(string(out), " 0% packet loss") {
			return
		}
		t.Logf("%s, attempt %d: %v\n%s", what, attempt, err, out)
	}
	t.Errorf("%s: not every echo request answered in 3 runs: %v\n%s", what, err, out)
}

// TakeLease makes holder the holder of the Lease name for d from now, as
// another candidate that took it would: its holder stops leading once it
// cannot renew it.
func TakeLease(ctx context.Context, t testing.TB, leases coordinationv1client.LeaseInterface, name, holder string, d time.Duration) {
	t.Helper()
	l, err := leases.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now, secs := metav1.NewMicroTime(time.Now()), int32(d/time.Second)
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.AcquireTime, l.Spec.RenewTime = &holder, &secs, &now, &now
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
