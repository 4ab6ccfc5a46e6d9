package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stickynet/stickynet/internal/testenv"
)

// findBinaries fills the empty fields of b: the programs hack/build-tools.sh
// builds from its cache, the Debian ones from PATH. Every missing program is
// named in the error with how to get it.
func findBinaries(b Binaries) (Binaries, error) {
	var errs []error
	tool := func(dst *string, tool, name string) {
		if *dst != "" {
			return
		}
		p, err := testenv.Tool(tool, name)
		if err != nil {
			errs = append(errs, err)
			return
		}
		*dst = p
	}
	system := func(dst *string, name, pkg string) {
		if *dst != "" {
			return
		}
		p, err := exec.LookPath(name)
		if err != nil {
			for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
				if fi, serr := os.Stat(filepath.Join(d, name)); serr == nil && fi.Mode()&0o111 != 0 {
					p, err = filepath.Join(d, name), nil
					break
				}
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s not found: apt-get install %s (.ci/run does)", name, pkg))
			return
		}
		*dst = p
	}
	tool(&b.Etcd, "etcd", "etcd")
	tool(&b.APIServer, "kube", "kube-apiserver")
	tool(&b.ControllerManager, "kube", "kube-controller-manager")
	tool(&b.Scheduler, "kube", "kube-scheduler")
	tool(&b.Kubelet, "kube", "kubelet")
	tool(&b.Kubectl, "kube", "kubectl")
	tool(&b.Containerd, "containerd", "containerd")
	tool(&b.ContainerdShim, "containerd", "containerd-shim-runc-v2")
	tool(&b.Ctr, "containerd", "ctr")
	tool(&b.Pause, "images", "pause")
	if b.CNIPlugins == "" {
		var bridge string
		tool(&bridge, "cniplugins", "bridge")
		if bridge != "" {
			b.CNIPlugins = filepath.Dir(bridge)
		}
	}
	system(&b.Busybox, "busybox", "busybox-static")
	system(&b.Iperf3, "iperf3", "iperf3")
	system(&b.Runc, "runc", "runc")
	system(&b.OVSDBServer, "ovsdb-server", "openvswitch-switch")
	system(&b.OVSVswitchd, "ovs-vswitchd", "openvswitch-switch")
	system(&b.OVSVsctl, "ovs-vsctl", "openvswitch-switch")
	system(&b.OVSDBTool, "ovsdb-tool", "openvswitch-switch")
	if b.OVSSchema == "" {
		b.OVSSchema = "/usr/share/openvswitch/vswitch.ovsschema"
		if _, err := os.Stat(b.OVSSchema); err != nil {
			errs = append(errs, fmt.Errorf("OVS schema: %w: apt-get install openvswitch-switch", err))
		}
	}
	return b, errors.Join(errs...)
}

// lockFile takes an exclusive flock on path, waiting for ctx; the returned
// function releases it.
func lockFile(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create lock folder: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
