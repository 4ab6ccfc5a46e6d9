package nodesim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"

	"github.com/containernetworking/cni/pkg/invoke"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/stickynet/stickynet/e2e/internal/host"
)

// netnsExec runs CNI plugins inside a node's network namespace (through
// nsenter, keeping the host's mount namespace), as they run inside a real
// node's containerd there.
type netnsExec struct {
	host  *host.Host
	netns string
}

var _ invoke.Exec = (*netnsExec)(nil)

// ExecPlugin runs the plugin with the CNI environment and stdin, returning
// its stdout; a failure becomes the CNI error the plugin printed.
func (e *netnsExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	argv := e.host.InNetns(e.netns, []string{pluginPath})
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// pluginError turns a failed plugin run into a CNI error: the JSON error the
// plugin printed on stdout, or one carrying its stderr.
func pluginError(err error, stdout, stderr []byte) error {
	e := &cnitypes.Error{}
	switch {
	case len(stdout) > 0:
		if perr := json.Unmarshal(stdout, e); perr != nil || (e.Code == 0 && e.Msg == "") {
			e.Msg = fmt.Sprintf("plugin failed (%v) and printed no CNI error: %q", err, stdout)
		}
	case len(stderr) > 0:
		e.Msg = fmt.Sprintf("plugin failed (%v): %q", err, stderr)
	default:
		e.Msg = fmt.Sprintf("plugin failed with no message: %v", err)
	}
	return e
}

// FindInPath finds the plugin binary in the node's bin folder.
func (e *netnsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// Decode reads a plugin's VERSION answer.
func (e *netnsExec) Decode(jsonBytes []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(jsonBytes)
}
