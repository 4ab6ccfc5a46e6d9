// Package storetest is the conformance suite that every internal/store driver
// passes: compare-and-swap transactions, listing, leases, watches, compaction,
// and the Reflector's re-list after compaction.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stickynet/stickynet/internal/store"
)

// Driver is what the suite needs from a driver under test.
type Driver struct {
	// New returns an empty store (the suite uses a distinct prefix per subtest, so
	// it may return the same backing store each time).
	New func(t *testing.T) store.Store
	// Compact compacts the store's history up to rev.
	Compact func(t *testing.T, s store.Store, rev int64)
}

// Run runs the conformance suite.
func Run(t *testing.T, d Driver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store, p string, d Driver)
	}{
		{"GetAbsent", testGetAbsent},
		{"CreateIfAbsent", testCreateIfAbsent},
		{"UpdateAtRevision", testUpdateAtRevision},
		{"MultiKeyAtomic", testMultiKeyAtomic},
		{"Delete", testDelete},
		{"ListPrefix", testListPrefix},
		{"ListLarge", testListLarge},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseRevokeAndDetach", testLeaseRevokeAndDetach},
		{"LeaseNotFound", testLeaseNotFound},
		{"WatchOrderAndPrefix", testWatch},
		{"WatchCompacted", testWatchCompacted},
		{"WatchAtCompactRevision", testWatchAtCompactRevision},
		{"DuplicateKeyInTxn", testDuplicateKey},
		{"ConcurrentCAS", testConcurrentCAS},
		{"ReflectorFollows", testReflectorFollows},
		{"ReflectorRelistsAfterCompaction", testReflectorRelist},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := d.New(t)
			tt.fn(t, s, fmt.Sprintf("/conformance/%d-%d/", time.Now().UnixNano(), i), d)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustTxn(t *testing.T, s store.Store, cmps []store.Cmp, then, els []store.Op) store.TxnResult {
	t.Helper()
	r, err := s.Txn(ctxT(t), cmps, then, els)
	if err != nil {
		t.Fatalf("txn: %v", err)
	}
	return r
}

func testGetAbsent(t *testing.T, s store.Store, p string, _ Driver) {
	kv, err := s.Get(ctxT(t), p+"nope")
	if err != nil || kv != nil {
		t.Fatalf("Get(absent) = %v, %v; want nil, nil", kv, err)
	}
}

func testCreateIfAbsent(t *testing.T, s store.Store, p string, _ Driver) {
	k := p + "a"
	r := mustTxn(t, s, []store.Cmp{store.Absent(k)}, []store.Op{store.Put(k, []byte("1"), store.NoLease)}, nil)
	if !r.Succeeded || r.Revision == 0 {
		t.Fatalf("first create: %+v", r)
	}
	r2 := mustTxn(t, s, []store.Cmp{store.Absent(k)}, []store.Op{store.Put(k, []byte("2"), store.NoLease)}, []store.Op{store.Get(k)})
	if r2.Succeeded {
		t.Fatal("second create succeeded")
	}
	if len(r2.Gets) != 1 || r2.Gets[0] == nil || string(r2.Gets[0].Value) != "1" || r2.Gets[0].ModRevision != r.Revision {
		t.Fatalf("else get = %+v; want value 1 at revision %d", r2.Gets, r.Revision)
	}
	if r2.Revision < r.Revision {
		t.Fatalf("revision went back: %d < %d", r2.Revision, r.Revision)
	}
}

func testUpdateAtRevision(t *testing.T, s store.Store, p string, _ Driver) {
	k := p + "a"
	r := mustTxn(t, s, nil, []store.Op{store.Put(k, []byte("1"), store.NoLease)}, nil)
	kv, _ := s.Get(ctxT(t), k)
	if kv.ModRevision != r.Revision || kv.CreateRevision != r.Revision {
		t.Fatalf("kv %+v, txn revision %d", kv, r.Revision)
	}
	r2 := mustTxn(t, s, []store.Cmp{store.At(k, r.Revision)}, []store.Op{store.Put(k, []byte("2"), store.NoLease)}, nil)
	if !r2.Succeeded {
		t.Fatal("update at current revision failed")
	}
	r3 := mustTxn(t, s, []store.Cmp{store.At(k, r.Revision)}, []store.Op{store.Put(k, []byte("3"), store.NoLease)}, []store.Op{store.Get(k)})
	if r3.Succeeded {
		t.Fatal("update at stale revision succeeded")
	}
	if string(r3.Gets[0].Value) != "2" || r3.Gets[0].CreateRevision != r.Revision || r3.Gets[0].ModRevision != r2.Revision {
		t.Fatalf("after update: %+v", r3.Gets[0])
	}
}

func testMultiKeyAtomic(t *testing.T, s store.Store, p string, _ Driver) {
	a, b := p+"a", p+"b"
	mustTxn(t, s, nil, []store.Op{store.Put(b, []byte("taken"), store.NoLease)}, nil)
	r := mustTxn(t, s, []store.Cmp{store.Absent(a), store.Absent(b)},
		[]store.Op{store.Put(a, []byte("x"), store.NoLease), store.Put(b, []byte("x"), store.NoLease)},
		[]store.Op{store.Get(a), store.Get(b)})
	if r.Succeeded {
		t.Fatal("txn with a failing condition succeeded")
	}
	if r.Gets[0] != nil || r.Gets[1] == nil || string(r.Gets[1].Value) != "taken" {
		t.Fatalf("else gets = %v, %v", r.Gets[0], r.Gets[1])
	}
	if kv, _ := s.Get(ctxT(t), a); kv != nil {
		t.Fatalf("%s was written by a failed txn", a)
	}
	r = mustTxn(t, s, []store.Cmp{store.Absent(a)},
		[]store.Op{store.Put(a, []byte("1"), store.NoLease), store.Put(p+"c", []byte("1"), store.NoLease)}, nil)
	ka, _ := s.Get(ctxT(t), a)
	kc, _ := s.Get(ctxT(t), p+"c")
	if !r.Succeeded || ka.ModRevision != kc.ModRevision || ka.ModRevision != r.Revision {
		t.Fatalf("two puts of one txn at revisions %d and %d, txn %d", ka.ModRevision, kc.ModRevision, r.Revision)
	}
}

func testDelete(t *testing.T, s store.Store, p string, _ Driver) {
	k := p + "a"
	r := mustTxn(t, s, nil, []store.Op{store.Put(k, []byte("1"), store.NoLease)}, nil)
	d := mustTxn(t, s, []store.Cmp{store.At(k, r.Revision)}, []store.Op{store.Delete(k)}, nil)
	if !d.Succeeded {
		t.Fatal("delete at revision failed")
	}
	if kv, _ := s.Get(ctxT(t), k); kv != nil {
		t.Fatalf("deleted key still there: %+v", kv)
	}
	if r := mustTxn(t, s, []store.Cmp{store.Absent(k)}, nil, nil); !r.Succeeded {
		t.Fatal("Absent condition false after delete")
	}
	mustTxn(t, s, nil, []store.Op{store.Delete(p + "never")}, nil) // deleting an absent key is fine
}

func testListPrefix(t *testing.T, s store.Store, p string, _ Driver) {
	for _, k := range []string{"b", "a", "c/x", "ab"} {
		mustTxn(t, s, nil, []store.Op{store.Put(p+"list/"+k, []byte(k), store.NoLease)}, nil)
	}
	mustTxn(t, s, nil, []store.Op{store.Put(p+"listx", []byte("outside"), store.NoLease)}, nil)
	kvs, rev, err := s.List(ctxT(t), p+"list/")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Key[len(p+"list/"):])
	}
	if fmt.Sprint(got) != "[a ab b c/x]" {
		t.Fatalf("List = %v; want [a ab b c/x]", got)
	}
	if rev < kvs[len(kvs)-1].ModRevision {
		t.Fatalf("list revision %d older than its keys", rev)
	}
}

func testListLarge(t *testing.T, s store.Store, p string, _ Driver) {
	const n = 25000 // more than one etcd page
	var ops []store.Op
	for i := range n {
		ops = append(ops, store.Put(fmt.Sprintf("%sbig/%06d", p, i), []byte("v"), store.NoLease))
		if len(ops) == 100 {
			mustTxn(t, s, nil, ops, nil)
			ops = nil
		}
	}
	kvs, _, err := s.List(ctxT(t), p+"big/")
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != n {
		t.Fatalf("List returned %d keys; want %d", len(kvs), n)
	}
	for i, kv := range kvs {
		if want := fmt.Sprintf("%sbig/%06d", p, i); kv.Key != want {
			t.Fatalf("key %d = %s; want %s", i, kv.Key, want)
		}
	}
}

func waitGone(t *testing.T, s store.Store, key string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		kv, err := s.Get(ctxT(t), key)
		if err != nil {
			t.Fatal(err)
		}
		if kv == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s still present after %s", key, within)
}

func testLeaseExpiry(t *testing.T, s store.Store, p string, _ Driver) {
	// 3 s: the put and the read below must come before it ends, on a busy
	// machine too.
	id, err := s.Grant(ctxT(t), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := p + "leased"
	mustTxn(t, s, nil, []store.Op{store.Put(k, []byte("1"), id), store.Put(p+"other", []byte("1"), id)}, nil)
	kv, _ := s.Get(ctxT(t), k)
	if kv == nil || kv.Lease != id {
		t.Fatalf("leased key = %+v; want lease %d", kv, id)
	}
	waitGone(t, s, k, 10*time.Second)
	waitGone(t, s, p+"other", time.Second)
}

func testLeaseRevokeAndDetach(t *testing.T, s store.Store, p string, _ Driver) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mustTxn(t, s, nil, []store.Op{store.Put(p+"a", []byte("1"), id), store.Put(p+"b", []byte("1"), id)}, nil)
	// Re-putting b without a lease detaches it: it survives the revoke.
	mustTxn(t, s, nil, []store.Op{store.Put(p+"b", []byte("2"), store.NoLease)}, nil)
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if kv, _ := s.Get(ctx, p+"a"); kv != nil {
		t.Fatal("key of a revoked lease is still there")
	}
	if kv, _ := s.Get(ctx, p+"b"); kv == nil || kv.Lease != store.NoLease {
		t.Fatalf("detached key = %+v; want it kept without lease", kv)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
}

func testLeaseNotFound(t *testing.T, s store.Store, p string, _ Driver) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = s.Txn(ctx, nil, []store.Op{store.Put(p+"a", []byte("1"), id)}, nil)
	if !errors.Is(err, store.ErrLeaseNotFound) {
		t.Fatalf("put with revoked lease: %v; want ErrLeaseNotFound", err)
	}
	if kv, _ := s.Get(ctx, p+"a"); kv != nil {
		t.Fatal("put with a revoked lease wrote the key")
	}
}

func collect(t *testing.T, ch <-chan store.WatchResponse, n int) []store.Event {
	t.Helper()
	var out []store.Event
	timeout := time.After(15 * time.Second)
	for len(out) < n {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", len(out), n)
			}
			if r.Err != nil {
				t.Fatalf("watch error: %v", r.Err)
			}
			out = append(out, r.Events...)
		case <-timeout:
			t.Fatalf("got %d of %d events", len(out), n)
		}
	}
	return out
}

func testWatch(t *testing.T, s store.Store, p string, _ Driver) {
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	r1 := mustTxn(t, s, nil, []store.Op{store.Put(p+"w/a", []byte("1"), store.NoLease)}, nil)
	ch := s.Watch(ctx, p+"w/", r1.Revision) // replays a, then live events
	mustTxn(t, s, nil, []store.Op{store.Put(p+"outside", []byte("x"), store.NoLease)}, nil)
	mustTxn(t, s, nil, []store.Op{store.Put(p+"w/b", []byte("2"), store.NoLease), store.Put(p+"w/a", []byte("3"), store.NoLease)}, nil)
	mustTxn(t, s, nil, []store.Op{store.Delete(p + "w/a")}, nil)
	id, err := s.Grant(ctx, 3*time.Second) // outlives the put on a busy machine
	if err != nil {
		t.Fatal(err)
	}
	mustTxn(t, s, nil, []store.Op{store.Put(p+"w/l", []byte("4"), id)}, nil)
	evs := collect(t, ch, 6)
	var got []string
	last := int64(0)
	for _, e := range evs {
		if e.KV.ModRevision < last {
			t.Fatalf("events out of revision order: %+v", evs)
		}
		last = e.KV.ModRevision
		kind := "put"
		if e.Type == store.EventDelete {
			kind = "del"
		}
		got = append(got, kind+":"+e.KV.Key[len(p):]+"="+string(e.KV.Value))
	}
	want := "[put:w/a=1 put:w/b=2 put:w/a=3 del:w/a= put:w/l=4 del:w/l=]"
	if fmt.Sprint(got) != want {
		t.Fatalf("events = %v; want %s", got, want)
	}
	cancel()
	for range ch { // must close after cancel
	}
}

func testWatchCompacted(t *testing.T, s store.Store, p string, d Driver) {
	r1 := mustTxn(t, s, nil, []store.Op{store.Put(p+"a", []byte("1"), store.NoLease)}, nil)
	r2 := mustTxn(t, s, nil, []store.Op{store.Put(p+"a", []byte("2"), store.NoLease)}, nil)
	d.Compact(t, s, r2.Revision)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	ch := s.Watch(ctx, p, r1.Revision)
	select {
	case r, ok := <-ch:
		if !ok || !store.IsCompacted(r.Err) {
			t.Fatalf("watch from compacted revision: %+v, open=%v; want CompactedError", r, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no response from a watch at a compacted revision")
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("watch channel not closed after its error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch channel not closed after its error")
	}
}

// testWatchAtCompactRevision: compaction keeps the compact revision itself,
// so a watch may start there (etcd refuses only revisions below it).
func testWatchAtCompactRevision(t *testing.T, s store.Store, p string, d Driver) {
	mustTxn(t, s, nil, []store.Op{store.Put(p+"a", []byte("1"), store.NoLease)}, nil)
	r2 := mustTxn(t, s, nil, []store.Op{store.Put(p+"a", []byte("2"), store.NoLease)}, nil)
	d.Compact(t, s, r2.Revision)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	ch := s.Watch(ctx, p, r2.Revision)
	mustTxn(t, s, nil, []store.Op{store.Put(p+"a", []byte("3"), store.NoLease)}, nil)
	select {
	case r, ok := <-ch:
		if !ok || r.Err != nil {
			t.Fatalf("watch from the compact revision: %+v, open=%v; want events", r, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no response from a watch at the compact revision")
	}
	cancel()
	for range ch {
	}
}

// testDuplicateKey: one transaction may not write a key twice (etcd refuses it).
func testDuplicateKey(t *testing.T, s store.Store, p string, _ Driver) {
	_, err := s.Txn(ctxT(t), nil, []store.Op{store.Put(p+"a", []byte("1"), store.NoLease), store.Delete(p + "a")}, nil)
	if err == nil {
		t.Fatal("a transaction that puts and deletes one key succeeded")
	}
	if kv, err := s.Get(ctxT(t), p+"a"); err != nil || kv != nil {
		t.Fatalf("after the refused transaction: %v, %v; want nothing written", kv, err)
	}
}

func testConcurrentCAS(t *testing.T, s store.Store, p string, _ Driver) {
	// 16 goroutines increment one counter with read-modify-write CAS: no lost update.
	k := p + "counter"
	mustTxn(t, s, nil, []store.Op{store.Put(k, []byte("0"), store.NoLease)}, nil)
	const workers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				kv, err := s.Get(context.Background(), k)
				if err != nil {
					errs <- err
					return
				}
				var n int
				if _, err := fmt.Sscan(string(kv.Value), &n); err != nil {
					errs <- err
					return
				}
				r, err := s.Txn(context.Background(), []store.Cmp{store.At(k, kv.ModRevision)},
					[]store.Op{store.Put(k, []byte(fmt.Sprint(n+1)), store.NoLease)}, nil)
				if err != nil {
					errs <- err
					return
				}
				if r.Succeeded {
					i++
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kv, _ := s.Get(ctxT(t), k)
	if string(kv.Value) != fmt.Sprint(workers*each) {
		t.Fatalf("counter = %s; want %d", kv.Value, workers*each)
	}
}

// Mirror is a store.Handler that mirrors the keys under a reflector's
// prefix, for tests of reflectors and watches.
type Mirror struct {
	mu       sync.Mutex
	m        map[string]string
	replaces int
}

// Replace implements store.Handler.
func (h *Mirror) Replace(kvs []store.KV, _ int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.replaces++
	h.m = map[string]string{}
	for _, kv := range kvs {
		h.m[kv.Key] = string(kv.Value)
	}
}

// Apply implements store.Handler.
func (h *Mirror) Apply(evs []store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range evs {
		if e.Type == store.EventDelete {
			delete(h.m, e.KV.Key)
		} else {
			h.m[e.KV.Key] = string(e.KV.Value)
		}
	}
}

// Snapshot returns a copy of the mirrored keys and values.
func (h *Mirror) Snapshot() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.m)
}

func randomOps(t *testing.T, s store.Store, p string, n int) int64 {
	var rev int64
	for range n {
		k := fmt.Sprintf("%sr/%d", p, rand.IntN(20))
		var op store.Op
		if rand.IntN(4) == 0 {
			op = store.Delete(k)
		} else {
			op = store.Put(k, []byte(fmt.Sprint(rand.Int())), store.NoLease)
		}
		rev = mustTxn(t, s, nil, []store.Op{op}, nil).Revision
	}
	return rev
}

func checkMirror(t *testing.T, s store.Store, r *store.Reflector, h *Mirror, prefix string, rev int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	want := map[string]string{}
	kvs, _, err := s.List(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range kvs {
		want[kv.Key] = string(kv.Value)
	}
	// The reflector's revision only moves with events under its prefix, so wait
	// for the mirror to match rather than for rev itself.
	for {
		if maps.Equal(h.Snapshot(), want) && r.Revision() > 0 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("mirror %v != store %v (reflector at %d, store at %d)", h.Snapshot(), want, r.Revision(), rev)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testReflectorFollows(t *testing.T, s store.Store, p string, _ Driver) {
	randomOps(t, s, p, 30)
	h := &Mirror{}
	r := store.NewReflector(s, p+"r/", h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := r.WaitForRevision(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	rev := randomOps(t, s, p, 200)
	checkMirror(t, s, r, h, p+"r/", rev)
}

// breakable wraps a store and ends its watches with an error on demand, as a
// lost connection would, holding back new watches until reconnect is called;
// everything else is the driver's own behaviour.
type breakable struct {
	store.Store
	mu     sync.Mutex
	cancel []context.CancelFunc
	gate   chan struct{} // closed: watches may start
}

func (b *breakable) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse {
	wctx, cancel := context.WithCancel(ctx)
	b.mu.Lock()
	b.cancel = append(b.cancel, cancel)
	gate := b.gate
	b.mu.Unlock()
	out := make(chan store.WatchResponse)
	go func() {
		defer close(out)
		select {
		case <-gate:
		case <-ctx.Done():
			return
		}
		in := b.Store.Watch(wctx, prefix, fromRev)
		for r := range in {
			if wctx.Err() != nil {
				// Broken: what the driver still hands over (it may have read
				// writes made after the break) is lost with the connection.
				break
			}
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
		}
		if ctx.Err() == nil {
			select {
			case out <- store.WatchResponse{Err: errors.New("connection lost")}:
			case <-ctx.Done():
			}
		}
	}()
	return out
}

func (b *breakable) breakWatches() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gate = make(chan struct{})
	for _, c := range b.cancel {
		c()
	}
	b.cancel = nil
}

func (b *breakable) reconnect() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.gate)
}

// AwaitRelists waits up to 5 s for r to have listed again n times: the
// count moves just after the handler has the list, so a check right after
// the handler's state matched could read it a moment early. The caller
// checks the count.
func AwaitRelists(r *store.Reflector, n int) {
	for deadline := time.Now().Add(5 * time.Second); r.Relists() < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

func testReflectorRelist(t *testing.T, s store.Store, p string, d Driver) {
	randomOps(t, s, p, 20)
	h := &Mirror{}
	b := &breakable{Store: s, gate: make(chan struct{})}
	close(b.gate)
	r := store.NewReflector(b, p+"r/", h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := r.WaitForRevision(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	checkMirror(t, s, r, h, p+"r/", 0)

	// Break the watch and, before it resumes, change keys and compact past the
	// reflector's revision: the resumed watch is refused as compacted and the
	// reflector must list again.
	b.breakWatches()
	rev := randomOps(t, s, p, 50)
	d.Compact(t, s, rev)
	b.reconnect()
	rev = randomOps(t, s, p, 10)
	checkMirror(t, s, r, h, p+"r/", rev)
	AwaitRelists(r, 1)
	if r.Relists() < 1 {
		t.Fatalf("reflector did not list again after compaction (relists=%d)", r.Relists())
	}
}
