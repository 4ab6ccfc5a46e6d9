package storetest

import (
	"context"
	"sync"
	"time"

	"github.com/stickynet/stickynet/internal/store"
)

// Restorable is a store that can be swapped for another one, as etcd
// restored from an older snapshot (without --bump-revision) is: its
// revision is behind what clients have seen. Watches already running stay
// on the old store, as a watch does that resumes on the restored etcd
// from a revision it has not reached: nothing arrives.
type Restorable struct {
	mu  sync.Mutex
	cur store.Store
}

// NewRestorable returns a Restorable over s.
func NewRestorable(s store.Store) *Restorable { return &Restorable{cur: s} }

// Restore swaps the store for s.
func (r *Restorable) Restore(s store.Store) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur = s
}

func (r *Restorable) s() store.Store {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Get reads from the current store.
func (r *Restorable) Get(ctx context.Context, key string) (*store.KV, error) {
	return r.s().Get(ctx, key)
}

// List lists from the current store.
func (r *Restorable) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	return r.s().List(ctx, prefix)
}

// Txn runs on the current store.
func (r *Restorable) Txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	return r.s().Txn(ctx, cmps, then, els)
}

// Grant grants on the current store.
func (r *Restorable) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	return r.s().Grant(ctx, ttl)
}

// Revoke revokes on the current store.
func (r *Restorable) Revoke(ctx context.Context, id store.LeaseID) error {
	return r.s().Revoke(ctx, id)
}

// Watch watches the current store; the watch stays on it after a Restore.
func (r *Restorable) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse {
	return r.s().Watch(ctx, prefix, fromRev)
}

// Close does nothing: the stores are the caller's.
func (r *Restorable) Close() error { return nil }
