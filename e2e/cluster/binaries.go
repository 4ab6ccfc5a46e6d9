package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// machineLock takes a machine-wide lock shared by every local cluster,
// waiting for ctx; the returned function releases it. The lock is an
// abstract unix socket (held while bound), so it leaves no file behind and
// is released when its holder dies.
func machineLock(ctx context.Context) (func(), error) {
	for {
		l, err := net.Listen("unix", "@stickynet-localcluster.lock")
		if err == nil {
			return func() { l.Close() }, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("take the local cluster lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("take the local cluster lock: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
