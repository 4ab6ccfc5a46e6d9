package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// childExec runs the fallback network's plugins for libcni, as its default
// exec does, but each as a child the kernel kills (SIGKILL) when this plugin
// dies first. A runtime kills a plugin that takes longer than it waits (as
// containerd does at its CNI timeout) and goes on with DEL; a fallback
// plugin left running its ADD would race that DEL. Only the fallback's own
// plugin processes die so: what they start in turn (a delegated plugin, or
// a daemon they hand the work to, as Calico's and Cilium's do) goes on, and
// so does a plugin binary that is setuid or has file capabilities.
type childExec struct {
	version.PluginDecoder
}

var _ invoke.Exec = &childExec{}

func (*childExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// busyTries bounds the runs of a plugin whose binary is still open for
// writing (ETXTBSY: being installed), a second apart, as libcni's.
const busyTries = 6

func (*childExec) ExecPlugin(ctx context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	for try := 1; ; try++ {
		stdout.Reset()
		stderr.Reset()
		cmd := exec.CommandContext(ctx, path)
		cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = environ, bytes.NewReader(stdin), &stdout, &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err := runOnThisThread(cmd)
		if errors.Is(err, syscall.ETXTBSY) && try < busyTries {
			time.Sleep(time.Second)
			continue
		}
		// The plugin's stderr is the runtime's log of this plugin too.
		_, _ = os.Stderr.Write(stderr.Bytes())
		if err != nil {
			return nil, childError(path, err, stdout.Bytes(), stderr.Bytes())
		}
		return stdout.Bytes(), nil
	}
}

// runOnThisThread runs cmd with the calling goroutine locked to its thread:
// the kernel sends Pdeathsig when the thread that started the child ends,
// and the Go runtime ends a thread when a goroutine locked to it exits.
func runOnThisThread(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Run()
}

// childError is the error of a plugin that failed: the CNI error it printed,
// else what it wrote.
func childError(path string, err error, stdout, stderr []byte) error {
	var e types.Error
	if json.Unmarshal(stdout, &e) == nil && (e.Code != 0 || e.Msg != "") {
		return &e
	}
	for _, out := range [][]byte{stderr, stdout} {
		if len(bytes.TrimSpace(out)) > 0 {
			return fmt.Errorf("plugin %s: %w: %s", path, err, bytes.TrimSpace(out))
		}
	}
	return fmt.Errorf("plugin %s: %w", path, err)
}
