package leakcheck

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/internal/testenv"
)

func TestLeaksComparesEachKind(t *testing.T) {
	before := Snapshot{
		Processes: map[string]host.Process{"10/1": {PID: 10, PPID: 1, Start: 1, Cmdline: "old"}},
		Links:     []string{"eth0", "lo"},
		Mounts:    []string{"/ ext4 /dev/vda"},
		self:      100,
	}
	after := Snapshot{
		Processes: map[string]host.Process{
			"10/1":  {PID: 10, PPID: 1, Start: 1, Cmdline: "old"},
			"11/5":  {PID: 11, PPID: 1, Start: 5, Cmdline: "unrelated daemon"},
			"12/6":  {PID: 12, PPID: 1, Start: 6, Cmdline: "containerd --config /tmp/c1/config.toml"},
			"13/7":  {PID: 13, PPID: 100, Start: 7, Cmdline: "child of the test"},
			"14/8":  {PID: 14, PPID: 13, Start: 8, Cmdline: "grandchild"},
			"15/9":  {PID: 15, PPID: 1, Start: 9, Cmdline: "sleep", Cgroups: "5:memory:/stickynet-ab12/node-1\n"},
			"16/10": {PID: 16, PPID: 100, Start: 10, Cmdline: "", Zombie: true},
			"17/11": {PID: 17, PPID: 100, Start: 11, Cmdline: "kubelet --root-dir=/tmp/other/kubelet"},
			"100/2": {PID: 100, PPID: 1, Start: 2, Cmdline: "the test"},
		},
		Links:    []string{"eth0", "lo", "snab12-1", "sncd34-1"},
		Netns:    []string{"/run/netns/snab12-node-1", "/run/netns/cnitest-1"},
		Mounts:   []string{"/ ext4 /dev/vda", "/tmp/c1/kubelet/pods/x tmpfs tmpfs"},
		Cgroups:  []string{"memory/stickynet-ab12"},
		IPTables: []string{"iptables-save filter :KUBE-FIREWALL - "},
		Files:    []string{"/var/lib/cni/results", "/run/registry", "/run/registry/ab12.json"},
		self:     100,
	}
	got := before.Leaks(after, Scope{
		Strings:       []string{"/tmp/c1", "/stickynet-ab12", "snab12"},
		Foreign:       []string{"sncd34", "/tmp/other/"},
		SharedDirs:    []string{"/run/netns"},
		SharedFolders: []string{"/run/registry"},
	})
	want := []string{
		"process 12 (containerd --config /tmp/c1/config.toml)",
		"process 13 (child of the test)",
		"process 14 (grandchild)",
		"process 15 (sleep)",
		"link snab12-1",
		"netns /run/netns/snab12-node-1",
		"mount /tmp/c1/kubelet/pods/x tmpfs tmpfs",
		"cgroup memory/stickynet-ab12",
		"iptables iptables-save filter :KUBE-FIREWALL - ",
		"file /var/lib/cni/results",
		"file /run/registry/ab12.json",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Leaks() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if l := before.Leaks(before, Scope{}); len(l) != 0 {
		t.Errorf("a snapshot compared with itself shows leaks: %v", l)
	}
}

// TestTakeSeesRealLeaks makes one leak of each kind on the machine and
// checks that a snapshot after shows every one: a leak check that cannot
// fail proves nothing.
func TestTakeSeesRealLeaks(t *testing.T) {
	testenv.Root(t)
	ctx := context.Background()
	h, err := host.New()
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("lk%d", os.Getpid()%100000)
	before, err := Take(ctx, h)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	nsPath := filepath.Join(dir, "ns")
	if err := h.NewNetns(nsPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DeleteNetns(nsPath) })
	br := id + "-br"
	if err := h.AddBridge(br, netip.MustParsePrefix("198.18.250.1/30")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.DeleteLink(br) })
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	cg := "/" + id
	if err := h.CreateCgroup(cg); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "300")
	if err := h.StartInCgroup(sleep, cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sleep.Process.Kill()
		_ = sleep.Wait()
		_ = h.RemoveCgroup(cg, 5*time.Second)
	})
	chain := strings.ToUpper(id)
	if out, err := exec.Command("iptables", "-N", chain).CombinedOutput(); err != nil {
		t.Fatalf("iptables -N: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("iptables", "-X", chain).Run() })
	file := "/run/stickynet/leakcheck-" + id
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(file); _ = unix.Rmdir("/run/stickynet") })

	after, err := Take(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	leaks := strings.Join(before.Leaks(after, Scope{Strings: []string{cg}}), "\n")
	for _, want := range []string{
		fmt.Sprintf("process %d (sleep 300)", sleep.Process.Pid),
		"link " + br,
		"netns " + nsPath,
		"mount " + mnt + " tmpfs",
		"cgroup memory" + cg,
		"iptables iptables-save filter :" + chain,
		"file " + file,
	} {
		if !strings.Contains(leaks, want) {
			t.Errorf("leaks do not show %q; they are:\n%s", want, leaks)
		}
	}
}
