// Package ipam benchmarks the sticky allocator against the raw etcd it runs
// on, in one run: sticky allocations per second and their latency with 64
// concurrent callers, next to raw single-key and two-key transactions on the
// same etcd, and the time to rebuild the allocator's cache from 100,000 stored
// allocations. Run it with `make bench-ipam`.
package ipam

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/testenv"
)

const (
	callers = 64
	ops     = 20000  // per measured phase
	stored  = 100000 // allocations the cache is rebuilt from
)

type result struct {
	name     string
	n        int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r result) String() string {
	return fmt.Sprintf("%-28s %8.0f ops/s   p50 %6.2f ms   p99 %6.2f ms", r.name, r.rate(),
		float64(r.p50.Microseconds())/1000, float64(r.p99.Microseconds())/1000)
}

// run calls fn(i) for i in [0,n) from `callers` goroutines and measures each call.
func run(b *testing.B, name string, n int, fn func(i int) error) result {
	b.Helper()
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := firstErr.Load(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return result{name: name, n: n, elapsed: elapsed, p50: lat[n/2], p99: lat[n*99/100]}
}

func BenchmarkIPAM(b *testing.B) {
	e := testenv.StartEtcd(b)
	ctx := context.Background()
	newStore := func(reg prometheus.Registerer) *etcd.Store {
		s, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}, Registerer: reg})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	// The raw phases send each transaction as its own etcd request, through
	// the etcd client itself: the driver would share requests between
	// concurrent transactions (group commit), as it does for the allocator.
	raw := newStore(nil)
	put := func(k string) clientv3.Op {
		return clientv3.OpPut(k, `{"id":"statefulset/ns/name/0","mac":"02:00:00:00:00:00","st":"a"}`)
	}
	txnOK := func(keys ...string) error {
		cmps, then := make([]clientv3.Cmp, len(keys)), make([]clientv3.Op, len(keys))
		for i, k := range keys {
			cmps[i], then[i] = clientv3.Compare(clientv3.ModRevision(k), "=", 0), put(k)
		}
		r, err := raw.Client().Txn(ctx).If(cmps...).Then(then...).Commit()
		if err == nil && !r.Succeeded {
			err = fmt.Errorf("raw txn failed its condition")
		}
		return err
	}

	// Warm up the etcd and the client connection.
	run(b, "warm-up", 2000, func(i int) error {
		return txnOK(fmt.Sprintf("/bench/warm/%d", i))
	})

	one := run(b, "raw 1-key txn", ops, func(i int) error {
		return txnOK(fmt.Sprintf("/bench/one/%d", i))
	})
	two := run(b, "raw 2-key txn", ops, func(i int) error {
		return txnOK(fmt.Sprintf("/bench/two/a/%d", i), fmt.Sprintf("/bench/two/b/%d", i))
	})

	three := run(b, "raw 3-key txn", ops, func(i int) error {
		return txnOK(fmt.Sprintf("/bench/three/a/%d", i), fmt.Sprintf("/bench/three/b/%d", i), fmt.Sprintf("/bench/three/c/%d", i))
	})

	// The same with a watch on the written prefix, as every allocator keeps
	// one to feed its cache: etcd sends each write to the watcher.
	// It starts at the revision after the last write, so it sees every
	// write of the phase however soon etcd registers it.
	_, rev, err := raw.List(ctx, "/bench/watched/")
	if err != nil {
		b.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	var watched atomic.Int64
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for resp := range raw.Watch(wctx, "/bench/watched/", rev+1) {
			watched.Add(int64(len(resp.Events)))
		}
	}()
	threeWatched := run(b, "raw 3-key txn, watched", ops, func(i int) error {
		return txnOK(fmt.Sprintf("/bench/watched/a/%d", i), fmt.Sprintf("/bench/watched/b/%d", i), fmt.Sprintf("/bench/watched/c/%d", i))
	})
	for deadline := time.Now().Add(10 * time.Second); watched.Load() < 3*ops && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	wcancel()
	<-wdone
	if n := watched.Load(); n != 3*ops {
		b.Fatalf("the watch delivered %d of the %d writes of the watched phase", n, 3*ops)
	}

	pool, err := ipam.NewPool("bench", v1alpha1.IPPoolSpec{CIDR: "10.64.0.0/14", Gateway: "10.64.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The allocator's transactions are counted by result: a claim that lost
	// a race to another caller is retried, and its latency is two round trips.
	// Its etcd requests are counted too (group commit shares them).
	reg := prometheus.NewRegistry()
	alloc := ipam.New(store.Instrument(newStore(reg), reg), ipam.Options{})
	if err := alloc.Start(actx); err != nil {
		b.Fatal(err)
	}
	sticky := run(b, "sticky allocation", ops, func(i int) error {
		_, err := alloc.Allocate(ctx, ipam.Request{Pool: pool, Identity: fmt.Sprintf("statefulset/ns/a/%d", i), Pod: fmt.Sprintf("ns/a-%d", i)})
		return err
	})
	txns := testenv.StoreRequests(b, reg)
	won, lost := txns["txn/"+store.ResultOK], txns["txn/"+store.ResultConflict]
	batches := testenv.StoreBatches(b, reg)
	repeat := run(b, "repeat (sticky hit)", ops, func(i int) error {
		_, err := alloc.Allocate(ctx, ipam.Request{Pool: pool, Identity: fmt.Sprintf("statefulset/ns/a/%d", i), Pod: fmt.Sprintf("ns/a-%d", i)})
		return err
	})

	// Fill the store to `stored` allocations, then time cache rebuilds.
	run(b, "fill", stored-ops, func(i int) error {
		_, err := alloc.Allocate(ctx, ipam.Request{Pool: pool, Identity: fmt.Sprintf("statefulset/ns/fill/%d", i), Pod: "ns/fill"})
		return err
	})
	var rebuilds []time.Duration
	for range 3 {
		rctx, rcancel := context.WithCancel(ctx)
		fresh := ipam.New(newStore(nil), ipam.Options{})
		t0 := time.Now()
		if err := fresh.Start(rctx); err != nil {
			b.Fatal(err)
		}
		rebuilds = append(rebuilds, time.Since(t0))
		if s := fresh.Stats(pool); s.Allocated != stored {
			b.Fatalf("rebuilt cache counts %d allocated; want %d", s.Allocated, stored)
		}
		rcancel()
	}
	sort.Slice(rebuilds, func(i, j int) bool { return rebuilds[i] < rebuilds[j] })

	host, _ := os.Hostname()
	fmt.Printf("\nIPAM benchmark: %d callers, %d ops per phase, etcd %s on %s\n", callers, ops, e.Endpoint, host)
	for _, r := range []result{one, two, three, threeWatched, sticky, repeat} {
		fmt.Println(r)
	}
	fmt.Printf("  its etcd transactions: %d succeeded, %d lost a race and were retried; %d etcd requests carried them (%.1f each)\n",
		won, lost, batches.Requests, batches.Transactions/float64(max(batches.Requests, 1)))
	fmt.Printf("allocations/s ÷ raw 1-key txn/s = %.2f   (target ≥ 0.5)\n", sticky.rate()/one.rate())
	fmt.Printf("allocation p99 ÷ raw 2-key p99  = %.2f   (target ≤ 1.2)\n", float64(sticky.p99)/float64(two.p99))
	fmt.Printf("cache rebuild from %d allocations: median %s (runs %v; target ≤ 2s)\n", stored, rebuilds[1].Round(time.Millisecond), rebuilds)
	b.ReportMetric(sticky.rate(), "alloc/s")
	b.ReportMetric(sticky.rate()/one.rate(), "ratio-rate")
	b.ReportMetric(float64(sticky.p99)/float64(two.p99), "ratio-p99")
	b.ReportMetric(rebuilds[1].Seconds(), "rebuild-s")
}
