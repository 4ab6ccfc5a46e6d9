package plugin

import (
	"reflect"
	"testing"
)

// A DEL or CHECK of a fallback attachment gets the capability arguments its
// ADD was given, under the runtime's: a conflist rewritten since (the
// fallback network changed) may declare fewer, and the runtime passes only
// those. Before, portmap's DEL got no portMappings and left its rules.
func TestCapabilityArgsOfRecord(t *testing.T) {
	ports := []any{map[string]any{"hostPort": float64(8080), "containerPort": float64(80), "protocol": "tcp"}}
	r := &record{RuntimeConfig: map[string]any{"portMappings": ports, "mac": "02:00:00:00:00:01"}}
	for _, tc := range []struct {
		name string
		now  map[string]any
		want map[string]any
	}{
		{"the conflist lost a capability", map[string]any{"mac": "02:00:00:00:00:01"}, map[string]any{"portMappings": ports, "mac": "02:00:00:00:00:01"}},
		{"none passed now", nil, r.RuntimeConfig},
		{"the runtime's win", map[string]any{"mac": "02:00:00:00:00:02"}, map[string]any{"portMappings": ports, "mac": "02:00:00:00:00:02"}},
	} {
		if got := r.capabilityArgs(tc.now); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v; want %v", tc.name, got, tc.want)
		}
	}
	if got := (&record{}).capabilityArgs(map[string]any{"mac": "x"}); !reflect.DeepEqual(got, map[string]any{"mac": "x"}) {
		t.Errorf("a record of an ADD given none: %v; want the runtime's", got)
	}
	if r.RuntimeConfig["mac"] != "02:00:00:00:00:01" {
		t.Error("the record's own arguments were changed")
	}
}
