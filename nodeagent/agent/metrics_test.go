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

func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notReady := errors.New("stickynet node agent is starting")
	p := &fakeProbes{n: 7, readyErr: &notReady}
	addr, err := listenMetrics(ctx, "127.0.0.1:0", p)
	if err != nil {
		t.Fatal(err)
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr.String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Errorf("/readyz while starting: %d %q; want 503 with the reason", code, body)
	}
	notReady = nil
	if code, body := readyz(); code != http.StatusOK {
		t.Errorf("/readyz when ready: %d %q; want 200", code, body)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"stickynet_nodeagent_attachments 7", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%.2000s", want, body)
		}
	}
	if _, err := listenMetrics(ctx, addr.String(), p); err == nil || !strings.Contains(err.Error(), "--metrics-bind-address") {
		t.Errorf("second endpoint on %s: %v; want an error naming the flag", addr, err)
	}
}

type fakeProbes struct {
	n        int
	readyErr *error
}

func (f *fakeProbes) attachments() int               { return f.n }
func (f *fakeProbes) ready(context.Context) error    { return *f.readyErr }
func (f *fakeProbes) live(ctx context.Context) error { return nil }

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
