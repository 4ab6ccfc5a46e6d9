package app

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/store"
)

// dialing is a store that goes on connecting in the background after a
// first attempt that etcd did not answer. With etcd authentication the
// client logs in as it connects, and a replica that started while etcd was
// out of reach exited there, again and again into CrashLoopBackOff, and came
// back up to 5 min after etcd did; now it starts, not ready (the address
// cache waits for the store), and is ready once etcd answers. Its calls wait
// for the connection as long as their context lets them.
type dialing struct {
	ready chan struct{}
	s     store.Store // set before ready is closed
	// refused is closed when etcd refuses the connection for good (a wrong
	// password once etcd answers): err says why, calls fail with it, and
	// the webhook stops (Refused). Before, such a refusal after a first
	// unanswered attempt was retried for good, logged as "did not answer".
	refused chan struct{}
	err     error // set before refused is closed
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	last    error // the last attempt's error, for Diagnose
}

// dialRetry is how long dialing waits between attempts (a var for tests).
var dialRetry = 2 * time.Second

// openDialing connects with connect: at once when that works or fails for
// good (an error that is not etcd's silence, such as a wrong password or a
// missing certificate file: the binary stops, naming it), else in the
// background until it works or Close.
func openDialing(ctx context.Context, connect func() (store.Store, error)) (store.Store, error) {
	s, err := connect()
	if err == nil {
		return s, nil
	}
	if !unanswered(err) {
		return nil, err
	}
	log := klog.FromContext(ctx)
	log.Error(err, "etcd did not answer; connecting again in the background, not ready meanwhile", "every", dialRetry)
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &dialing{ready: make(chan struct{}), refused: make(chan struct{}), cancel: cancel, done: make(chan struct{}), last: err}
	go func() {
		defer close(d.done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(dialRetry):
			}
			s, err := connect()
			if err == nil {
				d.s = s
				close(d.ready)
				log.Info("Connected to etcd")
				return
			}
			if !unanswered(err) {
				d.err = fmt.Errorf("etcd refused the connection: %w", err)
				close(d.refused)
				log.Error(err, "etcd refused the connection; not connecting again")
				return
			}
			d.mu.Lock()
			d.last = err
			d.mu.Unlock()
			log.Error(err, "etcd did not answer; connecting again", "in", dialRetry)
		}
	}()
	return d, nil
}

// Refused is closed when etcd refuses the connection for good; the
// returned function then says why.
func (d *dialing) Refused() (<-chan struct{}, func() error) {
	return d.refused, func() error { return d.err }
}

// unanswered reports whether a connection failed because etcd did not
// answer (down, or out of reach), not because of what was asked.
func unanswered(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError // what the client makes of etcd's own "no leader", "leader changed"
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

func (d *dialing) wait(ctx context.Context) (store.Store, error) {
	select {
	case <-d.ready:
		return d.s, nil
	case <-d.refused:
		return nil, d.err
	case <-ctx.Done():
		return nil, fmt.Errorf("not connected to etcd yet: %w", ctx.Err())
	}
}

func (d *dialing) Get(ctx context.Context, key string) (*store.KV, error) {
	s, err := d.wait(ctx)
	if err != nil {
		return nil, err
	}
	return s.Get(ctx, key)
}

func (d *dialing) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	s, err := d.wait(ctx)
	if err != nil {
		return nil, 0, err
	}
	return s.List(ctx, prefix)
}

func (d *dialing) Txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	s, err := d.wait(ctx)
	if err != nil {
		return store.TxnResult{}, err
	}
	return s.Txn(ctx, cmps, then, els)
}

func (d *dialing) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	s, err := d.wait(ctx)
	if err != nil {
		return 0, err
	}
	return s.Grant(ctx, ttl)
}

func (d *dialing) Revoke(ctx context.Context, id store.LeaseID) error {
	s, err := d.wait(ctx)
	if err != nil {
		return err
	}
	return s.Revoke(ctx, id)
}

func (d *dialing) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse {
	s, err := d.wait(ctx)
	if err != nil {
		ch := make(chan store.WatchResponse, 1)
		ch <- store.WatchResponse{Err: err}
		close(ch)
		return ch
	}
	return s.Watch(ctx, prefix, fromRev)
}

// Diagnose is the store's once connected (see storeProbe); until then, the
// last attempt's error, which says why (etcd.New diagnoses a connection
// that failed). It used to wait for the connection, and /readyz said only
// that the store was not connected yet.
func (d *dialing) Diagnose(ctx context.Context) error {
	select {
	case <-d.ready:
	case <-d.refused:
		return d.err
	default:
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.last
	}
	if dg, ok := d.s.(diagnoser); ok {
		return dg.Diagnose(ctx)
	}
	return nil
}

// Close stops connecting, and closes the store if connected.
func (d *dialing) Close() error {
	d.cancel()
	<-d.done
	select {
	case <-d.ready:
		return d.s.Close()
	default:
		return nil
	}
}
