package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NetnsDir is where `ip netns` keeps named network namespaces; the cluster's
// node namespaces live there so that `ip netns exec` works on them too.
const NetnsDir = "/run/netns"

// Sysctl is one network sysctl of a namespace, by its path under
// /proc/sys/net (for example "ipv6/conf/default/disable_ipv6").
type Sysctl struct {
	Key, Value string
}

// NewNetns creates a network namespace, sets sysctls in it and binds it to
// path, which must not exist yet. The namespace lives until DeleteNetns.
// Call PrepareNetnsDir before binding namespaces under NetnsDir.
func (h *Host) NewNetns(path string, sysctls ...Sysctl) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create netns folder: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread enters the new namespace and goes back to its own; only
		// if it cannot is it left locked, so that the runtime ends it rather
		// than reuse it. Ending threads is avoided: a child started with
		// Pdeathsig from a thread dies with that thread.
		runtime.LockOSThread()
		tid := unix.Gettid()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", tid))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		// /proc/sys/net shows the namespace of the thread that opens it.
		for _, sc := range sysctls {
			if err = os.WriteFile(filepath.Join("/proc/sys/net", sc.Key), []byte(sc.Value), 0o644); err != nil {
				err = fmt.Errorf("set net.%s=%s in the new namespace: %w", strings.ReplaceAll(sc.Key, "/", "."), sc.Value, err)
				break
			}
		}
		if err == nil {
			src := fmt.Sprintf("/proc/self/task/%d/ns/net", tid)
			if err = unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
				err = fmt.Errorf("bind network namespace to %s: %w", path, err)
			}
		}
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// PrepareNetnsDir makes NetnsDir a mount point of its own with shared
// propagation, as iproute2 does before its first `ip netns add`: namespace
// files bound there before that would otherwise end up hidden under the
// mount it makes, impossible to unbind. Callers serialize it (two binds at
// once would hide each other's namespaces the same way).
func (h *Host) PrepareNetnsDir() error {
	dir := NetnsDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s onto itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// DeleteNetns unbinds the network namespace at path and removes the file; the
// kernel frees the namespace (and the links in it) once nothing uses it. A
// missing path is not an error.
func (h *Host) DeleteNetns(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

// ListNetns returns the namespace files in dir whose names start with prefix.
func (h *Host) ListNetns(dir, prefix string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns folder: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}
