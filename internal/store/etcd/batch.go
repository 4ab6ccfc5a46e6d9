package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickynet/stickynet/internal/promreg"
	"github.com/stickynet/stickynet/internal/store"
)

// Group commit. A transaction that finds fewer than maxSending of this
// client's transaction requests in flight goes to etcd at once, by itself.
// The ones that arrive meanwhile wait, and go together when a request comes
// back: each as a nested transaction (If/Then/Else of its own) of one etcd
// request, so each keeps its own conditions and result, and etcd commits
// them under one revision. etcd evaluates every nested condition before it
// writes anything, so only transactions that name no common key share a
// request: then the outcome is that of running them one after another.
// Under load this trades an etcd request, a raft entry and a watch response
// per transaction for one per batch (make bench-ipam, its kinds then run one
// after another: 0.72-0.78 instead of 0.51-0.59 x the rate of raw single-key
// transactions on the 2-core VM of README); without load nothing waits.
const (
	// maxSending is how many transaction requests of this client may be in
	// flight (re-sends of a refused batch aside) before the next
	// transactions wait to be batched, and maxBatch
	// how many transactions one carries at most. Of 1/64, 2/32, 4/16 and
	// 8/8 (four make bench-ipam runs each), 2/32 had the best rate and no
	// worse a p99.
	maxSending = 2
	maxBatch   = 32
	// maxBatchBytes bounds the bytes (keys and values) of a request well
	// below etcd's default --max-request-bytes (1.5 MiB) and the client's 2 MiB.
	maxBatchBytes = 1 << 20
	// maxTxnOps is etcd's default --max-txn-ops. A nested transaction counts
	// against the outer one's budget: a request of n transactions, the
	// largest with k operations in a branch, needs n + k <= the limit. An
	// etcd with a lower limit refuses larger batches: each transaction of a
	// refused batch is then sent by itself, and the limit the batches are
	// cut to halves until etcd takes them.
	maxTxnOps = 128
	// slowRequest is how long a request may keep its slot. One slower gives
	// the slot up, and the next transactions go out without waiting for it:
	// a member that went silent (a node powered off, a black-holed path)
	// holds the requests the client sent it until the keepalive closes the
	// connection (up to 40 s by default), and with both slots held so every
	// transaction waited for that, while the other members would answer.
	// etcd answers in milliseconds; it warns of requests slower than 100 ms.
	slowRequest = time.Second
)

// call is one Store.Txn.
type call struct {
	ctx       context.Context
	cmps      []store.Cmp
	then, els []store.Op
	size      int // operations in its largest part (conditions, then, else)
	bytes     int // of its keys and values
	res       store.TxnResult
	err       error
	alone     bool // etcd refused its batch as a whole: send it by itself
	done      chan struct{}
}

func (c *call) keys(yield func(string) bool) {
	for _, x := range c.cmps {
		if !yield(x.Key) {
			return
		}
	}
	for _, ops := range [][]store.Op{c.then, c.els} {
		for _, op := range ops {
			if !yield(op.Key) {
				return
			}
		}
	}
}

func newCall(ctx context.Context, cmps []store.Cmp, then, els []store.Op) *call {
	c := &call{ctx: ctx, cmps: cmps, then: then, els: els, size: max(len(cmps), len(then), len(els))}
	for k := range c.keys {
		c.bytes += len(k)
	}
	for _, op := range then {
		c.bytes += len(op.Value)
	}
	return c
}

// batcher queues the transactions that wait for a request.
type batcher struct {
	mu      sync.Mutex
	queue   []*call
	sending int // request slots taken (maxSending at most): requests in flight but slow ones and re-sends of a refused batch
	opsCap  int // the operation budget of a request (0: maxTxnOps), halved when etcd says too many
	// size observes the transactions of each request; refused counts the
	// batches refused as a whole and sent again one by one (nil: no metrics).
	size    prometheus.Observer
	refused prometheus.Counter
}

// register makes b's metrics and registers them with reg.
func (b *batcher) register(reg prometheus.Registerer) {
	b.size = promreg.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "stickynet_store_txn_batch_size",
		Help:    "Transactions per etcd transaction request (group commit: concurrent transactions share requests).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
	}))
	b.refused = promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stickynet_store_txn_batches_refused_total",
		Help: "Batches of transactions etcd refused as a whole (a lease gone, a limit), whose transactions were each sent again by itself.",
	}))
}

func (b *batcher) observe(n int) {
	if b.size != nil {
		b.size.Observe(float64(n))
	}
}

// Txn implements store.Store: the transaction goes to etcd by itself or,
// while others are in flight, with the ones that arrive meanwhile (group
// commit, above).
func (s *Store) Txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	c := newCall(ctx, cmps, then, els)
	b := &s.batch
	if 2*c.size > maxTxnOps || 2*c.bytes > maxBatchBytes {
		b.observe(1)
		return s.txn(ctx, cmps, then, els) // too large to share a request
	}
	b.mu.Lock()
	if b.sending < maxSending {
		b.sending++
		b.mu.Unlock()
		b.observe(1)
		slot := s.holdSlot()
		res, err := s.txn(ctx, cmps, then, els)
		if slot.release() {
			s.sent()
		}
		return res, err
	}
	c.done = make(chan struct{})
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		// Still queued, it is never sent; in flight, its outcome is
		// unknown, as for a transaction sent by itself whose context ends
		// before etcd answers; answered as the context ended (select picks
		// either ready case), its outcome is known.
		b.mu.Lock()
		if i := slices.Index(b.queue, c); i >= 0 {
			b.queue = slices.Delete(b.queue, i, i+1)
		}
		b.mu.Unlock()
		select {
		case <-c.done:
		default:
			return store.TxnResult{}, fmt.Errorf("etcd txn: %w", ctx.Err())
		}
	}
	if c.alone {
		b.observe(1)
		return s.txn(ctx, cmps, then, els)
	}
	return c.res, c.err
}

// slot is a request slot held by a request in flight.
type slot struct {
	timer *time.Timer
	given atomic.Bool // given up: the request was slow
}

// holdSlot starts the clock of the slot the caller has taken for its
// request: once the request is slowRequest old the slot goes to the
// transactions that queued meanwhile, or is freed (sent).
func (s *Store) holdSlot() *slot {
	sl := &slot{}
	sl.timer = time.AfterFunc(slowRequest, func() {
		if sl.given.CompareAndSwap(false, true) {
			s.sent()
		}
	})
	return sl
}

// release stops the slot's clock when the request is back, and reports
// whether the caller still holds the slot (false: it was given up).
func (sl *slot) release() bool {
	sl.timer.Stop()
	return sl.given.CompareAndSwap(false, true)
}

// sent frees a request slot, or hands it to a sender of the transactions
// that queued meanwhile.
func (s *Store) sent() {
	b := &s.batch
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.sending--
		return
	}
	go s.drain()
}

// drain sends the queued transactions, a batch per request, until none is left.
func (s *Store) drain() {
	b := &s.batch
	for {
		b.mu.Lock()
		batch, opsCap := b.take()
		if len(batch) == 0 {
			b.sending--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		slot := s.holdSlot()
		s.send(batch, opsCap)
		if !slot.release() {
			return // the request was slow: another sender has the slot
		}
	}
}

// take removes the next batch from the queue, in order: transactions that
// name a key of one already taken, or would pass a request's limits, stay
// queued for a later request (the other request slot may send one at the
// same time, as two transactions sent by themselves would be).
// It returns the operation budget the batch was cut to.
func (b *batcher) take() ([]*call, int) {
	var batch []*call
	keys := map[string]bool{}
	largest, bytes := 0, 0
	opsCap := cmp.Or(b.opsCap, maxTxnOps)
	rest := b.queue[:0]
	for _, c := range b.queue {
		if err := c.ctx.Err(); err != nil {
			c.err = fmt.Errorf("etcd txn: %w", err) // never sent
			close(c.done)
			continue
		}
		// The first always fits: a transaction too large to share a
		// request is sent by itself without queueing.
		fits := len(batch) == 0 || len(batch) < maxBatch && len(batch)+1+max(largest, c.size) <= opsCap && bytes+c.bytes <= maxBatchBytes
		for k := range c.keys {
			if !fits {
				break
			}
			fits = !keys[k]
		}
		if !fits {
			rest = append(rest, c)
			continue
		}
		for k := range c.keys {
			keys[k] = true
		}
		largest, bytes = max(largest, c.size), bytes+c.bytes
		batch = append(batch, c)
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	return batch, opsCap
}

// send commits a batch in one request, each transaction nested, and hands
// each its result; opsCap is the operation budget it was cut to. When etcd
// refuses the request as a whole before applying any of it (refused), each
// is sent again by itself, so that only its own outcome decides its result.
// Any other error may come after the request was committed (a timeout, a
// lost connection), so each gets the error, as a transaction sent by itself
// would.
func (s *Store) send(batch []*call, opsCap int) {
	defer func() {
		for _, c := range batch {
			close(c.done)
		}
	}()
	s.batch.observe(len(batch))
	if len(batch) == 1 {
		c := batch[0]
		c.res, c.err = s.txn(c.ctx, c.cmps, c.then, c.els)
		return
	}
	// The request lives while any of its callers still waits for it.
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	defer cancel()
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	for _, c := range batch {
		stop := context.AfterFunc(c.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	ops := make([]clientv3.Op, len(batch))
	for i, c := range batch {
		ops[i] = clientv3.OpTxn(compares(c.cmps), toOps(c.then), toOps(c.els))
	}
	resp, err := s.cli.Txn(ctx).Then(ops...).Commit()
	if err == nil && len(resp.Responses) != len(batch) {
		err = fmt.Errorf("etcd answered %d of %d nested transactions", len(resp.Responses), len(batch))
	}
	if refused(err) {
		if s.batch.refused != nil {
			s.batch.refused.Inc()
		}
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			// Halve the budget this batch was cut to (once for the
			// batches cut to one budget, even if both slots send one).
			s.batch.mu.Lock()
			s.batch.opsCap = min(cmp.Or(s.batch.opsCap, maxTxnOps), max(1, opsCap/2))
			s.batch.mu.Unlock()
		}
		for _, c := range batch {
			c.alone = true
		}
		return
	}
	for i, c := range batch {
		var nested *etcdserverpb.TxnResponse
		if err == nil {
			nested = resp.Responses[i].GetResponseTxn()
		}
		if nested == nil {
			c.err = fmt.Errorf("etcd txn: %w", cmp.Or(err, errors.New("no nested response")))
			continue
		}
		c.res = result(nested.Succeeded, resp.Header.Revision, nested.Responses)
	}
}

// refused reports whether etcd (or the client, before sending) turned a
// request down without applying any of it, for a reason that a smaller
// request may not have: a transaction's lease gone, a key written twice,
// too many operations or bytes, one transaction not permitted, or its
// backend quota reached (NOSPACE: etcd refuses a request that writes
// anything, and serves the reads and deletes sent alone).
func refused(err error) bool {
	for _, r := range []error{rpctypes.ErrLeaseNotFound, rpctypes.ErrDuplicateKey, rpctypes.ErrTooManyOps, rpctypes.ErrRequestTooLarge, rpctypes.ErrPermissionDenied, rpctypes.ErrNoSpace} {
		if errors.Is(err, r) {
			return true
		}
	}
	// The client's own limit on a message it sends.
	return status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "trying to send message larger than max")
}

// txn sends one transaction by itself.
func (s *Store) txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	resp, err := s.cli.Txn(ctx).If(compares(cmps)...).Then(toOps(then)...).Else(toOps(els)...).Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return store.TxnResult{}, store.ErrLeaseNotFound
		}
		return store.TxnResult{}, fmt.Errorf("etcd txn: %w", err)
	}
	return result(resp.Succeeded, resp.Header.Revision, resp.Responses), nil
}
