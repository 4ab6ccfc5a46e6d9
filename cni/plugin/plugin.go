// Package plugin is the stickynet CNI plugin: it validates what the container
// runtime passed, forwards each CNI command to the node agent over its unix
// socket and hands the agent's result or error back to the runtime. It keeps
// no state and touches no network device itself.
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
		Add:    func(a *skel.CmdArgs) error { return p.run(api.CommandAdd, a) },
		Del:    func(a *skel.CmdArgs) error { return p.run(api.CommandDel, a) },
		Check:  func(a *skel.CmdArgs) error { return p.run(api.CommandCheck, a) },
		GC:     func(a *skel.CmdArgs) error { return p.run(api.CommandGC, a) },
		Status: func(a *skel.CmdArgs) error { return p.run(api.CommandStatus, a) },
	}
}

func (p *Plugin) run(command string, a *skel.CmdArgs) error {
	conf, err := api.ParseNetConf(a.StdinData)
	if err != nil {
		return err
	}
	timeout, _ := conf.RequestTimeout()
	req := api.Request{
		Command:     command,
		ContainerID: a.ContainerID,
		Netns:       a.Netns,
		IfName:      a.IfName,
		Args:        a.Args,
		Path:        a.Path,
		Config:      json.RawMessage(a.StdinData),
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := Forward(ctx, conf.Socket, req)
	if err != nil {
		var te *types.Error
		if command == api.CommandStatus && errors.As(err, &te) && te.Code == types.ErrTryAgainLater {
			return types.NewError(types.ErrPluginNotAvailable, te.Msg, te.Details)
		}
		return err
	}
	if resp.Error != nil {
		return resp.Error
	}
	if command != api.CommandAdd {
		return nil
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
	if ctx.Err() != nil {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("stickynet node agent on %s did not answer %s within %s; try again later", socket, command, waited.Round(time.Millisecond)),
			"the agent may be starting or overloaded; see the logs of the stickynet node agent on this node")
	}
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("stickynet node agent is not reachable on %s: %v; try again later", socket, cause(err)),
		"is the stickynet node agent running on this node, and does the conflist's \"socket\" match its --socket flag?")
}

// cause strips the URL wrapper net/http puts around transport errors.
func cause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
