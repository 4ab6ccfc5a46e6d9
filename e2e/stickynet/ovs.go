package stickynet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ovsSchema is where the openvswitch-switch package installs the schema.
const ovsSchema = "/usr/share/openvswitch/vswitch.ovsschema"

// startOVS starts an ovsdb-server and an ovs-vswitchd for a simulated
// node, inside its namespace, with their database, run folder and sockets
// in the node's folder, as the cluster does for a real node; it returns the
// database socket.
func (s *System) startOVS(ctx context.Context, a *nodeAgent) (string, error) {
	n := a.node
	bins := map[string]string{}
	for _, b := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"} {
		p, err := exec.LookPath(b)
		if err != nil {
			return "", fmt.Errorf("find %s (openvswitch-switch): %w", b, err)
		}
		bins[b] = p
	}
	dir := filepath.Join(n.Dir, "ovs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create OVS folder of %s: %w", n.Name, err)
	}
	db := filepath.Join(dir, "conf.db")
	sock := filepath.Join(dir, "db.sock")
	if _, err := s.host.Run(ctx, bins["ovsdb-tool"], "create", db, ovsSchema); err != nil {
		return "", fmt.Errorf("create OVS database of %s: %w", n.Name, err)
	}
	env := []string{
		"OVS_RUNDIR=" + dir, "OVS_LOGDIR=" + dir, "OVS_DBDIR=" + dir,
		"OVS_SYSCONFDIR=" + dir, "OVS_PKGDATADIR=" + filepath.Dir(ovsSchema),
	}
	var err error
	a.ovsdb, err = s.start(ctx, "ovsdb-server-"+n.Name, n.Netns, env, bins["ovsdb-server"], db,
		"--remote=punix:"+sock,
		"--unixctl="+filepath.Join(dir, "ovsdb-server.ctl"),
		"--pidfile="+filepath.Join(dir, "ovsdb-server.pid"),
		"--log-file="+filepath.Join(dir, "ovsdb-server.log"),
		"-vconsole:off")
	if err != nil {
		return "", err
	}
	vsctl := []string{"--db=unix:" + sock, "--timeout=5"}
	if err := waitFor(ctx, n.Name+" ovsdb-server", 50*time.Millisecond, a.ovsdb, func(ctx context.Context) (bool, error) {
		if _, err := os.Stat(sock); err != nil {
			return false, nil
		}
		_, err := s.host.Run(ctx, bins["ovs-vsctl"], append(vsctl, "--no-wait", "init")...)
		return err == nil, err
	}); err != nil {
		return "", err
	}
	a.vswitchd, err = s.start(ctx, "ovs-vswitchd-"+n.Name, n.Netns, env, bins["ovs-vswitchd"], "unix:"+sock,
		"--unixctl="+filepath.Join(dir, "ovs-vswitchd.ctl"),
		"--pidfile="+filepath.Join(dir, "ovs-vswitchd.pid"),
		"--log-file="+filepath.Join(dir, "ovs-vswitchd.log"),
		"-vconsole:off")
	if err != nil {
		return "", err
	}
	// Without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the
	// change: the daemon is up and reading its database.
	if err := waitFor(ctx, n.Name+" ovs-vswitchd", 50*time.Millisecond, a.vswitchd, func(ctx context.Context) (bool, error) {
		_, err := s.host.Run(ctx, bins["ovs-vsctl"], append(vsctl, "set", "Open_vSwitch", ".", "external_ids:system-id="+n.Name)...)
		return err == nil, err
	}); err != nil {
		return "", err
	}
	return sock, nil
}
