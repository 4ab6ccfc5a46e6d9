package stickynet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// module is stickynet's Go module path.
const module = "github.com/stickynet/stickynet"

// RepoRoot finds stickynet's source tree: the first folder holding
// stickynet's go.mod, going up from the working directory, else from this
// file's compile-time location.
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, d := range starts {
		for {
			if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && isStickynetMod(b) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", errors.New("stickynet's source tree (its go.mod) is not above the working directory")
}

func isStickynetMod(gomod []byte) bool {
	first, _, _ := bytes.Cut(gomod, []byte("\n"))
	return strings.TrimSpace(string(first)) == "module "+module
}

// Build compiles the webhook, extender, node agent and CNI plugin from the
// source tree into dir, named and linked as `make build` names and links them.
func Build(ctx context.Context, dir string) (Binaries, error) {
	root, err := RepoRoot()
	if err != nil {
		return Binaries{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("create binary folder: %w", err)
	}
	out := BinariesIn(dir)
	// One go command links the four in parallel, each named after its folder.
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return Binaries{}, fmt.Errorf("create build folder: %w", err)
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp+"/", "./webhook", "./extender", "./nodeagent", "./cni")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build links them
	if msg, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build stickynet: %w: %s", err, msg)
	}
	for src, dst := range map[string]string{"webhook": out.Webhook, "extender": out.Extender, "nodeagent": out.NodeAgent, "cni": out.CNI} {
		if err := os.Rename(filepath.Join(tmp, src), dst); err != nil {
			return Binaries{}, fmt.Errorf("install %s binary: %w", src, err)
		}
	}
	return out, nil
}

// check reports a binary that is missing or not executable.
func (b Binaries) check() error {
	var errs []error
	for name, p := range map[string]string{"webhook": b.Webhook, "extender": b.Extender, "node agent": b.NodeAgent, "CNI plugin": b.CNI} {
		fi, err := os.Stat(p)
		switch {
		case p == "":
			errs = append(errs, fmt.Errorf("%s binary: not set", name))
		case err != nil:
			errs = append(errs, fmt.Errorf("%s binary: %w (make build writes it)", name, err))
		case fi.Mode()&0o111 == 0:
			errs = append(errs, fmt.Errorf("%s binary %s: not executable", name, p))
		}
	}
	return errors.Join(errs...)
}
