package etcd_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/testenv"
)

// TestReconnectAfterOutage: after etcd has been down for 30 s, the client
// reaches it again within the capped reconnect back-off of its return,
// not gRPC's default, which by then waits some 15 s between attempts (up
// to 2 min): a webhook replica would fail every admission meanwhile.
func TestReconnectAfterOutage(t *testing.T) {
	e := testenv.StartEtcd(t)
	st, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	get := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := st.Get(ctx, "/probe")
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A read that succeeds: etcd has a leader and its first entries are on
	// disk (one killed before that may not elect itself when restarted).
	testenv.Eventually(ctx, t, 10*time.Second, "a first read", func() (bool, string) {
		err := get()
		return err == nil, fmt.Sprint(err)
	})
	e.Kill()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		_ = get() // reads keep failing, as the webhook's probe's do
	}
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// etcd's own start and election take a second or two here.
	budget := 3*time.Second + etcd.ReconnectMax*12/10
	for get() != nil {
		if time.Since(back) > budget+5*time.Second {
			t.Fatalf("no read succeeded %s after etcd came back", time.Since(back).Round(100*time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if took := time.Since(back); took > budget {
		t.Errorf("the first read succeeded %s after etcd came back; want within %s (reconnect back-off capped at %s)", took.Round(100*time.Millisecond), budget, etcd.ReconnectMax)
	}
}
