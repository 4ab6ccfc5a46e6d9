package ipam

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/testenv"
)

// TestConcurrentAllocatorsOnEtcd runs 8 allocators, each with its own etcd
// client as separate webhook replicas would have, 64 goroutines in all, 10,000
// allocations over 2 pools against a real etcd, once undisturbed and once with
// etcd killed and restarted in the middle. No address or MAC may be handed out
// twice, every identity must own exactly one address, a repeat request must
// return the same address, and no confirmed allocation may be lost.
func TestConcurrentAllocatorsOnEtcd(t *testing.T) {
	for _, kill := range []bool{false, true} {
		name := "steady"
		if kill {
			name = "etcd killed and restarted"
		}
		t.Run(name, func(t *testing.T) { runConcurrent(t, kill) })
	}
}

func runConcurrent(t *testing.T, killEtcd bool) {
	const (
		allocators = 8
		workers    = 64
		total      = 10000
	)
	e := testenv.StartEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var as []*Allocator
	for range allocators {
		s, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		a := New(s, Options{})
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		as = append(as, a)
	}
	pools := []*Pool{
		mustPool(t, "v4", v1alpha1.IPPoolSpec{CIDR: "10.100.0.0/18", Gateway: "10.100.0.1"}),
		mustPool(t, "v6", v1alpha1.IPPoolSpec{CIDR: "fd00:100::/112", Gateway: "fd00:100::1"}),
	}

	var (
		mu        sync.Mutex
		confirmed = map[string]Allocation{} // identity → first successful answer
		done      atomic.Int64
		failures  atomic.Int64 // attempts that returned an error (retried)
		killed    = make(chan struct{})
	)
	if killEtcd {
		go func() {
			defer close(killed)
			for done.Load() < total/3 {
				time.Sleep(10 * time.Millisecond)
			}
			e.Kill()
			t.Logf("etcd killed after %d allocations", done.Load())
			time.Sleep(2 * time.Second)
			if err := e.Restart(); err != nil {
				t.Error(err)
			}
			t.Logf("etcd restarted at %d allocations", done.Load())
		}()
	} else {
		close(killed)
	}

	// allocate retries one request until it succeeds, as a webhook client
	// (the API server re-admitting the pod) would.
	allocate := func(a *Allocator, req Request) Allocation {
		for {
			cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
			got, err := a.Allocate(cctx, req)
			ccancel()
			if err == nil {
				return got
			}
			failures.Add(1)
			if ctx.Err() != nil {
				return Allocation{}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := as[w%allocators]
			var mine []string
			for i := w; i < total; i += workers {
				pool := pools[i%2]
				id := fmt.Sprintf("statefulset/ns%d/sts%d/%d", i%2, w, i)
				got := allocate(a, Request{Pool: pool, Identity: id, Pod: fmt.Sprintf("ns%d/sts%d-%d", i%2, w, i)})
				mu.Lock()
				if prev, ok := confirmed[id]; ok && (prev.IP != got.IP || prev.MAC.String() != got.MAC.String()) {
					t.Errorf("%s got %s then %s", id, prev.IP, got.IP)
				}
				confirmed[id] = got
				mu.Unlock()
				done.Add(1)
				mine = append(mine, id)
				// Every fourth time, repeat an earlier request (through another replica).
				if rand.IntN(4) == 0 {
					rid := mine[rand.IntN(len(mine))]
					mu.Lock()
					want := confirmed[rid]
					mu.Unlock()
					rp := pools[0]
					if strings.HasPrefix(rid, "statefulset/ns1/") {
						rp = pools[1]
					}
					again := allocate(as[rand.IntN(allocators)], Request{Pool: rp, Identity: rid, Pod: want.Pod})
					if again.IP != want.IP || again.MAC.String() != want.MAC.String() {
						t.Errorf("repeat for %s = %s %s; want %s %s", rid, again.IP, again.MAC, want.IP, want.MAC)
					}
				}
			}
		}()
	}
	wg.Wait()
	<-killed
	if t.Failed() {
		return
	}
	t.Logf("%d allocations, %d failed attempts retried", len(confirmed), failures.Load())
	if len(confirmed) != total {
		t.Fatalf("%d identities allocated; want %d", len(confirmed), total)
	}

	// Check the store itself, read with a fresh client.
	s, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kvs, _, err := s.List(context.Background(), "/stickynet/ipam/addr/")
	if err != nil {
		t.Fatal(err)
	}
	k := newKeys("/stickynet/")
	byID := map[string]netip.Addr{}
	macs := map[string]string{}
	for _, kv := range kvs {
		pool, ip, isHold, ok := k.parseAddrKey(kv.Key)
		if !ok || isHold {
			t.Fatalf("unexpected key %s", kv.Key)
		}
		var r record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			t.Fatal(err)
		}
		if prev, dup := byID[r.ID]; dup {
			t.Fatalf("identity %s owns %s and %s", r.ID, prev, ip)
		}
		if other, dup := macs[r.MAC]; dup {
			t.Fatalf("MAC %s on %s and %s", r.MAC, other, kv.Key)
		}
		byID[r.ID], macs[r.MAC] = ip, kv.Key
		if want, ok := confirmed[r.ID]; !ok || want.IP != ip || want.Pool != pool || want.MAC.String() != r.MAC {
			t.Fatalf("stored %s %s %s for %s; confirmed %+v", pool, ip, r.MAC, r.ID, want)
		}
	}
	if len(kvs) != total {
		t.Fatalf("%d address records stored; want %d (one per identity)", len(kvs), total)
	}
	for _, kind := range []string{"ident", "mac"} {
		idx, _, err := s.List(context.Background(), "/stickynet/ipam/"+kind+"/")
		if err != nil {
			t.Fatal(err)
		}
		if len(idx) != total {
			t.Fatalf("%d %s keys; want %d", len(idx), kind, total)
		}
	}
}

// TestCacheAfterRestore: etcd restored from an earlier copy of its data
// (as a snapshot restore without --bump-revision leaves it) is behind the
// revision the address cache has seen; Reflector.Verify (the webhook's
// probe read) finds that and the cache lists again. Without it the cache
// keeps the addresses claimed after the copy and misses every later claim.
func TestCacheAfterRestore(t *testing.T) {
	e := testenv.StartEtcd(t)
	newStore := func() *etcd.Store {
		s, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	st := newStore()
	a := startAllocator(t, st, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	alloc(t, a, Request{Pool: p, Identity: "pod/ns/kept", Pod: "ns/kept"})
	backup := t.TempDir() + "/data"
	e.Kill()
	if out, err := exec.Command("cp", "-a", e.DataDir(), backup).CombinedOutput(); err != nil {
		t.Fatalf("copy etcd's data: %v: %s", err, out)
	}
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		alloc(t, a, Request{Pool: p, Identity: fmt.Sprintf("pod/ns/lost-%d", i), Pod: fmt.Sprintf("ns/lost-%d", i)})
	}
	e.Kill()
	if out, err := exec.Command("sh", "-c", `rm -rf "$1" && cp -a "$2" "$1"`, "sh", e.DataDir(), backup).CombinedOutput(); err != nil {
		t.Fatalf("restore etcd's data: %v: %s", err, out)
	}
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	// Another replica, started after the restore, claims an address.
	other := startAllocator(t, newStore(), Options{})
	after := alloc(t, other, Request{Pool: p, Identity: "pod/ns/after", Pod: "ns/after"})
	ctx := testCtx(t)
	for {
		// Each read bounded, as the webhook's probe bounds its reads (3 s).
		vctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := a.Reflector().Verify(vctx, st)
		cancel()
		if err != nil {
			t.Logf("Verify: %v", err)
		}
		if err == nil && len(a.Lookup("pod/ns/after")) == 1 && len(a.Lookup("pod/ns/lost-0")) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("cache after the restore: after %v, lost-0 %v, kept %v (Verify: %v)", a.Lookup("pod/ns/after"), a.Lookup("pod/ns/lost-0"), a.Lookup("pod/ns/kept"), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if l := a.Lookup("pod/ns/kept"); len(l) != 1 || l[0].IP == after.IP {
		t.Fatalf("address claimed before the copy: %v (the later claim got %s)", l, after.IP)
	}
}
