// Package api owns the contract between the stickynet CNI plugin and the node
// agent: the network configuration the plugin reads from its conflist entry,
// the request the plugin forwards over the agent's unix socket, the response
// it gets back, and the plugin-specific CNI error codes.
package api

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// PluginType is the CNI plugin type (the "type" key and the binary's name).
const PluginType = "stickynet"

// DefaultSocket is where the node agent listens unless configured otherwise.
const DefaultSocket = "/run/stickynet/agent.sock"

// DefaultTimeout bounds one request of the plugin to the agent.
const DefaultTimeout = 10 * time.Second

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
	// ErrPodNotAdmitted: the pod carries no stickynet assignment.
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
	return &c, nil
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

// Response is the agent's answer: the result to print (ADD), or an error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *types.Error    `json:"error,omitempty"`
}
