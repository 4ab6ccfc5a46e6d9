package agent

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestMetricsEndpoint(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, err := listenMetrics(ctx, "127.0.0.1:0", func() int { return 7 })
	if err != nil {
		t.Fatal(err)
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
	if _, err := listenMetrics(ctx, addr.String(), func() int { return 0 }); err == nil || !strings.Contains(err.Error(), "--metrics-bind-address") {
		t.Errorf("second endpoint on %s: %v; want an error naming the flag", addr, err)
	}
}
