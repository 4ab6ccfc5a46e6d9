package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/stickynet/stickynet/nodeagent/api"
)

// recordDir is the folder of fallback records inside the conflist's
// cacheDir; libcni keeps the fallback's cached results next to it, in
// "results".
const recordDir = "fallback"

// record is one pod interface attached through the fallback network. It is
// written before the fallback's ADD runs and removed after its DEL
// succeeded, so that a crash in between leaves something DEL and GC find.
type record struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns,omitempty"`
	// Args is the runtime's CNI_ARGS.
	Args string `json:"args,omitempty"`
	// RuntimeConfig is what the runtime passed for the capabilities.
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
	// Network is the fallback network the attachment was made with: DEL,
	// CHECK and GC use it even when the conflist has changed since.
	Network json.RawMessage `json:"network"`
}

// fallback runs the conflist's fallback network through libcni, as a
// container runtime would, and keeps the records of its attachments.
type fallback struct {
	dir  string                    // records
	cni  *libcni.CNIConfig         // plugins from CNI_PATH (childExec), results cached in the cacheDir
	list *libcni.NetworkConfigList // the conflist's fallback; nil without one
}

func newFallback(conf *api.NetConf, cniPath string) (*fallback, error) {
	list, err := conf.FallbackList()
	if err != nil {
		return nil, err
	}
	return &fallback{
		dir:  filepath.Join(conf.CacheDir, recordDir),
		cni:  libcni.NewCNIConfigWithCacheDir(filepath.SplitList(cniPath), conf.CacheDir, &childExec{}),
		list: list,
	}, nil
}

// path is the record's file: container IDs cannot hold "@", so the name is
// unique for each container ID and interface name.
func (f *fallback) path(containerID, ifName string) (string, error) {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return "", err
	}
	if err := utils.ValidateInterfaceName(ifName); err != nil {
		return "", err
	}
	return filepath.Join(f.dir, containerID+"@"+ifName+".json"), nil
}

// get returns the record of the interface, or nil if it was not attached
// through the fallback network.
func (f *fallback) get(containerID, ifName string) (*record, error) {
	p, err := f.path(containerID, ifName)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("read fallback record: %v", err), "")
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil || r.ContainerID != containerID || r.IfName != ifName {
		return nil, types.NewError(types.ErrIOFailure,
			fmt.Sprintf("fallback record %s is damaged: want the JSON record of container %s interface %s", p, containerID, ifName), string(b))
	}
	return &r, nil
}

// put writes the record durably (file and folder synced): it must outlive
// a crash of the plugin or of the node.
func (f *fallback) put(r *record) error {
	p, err := f.path(r.ContainerID, r.IfName)
	if err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("encode fallback record: %v", err), "")
	}
	if err := writeSynced(f.dir, p, b); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("write fallback record %s: %v", p, err), "")
	}
	return nil
}

func writeSynced(dir, path string, b []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".record-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// remove forgets the record; a missing one is not an error.
func (f *fallback) remove(containerID, ifName string) error {
	p, err := f.path(containerID, ifName)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("remove fallback record: %v", err), "")
	}
	return nil
}

// records lists every record; damaged ones are reported.
func (f *fallback) records() ([]*record, error) {
	entries, err := os.ReadDir(f.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("list fallback records: %v", err), "")
	}
	var out []*record
	var errs []error
	for _, e := range entries {
		cid, rest, ok := strings.Cut(e.Name(), "@")
		ifName, isRecord := strings.CutSuffix(rest, ".json")
		if !ok || !isRecord || e.IsDir() {
			continue
		}
		r, err := f.get(cid, ifName)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, joinErrors(errs)
}

// network is the fallback network of record r: the one it was attached
// with, else the conflist's.
func (f *fallback) network(r *record) (*libcni.NetworkConfigList, error) {
	if len(r.Network) > 0 {
		if l, err := api.ParseFallback(r.Network); err == nil {
			return l, nil
		}
	}
	if f.list != nil {
		return f.list, nil
	}
	return nil, types.NewError(types.ErrInvalidNetworkConfig,
		fmt.Sprintf("container %s interface %s was attached through a fallback network that its record no longer describes, and the conflist has no \"fallback\"", r.ContainerID, r.IfName), "")
}

// runtimeConf is what libcni passes to the fallback's plugins.
func runtimeConf(containerID, netns, ifName, cniArgs string, rc map[string]any) (*libcni.RuntimeConf, error) {
	rt := &libcni.RuntimeConf{ContainerID: containerID, NetNS: netns, IfName: ifName, CapabilityArgs: rc}
	for _, kv := range strings.Split(cniArgs, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("CNI_ARGS entry %q is not KEY=VALUE", kv), "")
		}
		rt.Args = append(rt.Args, [2]string{k, v})
	}
	return rt, nil
}

func (r *record) runtimeConf() (*libcni.RuntimeConf, error) {
	return runtimeConf(r.ContainerID, r.Netns, r.IfName, r.Args, r.RuntimeConfig)
}

// capabilityArgs are the capability arguments for a DEL or CHECK of the
// recorded attachment: the runtime's, over those its ADD was given. The
// runtime passes only the capabilities of the conflist as it is now, and one
// rewritten since (the fallback network changed) may lack one the recorded
// network has: portmap, given no portMappings, removes nothing, and its
// forwarding rules, which match before a later pod's, stayed.
func (r *record) capabilityArgs(now map[string]any) map[string]any {
	if len(r.RuntimeConfig) == 0 {
		return now
	}
	out := maps.Clone(r.RuntimeConfig)
	maps.Copy(out, now)
	return out
}

// add attaches the interface through the fallback network and returns the
// fallback's result. The record goes down first; a failed ADD is undone
// (the fallback's DEL) and its record removed, unless the undo fails too:
// then the record stays for DEL or GC.
func (f *fallback) add(ctx context.Context, conf *api.NetConf, a *skel.CmdArgs) (types.Result, error) {
	rt, err := runtimeConf(a.ContainerID, a.Netns, a.IfName, a.Args, conf.RuntimeConfig)
	if err != nil {
		return nil, err
	}
	r := &record{
		ContainerID: a.ContainerID, IfName: a.IfName, Netns: a.Netns, Args: a.Args,
		RuntimeConfig: conf.RuntimeConfig, Network: conf.Fallback,
	}
	if err := f.put(r); err != nil {
		return nil, err
	}
	res, err := f.cni.AddNetworkList(ctx, f.list, rt)
	if err == nil {
		return res, nil
	}
	err = fallbackError(f.list.Name, err)
	if derr := f.cni.DelNetworkList(ctx, f.list, rt); derr != nil {
		return nil, withMsg(err, fmt.Sprintf("; undoing it (DEL) failed too, the record stays for a later DEL or GC: %v", derr))
	}
	if rerr := f.remove(a.ContainerID, a.IfName); rerr != nil {
		return nil, withMsg(err, "; "+rerr.Error())
	}
	return nil, err
}

// del detaches the interface of record r.
func (f *fallback) del(ctx context.Context, r *record, rt *libcni.RuntimeConf) error {
	list, err := f.network(r)
	if err != nil {
		return err
	}
	if err := f.cni.DelNetworkList(ctx, list, rt); err != nil {
		return fallbackError(list.Name, err)
	}
	return f.remove(r.ContainerID, r.IfName)
}

// check checks the interface of record r.
func (f *fallback) check(ctx context.Context, r *record, rt *libcni.RuntimeConf) error {
	list, err := f.network(r)
	if err != nil {
		return err
	}
	err = f.cni.CheckNetworkList(ctx, list, rt)
	if errors.Is(err, libcni.ErrorCheckNotSupp) {
		// A fallback network older than CNI 0.4.0 (flannel's stock conflist
		// says 0.3.1) has no CHECK; the stickynet network, 1.1.0, is checked
		// by runtimes, and a healthy pod must not fail it.
		return nil
	}
	if err != nil {
		return fallbackError(list.Name, err)
	}
	return nil
}

// gc detaches every recorded interface that is not in valid (the runtime's
// valid attachments), then runs the fallback's own GC with all of valid:
// the fallback may be the cluster's network as it was before stickynet
// ("auto"), whose plugins then still hold the pods they attached directly,
// and must release none of those.
func (f *fallback) gc(ctx context.Context, recs []*record, valid []types.GCAttachment) error {
	var errs []error
	isValid := make(map[types.GCAttachment]bool, len(valid))
	for _, v := range valid {
		isValid[v] = true
	}
	for _, r := range recs {
		if isValid[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		rt, err := r.runtimeConf()
		if err == nil {
			err = f.del(ctx, r, rt)
		}
		if err != nil {
			errs = append(errs, withMsg(err, fmt.Sprintf(" (removing stale fallback attachment of container %s interface %s)", r.ContainerID, r.IfName)))
		}
	}
	if f.list != nil {
		if err := f.cni.GCNetworkList(ctx, f.list, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
			errs = append(errs, fallbackError(f.list.Name, err))
		}
	}
	return joinErrors(errs)
}

// status asks the fallback's plugins for their status (CNI 1.1 lists only).
func (f *fallback) status(ctx context.Context) error {
	if f.list == nil {
		return nil
	}
	err := f.cni.GetStatusNetworkList(ctx, f.list)
	if err == nil {
		return nil
	}
	e := fallbackError(f.list.Name, err)
	if e.Code != types.ErrPluginNotAvailable && e.Code != types.ErrLimitedConnectivity {
		e.Code = types.ErrPluginNotAvailable
	}
	return e
}

// fallbackError is err of the fallback network as a CNI error that names
// the network, with the plugin's code when it gave one.
func fallbackError(network string, err error) *types.Error {
	code := types.ErrInternal
	var te *types.Error
	if errors.As(err, &te) {
		code = te.Code
	}
	return types.NewError(code, fmt.Sprintf("fallback network %q: %v", network, err), "")
}

// withMsg appends to the message of a CNI error, keeping its code.
func withMsg(err error, more string) error {
	var te *types.Error
	if errors.As(err, &te) {
		return types.NewError(te.Code, te.Msg+more, te.Details)
	}
	return types.NewError(types.ErrInternal, err.Error()+more, "")
}

// joinErrors joins errors into one CNI error with the first one's code.
func joinErrors(errs []error) error {
	var msgs []string
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		msgs = append(msgs, err.Error())
	}
	switch len(msgs) {
	case 0:
		return nil
	case 1:
		return first
	}
	code := types.ErrInternal
	var te *types.Error
	if errors.As(first, &te) {
		code = te.Code
	}
	return types.NewError(code, strings.Join(msgs, "; "), "")
}
