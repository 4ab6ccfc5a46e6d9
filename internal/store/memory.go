package store

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// Memory is an in-memory Store with etcd's semantics: one revision counter,
// compare-and-swap transactions, leases that delete their keys on expiry, and
// watches served from a history that Compact can drop. It is for tests and
// single-process use; it keeps nothing across restarts.
type Memory struct {
	mu       sync.Mutex
	rev      int64
	compact  int64
	kvs      map[string]*KV
	history  []Event // every event after compact, in revision order
	leases   map[LeaseID]*memLease
	nextID   LeaseID
	watchers map[*memWatcher]struct{}
}

type memLease struct {
	keys  map[string]struct{}
	timer *time.Timer
}

type memWatcher struct {
	prefix string
	from   int64
	ch     chan WatchResponse
	queue  []Event
	wake   chan struct{}
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		kvs:      map[string]*KV{},
		leases:   map[LeaseID]*memLease{},
		watchers: map[*memWatcher]struct{}{},
	}
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) (*KV, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.copyOf(key), nil
}

func (m *Memory) copyOf(key string) *KV {
	kv, ok := m.kvs[key]
	if !ok {
		return nil
	}
	c := *kv
	c.Value = append([]byte(nil), kv.Value...)
	return &c
}

// List implements Store.
func (m *Memory) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []KV
	for k := range m.kvs {
		if strings.HasPrefix(k, prefix) {
			out = append(out, *m.copyOf(k))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, m.rev, nil
}

// Txn implements Store.
func (m *Memory) Txn(ctx context.Context, cmps []Cmp, then, els []Op) (TxnResult, error) {
	if err := ctx.Err(); err != nil {
		return TxnResult{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ok := true
	for _, c := range cmps {
		var mod int64
		if kv, found := m.kvs[c.Key]; found {
			mod = kv.ModRevision
		}
		if mod != c.ModRevision {
			ok = false
			break
		}
	}
	ops := els
	if ok {
		ops = then
	}
	written := map[string]bool{}
	for _, op := range ops {
		if op.kind == opPut || op.kind == opDelete {
			if written[op.Key] {
				return TxnResult{}, fmt.Errorf("duplicate key %s in one transaction", op.Key)
			}
			written[op.Key] = true
		}
		if op.kind == opPut && op.Lease != NoLease {
			if _, found := m.leases[op.Lease]; !found {
				return TxnResult{}, ErrLeaseNotFound
			}
		}
	}
	res := TxnResult{Succeeded: ok}
	var events []Event
	wrote := false
	for _, op := range ops {
		switch op.kind {
		case opGet:
			res.Gets = append(res.Gets, m.copyOf(op.Key))
		case opPut:
			if !wrote {
				m.rev++
				wrote = true
			}
			events = append(events, m.put(op))
		case opDelete:
			if _, found := m.kvs[op.Key]; !found {
				continue
			}
			if !wrote {
				m.rev++
				wrote = true
			}
			events = append(events, m.del(op.Key))
		}
	}
	m.publish(events)
	res.Revision = m.rev
	return res, nil
}

// put and del change one key at the current revision; the caller holds mu and
// has already advanced the revision.
func (m *Memory) put(op Op) Event {
	old, found := m.kvs[op.Key]
	kv := &KV{Key: op.Key, Value: append([]byte(nil), op.Value...), ModRevision: m.rev, CreateRevision: m.rev, Lease: op.Lease}
	if found {
		kv.CreateRevision = old.CreateRevision
		if old.Lease != NoLease && old.Lease != op.Lease {
			if l, ok := m.leases[old.Lease]; ok {
				delete(l.keys, op.Key)
			}
		}
	}
	if op.Lease != NoLease {
		m.leases[op.Lease].keys[op.Key] = struct{}{}
	}
	m.kvs[op.Key] = kv
	c := *kv
	return Event{Type: EventPut, KV: c}
}

func (m *Memory) del(key string) Event {
	old := m.kvs[key]
	if old.Lease != NoLease {
		if l, ok := m.leases[old.Lease]; ok {
			delete(l.keys, key)
		}
	}
	delete(m.kvs, key)
	return Event{Type: EventDelete, KV: KV{Key: key, ModRevision: m.rev}}
}

// Grant implements Store.
func (m *Memory) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	secs := math.Ceil(ttl.Seconds())
	if secs < 1 {
		secs = 1
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextID++
	id := m.nextID
	l := &memLease{keys: map[string]struct{}{}}
	l.timer = time.AfterFunc(time.Duration(secs)*time.Second, func() { m.expire(id) })
	m.leases[id] = l
	return id, nil
}

// Revoke implements Store.
func (m *Memory) Revoke(ctx context.Context, id LeaseID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.expire(id)
	return nil
}

func (m *Memory) expire(id LeaseID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.leases[id]
	if !ok {
		return
	}
	l.timer.Stop()
	delete(m.leases, id)
	if len(l.keys) == 0 {
		return
	}
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	m.rev++
	events := make([]Event, 0, len(keys))
	for _, k := range keys {
		events = append(events, m.del(k))
	}
	m.publish(events)
}

// Compact drops the history before rev, as etcd's compaction does; watches
// that start before it get a CompactedError.
func (m *Memory) Compact(rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.compactLocked(rev)
}

// memHistory is the most events the store keeps for watches.
const memHistory = 100_000

func (m *Memory) compactLocked(rev int64) {
	if rev <= m.compact {
		return
	}
	m.compact = rev
	i := sort.Search(len(m.history), func(i int) bool { return m.history[i].KV.ModRevision >= rev })
	m.history = append([]Event(nil), m.history[i:]...)
}

// HistoryLen returns how many events the store keeps for watches.
func (m *Memory) HistoryLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.history)
}

// Revision returns the current revision.
func (m *Memory) Revision() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

func (m *Memory) publish(events []Event) {
	if len(events) == 0 {
		return
	}
	m.history = append(m.history, events...)
	if len(m.history) > memHistory {
		// Compact away the older half, as etcd's auto-compaction would: a
		// long-running store keeps no unbounded history, and a watch that
		// starts before it is told to list again.
		m.compactLocked(m.history[len(m.history)/2].KV.ModRevision)
	}
	for w := range m.watchers {
		w.enqueue(events)
	}
}

func (w *memWatcher) enqueue(events []Event) {
	n := len(w.queue)
	for _, e := range events {
		if e.KV.ModRevision >= w.from && strings.HasPrefix(e.KV.Key, w.prefix) {
			w.queue = append(w.queue, e)
		}
	}
	if len(w.queue) > n {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// Watch implements Store.
func (m *Memory) Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResponse {
	w := &memWatcher{prefix: prefix, from: fromRev, ch: make(chan WatchResponse), wake: make(chan struct{}, 1)}
	m.mu.Lock()
	if fromRev <= 0 {
		w.from = m.rev + 1
	}
	if fromRev > 0 && fromRev < m.compact {
		compact := m.compact
		m.mu.Unlock()
		go func() {
			defer close(w.ch)
			select {
			case w.ch <- WatchResponse{Err: &CompactedError{CompactRevision: compact}}:
			case <-ctx.Done():
			}
		}()
		return w.ch
	}
	w.enqueue(m.history)
	m.watchers[w] = struct{}{}
	m.mu.Unlock()

	go func() {
		defer close(w.ch)
		defer func() {
			m.mu.Lock()
			delete(m.watchers, w)
			m.mu.Unlock()
		}()
		for {
			m.mu.Lock()
			batch := w.queue
			w.queue = nil
			m.mu.Unlock()
			if len(batch) > 0 {
				select {
				case w.ch <- WatchResponse{Events: batch}:
				case <-ctx.Done():
					return
				}
				continue
			}
			select {
			case <-w.wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return w.ch
}

// Close implements Store; it stops every lease timer.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.leases {
		l.timer.Stop()
	}
	return nil
}
