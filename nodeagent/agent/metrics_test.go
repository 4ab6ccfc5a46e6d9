package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestMetricsEndpoint: /readyz and /livez answer 200 or 503 with the
// reason; /metrics has the attachment count only once the agent has read
// its attachments (no sample while it waits for OVS); a second endpoint on
// the same address names the flag.
func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notReady := errors.New("stickynet node agent is starting")
	p := &fakeProbes{n: 7, readyErr: &notReady, liveErr: errors.New("the node agent's state lock has been held")}
	addr, err := listenMetrics(ctx, "127.0.0.1:0", p)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Errorf("/readyz while starting: %d %q; want 503 with the reason", code, body)
	}
	if code, body := get("/livez"); code != http.StatusServiceUnavailable || !strings.Contains(body, "state lock") {
		t.Errorf("/livez when stuck: %d %q; want 503 with the reason", code, body)
	}
	if _, body := get("/metrics"); strings.Contains(body, "stickynet_nodeagent_attachments") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics before the agent has read its attachments has a count, or lacks the process's metrics:\n%.2000s", body)
	}
	notReady, p.liveErr, p.started = nil, nil, true
	for _, path := range []string{"/readyz", "/livez"} {
		if code, body := get(path); code != http.StatusOK {
			t.Errorf("%s when ready: %d %q; want 200", path, code, body)
		}
	}
	if _, body := get("/metrics"); !strings.Contains(body, "stickynet_nodeagent_attachments 7") {
		t.Errorf("/metrics lacks the attachment count:\n%.2000s", body)
	}
	if _, err := listenMetrics(ctx, addr.String(), p); err == nil || !strings.Contains(err.Error(), "--metrics-bind-address") {
		t.Errorf("second endpoint on %s: %v; want an error naming the flag", addr, err)
	}
}

type fakeProbes struct {
	n        int
	started  bool
	readyErr *error
	liveErr  error
}

func (f *fakeProbes) attachments() (int, bool)    { return f.n, f.started }
func (f *fakeProbes) ready(context.Context) error { return *f.readyErr }
func (f *fakeProbes) live(context.Context) error  { return f.liveErr }

// TestLiveWhileLockHeld: /livez fails while the agent's state lock stays
// held past the wait (CNI requests stuck behind it), and passes again once
// it is free; before the agent is built (waiting for OVS) it passes.
func TestLiveWhileLockHeld(t *testing.T) {
	ctx := context.Background()
	h := &health{}
	if err := h.live(ctx); err != nil {
		t.Errorf("live before the agent is built: %v; want nil", err)
	}
	h.waiting(errors.New("database connection failed"))
	if err := h.ready(ctx); err == nil || !strings.Contains(err.Error(), "waiting for Open vSwitch: database connection failed") {
		t.Errorf("ready while waiting for OVS: %v; want the reason", err)
	}
	a := &agent{}
	if err := a.live(ctx, 50*time.Millisecond); err != nil {
		t.Errorf("live with the lock free: %v", err)
	}
	a.mu.Lock()
	err := a.live(ctx, 50*time.Millisecond)
	a.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "held for more than 50ms") {
		t.Errorf("live with the lock held: %v; want an error saying how long", err)
	}
	if err := a.live(ctx, 50*time.Millisecond); err != nil {
		t.Errorf("live with the lock free again: %v", err)
	}
}
