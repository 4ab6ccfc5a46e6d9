package api

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseNetConf(t *testing.T) {
	tests := []struct {
		name        string
		in          string
		wantSocket  string
		wantTimeout time.Duration
		wantCode    uint
		wantMsg     string
	}{
		{name: "defaults", in: `{"cniVersion":"1.1.0","name":"n","type":"stickynet"}`, wantSocket: DefaultSocket, wantTimeout: DefaultTimeout},
		{name: "explicit", in: `{"cniVersion":"1.1.0","name":"n","type":"stickynet","socket":"/tmp/a.sock","timeout":"2s"}`, wantSocket: "/tmp/a.sock", wantTimeout: 2 * time.Second},
		{name: "not JSON", in: `{`, wantCode: types.ErrDecodingFailure, wantMsg: "not valid JSON"},
		{name: "other type", in: `{"type":"bridge"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `"bridge"`},
		{name: "relative socket", in: `{"type":"stickynet","socket":"a.sock"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "absolute path"},
		{name: "zero timeout", in: `{"type":"stickynet","timeout":"0s"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "positive duration"},
		{name: "bad timeout", in: `{"type":"stickynet","timeout":"10"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `"10"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseNetConf([]byte(tt.in))
			if tt.wantCode != 0 {
				var e *types.Error
				if !errors.As(err, &e) || e.Code != tt.wantCode || !strings.Contains(e.Msg, tt.wantMsg) {
					t.Fatalf("error = %v; want code %d containing %q", err, tt.wantCode, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, _ := c.RequestTimeout()
			if c.Socket != tt.wantSocket || d != tt.wantTimeout {
				t.Fatalf("socket %q timeout %s; want %q %s", c.Socket, d, tt.wantSocket, tt.wantTimeout)
			}
		})
	}
}

func TestParseNetConfFallback(t *testing.T) {
	const fb = `{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}`
	c, err := ParseNetConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"stickynet","fallback":` + fb + `,"runtimeConfig":{"portMappings":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.FallbackList()
	if err != nil || l == nil || l.Name != "pods" || len(l.Plugins) != 2 || c.CacheDir != DefaultCacheDir || c.RuntimeConfig["portMappings"] == nil {
		t.Fatalf("fallback %+v (%v), cacheDir %q, runtimeConfig %v", l, err, c.CacheDir, c.RuntimeConfig)
	}
	if c, err := ParseNetConf([]byte(`{"type":"stickynet","fallback":null}`)); err != nil {
		t.Errorf("null fallback: %v", err)
	} else if l, err := c.FallbackList(); l != nil || err != nil {
		t.Errorf("null fallback: %+v, %v", l, err)
	}
	for _, tt := range []struct{ in, want string }{
		{`{"type":"stickynet","cacheDir":"cache"}`, `"cacheDir" is "cache"`},
		{`{"type":"stickynet","fallback":"bridge"}`, `"fallback"`},
		{`{"type":"stickynet","fallback":{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"stickynet"}]}}`, "another network than stickynet"},
		{`{"type":"stickynet","fallback":{"cniVersion":"1.0.0","name":"pods","plugins":[{"bridge":"cni0"}]}}`, "missing 'type'"},
	} {
		_, err := ParseNetConf([]byte(tt.in))
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, tt.want) {
			t.Errorf("%s: error %v; want code %d saying %q", tt.in, err, types.ErrInvalidNetworkConfig, tt.want)
		}
	}
}
