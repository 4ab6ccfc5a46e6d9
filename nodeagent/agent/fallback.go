package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containernetworking/cni/libcni"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/nodeagent/api"
)

// FallbackAuto as Options.FallbackConfList takes as the fallback the
// network the runtime would use without stickynet: the first other network
// configuration of CNIConfDir in name order. It is looked for again every
// fallbackRescan, so a cluster network installed after the agent (or
// updated) is picked up: until then pods stickynet does not serve fail ADD
// and the runtime retries them.
const FallbackAuto = "auto"

// fallbackRescan is how often the fallback is read again: for FallbackAuto
// the folder, for a named file that file, which the cluster network's
// upgrade may rewrite (the embedded copy of the old one would run plugins it
// removed).
var fallbackRescan = 10 * time.Second // a variable for tests

// fallbackRescans counts the rescans done, for tests that wait for some.
var fallbackRescans atomic.Int64

// fallback returns the fallback conflist the options give, the file it
// comes from, and for FallbackAuto the files it passed over and why.
func (o *Options) fallback() (path string, list []byte, skipped []string, err error) {
	switch o.FallbackConfList {
	case "":
		return "", nil, nil, nil
	case FallbackAuto:
		if o.CNIConfDir == "" { // no conflist is installed
			return "", nil, nil, nil
		}
		return findFallback(o.CNIConfDir, o.CNIConfName)
	}
	b, err := os.ReadFile(o.FallbackConfList)
	if err != nil {
		return "", nil, nil, fmt.Errorf("--fallback-conflist=%s: cannot read the file: %w", o.FallbackConfList, err)
	}
	if _, err := api.ParseFallback(b); err != nil {
		return "", nil, nil, fmt.Errorf("--fallback-conflist=%s: %w", o.FallbackConfList, err)
	}
	return o.FallbackConfList, b, nil, nil
}

// findFallback returns the first file of dir in name order, other than
// own, that holds a network configuration usable as the fallback (a list,
// or a single plugin's configuration made into one), and that list; ""
// when there is none. It passes over, with the reason, files that do not
// parse and stickynet's own configurations under other names.
func findFallback(dir, own string) (path string, list []byte, skipped []string, err error) {
	files, err := confFiles(dir)
	if err != nil {
		return "", nil, nil, fmt.Errorf("--fallback-conflist=auto: read %s: %w", dir, err)
	}
	for _, f := range files {
		if filepath.Base(f) == own {
			continue
		}

		b, err := confListBytes(f)
		if err == nil {
			_, err = api.ParseFallback(b)
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		return f, b, skipped, nil
	}
	return "", nil, skipped, nil
}

// ahead returns the first network configuration file of dir that a runtime
// would use instead of own (it sorts before it and parses), or "".
func ahead(dir, own string) string {
	if dir == "" { // no conflist is installed
		return ""
	}
	files, _ := confFiles(dir)
	for _, f := range files {
		if filepath.Base(f) >= own {
			return ""
		}
		if b, err := confListBytes(f); err == nil {
			if _, err := libcni.NetworkConfFromBytes(b); err == nil {
				return f
			}
		}
	}
	return ""
}

// staleConflists returns dir's network configurations other than own that
// run stickynet's plugin: an earlier install's under another cniConfName
// (changed on upgrade), which would stay ahead of others and, after an
// uninstall removed the plugin, fail every new pod on the node.
func staleConflists(dir, own string) []string {
	if dir == "" {
		return nil
	}
	files, _ := confFiles(dir)
	var out []string
	for _, f := range files {
		if filepath.Base(f) == own {
			continue
		}
		b, err := confListBytes(f)
		if err != nil {
			continue
		}
		if l, err := libcni.NetworkConfFromBytes(b); err == nil && slices.ContainsFunc(l.Plugins, api.IsStickynet) {
			out = append(out, f)
		}
	}
	return out
}

// confFiles lists dir's network configuration files in the order a
// runtime reads them: by name.
func confFiles(dir string) ([]string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	slices.Sort(files)
	return files, err
}

// confListBytes reads a network configuration file as a list, as runtimes
// do: a .conflist is one; a .conf or .json file is a single plugin's
// configuration (a format libcni no longer reads but runtimes still do),
// made into the list of that one plugin.
func confListBytes(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(path, ".conflist") {
		return b, nil
	}
	var conf struct {
		Name       string `json:"name"`
		CNIVersion string `json:"cniVersion"`
		Type       string `json:"type"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		return nil, fmt.Errorf("not a network configuration: %w", err)
	}
	if conf.Type == "" {
		return nil, errors.New(`a single plugin's configuration without "type" (runtimes read only .conflist files as lists)`)
	}
	return json.Marshal(map[string]any{"name": conf.Name, "cniVersion": conf.CNIVersion, "plugins": []json.RawMessage{b}})
}

// fallbackLoop reads the fallback again every fallbackRescan and rewrites
// the conflist when it changed. A named file that cannot be read or used
// meanwhile (replaced, or rewritten wrong) leaves the conflist as it is.
func (a *agent) fallbackLoop(ctx context.Context) {
	if a.opts.FallbackConfList != "" && a.opts.CNIConfDir != "" {
		every(ctx, fallbackRescan, "Fallback network not refreshed", func(ctx context.Context) error {
			defer fallbackRescans.Add(1)
			return a.refreshFallback(ctx)
		})
	}
}

// refreshFallback rewrites the conflist if the fallback network changed.
func (a *agent) refreshFallback(ctx context.Context) error {
	path, fallback, skipped, err := a.opts.fallback()
	if err != nil {
		return err
	}
	conflist, err := a.opts.buildConflist(fallback)
	if err != nil {
		return err
	}
	if bytes.Equal(conflist, a.conflist) {
		return nil
	}
	installed := a.conflist
	a.conflist = conflist
	if err := a.install(ctx); err != nil {
		// The next rescan tries again: taken as installed, the new
		// conflist was never written until the agent restarted.
		a.conflist = installed
		return err
	}
	klog.FromContext(ctx).Info("Fallback network changed; conflist rewritten", "fallback", path, "passedOver", skipped)
	return nil
}

// buildConflist is the conflist the agent installs, with fallback (nil:
// none).
func (o *Options) buildConflist(fallback []byte) ([]byte, error) {
	return BuildConfList(ConfListSpec{Network: o.CNINetwork, Socket: o.Socket, CacheDir: o.CNICacheDir, AgentCacheDir: o.CacheDir, Fallback: fallback, Timeout: 2 * o.PodWait})
}
