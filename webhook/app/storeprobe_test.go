package app

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/store/storetest"
	"github.com/stickynet/stickynet/internal/testenv"
)

// TestStoreProbe against a real etcd, killed and restarted: readiness fails
// once etcd has not answered for notReadyAfter, naming the cause, the leader's stepDown
// returns an error once it has not answered for max, a leader that takes the
// lead while etcd is down gives it back at once (before, it kept it: a
// replica cut off from etcd could lead for good), and readiness recovers
// when etcd is back.
func TestStoreProbe(t *testing.T) {
	testenv.Integration(t)
	e := testenv.StartEtcd(t)
	st, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var reads atomic.Int64 // the probe's successful reads
	p := &storeProbe{
		read: func(ctx context.Context) error {
			_, err := st.Get(ctx, "/stickynet/probe")
			if err == nil {
				reads.Add(1)
			}
			return err
		},
		diagnose: st.Diagnose,
		period:   100 * time.Millisecond, timeout: 300 * time.Millisecond, notReadyAfter: time.Second,
	}
	go func() { _ = p.Start(ctx) }()
	// Two successful reads before the lead: an etcd killed before its first
	// entries are on disk may not elect itself when restarted (a CI run saw
	// that).
	testenv.Eventually(ctx, t, 10*time.Second, "the probe reaching etcd", func() (bool, string) {
		d, err := p.down()
		n := reads.Load()
		return n >= 2 && d == 0 && p.check(nil) == nil, fmt.Sprintf("%d reads, down %s: %s", n, d, errString(err))
	})
	down := make(chan error, 1)
	go func() { down <- stepDown{probe: p, max: 3 * time.Second}.Start(ctx) }()
	e.Kill()
	// The client's error says only that the deadline passed; the probe's
	// says why.
	testenv.Eventually(ctx, t, 20*time.Second, "readiness failing with etcd down, naming the cause", func() (bool, string) {
		err := p.check(nil)
		return err != nil && strings.Contains(err.Error(), "etcd has not answered for") &&
			strings.Contains(err.Error(), "connection refused"), errString(err)
	})
	select {
	case err := <-down:
		if err == nil || !strings.Contains(err.Error(), "gives up the lead") {
			t.Fatalf("stepDown returned %v; want an error saying it gives up the lead", err)
		}
		if d, _ := p.down(); d < 3*time.Second {
			t.Errorf("stepDown returned after etcd had been down %s; want at least 3s", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stepDown still running 30 s after etcd was killed")
	}
	// A replica that takes the lead while etcd fails it (its etcd failed
	// while it campaigned) gives it back at once; one whose etcd fails does
	// not campaign (TestNoCampaignWhileStoreDown), so that when etcd is down
	// for every replica they do not take the lead in turn.
	next := make(chan error, 1)
	go func() { next <- stepDown{probe: p, max: 3 * time.Second}.Start(ctx) }()
	select {
	case err := <-next:
		if err == nil || !strings.Contains(err.Error(), "gives the lead back") {
			t.Fatalf("a leader that took the lead with etcd down: %v; want an error saying it gives the lead back", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a leader that took the lead with etcd down kept it for 5 s")
	}
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(ctx, t, 15*time.Second, "readiness back with etcd", func() (bool, string) {
		err := p.check(nil)
		return err == nil, errString(err)
	})
}

// The webhook's probe (newStoreProbe) finds a store restored to an earlier
// revision (etcd restored without --bump-revision) and makes the address
// cache list again: the claims the restore lost leave the cache. (Against a
// real etcd, internal/ipam TestCacheAfterRestore.)
func TestStoreProbeAfterRestore(t *testing.T) {
	live := store.NewMemory()
	rs := storetest.NewRestorable(live)
	a := ipam.New(rs, ipam.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pool, err := ipam.NewPool("p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		if _, err := a.Allocate(ctx, ipam.Request{Pool: pool, Identity: fmt.Sprintf("pod/ns/lost-%d", i), Pod: fmt.Sprintf("ns/lost-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Reflector().WaitForRevision(ctx, live.Revision()); err != nil {
		t.Fatal(err)
	}
	rs.Restore(store.NewMemory()) // a snapshot from before the claims
	if err := newStoreProbe(a, rs).read(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(ctx, t, 10*time.Second, "the cache without the claims the restore lost", func() (bool, string) {
		left := 0
		for i := range n {
			left += len(a.Lookup(fmt.Sprintf("pod/ns/lost-%d", i)))
		}
		return left == 0, fmt.Sprintf("%d of %d claims still in the cache", left, n)
	})
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
