// Package leakcheck tells what a test left behind on the machine: it takes a
// snapshot of processes, network namespaces, host links, mounts, cgroups,
// iptables rules and the files at the places container runtimes, CNI plugins
// and Open vSwitch write to, before and after, and lists what is new.
// Processes are only counted when they belong to the test (its descendants,
// or naming the scope's folder, prefix or cgroup), since the machine runs
// other work at the same time; everything else is compared whole.
package leakcheck

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/stickynet/stickynet/e2e/internal/host"
)

// WatchedPaths are folders whose contents are compared: where containerd,
// kubelet, CNI plugins and Open vSwitch write by default, and the cluster
// registry.
var WatchedPaths = []string{
	"/run/containerd", "/var/lib/containerd", "/opt/containerd",
	"/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/etc/kubernetes",
	"/var/lib/cni", "/etc/cni", "/opt/cni", "/run/cni",
	"/run/openvswitch", "/var/run/openvswitch", "/etc/openvswitch", "/var/lib/openvswitch", "/var/log/openvswitch",
	"/run/netns", "/run/stickynet-localcluster", "/run/stickynet",
}

// Snapshot is the machine's state at one moment.
type Snapshot struct {
	Processes map[string]host.Process // by "pid/start"
	Links     []string                // host namespace links
	Netns     []string                // nsfs mounts (every bound network namespace)
	Mounts    []string                // "point fstype source"
	Cgroups   []string                // groups up to two levels deep, every hierarchy
	IPTables  []string                // iptables-save and ip6tables-save rules and chains, counters dropped
	Files     []string                // entries under WatchedPaths
	self      int
}

// Scope says which new things belong to the test and which to others.
type Scope struct {
	// Strings mark a process as the test's when its command line or cgroup
	// path contains one (the cluster's folder, its name prefix, its cgroup).
	Strings []string
	// Foreign marks things of other work known to run at the same time
	// (another test's cluster): anything containing one is not a leak.
	Foreign []string
	// SharedDirs are folders that other tests fill at the same time, such
	// as /run/netns: what appears under them only counts when it contains
	// one of Strings (the test's own things are named so).
	SharedDirs []string
	// SharedFolders are exact paths of folders that other work running at
	// the same time keeps (a registry of clusters): the folder itself is
	// not a leak, what is in it still is.
	SharedFolders []string
}

// Take takes a snapshot.
func Take(ctx context.Context, h *host.Host) (Snapshot, error) {
	s := Snapshot{Processes: map[string]host.Process{}, self: os.Getpid()}
	procs, err := h.Processes()
	if err != nil {
		return s, err
	}
	for _, p := range procs {
		s.Processes[fmt.Sprintf("%d/%d", p.PID, p.Start)] = p
	}
	if s.Links, err = h.Links(""); err != nil {
		return s, err
	}
	mounts, err := h.Mounts()
	if err != nil {
		return s, err
	}
	for _, m := range mounts {
		if m.FSType == "nsfs" {
			s.Netns = append(s.Netns, m.Point)
		}
		s.Mounts = append(s.Mounts, m.Point+" "+m.FSType+" "+m.Source)
	}
	s.Cgroups = cgroupDirs(h.CgroupRoot, 3)
	if s.IPTables, err = iptablesRules(ctx); err != nil {
		return s, err
	}
	for _, p := range WatchedPaths {
		s.Files = append(s.Files, listTree(p, 6)...)
	}
	for _, l := range []*[]string{&s.Links, &s.Netns, &s.Mounts, &s.Cgroups, &s.IPTables, &s.Files} {
		sort.Strings(*l)
	}
	return s, nil
}

// cgroupDirs lists the groups of every hierarchy under root, depth levels
// deep (hierarchy/group/subgroup).
func cgroupDirs(root string, depth int) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		if n := strings.Count(rel, "/") + 1; n > depth {
			return fs.SkipDir
		}
		out = append(out, rel)
		return nil
	})
	return out
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// iptablesRules returns the host namespace's iptables rules and chains, by
// table, without counters. Missing tools give no rules rather than an error
// (the check then compares nothing for them).
func iptablesRules(ctx context.Context) ([]string, error) {
	var out []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		b, err := exec.CommandContext(ctx, tool).Output()
		if err != nil {
			return nil, fmt.Errorf("run %s: %w", tool, err)
		}
		table := ""
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			switch {
			case line == "" || strings.HasPrefix(line, "#") || line == "COMMIT":
			case strings.HasPrefix(line, "*"):
				table = line[1:]
			default:
				out = append(out, tool+" "+table+" "+counters.ReplaceAllString(line, ""))
			}
		}
	}
	return out, nil
}

// listTree lists the paths under root, depth levels deep.
func listTree(root string, depth int) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if rel != "." && strings.Count(rel, "/")+1 > depth {
			return fs.SkipDir
		}
		out = append(out, p)
		return nil
	})
	return out
}

// Leaks lists what after has that s (taken before) had not: processes of
// the scope (or descendants of this process) that still run, and every new
// link, bound namespace, mount, cgroup, iptables rule and watched file.
func (s Snapshot) Leaks(after Snapshot, scope Scope) []string {
	var leaks []string
	for key, p := range after.Processes {
		if _, ok := s.Processes[key]; ok || p.PID == after.self {
			continue
		}
		if p.Zombie && p.PPID == after.self {
			continue // exited child not yet reaped by its os/exec owner
		}
		if foreign(p.Cmdline, scope) {
			continue
		}
		if inScope(p, scope) || descends(p, after) {
			leaks = append(leaks, fmt.Sprintf("process %d (%s)", p.PID, p.Cmdline))
		}
	}
	sort.Strings(leaks)
	for _, c := range []struct {
		kind          string
		before, after []string
	}{
		{"link", s.Links, after.Links},
		{"netns", s.Netns, after.Netns},
		{"mount", s.Mounts, after.Mounts},
		{"cgroup", s.Cgroups, after.Cgroups},
		{"iptables", s.IPTables, after.IPTables},
		{"file", s.Files, after.Files},
	} {
		for _, x := range added(c.before, c.after) {
			if foreign(x, scope) || (inSharedDir(x, scope) && !containsAny(x, scope.Strings)) ||
				c.kind == "file" && slices.Contains(scope.SharedFolders, x) {
				continue
			}
			leaks = append(leaks, c.kind+" "+x)
		}
	}
	return leaks
}

// Check takes a snapshot and lists what is new since before. A leak that
// names none of the scope's own strings must still be there after settle,
// in a second snapshot: another test's short-lived namespaces and links are
// not taken for this one's, while a real leak stays. scope is asked again
// for each snapshot (other clusters come and go).
func Check(ctx context.Context, h *host.Host, before Snapshot, scope func() Scope, settle time.Duration) ([]string, error) {
	after, err := Take(ctx, h)
	if err != nil {
		return nil, err
	}
	first := before.Leaks(after, scope())
	unsure := false
	for _, l := range first {
		if !strings.HasPrefix(l, "process ") && !containsAny(l, scope().Strings) {
			unsure = true
		}
	}
	if !unsure {
		return first, nil
	}
	select {
	case <-ctx.Done():
		return first, nil
	case <-time.After(settle):
	}
	again, err := Take(ctx, h)
	if err != nil {
		return nil, err
	}
	still := map[string]bool{}
	for _, l := range before.Leaks(again, scope()) {
		still[l] = true
	}
	var out []string
	for _, l := range first {
		if still[l] || strings.HasPrefix(l, "process ") || containsAny(l, scope().Strings) {
			out = append(out, l)
		}
	}
	return out, nil
}

func foreign(s string, scope Scope) bool { return containsAny(s, scope.Foreign) }

func inSharedDir(s string, scope Scope) bool {
	for _, d := range scope.SharedDirs {
		d = strings.TrimSuffix(d, "/") + "/"
		if strings.HasPrefix(s, d) || strings.Contains(s, " "+d) {
			return true
		}
	}
	return false
}

func containsAny(s string, subs []string) bool {
	for _, x := range subs {
		if x != "" && strings.Contains(s, x) {
			return true
		}
	}
	return false
}

func inScope(p host.Process, scope Scope) bool {
	for _, s := range scope.Strings {
		if s != "" && (strings.Contains(p.Cmdline, s) || strings.Contains(p.Cgroups, s)) {
			return true
		}
	}
	return false
}

// descends reports whether p's ancestry reaches the snapshot's own process.
func descends(p host.Process, snap Snapshot) bool {
	byPID := map[int]host.Process{}
	for _, q := range snap.Processes {
		byPID[q.PID] = q
	}
	for i := 0; i < 64 && p.PPID > 1; i++ {
		if p.PPID == snap.self {
			return true
		}
		q, ok := byPID[p.PPID]
		if !ok {
			return false
		}
		p = q
	}
	return false
}

// added returns the sorted elements of after missing from before.
func added(before, after []string) []string {
	seen := make(map[string]bool, len(before))
	for _, b := range before {
		seen[b] = true
	}
	var out []string
	for _, a := range after {
		if !seen[a] {
			out = append(out, a)
		}
	}
	return out
}
