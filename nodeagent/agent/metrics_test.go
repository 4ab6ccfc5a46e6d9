package agent

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notReady := errors.New("stickynet node agent is starting")
	addr, err := listenMetrics(ctx, "127.0.0.1:0", func() int { return 7 }, func(context.Context) error { return notReady })
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
	if _, err := listenMetrics(ctx, addr.String(), func() int { return 0 }, nil); err == nil || !strings.Contains(err.Error(), "--metrics-bind-address") {
		t.Errorf("second endpoint on %s: %v; want an error naming the flag", addr, err)
	}
}
