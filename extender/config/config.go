// Package config holds the scheduler side of the stickynet extender: the
// KubeSchedulerConfiguration of the secondary scheduler profile
// stickynet-scheduler, the extender entry to add to an existing scheduler
// instead, and the extender's RBAC. The files are embedded so that tests
// check what is shipped.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// SchedulerName is the profile of the secondary scheduler.
const SchedulerName = "stickynet-scheduler"

// SchedulerConfig is scheduler-config.yaml.
//
//go:embed scheduler-config.yaml
var SchedulerConfig []byte

// ExtenderSnippet is extender-snippet.yaml.
//
//go:embed extender-snippet.yaml
var ExtenderSnippet []byte

// RBAC is rbac.yaml.
//
//go:embed rbac.yaml
var RBAC []byte

// At returns SchedulerConfig with the extender at url instead of its
// in-cluster service, for local clusters and tests: over HTTPS verified
// against the CA certificate in caFile when url is https://, over plain
// HTTP otherwise. Everything else is as shipped.
func At(url, caFile string) ([]byte, error) {
	var cfg map[string]any
	if err := yaml.Unmarshal(SchedulerConfig, &cfg); err != nil {
		return nil, fmt.Errorf("parse scheduler-config.yaml: %w", err)
	}
	exts, _ := cfg["extenders"].([]any)
	if len(exts) != 1 {
		return nil, fmt.Errorf("scheduler-config.yaml has %d extenders, want 1", len(exts))
	}
	ext, _ := exts[0].(map[string]any)
	if ext == nil {
		return nil, errors.New("scheduler-config.yaml: extender entry is not an object")
	}
	ext["urlPrefix"] = url
	if strings.HasPrefix(url, "https://") {
		if caFile == "" {
			return nil, fmt.Errorf("extender URL %s: HTTPS needs a CA file", url)
		}
		ext["enableHTTPS"] = true
		ext["tlsConfig"] = map[string]any{"caFile": caFile}
	} else {
		ext["enableHTTPS"] = false
		delete(ext, "tlsConfig")
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode scheduler config: %w", err)
	}
	return out, nil
}
