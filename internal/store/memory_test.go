package store_test

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/storetest"
	"github.com/stickynet/stickynet/internal/testenv"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, storetest.Driver{
		New: func(t *testing.T) store.Store {
			s := store.NewMemory()
			t.Cleanup(func() { s.Close() })
			return s
		},
		Compact: func(_ *testing.T, s store.Store, rev int64) { s.(*store.Memory).Compact(rev) },
	})
}

// The instrumented store passes the same suite: the wrapper changes nothing
// but the metric.
func TestInstrumentedConformance(t *testing.T) {
	reg := prometheus.NewRegistry()
	inner := map[store.Store]*store.Memory{}
	storetest.Run(t, storetest.Driver{
		New: func(t *testing.T) store.Store {
			m := store.NewMemory()
			s := store.Instrument(m, reg)
			inner[s] = m
			t.Cleanup(func() { s.Close() })
			return s
		},
		Compact: func(_ *testing.T, s store.Store, rev int64) { inner[s].Compact(rev) },
	})
}

func TestInstrumentCountsByOpAndResult(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := store.NewMemory()
	defer m.Close()
	s := store.Instrument(m, reg)
	ctx := t.Context()
	put := []store.Op{store.Put("/k", []byte("v"), store.NoLease)}
	mustTxn := func(want bool) {
		t.Helper()
		res, err := s.Txn(ctx, []store.Cmp{store.Absent("/k")}, put, nil)
		if err != nil || res.Succeeded != want {
			t.Fatalf("Txn = %+v, %v; want Succeeded %v", res, err, want)
		}
	}
	mustTxn(true)
	mustTxn(false) // /k exists now: the condition fails
	if _, err := s.Get(ctx, "/k"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.List(ctx, "/"); err != nil {
		t.Fatal(err)
	}
	id, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	// A put under a lease that does not exist fails.
	if _, err := s.Txn(ctx, nil, []store.Op{store.Put("/l", nil, id+1000)}, nil); err == nil {
		t.Fatal("Txn with an unknown lease succeeded")
	}

	// A transaction of reads only is a read.
	if _, err := s.Txn(ctx, nil, []store.Op{store.Get("/k"), store.Get("/l")}, nil); err != nil {
		t.Fatal(err)
	}

	got := testenv.StoreRequests(t, reg)
	want := map[string]uint64{"txn/ok": 1, "txn/conflict": 1, "txn/error": 1, "read/ok": 1, "get/ok": 1, "list/ok": 1, "grant/ok": 1, "revoke/ok": 1}
	if !maps.Equal(got, want) {
		t.Errorf("request counts by op/result = %v; want %v", got, want)
	}
}

// A long-running memory store compacts its own history, as etcd's
// auto-compaction does: 250,000 writes to ten keys leave a bounded history,
// a watch from the first revision is told to list again, and a reflector
// still mirrors the keys.
func TestMemoryBoundsHistory(t *testing.T) {
	s := store.NewMemory()
	defer s.Close()
	ctx := t.Context()
	for i := range 250_000 {
		if _, err := s.Txn(ctx, nil, []store.Op{store.Put(fmt.Sprintf("/h/%d", i%10), []byte(fmt.Sprint(i)), store.NoLease)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	r, ok := <-s.Watch(ctx, "/h/", 1)
	if !ok || !store.IsCompacted(r.Err) {
		t.Fatalf("watch from revision 1 after 250,000 writes: %d events, error %v; want a CompactedError", len(r.Events), r.Err)
	}
	if n := s.HistoryLen(); n > 100_000 {
		t.Fatalf("history holds %d events after 250,000 writes", n)
	}
	h := &storetest.Mirror{}
	refl := store.NewReflector(s, "/h/", h)
	go refl.Run(ctx)
	if err := refl.WaitForRevision(ctx, s.Revision()); err != nil {
		t.Fatal(err)
	}
	if got := len(h.Snapshot()); got != 10 {
		t.Fatalf("the reflector mirrors %d keys; want 10", got)
	}
}
