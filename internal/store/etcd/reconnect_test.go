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
// reaches it again within the capped reconnect back-off of a new client
// doing so, not gRPC's default, which by then waits some 15 s between
// attempts (up to 2 min): a webhook replica would fail every admission
// meanwhile.
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
	// etcd takes connections before it has replayed its log and elected
	// itself, which takes a second or two here and longer on a busy
	// machine: the old client's time counts from the first read that a
	// new client, which has no back-off to wait out, gets answered.
	fresh, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	testenv.Eventually(ctx, t, time.Minute, "a new client's read after the restart", func() (bool, string) {
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := fresh.Get(rctx, "/probe")
		return err == nil, fmt.Sprint(err)
	})
	back := time.Now()
	budget := time.Second + etcd.ReconnectMax*12/10
	for get() != nil {
		if time.Since(back) > budget+10*time.Second {
			t.Fatalf("the old client's reads still fail %s after a new client's succeeded", time.Since(back).Round(100*time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if took := time.Since(back); took > budget {
		t.Errorf("the old client's first read succeeded %s after a new client's; want within %s (reconnect back-off capped at %s)", took.Round(100*time.Millisecond), budget, etcd.ReconnectMax)
	}
}
