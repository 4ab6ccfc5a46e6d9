package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Handler receives the state under a prefix from a Reflector. Calls are
// serialized. Replace hands over the whole state at rev (after the first list
// and after every re-list); Apply hands over the events of later revisions.
type Handler interface {
	Replace(kvs []KV, rev int64)
	Apply(events []Event)
}

// Reflector keeps a Handler in step with a prefix: it lists, then watches from
// the next revision; when the watch fails it resumes from the last revision
// seen, and when that revision was compacted away it lists again.
type Reflector struct {
	store   Store
	prefix  string
	handler Handler

	mu        sync.Mutex
	cond      *sync.Cond
	rev       int64 // last revision handed to the handler
	saw       int64 // highest revision the handler learnt of otherwise (Saw)
	synced    bool
	relists   int
	wentBack  bool               // Verify found the store behind rev: list again
	stopWatch context.CancelFunc // ends the running watch
}

// NewReflector returns a Reflector; call Run to start it.
func NewReflector(s Store, prefix string, h Handler) *Reflector {
	r := &Reflector{store: s, prefix: prefix, handler: h}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// Run lists and watches until ctx ends. Failures are logged and retried with backoff.
func (r *Reflector) Run(ctx context.Context) {
	log := klog.FromContext(ctx).WithValues("prefix", r.prefix)
	backoff := 100 * time.Millisecond
	needList := true
	for ctx.Err() == nil {
		if needList {
			kvs, rev, err := r.store.List(ctx, r.prefix)
			if err != nil {
				if ctx.Err() == nil {
					log.Error(err, "List failed; retrying", "backoff", backoff)
				}
				sleep(ctx, backoff)
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			r.handler.Replace(kvs, rev)
			r.advance(rev, true)
			needList = false
		}
		progressed, err := r.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errWentBack) { // Verify logged it
			needList = true
			continue
		}
		if progressed {
			backoff = 100 * time.Millisecond
		}
		if IsCompacted(err) {
			log.Info("Watch revision compacted; listing again", "revision", r.Revision(), "err", err)
			needList = true
			continue
		}
		log.Error(err, "Watch ended; resuming", "revision", r.Revision(), "backoff", backoff)
		sleep(ctx, backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

// watch follows the prefix until the watch fails; progressed reports whether
// it delivered any event.
func (r *Reflector) watch(ctx context.Context) (progressed bool, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	if r.wentBack {
		r.wentBack = false
		r.mu.Unlock()
		return false, errWentBack
	}
	r.stopWatch = cancel
	from := r.rev + 1
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.stopWatch = nil
		if r.wentBack {
			r.wentBack = false
			err = errWentBack
		}
	}()
	for resp := range r.store.Watch(wctx, r.prefix, from) {
		if resp.Err != nil {
			return progressed, resp.Err
		}
		if len(resp.Events) == 0 {
			continue
		}
		progressed = true
		r.handler.Apply(resp.Events)
		r.advance(resp.Events[len(resp.Events)-1].KV.ModRevision, false)
	}
	if err := ctx.Err(); err != nil {
		return progressed, err
	}
	return progressed, errors.New("watch closed")
}

// advance records rev as handed to the handler. A list's revision is taken
// as it is: after the store went back in time it is below the last one.
func (r *Reflector) advance(rev int64, list bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if list {
		if r.synced {
			r.relists++
		}
		r.synced = true
		r.rev = rev
		r.saw = 0
	}
	if rev > r.rev {
		r.rev = rev
	}
	r.cond.Broadcast()
}

// errWentBack ends a watch when Verify found the store behind it.
var errWentBack = errors.New("the store's revision went back")

// Verify reads the store's current revision through s (the reflector's
// store, or another client of the same one) and returns the read's error.
// A revision below the last one handed to the handler (or passed to Saw)
// before the read means the store went back in time: etcd restored from a
// snapshot without --bump-revision. Its watch would then stay silent until
// the revision passed the old one, and the handler would keep the state
// from before the restore; so the reflector lists again. Call it
// periodically (a health probe's read).
func (r *Reflector) Verify(ctx context.Context, s Store) error {
	r.mu.Lock()
	before := max(r.rev, r.saw)
	r.mu.Unlock()
	res, err := s.Txn(ctx, nil, []Op{Get(r.prefix)}, nil)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.synced && res.Revision < before && !r.wentBack {
		klog.FromContext(ctx).Info("The store's revision is behind the last one seen (etcd restored from a snapshot without --bump-revision?); listing again",
			"prefix", r.prefix, "storeRevision", res.Revision, "seen", before)
		r.wentBack = true
		if r.stopWatch != nil {
			r.stopWatch()
		}
	}
	return nil
}

// Saw records that the handler holds the store's state at rev, learnt
// otherwise than from the reflector (the answer to its own write), so that
// Verify compares the store's revision with it too: writes answered just
// before a restore, whose events the watch had not delivered yet, would
// otherwise stay in the handler's state, with the store behind only the
// revision the watch had reached, and soon not even that.
func (r *Reflector) Saw(rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.saw = max(r.saw, rev)
}

// Revision returns the last revision handed to the handler.
func (r *Reflector) Revision() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rev
}

// Relists returns how many times the reflector listed again after its first list.
func (r *Reflector) Relists() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.relists
}

// WaitForRevision blocks until the handler has seen rev (or the first list, for rev 0).
func (r *Reflector) WaitForRevision(ctx context.Context, rev int64) error {
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.cond.Broadcast()
	})
	defer stop()
	r.mu.Lock()
	defer r.mu.Unlock()
	for !r.synced || r.rev < rev {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.cond.Wait()
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
