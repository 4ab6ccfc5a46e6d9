// Package plugin is the stickynet CNI plugin: it validates what the container
// runtime passed, forwards each CNI command to the node agent over its unix
// socket and hands the agent's result or error back to the runtime. It
// touches no network device itself. For a pod that stickynet does not serve
// (the agent answers ADD with api.Fallback), it runs the conflist's
// "fallback" network through libcni, as a runtime would, and records the
// attachment in its cacheDir so that DEL, CHECK and GC reach that network.
package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/stickynet/stickynet/nodeagent/api"
)

// SupportedVersions are the CNI specification versions the plugin speaks; the
// agent renders results in the version of the configuration.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// maxDialTimeout bounds connecting to the socket: a live agent accepts at once.
const maxDialTimeout = time.Second

// Plugin forwards CNI commands to the node agent.
type Plugin struct {
	// Stdout receives the ADD result (never logs).
	Stdout io.Writer
}

// Funcs returns the command table for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    p.add,
		Del:    p.del,
		Check:  p.check,
		GC:     p.gc,
		Status: p.status,
	}
}

// setup parses the configuration and opens the fallback network's side.
func setup(a *skel.CmdArgs) (*api.NetConf, *fallback, error) {
	conf, err := api.ParseNetConf(a.StdinData)
	if err != nil {
		return nil, nil, err
	}
	fb, err := newFallback(conf, a.Path)
	if err != nil {
		return nil, nil, err
	}
	return conf, fb, nil
}

// ask forwards one command to the agent, with config as the network
// configuration, and returns its answer; the agent's error is the error.
func ask(conf *api.NetConf, command string, a *skel.CmdArgs, config []byte) (*api.Response, error) {
	timeout, _ := conf.RequestTimeout()
	req := api.Request{
		Command:     command,
		ContainerID: a.ContainerID,
		Netns:       a.Netns,
		IfName:      a.IfName,
		Args:        a.Args,
		Path:        a.Path,
		Config:      json.RawMessage(config),
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := Forward(ctx, conf.Socket, req)
	if err != nil {
		return nil, err
	}
	if resp.Error != nil {
		return nil, resp.Error
	}
	return resp, nil
}

func (p *Plugin) add(a *skel.CmdArgs) error {
	conf, fb, err := setup(a)
	if err != nil {
		return err
	}
	// A runtime passes a prevResult on ADD to the plugins after the first of
	// a conflist. stickynet makes the pod's interface and its result does not
	// carry another plugin's on, so it must come first.
	if conf.RawPrevResult != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, `invalid value of "prevResult": stickynet makes the pod's interface and must be the first plugin of its conflist; chain other plugins after it`, "")
	}
	resp, err := ask(conf, api.CommandAdd, a, a.StdinData)
	if err != nil {
		return err
	}
	if resp.Fallback != nil {
		return p.addFallback(conf, fb, a, resp.Fallback)
	}
	var probe struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(resp.Result, &probe) != nil || probe.CNIVersion == "" {
		return types.NewError(types.ErrInternal, "stickynet node agent answered ADD without a valid result", string(resp.Result))
	}
	var out bytes.Buffer
	if err := json.Indent(&out, resp.Result, "", "    "); err != nil {
		return types.NewError(types.ErrInternal, "format result", err.Error())
	}
	out.WriteByte('\n')
	if _, err := p.Stdout.Write(out.Bytes()); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("write result: %v", err), "")
	}
	return nil
}

// addFallback attaches a pod stickynet does not serve through the fallback
// network and prints that network's result in the configuration's version.
func (p *Plugin) addFallback(conf *api.NetConf, fb *fallback, a *skel.CmdArgs, why *api.Fallback) error {
	if fb.list == nil {
		return types.NewError(api.ErrPodNotAdmitted, why.Reason,
			"the stickynet network configuration has no \"fallback\" network for pods stickynet does not serve")
	}
	res, err := fb.add(context.Background(), conf, a)
	if err != nil {
		return err
	}
	vr, err := res.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("fallback network %q: its result (CNI %s) cannot be given as CNI %s: %v", fb.list.Name, res.Version(), conf.CNIVersion, err), "")
	}
	var out bytes.Buffer
	if err := vr.PrintTo(&out); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("format the fallback network's result: %v", err), "")
	}
	out.WriteByte('\n')
	if _, err := p.Stdout.Write(out.Bytes()); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("write result: %v", err), "")
	}
	return nil
}

// del: an interface attached through the fallback network is detached
// from it (DEL is idempotent there too, also once the netns is gone), and
// the agent, which keeps nothing of a pod it sent there, is not asked: a
// node whose agent is down or not yet ready (OVS down, API server out of
// reach) can still delete such pods, cluster DNS and stickynet's own among
// them. Every other DEL goes to the agent.
func (p *Plugin) del(a *skel.CmdArgs) error {
	conf, fb, err := setup(a)
	if err != nil {
		return err
	}
	r, err := fb.get(a.ContainerID, a.IfName)
	if err != nil {
		return err
	}
	if r != nil {
		rt, err := runtimeConf(a.ContainerID, a.Netns, a.IfName, a.Args, r.capabilityArgs(conf.RuntimeConfig))
		if err != nil {
			return err
		}
		return fb.del(context.Background(), r, rt)
	}
	resp, err := ask(conf, api.CommandDel, a, a.StdinData)
	var ns *notSentError
	if errors.As(err, &ns) && nothingMade(conf.AgentCacheDir, a.ContainerID, a.IfName) {
		// The agent is not there (restarting, waiting for OVS, a node's
		// first boot after the install), but made nothing of this one: it
		// may be a pod of before the install, detached below as when the
		// agent answers. Before, its lease and hostPort rules stayed.
		delBeforeInstall(conf, fb, a)
		return nil
	}
	if err == nil && resp.Fallback != nil {
		delBeforeInstall(conf, fb, a)
	}
	return err
}

// delBeforeInstall detaches from the fallback network an attachment the
// agent has none of: one the fallback network made before stickynet's
// conflist was there (the node's pods of before the install), which the
// runtime tears down through the conflist it has now. Before, its address
// lease and hostPort rules stayed. DEL is idempotent for one it never
// made; a failure there, or a network that does not answer within the
// conflist's timeout, does not hold up the DEL.
func delBeforeInstall(conf *api.NetConf, fb *fallback, a *skel.CmdArgs) {
	if len(conf.Fallback) == 0 {
		return
	}
	rt, err := runtimeConf(a.ContainerID, a.Netns, a.IfName, a.Args, conf.RuntimeConfig)
	if err != nil {
		return
	}
	timeout, _ := conf.RequestTimeout()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_ = fb.del(ctx, &record{ContainerID: a.ContainerID, IfName: a.IfName, Netns: a.Netns, Network: conf.Fallback}, rt)
}

// nothingMade reports whether the agent's folder of records (dir, the
// conflist's agentCacheDir) shows that the agent made nothing for the
// attachment: it is complete (api.RecordsComplete) and holds no record of
// it. The agent writes a record before it makes anything, so an ADD that
// failed for want of the agent, or a DEL repeated, leaves none.
func nothingMade(dir, containerID, ifName string) bool {
	if !filepath.IsAbs(dir) {
		return false
	}
	if _, err := os.Lstat(filepath.Join(dir, api.RecordsComplete)); err != nil {
		return false
	}
	_, err := os.Lstat(filepath.Join(dir, api.RecordName(containerID, ifName)))
	return errors.Is(err, os.ErrNotExist)
}

// check: the fallback network checks its own interfaces, the agent the others.
func (p *Plugin) check(a *skel.CmdArgs) error {
	conf, fb, err := setup(a)
	if err != nil {
		return err
	}
	r, err := fb.get(a.ContainerID, a.IfName)
	if err != nil {
		return err
	}
	if r == nil {
		_, err = ask(conf, api.CommandCheck, a, a.StdinData)
		return err
	}
	rt, err := runtimeConf(a.ContainerID, a.Netns, a.IfName, a.Args, r.capabilityArgs(conf.RuntimeConfig))
	if err != nil {
		return err
	}
	return fb.check(context.Background(), r, rt)
}

// gc: the agent gets the runtime's valid attachments that are not fallback
// ones; recorded fallback attachments that are not valid are detached, and
// the fallback network's GC then gets every valid attachment.
func (p *Plugin) gc(a *skel.CmdArgs) error {
	conf, fb, err := setup(a)
	if err != nil {
		return err
	}
	valid, legacy, err := validAttachments(a.StdinData)
	if err != nil {
		return err
	}
	recs, rerr := fb.records()
	recorded := map[types.GCAttachment]bool{}
	for _, r := range recs {
		recorded[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] = true
	}
	var forAgent []types.GCAttachment
	for _, v := range valid {
		if !recorded[v] {
			forAgent = append(forAgent, v)
		}
	}
	errs := []error{rerr, fb.gc(context.Background(), recs, valid)}
	config := a.StdinData
	if len(forAgent) != len(valid) || legacy {
		if config, err = withValidAttachments(a.StdinData, forAgent); err != nil {
			return err
		}
	}
	_, err = ask(conf, api.CommandGC, a, config)
	return joinErrors(append(errs, err))
}

// validAttachments reads GC's list of valid attachments: the spec's
// cni.dev/valid-attachments or, from a runtime that follows the CNI 1.1
// spec as first published, cni.dev/attachments (legacy). null is an empty
// list, as libcni sends one; a GC with neither key is refused, not taken for
// an empty list, which would tear down every pod's network on the node.
func validAttachments(config []byte) (valid []types.GCAttachment, legacy bool, err error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(config, &m); err != nil {
		return nil, false, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network configuration is not a JSON object: %v", err), "")
	}
	for _, k := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		raw, ok := m[k]
		if !ok {
			continue
		}
		if err := json.Unmarshal(raw, &valid); err != nil {
			return nil, false, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("GC: %s is not a list of attachments: %v", k, err),
				`want [{"containerID":"...","ifname":"..."}, ...]`)
		}
		return valid, k != "cni.dev/valid-attachments", nil
	}
	return nil, false, types.NewError(types.ErrInvalidNetworkConfig,
		"GC without cni.dev/valid-attachments: the runtime named no attachment as valid, and stickynet does not take that for none (every pod's network on the node would be torn down)",
		"a runtime with no valid attachments sends an empty list")
}

// withValidAttachments returns the network configuration with its list of
// valid attachments replaced.
func withValidAttachments(config []byte, valid []types.GCAttachment) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(config, &m); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network configuration is not a JSON object: %v", err), "")
	}
	if valid == nil {
		valid = []types.GCAttachment{}
	}
	b, err := json.Marshal(valid)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("encode valid attachments: %v", err), "")
	}
	for _, k := range []string{"cni.dev/valid-attachments", "cni.dev/attachments"} {
		if _, ok := m[k]; ok || k == "cni.dev/valid-attachments" {
			m[k] = b
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("encode network configuration: %v", err), "")
	}
	return out, nil
}

// status: the agent's, then the fallback network's. An agent that cannot be
// reached or is starting (try again later) fails STATUS as unavailable
// (code 50), unless it passed STATUS within api.StatusGrace
// (api.StatusPassed beside its socket): a restart, not an outage.
func (p *Plugin) status(a *skel.CmdArgs) error {
	conf, fb, err := setup(a)
	if err != nil {
		return err
	}
	if _, err := ask(conf, api.CommandStatus, a, a.StdinData); err != nil {
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
			return err
		}
		last, ok := statusPassed(conf.Socket)
		if !ok {
			return types.NewError(types.ErrPluginNotAvailable, te.Msg, te.Details)
		}
		// A time ahead of now is a clock stepped back: no grace.
		if since := time.Since(last); since > api.StatusGrace || since < -time.Second {
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("%s; the agent's status last passed %s ago (%s), past the %s a restart is given", te.Msg, since.Round(time.Second), last.UTC().Format(time.RFC3339), api.StatusGrace),
				te.Details)
		}
	}
	return fb.status(context.Background())
}

// statusPassed is when the agent last passed STATUS, by api.StatusPassed
// beside its socket (false: unknown).
func statusPassed(socket string) (time.Time, bool) {
	fi, err := os.Stat(filepath.Join(filepath.Dir(socket), api.StatusPassed))
	if err != nil {
		return time.Time{}, false
	}
	return fi.ModTime(), true
}

// Forward sends one request to the agent listening on socket and returns its
// response. When the agent cannot be reached or does not answer before ctx
// ends, the error is a CNI "try again later" error (code 11) that names the
// socket; any other failure is a CNI error as well.
func Forward(ctx context.Context, socket string, req api.Request) (*api.Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("encode request: %v", err), "")
	}
	dialTimeout := maxDialTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < dialTimeout {
		dialTimeout = time.Until(d)
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://stickynet-agent"+api.Path, bytes.NewReader(body))
	if err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("build request: %v", err), "")
	}
	hreq.Header.Set("Content-Type", "application/json")
	start := time.Now()
	hresp, err := client.Do(hreq)
	if err != nil {
		return nil, unreachable(ctx, socket, req.Command, time.Since(start), err)
	}
	defer hresp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(hresp.Body, 16<<20))
	if err != nil {
		return nil, unreachable(ctx, socket, req.Command, time.Since(start), err)
	}
	if hresp.StatusCode != http.StatusOK {
		return nil, types.NewError(types.ErrInternal,
			fmt.Sprintf("stickynet node agent on %s answered %s with HTTP %d", socket, req.Command, hresp.StatusCode), string(bytes.TrimSpace(b)))
	}
	var resp api.Response
	if err := json.Unmarshal(b, &resp); err != nil {
		return nil, types.NewError(types.ErrInternal,
			fmt.Sprintf("stickynet node agent on %s sent an answer that does not decode: %v", socket, err), string(b))
	}
	return &resp, nil
}

// unreachable turns a transport failure into CNI error 11.
func unreachable(ctx context.Context, socket, command string, waited time.Duration, err error) error {
	var e *types.Error
	if ctx.Err() != nil {
		e = types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("stickynet node agent on %s did not answer %s within %s; try again later", socket, command, waited.Round(time.Millisecond)),
			"the agent may be starting or overloaded; see the logs of the stickynet node agent on this node")
	} else {
		// Not the syscall's own words: containerd (go-cni) takes a DEL error
		// that says "no such file or directory" (with no netns, as after a
		// reboot) or "not found" for a teardown already done, and would
		// never send the DEL again.
		why := fmt.Sprint(cause(err))
		switch {
		case errors.Is(err, syscall.ENOENT):
			why = "the socket does not exist"
		case errors.Is(err, syscall.ECONNREFUSED):
			why = "nothing accepts connections on the socket"
		}
		e = types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("stickynet node agent is not reachable on %s: %s; try again later", socket, why),
			"is the stickynet node agent running on this node, and does the conflist's \"socket\" match its --socket flag?")
	}
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return &notSentError{e} // no socket, or nothing listening on it
	}
	return e
}

// notSentError is the error of a request that never reached the agent:
// its socket is missing, or nothing listens on it.
type notSentError struct{ err *types.Error }

func (e *notSentError) Error() string { return e.err.Error() }

func (e *notSentError) Unwrap() error { return e.err }

// cause strips the URL wrapper net/http puts around transport errors.
func cause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
