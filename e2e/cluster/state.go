package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/e2e/internal/host"
)

// RegistryDir lists the clusters running on this machine, one file per
// cluster, so that a cluster whose owner died (a killed test binary, a
// crashed supervisor) can be found and removed by the next Start or by
// `make cluster-down`.
const RegistryDir = "/run/stickynet-localcluster"

// State is what a cluster leaves on disk to be torn down by anyone: every
// process, namespace, link, cgroup and mount it makes is named from ID or
// lives under Dir.
type State struct {
	// ID is the cluster's random identifier.
	ID string `json:"id"`
	// Dir holds everything the cluster writes.
	Dir string `json:"dir"`
	// OwnedDir is true when Dir was created by Start and is removed whole.
	OwnedDir bool `json:"ownedDir"`
	// Kubeconfig is the admin kubeconfig written outside Dir, if any.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// OwnerPID and OwnerStart name the process that runs the cluster.
	OwnerPID   int    `json:"ownerPID"`
	OwnerStart uint64 `json:"ownerStart"`
	// Subnet is the fabric and pod subnet.
	Subnet string `json:"subnet"`
	// KubeletFolders are the folders of the kubelets' device-plugin socket
	// that did not exist before the cluster (deepest first): Teardown
	// removes them, with the socket, once no kubelet serves it. Kept here,
	// not only by the owner, so that a cluster whose owner died leaves
	// neither (before, every later cluster took them for the machine's).
	KubeletFolders []string `json:"kubeletFolders,omitempty"`
}

// Prefix starts the name of every netns, link and cgroup of the cluster.
func (s State) Prefix() string { return "sn" + s.ID }

// Cgroup is the cluster's top cgroup (in every hierarchy).
func (s State) Cgroup() string { return "/stickynet-" + s.ID }

// Bridge is the fabric bridge in the host namespace.
func (s State) Bridge() string { return s.Prefix() + "-br" }

// Markers are strings found in the name, path or command line of
// everything the cluster makes on the machine, for leak checks to tell its
// things from others'.
func (s State) Markers() []string {
	return []string{s.Dir + "/", s.Prefix(), s.Cgroup(), filepath.Base(s.registryPath())}
}

func (s State) registryPath() string { return filepath.Join(RegistryDir, s.ID+".json") }

func (s State) write() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cluster state: %w", err)
	}
	if err := os.MkdirAll(RegistryDir, 0o755); err != nil {
		return fmt.Errorf("create cluster registry: %w", err)
	}
	if err := os.WriteFile(s.registryPath(), b, 0o644); err != nil {
		return fmt.Errorf("register cluster: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "state.json"), b, 0o644); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	return nil
}

// ReadState reads the state a cluster left in dir.
func ReadState(dir string) (State, error) {
	return readStateFile(filepath.Join(dir, "state.json"))
}

func readStateFile(path string) (State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("read cluster state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("parse cluster state %s: %w", path, err)
	}
	if s.ID == "" || s.Dir == "" {
		return State{}, fmt.Errorf("cluster state %s names no cluster", path)
	}
	return s, nil
}

// OwnerAlive reports whether the process that runs the cluster still runs.
func (s State) OwnerAlive() bool { return host.Alive(s.OwnerPID, s.OwnerStart) }

// Teardown removes whatever is left of the cluster s describes, without
// its owner's help: it kills by PID every process in the cluster's cgroups
// (the owner started all of them there, and what they forked stays there),
// unmounts what is mounted under its folder, deletes its network namespaces
// and host links, removes its cgroups, its folder and its registration. Stop
// ends with it; `make cluster-down` runs it after the supervisor is gone.
func Teardown(ctx context.Context, s State) error {
	h, err := host.New()
	if err != nil {
		return err
	}
	return teardown(ctx, h, s)
}

func teardown(ctx context.Context, h *host.Host, s State) error {
	log := klog.FromContext(ctx)
	var errs []error
	if err := h.KillCgroup(s.Cgroup(), 20*time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := h.UnmountUnder(s.Dir); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, removeLinksInto(containerLogLinks, s.Dir))
	nss, err := h.ListNetns(host.NetnsDir, s.Prefix()+"-")
	errs = append(errs, err)
	for _, ns := range nss {
		errs = append(errs, h.DeleteNetns(ns))
	}
	// The kernel removes a namespace's links, and so the host ends of the
	// uplinks, in batches once the namespace is gone: much faster than
	// deleting a thousand veths one by one. Wait while it makes progress,
	// then delete what is left.
	links, err := h.Links(s.Prefix())
	for last, stalled := len(links), 0; err == nil && len(links) > 1 && stalled < 5; {
		time.Sleep(200 * time.Millisecond)
		links, err = h.Links(s.Prefix())
		if len(links) < last {
			last, stalled = len(links), 0
		} else {
			stalled++
		}
	}
	errs = append(errs, err, deleteLinks(h, links, s.Bridge()))
	if err := h.RemoveCgroup(s.Cgroup(), 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if len(s.KubeletFolders) > 0 {
		errs = append(errs, removeDevicePluginSocket(s.KubeletFolders))
	}
	if s.OwnedDir {
		errs = append(errs, removeAll(s.Dir))
	} else {
		errs = append(errs, removeContents(s.Dir))
	}
	if s.Kubeconfig != "" && !strings.HasPrefix(s.Kubeconfig, s.Dir+"/") {
		if err := os.Remove(s.Kubeconfig); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove kubeconfig: %w", err))
		}
	}
	err = errors.Join(errs...)
	if err == nil {
		err = unregister(ctx, s)
	}
	log.V(1).Info("Tore down cluster", "id", s.ID, "dir", s.Dir, "err", err)
	return err
}

// sharedEmptyDirs are made by containerd and kubelet at fixed paths
// whatever their configuration (shim sockets, go-cni's result cache,
// container log links), children first.
var sharedEmptyDirs = []string{"/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni", containerLogLinks}

// SharedPaths are the folders that containerd and kubelet make at fixed
// paths whatever their configuration; Teardown removes them (when empty)
// with the last cluster on the machine.
func SharedPaths() []string { return append([]string(nil), sharedEmptyDirs...) }

// containerLogLinks is where every kubelet links each container's log
// (fixed in kubelet); the links of the cluster's kubelets point into its
// folder.
const containerLogLinks = "/var/log/containers"

// removeLinksInto removes the symbolic links in dir that point below target.
func removeLinksInto(dir, target string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		p := filepath.Join(dir, e.Name())
		to, err := os.Readlink(p)
		if err != nil || !strings.HasPrefix(to, target+"/") {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove container log link: %w", err))
		}
	}
	return errors.Join(errs...)
}

// unregister removes the cluster's registration and, when it was the last
// cluster, the registry folder and the empty folders that containerd and
// kubelet made at fixed places.
func unregister(ctx context.Context, s State) error {
	unlock, err := machineLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.Remove(s.registryPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unregister cluster: %w", err)
	}
	if others, _ := Registered(); len(others) == 0 {
		for _, d := range append(sharedEmptyDirs, RegistryDir) {
			_ = unix.Rmdir(d)
		}
	}
	return nil
}

// deleteLinks deletes the links, a few at a time, the bridge last.
func deleteLinks(h *host.Host, links []string, bridge string) error {
	work := make(chan string)
	errc := make(chan error, len(links))
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l := range work {
				errc <- h.DeleteLink(l)
			}
		}()
	}
	for _, l := range links {
		if l != bridge {
			work <- l
		}
	}
	close(work)
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(append(errs, h.DeleteLink(bridge))...)
}

func removeAll(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove cluster folder: %w", err)
	}
	return nil
}

func removeContents(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list cluster folder: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove cluster files: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Registered returns the state of every cluster registered on this machine.
func Registered() ([]State, error) {
	ents, err := os.ReadDir(RegistryDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list cluster registry: %w", err)
	}
	var out []State
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		s, err := readStateFile(filepath.Join(RegistryDir, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

// TeardownStale tears down every registered cluster whose owner is gone.
func TeardownStale(ctx context.Context) error {
	states, err := Registered()
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range states {
		if s.OwnerAlive() {
			continue
		}
		klog.FromContext(ctx).Info("Removing a cluster whose owner is gone", "id", s.ID, "dir", s.Dir, "ownerPID", s.OwnerPID)
		errs = append(errs, Teardown(ctx, s))
	}
	return errors.Join(errs...)
}
