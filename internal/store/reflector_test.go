package store_test

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/storetest"
)

func put(t *testing.T, s store.Store, key, value string) {
	t.Helper()
	if _, err := s.Txn(context.Background(), nil, []store.Op{store.Put(key, []byte(value), store.NoLease)}, nil); err != nil {
		t.Fatal(err)
	}
}

// runReflector runs a reflector of prefix /r/ over s, into a mirror, until
// the test ends.
func runReflector(t *testing.T, s store.Store) (*store.Reflector, *storetest.Mirror) {
	h := &storetest.Mirror{}
	r := store.NewReflector(s, "/r/", h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, h
}

// waitMirror waits until the mirror holds want after the restore.
func waitMirror(t *testing.T, h *storetest.Mirror, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !maps.Equal(h.Snapshot(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("mirror after the restore: %v; want %v", h.Snapshot(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReflectorAfterRestore: a store gone back in time (the backup holds
// fewer revisions) is found by Verify, and the reflector lists it again
// and follows it; without Verify its handler would keep the keys from
// before the restore and miss every later change.
func TestReflectorAfterRestore(t *testing.T) {
	backup := store.NewMemory()
	put(t, backup, "/r/a", "1")
	live := store.NewMemory()
	for i := range 20 {
		put(t, live, fmt.Sprintf("/r/k%d", i), "old")
	}
	rs := storetest.NewRestorable(live)
	r, h := runReflector(t, rs)
	ctx := t.Context()
	if err := r.WaitForRevision(ctx, 20); err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(ctx, rs); err != nil { // not behind: nothing happens
		t.Fatal(err)
	}
	rs.Restore(backup)          // restored: revision 1
	put(t, backup, "/r/b", "2") // revision 2, far below 20
	if err := r.Verify(ctx, rs); err != nil {
		t.Fatal(err)
	}
	put(t, backup, "/r/c", "3") // after the new list, seen by the new watch
	want := map[string]string{"/r/a": "1", "/r/b": "2", "/r/c": "3"}
	waitMirror(t, h, want)
	// The revision moves just after the handler has the events.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.WaitForRevision(wctx, 3); err != nil {
		t.Fatalf("reflector at revision %d after the restore; want 3: %v", r.Revision(), err)
	}
	if rev := r.Revision(); rev != 3 {
		t.Errorf("reflector at revision %d after the restore; want 3", rev)
	}
}

// A revision the handler learnt of from a write's answer (Saw), whose event
// the watch has not delivered, counts for Verify too: a store restored to a
// revision below it, though above the watch's, makes the reflector list
// again.
func TestVerifyCountsSaw(t *testing.T) {
	backup := store.NewMemory()
	put(t, backup, "/r/a", "1")
	live := store.NewMemory()
	put(t, live, "/r/a", "1")
	put(t, live, "/r/b", "2")
	rs := storetest.NewRestorable(live)
	r, h := runReflector(t, rs)
	ctx := t.Context()
	if err := r.WaitForRevision(ctx, 2); err != nil {
		t.Fatal(err)
	}
	r.Saw(10) // answers to writes up to revision 10, their events not delivered
	rs.Restore(backup)
	for i := range 4 {
		put(t, backup, fmt.Sprintf("/r/n%d", i), "new") // revisions 2 to 5: above the watch's 2, below 10
	}
	if err := r.Verify(ctx, rs); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"/r/a": "1", "/r/n0": "new", "/r/n1": "new", "/r/n2": "new", "/r/n3": "new"}
	waitMirror(t, h, want)
	storetest.AwaitRelists(r, 1)
	if n := r.Relists(); n != 1 {
		t.Errorf("%d lists after the first; want 1", n)
	}
}
