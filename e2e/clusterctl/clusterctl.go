// Package clusterctl runs the local cluster outside tests, for `make
// cluster-up` and `make cluster-down`: "up" starts a supervisor process (the
// same binary with "run") that brings the cluster up with package cluster
// and keeps it running, waits until it reports Ready and prints how long that
// took; "down" stops the supervisor by its recorded PID, which tears the
// cluster down, then sweeps whatever a dead supervisor may have left. With
// Stickynet, the supervisor also runs stickynet on the cluster.
package clusterctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/e2e/internal/host"
	"github.com/stickynet/stickynet/e2e/stickynet"
	"github.com/stickynet/stickynet/extender/config"
	"github.com/stickynet/stickynet/internal/annotations"
)

// Options are the command's settings.
type Options struct {
	// Command is "up", "down" or "run" (the supervisor, started by up).
	Command string
	// Dir holds the cluster's files; Kubeconfig is the admin kubeconfig.
	Dir, Kubeconfig string
	// Nodes and SimNodes are the numbers of real and simulated nodes.
	Nodes, SimNodes int
	// Stickynet runs stickynet on the cluster (package stickynet) with the
	// binaries in StickynetBin; SimAgents simulated nodes run its agent.
	Stickynet    bool
	StickynetBin string
	SimAgents    int
	// Out receives what the command reports to its user.
	Out io.Writer
}

// readyFD is the file descriptor on which the supervisor tells up that the
// cluster is ready (or why it is not).
const readyFD = 3

// Run carries out opts.Command.
func Run(ctx context.Context, opts Options) error {
	if opts.Out == nil {
		opts.Out = os.Stdout
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return fmt.Errorf("cluster folder: %w", err)
	}
	opts.Dir = dir
	if opts.Kubeconfig, err = filepath.Abs(opts.Kubeconfig); err != nil {
		return fmt.Errorf("kubeconfig path: %w", err)
	}
	if opts.StickynetBin != "" {
		if opts.StickynetBin, err = filepath.Abs(opts.StickynetBin); err != nil {
			return fmt.Errorf("stickynet binary folder: %w", err)
		}
	}
	switch opts.Command {
	case "up":
		return up(ctx, opts)
	case "run":
		return supervise(ctx, opts)
	case "down":
		return down(ctx, opts)
	default:
		return fmt.Errorf("unknown command %q: want up, down or run", opts.Command)
	}
}

func pidFile(dir string) string { return filepath.Join(filepath.Dir(dir), filepath.Base(dir)+".pid") }

func logFile(dir string) string { return filepath.Join(filepath.Dir(dir), filepath.Base(dir)+".log") }

// up starts the supervisor in a session of its own and waits for its word.
func up(ctx context.Context, opts Options) error {
	begin := time.Now()
	if s, err := cluster.ReadState(opts.Dir); err == nil {
		if s.OwnerAlive() {
			return fmt.Errorf("a cluster already runs from %s (supervisor PID %d): make cluster-down first", opts.Dir, s.OwnerPID)
		}
		// Its supervisor went without a teardown, and the registry that
		// TeardownStale reads went too (a reboot empties /run): remove what
		// it left. Before, the new cluster met the old OVS databases
		// ("File exists") and etcd data in the folder.
		if err := cluster.Teardown(ctx, s); err != nil {
			return fmt.Errorf("remove what the cluster of %s left (its supervisor, PID %d, is gone): %w", opts.Dir, s.OwnerPID, err)
		}
	}
	if err := cluster.TeardownStale(ctx); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(opts.Dir), 0o755); err != nil {
		return fmt.Errorf("create output folder: %w", err)
	}
	logf, err := os.Create(logFile(opts.Dir))
	if err != nil {
		return fmt.Errorf("create supervisor log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("make ready pipe: %w", err)
	}
	cmd := exec.Command(self, "run", "--dir="+opts.Dir, "--kubeconfig="+opts.Kubeconfig,
		"--nodes="+strconv.Itoa(opts.Nodes), "--sim-nodes="+strconv.Itoa(opts.SimNodes))
	if opts.Stickynet {
		cmd.Args = append(cmd.Args, "--stickynet", "--stickynet-bin="+opts.StickynetBin, "--sim-agents="+strconv.Itoa(opts.SimAgents))
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start supervisor: %w", err)
	}
	w.Close()
	me, err := host.ReadProcess(cmd.Process.Pid)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pidFile(opts.Dir), fmt.Appendf(nil, "%d %d\n", me.PID, me.Start), 0o644); err != nil {
		return fmt.Errorf("record supervisor PID: %w", err)
	}
	msg, _ := bufio.NewReader(r).ReadString('\n')
	r.Close()
	msg = strings.TrimSpace(msg)
	if !strings.HasPrefix(msg, "ready") {
		_ = cmd.Wait()
		if msg == "" {
			msg = "supervisor exited"
		}
		return fmt.Errorf("cluster did not come up: %s (log: %s)", msg, logFile(opts.Dir))
	}
	// Leave the supervisor running; do not wait for it.
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	fmt.Fprintf(opts.Out, "local cluster up: %d real node(s) Ready, %d simulated, %.1f s from start to Ready\n",
		opts.Nodes, opts.SimNodes, time.Since(begin).Seconds())
	if opts.Stickynet {
		fmt.Fprintf(opts.Out, "  stickynet: etcd, webhook, extender (scheduler %q) and a node agent on %d real and %d simulated node(s), labelled %s=true\n",
			config.SchedulerName, opts.Nodes, min(opts.SimAgents, opts.SimNodes), stickynet.NodeLabel)
		fmt.Fprintf(opts.Out, "  pods of namespaces labelled %s=true get sticky addresses; a default IPPool for this cluster: kubectl apply -f %s\n",
			annotations.EnabledLabel, poolFile(opts.Dir))
		fmt.Fprintf(opts.Out, "  stickynet's logs: %s\n", filepath.Join(opts.Dir, "logs", "stickynet-*.log"))
	}
	fmt.Fprintf(opts.Out, "  export KUBECONFIG=%s\n  supervisor PID %d, log %s; stop with: make cluster-down\n",
		opts.Kubeconfig, pid, logFile(opts.Dir))
	return nil
}

// poolFile is where the supervisor writes an IPPool that works on the cluster.
func poolFile(dir string) string { return filepath.Join(dir, "stickynet", "ippool.yaml") }

// startStickynet starts the cluster with stickynet on it and writes an
// IPPool manifest for it.
func startStickynet(ctx context.Context, cfg cluster.Config, opts Options) (*cluster.Cluster, error) {
	sopts := stickynet.Options{Config: stickynet.Config{Binaries: stickynet.BinariesIn(opts.StickynetBin), SimAgents: opts.SimAgents}}
	c, _, err := stickynet.StartCluster(ctx, cfg, sopts)
	if err != nil {
		return nil, err
	}
	spec, err := stickynet.PoolSpec(c)
	if err == nil {
		spec.Default = true
		var b []byte
		b, err = yaml.Marshal(map[string]any{
			"apiVersion": v1alpha1.GroupVersion.String(), "kind": "IPPool",
			"metadata": map[string]string{"name": "local"}, "spec": spec,
		})
		if err == nil {
			err = os.WriteFile(poolFile(opts.Dir), b, 0o644)
		}
	}
	if err != nil {
		return c, fmt.Errorf("write IPPool manifest: %w", err)
	}
	return c, nil
}

// supervise runs the cluster until SIGTERM or SIGINT, then stops it.
func supervise(ctx context.Context, opts Options) error {
	// Not inherited by the daemons it starts: were it, a supervisor that
	// died after starting one left `up` waiting for an EOF that never came.
	syscall.CloseOnExec(readyFD)
	ready := os.NewFile(readyFD, "ready")
	ctx, cancel := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	signal.Ignore(syscall.SIGHUP)
	startCtx, cancelStart := context.WithTimeout(ctx, 10*time.Minute)
	defer cancelStart()
	nodes := opts.Nodes
	if nodes == 0 {
		nodes = -1 // NODES=0: simulated nodes only (Config reads 0 as the default)
	}
	cfg := cluster.Config{
		Dir:        opts.Dir,
		Kubeconfig: opts.Kubeconfig,
		Nodes:      nodes,
		SimNodes:   opts.SimNodes,
	}
	var c *cluster.Cluster
	var err error
	if opts.Stickynet {
		c, err = startStickynet(startCtx, cfg, opts)
		if err != nil && c != nil {
			_ = c.Stop(context.Background())
		}
	} else {
		c, err = cluster.Start(startCtx, cfg)
	}
	if err != nil {
		if ready != nil {
			fmt.Fprintf(ready, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", " | "))
			ready.Close()
		}
		return err
	}
	if ready != nil {
		fmt.Fprintln(ready, "ready")
		ready.Close()
	}
	<-ctx.Done()
	klog.FromContext(ctx).Info("Stopping the local cluster")
	return c.Stop(context.Background())
}

// down stops the supervisor by PID and sweeps what is left.
func down(ctx context.Context, opts Options) error {
	begin := time.Now()
	s, err := cluster.ReadState(opts.Dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		fmt.Fprintf(opts.Out, "no cluster runs from %s\n", opts.Dir)
		_ = os.Remove(pidFile(opts.Dir))
		return cluster.TeardownStale(ctx)
	}
	if s.OwnerAlive() {
		if err := syscall.Kill(s.OwnerPID, syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop supervisor %d: %w", s.OwnerPID, err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for s.OwnerAlive() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if s.OwnerAlive() {
			_ = syscall.Kill(s.OwnerPID, syscall.SIGKILL)
		}
	}
	// Whatever the supervisor could not remove (or everything, if it had died).
	if err := cluster.Teardown(ctx, s); err != nil {
		return err
	}
	_ = os.Remove(pidFile(opts.Dir))
	fmt.Fprintf(opts.Out, "local cluster down in %.1f s\n", time.Since(begin).Seconds())
	return cluster.TeardownStale(ctx)
}
