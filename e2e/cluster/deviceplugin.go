package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"time"
)

// Every kubelet serves its device-plugin registration socket at a path it
// does not let one configure (k8s.io/kubelet's DevicePluginPath), outside
// its --root-dir: the nodes of the local cluster share it, and it stays
// behind when they stop. The cluster removes it once no kubelet answers on
// it, and the folders above it if the cluster created them.
const (
	devicePluginDir    = "/var/lib/kubelet/device-plugins"
	devicePluginSocket = devicePluginDir + "/kubelet.sock"
)

// devicePluginFolders returns, deepest first, the folders on the way to the
// device-plugin socket that do not exist yet: those the cluster's kubelets
// will create.
func devicePluginFolders() []string {
	var missing []string
	for _, d := range []string{devicePluginDir, "/var/lib/kubelet"} {
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, d)
		}
	}
	return missing
}

// removeDevicePluginSocket removes the device-plugin socket if no process
// listens on it any more, then the folders in created that are empty.
func removeDevicePluginSocket(created []string) error {
	if fi, err := os.Lstat(devicePluginSocket); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		conn, err := net.DialTimeout("unix", devicePluginSocket, time.Second)
		if err == nil {
			conn.Close()
			return nil // a kubelet (of another cluster, or the machine's) still serves it
		}
		if err := os.Remove(devicePluginSocket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove the kubelets' device-plugin socket: %w", err)
		}
	}
	for _, d := range created {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			if entries, _ := os.ReadDir(d); len(entries) > 0 {
				continue // something else put files there since: leave it
			}
			return fmt.Errorf("remove %s: %w", d, err)
		}
	}
	return nil
}
