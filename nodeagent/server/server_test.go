package server

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stickynet/stickynet/nodeagent/api"
)

type echo struct{}

func (echo) Handle(_ context.Context, req api.Request) api.Response {
	return api.Response{Result: []byte(`{"cniVersion":"1.1.0","command":"` + req.Command + `"}`)}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "agent.sock")
	// A stale socket file (no one answering) is replaced.
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	s, err := Listen(ctx, path, echo{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, time.Second) }()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := Listen(ctx, path, echo{}); err == nil || !strings.Contains(err.Error(), "another process answers") {
		t.Fatalf("second Listen = %v; want refusal", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("folder holds %d entries; want only the socket", len(entries))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after Serve returned: %v", err)
	}
}

func TestRequestsCounted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Listen(ctx, path, echo{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, time.Second) }()
	before := testutil.ToFloat64(cniRequests.WithLabelValues("CHECK", "ok"))
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := c.Post("http://agent"+api.Path, "application/json", strings.NewReader(`{"command":"CHECK"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := testutil.ToFloat64(cniRequests.WithLabelValues("CHECK", "ok")) - before; got != 1 {
		t.Errorf("stickynet_nodeagent_cni_requests_total{command=CHECK,result=ok} rose by %v; want 1", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
