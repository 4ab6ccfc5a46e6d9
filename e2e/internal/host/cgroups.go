package host

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// hierarchy is one mounted cgroup hierarchy.
type hierarchy struct {
	mount  string // /sys/fs/cgroup/memory
	v2     bool   // the unified hierarchy (hybrid mode)
	cpuset bool   // needs cpuset.cpus and cpuset.mems filled in new groups
}

func (h *Host) discoverCgroups() error {
	mounts, err := h.Mounts()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if !strings.HasPrefix(m.Point, h.CgroupRoot+"/") {
			continue
		}
		switch m.FSType {
		case "cgroup":
			h.hier = append(h.hier, hierarchy{mount: m.Point, cpuset: strings.Contains(","+m.Options+",", ",cpuset,")})
		case "cgroup2":
			h.hier = append(h.hier, hierarchy{mount: m.Point, v2: true})
		}
	}
	sort.Slice(h.hier, func(i, j int) bool { return h.hier[i].mount < h.hier[j].mount })
	if len(h.hier) == 0 {
		return fmt.Errorf("no cgroup hierarchy mounted under %s", h.CgroupRoot)
	}
	return nil
}

// CgroupV1 reports whether the machine runs cgroup v1 hierarchies (the
// cluster's kubelets then need failCgroupV1: false).
func (h *Host) CgroupV1() bool {
	for _, x := range h.hier {
		if !x.v2 {
			return true
		}
	}
	return false
}

// CreateCgroup creates the cgroup rel (such as "/stickynet-ab12/node-1") and
// its parents in every hierarchy, filling cpuset.cpus and cpuset.mems from the
// parent where the cpuset controller needs them.
func (h *Host) CreateCgroup(rel string) error {
	parts := strings.Split(strings.Trim(rel, "/"), "/")
	for _, x := range h.hier {
		dir := x.mount
		for _, p := range parts {
			parent := dir
			dir = filepath.Join(dir, p)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			if x.cpuset {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					if err := copyIfEmpty(filepath.Join(parent, f), filepath.Join(dir, f)); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

func copyIfEmpty(from, to string) error {
	cur, err := os.ReadFile(to)
	if err != nil {
		return fmt.Errorf("read %s: %w", to, err)
	}
	if strings.TrimSpace(string(cur)) != "" {
		return nil
	}
	v, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("read %s: %w", from, err)
	}
	if err := os.WriteFile(to, v, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", to, err)
	}
	return nil
}

// StartInCgroup starts cmd so that the new process begins life in cgroup rel
// of every v1 hierarchy (created beforehand with CreateCgroup): the calling
// thread joins rel, forks, and returns to where it was. Everything the process
// forks later stays findable through CgroupProcs.
func (h *Host) StartInCgroup(cmd *exec.Cmd, rel string) error {
	runtime.LockOSThread()
	tid := unix.Gettid()
	orig, err := threadCgroups(tid)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	restore := func() error {
		var errs []error
		for _, x := range h.hier {
			if x.v2 {
				continue
			}
			if p, ok := orig[filepath.Base(x.mount)]; ok {
				errs = append(errs, writeTask(filepath.Join(x.mount, p), tid))
			}
		}
		return errors.Join(errs...)
	}
	var startErr error
	for _, x := range h.hier {
		if x.v2 {
			continue
		}
		if err := writeTask(filepath.Join(x.mount, rel), tid); err != nil {
			startErr = err
			break
		}
	}
	if startErr == nil {
		if err := cmd.Start(); err != nil {
			startErr = fmt.Errorf("start %s: %w", cmd.Path, err)
		}
	}
	if err := restore(); err != nil {
		// Leave the thread locked: the runtime ends it when this goroutine
		// returns, rather than reusing a thread in the wrong cgroups.
		return errors.Join(startErr, fmt.Errorf("return thread to its cgroups: %w", err))
	}
	runtime.UnlockOSThread()
	return startErr
}

func writeTask(dir string, tid int) error {
	if err := os.WriteFile(filepath.Join(dir, "tasks"), []byte(strconv.Itoa(tid)), 0o644); err != nil {
		return fmt.Errorf("move thread %d to cgroup %s: %w", tid, dir, err)
	}
	return nil
}

// threadCgroups maps each v1 hierarchy's mount name (cpu, memory,
// name=systemd → systemd) to the thread's cgroup path in it.
func threadCgroups(tid int) (map[string]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/task/%d/cgroup", tid))
	if err != nil {
		return nil, fmt.Errorf("read thread cgroups: %w", err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue
		}
		name := strings.TrimPrefix(parts[1], "name=")
		out[name] = parts[2]
	}
	return out, sc.Err()
}

// CgroupExists reports whether rel exists in any hierarchy.
func (h *Host) CgroupExists(rel string) bool {
	for _, x := range h.hier {
		if _, err := os.Stat(filepath.Join(x.mount, rel)); err == nil {
			return true
		}
	}
	return false
}

// CgroupProcs returns the PIDs of every process in rel or below, in any
// hierarchy.
func (h *Host) CgroupProcs(rel string) ([]int, error) {
	seen := map[int]bool{}
	for _, x := range h.hier {
		root := filepath.Join(x.mount, rel)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if !d.IsDir() {
				return nil
			}
			b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					seen[pid] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list processes of cgroup %s: %w", root, err)
		}
	}
	pids := make([]int, 0, len(seen))
	for p := range seen {
		pids = append(pids, p)
	}
	sort.Ints(pids)
	return pids, nil
}

// KillCgroup sends SIGKILL to every process in rel or below and waits up to
// timeout for them to be gone.
func (h *Host) KillCgroup(rel string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := h.CgroupProcs(rel)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of cgroup %s still alive after SIGKILL", pids, rel)
		}
		for _, p := range pids {
			_ = unix.Kill(p, unix.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RemoveCgroup removes rel and every group below it from all hierarchies,
// deepest first, retrying while the kernel still holds a group busy. A
// missing group is not an error.
func (h *Host) RemoveCgroup(rel string, timeout time.Duration) error {
	var errs []error
	for _, x := range h.hier {
		root := filepath.Join(x.mount, rel)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			errs = append(errs, rmdirRetry(d, timeout))
		}
	}
	return errors.Join(errs...)
}

func rmdirRetry(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CgroupDirs returns every group at or below rel, in every hierarchy, as
// absolute paths (for leak checks).
func (h *Host) CgroupDirs(rel string) []string {
	var out []string
	for _, x := range h.hier {
		_ = filepath.WalkDir(filepath.Join(x.mount, rel), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				out = append(out, p)
			}
			return nil
		})
	}
	sort.Strings(out)
	return out
}

// TopCgroups returns the names of the top-level groups (directly under each
// hierarchy's root) that start with prefix, once each.
func (h *Host) TopCgroups(prefix string) []string {
	seen := map[string]bool{}
	for _, x := range h.hier {
		ents, _ := os.ReadDir(x.mount)
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
				seen[e.Name()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
