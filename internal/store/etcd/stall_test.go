package etcd_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/store/storetest"
	"github.com/stickynet/stickynet/internal/testenv"
)

// freezer is a TCP proxy that can stop moving bytes while keeping its
// connections open: a hung etcd member or a black-holed path.
type freezer struct {
	ln     net.Listener
	frozen atomic.Bool
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln}
	var mu sync.Mutex
	var conns []net.Conn
	pipe := func(dst, src net.Conn) {
		defer f.wg.Done()
		defer dst.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			for f.frozen.Load() {
				time.Sleep(20 * time.Millisecond)
			}
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			f.wg.Add(2)
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	t.Cleanup(func() {
		f.frozen.Store(false)
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		f.wg.Wait()
	})
	return f
}

// A watch whose connection goes silent while another endpoint is healthy
// recovers through the client's keepalive: the reflector (and the cache it
// feeds) catches up with writes made meanwhile instead of waiting forever.
func TestWatchSurvivesSilentConnection(t *testing.T) {
	e := testenv.StartEtcd(t)
	f := newFreezer(t, e.Endpoint[len("http://"):])
	via := "http://" + f.ln.Addr().String()
	s := dial(t, etcd.Options{Endpoints: []string{via}, KeepAliveTime: 5 * time.Second, KeepAliveTimeout: 2 * time.Second})
	w := dial(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := &storetest.Mirror{}
	r := store.NewReflector(s, "/stall/", h)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	put := func(i int) int64 {
		res, err := w.Txn(ctx, nil, []store.Op{store.Put(fmt.Sprintf("/stall/%d", i), []byte("v"), store.NoLease)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res.Revision
	}
	wait := func(rev int64, d time.Duration) error {
		wctx, c := context.WithTimeout(ctx, d)
		defer c()
		return r.WaitForRevision(wctx, rev)
	}
	if err := wait(put(0), 10*time.Second); err != nil {
		t.Fatalf("before the freeze: %v", err)
	}
	// The healthy member the client may fail over to.
	s.Client().SetEndpoints(via, e.Endpoint)
	f.frozen.Store(true)
	var rev int64
	for i := 1; i <= 10; i++ {
		rev = put(i)
	}
	if err := wait(rev, 30*time.Second); err != nil {
		t.Fatalf("30 s after its connection went silent the watch is at revision %d of %d: %v", r.Revision(), rev, err)
	}
	if n := len(h.Snapshot()); n != 11 {
		t.Fatalf("the cache holds %d of 11 keys", n)
	}
}

// Transactions keep going to the members that answer while one member is
// silent: the client sends every other request to it (round robin), and
// each of those holds its request slot only until it is slow, not until the
// keepalive gives up on the connection. Before, the first two such requests
// took both slots and every transaction after them waited in the queue,
// never sent, until its context ended.
func TestTxnsPassASilentMember(t *testing.T) {
	e := testenv.StartEtcd(t)
	f := newFreezer(t, e.Endpoint[len("http://"):])
	via := "http://" + f.ln.Addr().String()
	// The keepalive would close the silent connection only after 40 s.
	s := dial(t, etcd.Options{Endpoints: []string{via, e.Endpoint}, KeepAliveTime: 30 * time.Second, KeepAliveTimeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	put := func(ctx context.Context, key string) error {
		_, err := s.Txn(ctx, nil, []store.Op{store.Put(key, []byte("v"), store.NoLease)}, nil)
		return err
	}
	for i := range 4 { // both members answer
		if err := put(ctx, fmt.Sprintf("/pass/before/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	f.frozen.Store(true)
	// Callers that wait long: those sent to the silent member stay in
	// flight for the rest of the test.
	for i := range 6 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = put(ctx, fmt.Sprintf("/pass/long/%d", i)) }()
		time.Sleep(50 * time.Millisecond)
	}
	passed := 0
	var errs []error
	for i := range 4 {
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		err := put(sctx, fmt.Sprintf("/pass/short/%d", i))
		scancel()
		if err == nil {
			passed++
		} else {
			errs = append(errs, err)
		}
	}
	if passed == 0 {
		t.Fatalf("none of 4 transactions, each given 3 s, passed while one of two members was silent: %v", errs)
	}
	// The slow requests gave their slots up: none may be taken twice over.
	cancel()
	wg.Wait()
	if !etcd.Idle(s) {
		t.Error("request slots still taken once every transaction returned")
	}
}
