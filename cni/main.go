// Command stickynet is the stickynet CNI plugin (type "stickynet"). It forwards
// every CNI command to the node agent's unix socket; see package plugin.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/stickynet/stickynet/cni/plugin"
)

func main() {
	p := &plugin.Plugin{Stdout: os.Stdout}
	skel.PluginMainFuncs(p.Funcs(), plugin.SupportedVersions, "CNI plugin stickynet: forwards to the stickynet node agent")
}
