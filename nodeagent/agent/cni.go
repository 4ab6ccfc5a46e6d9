package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/datapath"
)

// podRef is the pod a CNI request is for, from CNI_ARGS.
type podRef struct {
	Namespace, Name, UID string
}

func (p podRef) String() string { return p.Namespace + "/" + p.Name }

// parseCNIArgs reads the Kubernetes keys of CNI_ARGS
// ("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_UID=...").
func parseCNIArgs(s string) (podRef, error) {
	var p podRef
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS entry %q is not KEY=VALUE", kv), "")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	if p.Namespace == "" || p.Name == "" {
		return p, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_ARGS %q lacks K8S_POD_NAMESPACE or K8S_POD_NAME: stickynet attaches Kubernetes pods only", s), "")
	}
	return p, nil
}

// buildResult is the ADD result in the configuration's CNI version: the host
// veth (none for a VF), the pod interface (in the sandbox), its addresses and
// default routes.
func buildResult(cniVersion string, a *datapath.Attachment, hostMAC net.HardwareAddr) ([]byte, error) {
	podIdx := 1
	r := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: a.HostVeth, Mac: hostMAC.String()},
			{Name: a.IfName, Mac: a.MAC, Sandbox: a.Netns},
		},
	}
	if a.VF != nil { // no host side: the VF itself is in the pod
		podIdx = 0
		r.Interfaces = []*types100.Interface{{Name: a.IfName, Mac: a.MAC, Sandbox: a.Netns, PciID: a.VF.PCI}}
	}
	for _, p := range a.IPs {
		ipc := &types100.IPConfig{
			Interface: &podIdx,
			Address:   net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		}
		for _, gw := range a.Gateways {
			if gw.Is4() == p.Addr().Is4() {
				ipc.Gateway = gw.AsSlice()
				break
			}
		}
		r.IPs = append(r.IPs, ipc)
	}
	for _, gw := range a.Gateways {
		bits := gw.BitLen()
		r.Routes = append(r.Routes, &types.Route{
			Dst: net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)},
			GW:  gw.AsSlice(),
		})
	}
	vr, err := r.GetAsVersion(cniVersion)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("render result as CNI %s: %v", cniVersion, err), "")
	}
	b, err := json.Marshal(vr)
	if err != nil {
		return nil, fmt.Errorf("encode result: %w", err)
	}
	return b, nil
}

// ConfList is the conflist the agent installs: one network with the
// stickynet plugin pointing at the agent's socket.
func ConfList(network, socket string) []byte {
	b, _ := BuildConfList(ConfListSpec{Network: network, Socket: socket})
	return b
}

// ConfListSpec describes the conflist the agent installs.
type ConfListSpec struct {
	// Network is the network name; Socket the agent's socket.
	Network, Socket string
	// CacheDir is the plugin's "cacheDir" (its records of fallback
	// attachments); empty leaves the plugin's default, api.DefaultCacheDir.
	CacheDir string
	// AgentCacheDir is the agent's folder of attachment records, for the
	// plugin's "agentCacheDir"; empty or a relative path (the plugin's
	// working folder is not the agent's) leaves it out.
	AgentCacheDir string
	// Fallback is a CNI network configuration list (JSON) for the pods
	// stickynet does not serve; empty means none.
	Fallback []byte
	// Timeout is the plugin's request timeout when longer than
	// api.DefaultTimeout (the agent passes twice its pod wait).
	Timeout time.Duration
}

// BuildConfList renders the conflist. With a fallback network, the
// stickynet entry embeds it as "fallback" and declares the capabilities of
// its plugins, so that the runtime passes their runtime configuration
// (such as portMappings) to stickynet, which hands it on. The error, about
// the fallback, says what is wrong with it.
func BuildConfList(s ConfListSpec) ([]byte, error) {
	entry := map[string]any{
		"type":   api.PluginType,
		"socket": s.Socket,
	}
	if s.CacheDir != "" {
		entry["cacheDir"] = s.CacheDir
	}
	if filepath.IsAbs(s.AgentCacheDir) {
		entry["agentCacheDir"] = s.AgentCacheDir
	}
	if s.Timeout > api.DefaultTimeout {
		entry["timeout"] = s.Timeout.String()
	}
	if len(s.Fallback) > 0 {
		list, err := api.ParseFallback(s.Fallback)
		if err != nil {
			return nil, err
		}
		caps := map[string]bool{}
		for _, p := range list.Plugins {
			for c, on := range p.Network.Capabilities {
				if on {
					caps[c] = true
				}
			}
		}
		if len(caps) > 0 {
			entry["capabilities"] = caps
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, s.Fallback); err != nil {
			return nil, err
		}
		entry["fallback"] = json.RawMessage(compact.Bytes())
	}
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       s.Network,
		"plugins":    []any{entry},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
