package storetest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/stickynet/stickynet/internal/store"
)

// Lossy is etcd taking a write whose answer never reaches the caller
// (loseNext: the write applies, the caller gets a deadline error) and then
// not answering at all until the test says so (down).
type Lossy struct {
	*store.Memory
	mu       sync.Mutex
	loseNext bool
	down     bool
}

// NewLossy returns a Lossy over a new in-memory store that answers.
func NewLossy() *Lossy { return &Lossy{Memory: store.NewMemory()} }

// Set makes the next write's answer lost (and the store down after it),
// or the store down, or neither.
func (l *Lossy) Set(loseNext, down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loseNext, l.down = loseNext, down
}

// Txn runs on the in-memory store unless the store is down or the answer
// is to be lost.
func (l *Lossy) Txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down {
		return store.TxnResult{}, fmt.Errorf("etcd unreachable: %w", context.DeadlineExceeded)
	}
	if l.loseNext && len(then) > 0 {
		l.loseNext, l.down = false, true
		if _, err := l.Memory.Txn(ctx, cmps, then, els); err != nil {
			return store.TxnResult{}, err
		}
		return store.TxnResult{}, fmt.Errorf("answer lost: %w", context.DeadlineExceeded)
	}
	return l.Memory.Txn(ctx, cmps, then, els)
}

// Grant grants on the in-memory store unless the store is down.
func (l *Lossy) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	l.mu.Lock()
	down := l.down
	l.mu.Unlock()
	if down {
		return 0, fmt.Errorf("etcd unreachable: %w", context.DeadlineExceeded)
	}
	return l.Memory.Grant(ctx, ttl)
}
