// Package api owns the contract between the stickynet CNI plugin and the node
// agent: the network configuration the plugin reads from its conflist entry
// (with the optional fallback network for pods stickynet does not serve), the
// request the plugin forwards over the agent's unix socket, the response it
// gets back, and the plugin-specific CNI error codes.
package api

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// PluginType is the CNI plugin type (the "type" key and the binary's name).
const PluginType = "stickynet"

// DefaultSocket is where the node agent listens unless configured otherwise.
const DefaultSocket = "/run/stickynet/agent.sock"

// DefaultTimeout bounds one request of the plugin to the agent.
const DefaultTimeout = 10 * time.Second

// DefaultCacheDir is where the plugin keeps its records of pods attached
// through the fallback network and libcni's cache of the fallback's results,
// unless the conflist's "cacheDir" says otherwise.
const DefaultCacheDir = "/var/lib/cni/stickynet"

// Path is the HTTP path of the CNI endpoint on the agent's socket.
const Path = "/v1/cni"

// Commands forwarded to the agent (CNI_COMMAND values).
const (
	CommandAdd    = "ADD"
	CommandDel    = "DEL"
	CommandCheck  = "CHECK"
	CommandGC     = "GC"
	CommandStatus = "STATUS"
)

// Plugin-specific CNI error codes (the CNI specification reserves 0-99).
const (
	// ErrPodNotAdmitted: the pod carries no stickynet assignment and does
	// not go to a fallback network (the conflist has none, or the pod asks
	// for stickynet through a stickynet.io/ annotation).
	ErrPodNotAdmitted uint = 100
	// ErrInterfaceExists: the interface name is already taken in the pod's netns.
	ErrInterfaceExists uint = 101
	// ErrBadAnnotation: a stickynet annotation on the pod has a value that does not parse.
	ErrBadAnnotation uint = 102
	// ErrUnsupported: the pod asks for something this node cannot do.
	ErrUnsupported uint = 103
	// ErrCheckFailed: CHECK found the attachment differs from what was set up.
	ErrCheckFailed uint = 104
)

// NetConf is the plugin's entry in a conflist.
type NetConf struct {
	types.PluginConf
	// Socket is the agent's unix socket; empty means DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// Timeout bounds one request to the agent, as a Go duration ("10s");
	// empty means DefaultTimeout.
	Timeout string `json:"timeout,omitempty"`
	// Fallback is an ordinary CNI network configuration list (a conflist
	// object: cniVersion, name, plugins) that the plugin runs itself, as a
	// runtime would, for a pod the node agent reports as not admitted by
	// stickynet. Absent: such pods fail ADD with ErrPodNotAdmitted.
	Fallback json.RawMessage `json:"fallback,omitempty"`
	// CacheDir holds the plugin's records of fallback attachments and
	// libcni's cache of the fallback's results; empty means DefaultCacheDir.
	// It must be private to the node (GC removes what it does not know).
	CacheDir string `json:"cacheDir,omitempty"`
	// AgentCacheDir is the node agent's folder of attachment records (its
	// --cache-dir, an absolute path on the host). A DEL that cannot reach
	// the agent (nothing listens on its socket) succeeds when that folder
	// holds RecordsComplete and no record of the attachment: the agent
	// writes the record before it makes anything, so there is nothing to
	// remove. Empty: such a DEL fails (try again later).
	AgentCacheDir string `json:"agentCacheDir,omitempty"`
	// RuntimeConfig is what the runtime passes for the capabilities the
	// entry declares (the agent's conflist declares those of the fallback's
	// plugins, such as portMappings); the plugin hands it to the fallback.
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

// ParseNetConf decodes and validates the plugin's configuration from stdin.
// Errors are CNI errors naming the key at fault.
func ParseNetConf(b []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network configuration is not valid JSON: %v", err), "")
	}
	if c.Type != PluginType {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("network configuration has type %q; this plugin is %q", c.Type, PluginType), "")
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if !filepath.IsAbs(c.Socket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("network configuration key \"socket\" is %q; want an absolute path such as %s", c.Socket, DefaultSocket), "")
	}
	if _, err := c.RequestTimeout(); err != nil {
		return nil, err
	}
	if c.CacheDir == "" {
		c.CacheDir = DefaultCacheDir
	}
	if !filepath.IsAbs(c.CacheDir) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("network configuration key \"cacheDir\" is %q; want an absolute path such as %s", c.CacheDir, DefaultCacheDir), "")
	}
	if _, err := c.FallbackList(); err != nil {
		return nil, err
	}
	return &c, nil
}

// FallbackList parses the fallback network; nil when there is none. The
// error is a CNI error naming the key.
func (c *NetConf) FallbackList() (*libcni.NetworkConfigList, error) {
	if len(c.Fallback) == 0 || string(c.Fallback) == "null" {
		return nil, nil
	}
	l, err := ParseFallback(c.Fallback)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network configuration key \"fallback\": %v", err), "")
	}
	return l, nil
}

// ParseFallback parses and checks a fallback network configuration list: a
// conflist object with a name, a cniVersion and at least one plugin, none of
// which is stickynet itself.
func ParseFallback(b []byte) (*libcni.NetworkConfigList, error) {
	const want = `want a CNI network configuration list such as {"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge",...}]}`
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%w; %s", err, want)
	}
	switch {
	case l.Name == "":
		return nil, fmt.Errorf("\"name\" is empty; %s", want)
	case l.CNIVersion == "":
		return nil, fmt.Errorf("network configuration list %q has no \"cniVersion\"; %s", l.Name, want)
	case len(l.Plugins) == 0:
		return nil, fmt.Errorf("network configuration list %q has no \"plugins\"; %s", l.Name, want)
	}
	for i, p := range l.Plugins {
		if p.Network.Type == "" {
			return nil, fmt.Errorf("plugin %d of network configuration list %q has no \"type\"", i, l.Name)
		}
		if IsStickynet(p) {
			return nil, fmt.Errorf("plugin %d of network configuration list %q has type %q: a fallback must be another network than stickynet", i, l.Name, PluginType)
		}
	}
	return l, nil
}

// IsStickynet reports whether a plugin of a network configuration list is
// stickynet's own.
func IsStickynet(p *libcni.PluginConfig) bool {
	return p.Network != nil && p.Network.Type == PluginType
}

// RequestTimeout returns the configured request timeout.
func (c *NetConf) RequestTimeout() (time.Duration, error) {
	if c.Timeout == "" {
		return DefaultTimeout, nil
	}
	d, err := time.ParseDuration(c.Timeout)
	if err != nil || d <= 0 {
		return 0, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("network configuration key \"timeout\" is %q; want a positive duration such as \"10s\"", c.Timeout), "")
	}
	return d, nil
}

// Request is one CNI invocation as the plugin saw it, forwarded to the agent.
type Request struct {
	Command     string          `json:"command"`
	ContainerID string          `json:"containerID,omitempty"`
	Netns       string          `json:"netns,omitempty"`
	IfName      string          `json:"ifName,omitempty"`
	Args        string          `json:"args,omitempty"`
	Path        string          `json:"path,omitempty"`
	Config      json.RawMessage `json:"config"`
}

// Response is the agent's answer: the result to print (ADD), an error, or
// (ADD only) the instruction to attach the pod through the fallback network.
type Response struct {
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *types.Error    `json:"error,omitempty"`
	Fallback *Fallback       `json:"fallback,omitempty"`
}

// Fallback tells the plugin that stickynet does not serve the pod and that
// the conflist's fallback network attaches it. In answer to a DEL: the agent
// has no attachment of the container and interface, and the plugin detaches
// it from the fallback network too (one that network made before
// stickynet's conflist was there).
type Fallback struct {
	// Reason says why, for the plugin's messages.
	Reason string `json:"reason"`
}

// RecordsComplete is a file the node agent keeps in its folder of records
// while every attachment it made has its record there: it writes it once its
// restore at start has recorded every attachment it kept (those it found
// only in OVS's labels among them), and removes it when a record of one it
// kept could not be written. A folder that was lost, wiped or never mounted
// has none, and a missing record there proves nothing.
const RecordsComplete = ".complete"

// StatusPassed is a file in the folder of the node agent's socket (a tmpfs
// such as /run/stickynet, so that a rebooted node has none) whose
// modification time is the last time the agent passed CNI STATUS: it could
// serve ADD then. A STATUS that cannot reach the agent, or finds it
// starting, passes within StatusGrace of that time: an agent restart (a
// DaemonSet rollout, a crash) would otherwise mark the node NotReady, and the
// node controller then marks every pod on it NotReady, out of its Services,
// though OVS forwards their traffic all the while. ADD meanwhile fails with
// "try again later", which kubelet retries. The agent removes the file when
// its STATUS fails for Open vSwitch, so that a restart then gets no grace.
const StatusPassed = ".status-passed"

// StatusGrace is how long after the agent last passed STATUS a STATUS
// without the agent still passes (StatusPassed).
const StatusGrace = time.Minute

// RecordName is the file name of the node agent's record of the attachment
// (containerID, ifName) in its cache folder. Container IDs and ifnames hold
// no '/', so the key's separator becomes '_', and anything else unsafe is
// escaped.
func RecordName(containerID, ifName string) string {
	esc := func(v string) string {
		var b strings.Builder
		for _, r := range v {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
				b.WriteRune(r)
			} else {
				fmt.Fprintf(&b, "%%%02x", r)
			}
		}
		return b.String()
	}
	return esc(containerID) + "_" + esc(ifName) + ".json"
}
