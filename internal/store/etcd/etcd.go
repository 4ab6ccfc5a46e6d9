// Package etcd is the etcd v3 driver of internal/store: every Store call maps
// to one etcd request (List pages through large prefixes at one revision),
// except that concurrent transactions share requests (batch.go).
package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/stickynet/stickynet/internal/store"
)

// reconnectMax is the longest the client waits between attempts to
// reconnect to an etcd member it lost.
const reconnectMax = 2 * time.Second

// Options configure the driver.
type Options struct {
	// Endpoints of the etcd cluster, such as http://127.0.0.1:2379.
	Endpoints []string
	// DialTimeout bounds the first connection. Default 5 s.
	DialTimeout time.Duration
	// PageSize is the number of keys per range request in List. Default 10000.
	PageSize int64
	// KeepAliveTime is the interval of the client's keepalive pings, which
	// detect a silent connection. Default 30 s (etcd refuses pings more often
	// than every 5 s).
	KeepAliveTime time.Duration
	// KeepAliveTimeout closes a connection whose ping went unanswered this
	// long. Default 10 s.
	KeepAliveTimeout time.Duration
	// CAFile, CertFile and KeyFile secure the connection with TLS (https
	// endpoints): the CA that signed etcd's serving certificate, and a client
	// certificate and key for etcd's --client-cert-auth. Each is optional.
	CAFile, CertFile, KeyFile string
	// Username and Password authenticate to etcd when it has auth enabled.
	Username, Password string
	// ClientConfig, when set, replaces all of the above except the defaults
	// of DialTimeout and the keepalive.
	ClientConfig *clientv3.Config
	// Registerer, when set, gets the group commit's metrics
	// (stickynet_store_txn_batch_size, stickynet_store_txn_batches_refused_total).
	Registerer prometheus.Registerer
}

// Store is the etcd v3 driver.
type Store struct {
	cli      *clientv3.Client
	pageSize int64
	batch    batcher
	dialer   dialer // Diagnose's
}

var _ store.Store = (*Store)(nil)

// New connects to etcd.
func New(opts Options) (*Store, error) {
	cfg := clientv3.Config{Endpoints: opts.Endpoints, DialTimeout: opts.DialTimeout, Username: opts.Username, Password: opts.Password}
	if opts.CAFile != "" || opts.CertFile != "" || opts.KeyFile != "" {
		if (opts.CertFile == "") != (opts.KeyFile == "") {
			return nil, fmt.Errorf("etcd client certificate %q and key %q: give both or neither", opts.CertFile, opts.KeyFile)
		}
		info := transport.TLSInfo{CertFile: opts.CertFile, KeyFile: opts.KeyFile, TrustedCAFile: opts.CAFile}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS (CA %q, certificate %q, key %q): %w", opts.CAFile, opts.CertFile, opts.KeyFile, err)
		}
		cfg.TLS = tlsCfg
	}
	if opts.ClientConfig != nil {
		cfg = *opts.ClientConfig
	}
	cfg.DialTimeout = cmp.Or(cfg.DialTimeout, 5*time.Second)
	// Keepalive pings find a connection that went silent (a hung member, a
	// black-holed path): without them a watch on it waits forever, with no
	// error, and the caches it feeds go stale while other members are fine.
	cfg.DialKeepAliveTime = cmp.Or(cfg.DialKeepAliveTime, opts.KeepAliveTime, 30*time.Second)
	cfg.DialKeepAliveTimeout = cmp.Or(cfg.DialKeepAliveTimeout, opts.KeepAliveTimeout, 10*time.Second)
	// gRPC's default reconnect back-off grows to 2 min: after an outage of
	// half a minute, the client would try etcd again only some 20–40 s
	// after it was back, and every admission meanwhile would fail. Cap it
	// at reconnectMax.
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
		MinConnectTimeout: cfg.DialTimeout,
	}))
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		// With authentication the client logs in as it connects, and its
		// error is then the bare deadline, whatever the connection failed
		// on: say why, as Diagnose does for a connected store.
		ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
		derr := dialer{endpoints: cfg.Endpoints, tls: cfg.TLS, timeout: cfg.DialTimeout}.diagnose(ctx)
		cancel()
		if derr != nil {
			return nil, fmt.Errorf("connect to etcd %v: %w (%w)", cfg.Endpoints, err, derr)
		}
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, err)
	}
	ps := opts.PageSize
	if ps <= 0 {
		ps = 10000
	}
	s := &Store{cli: cli, pageSize: ps, dialer: dialer{endpoints: cfg.Endpoints, tls: cfg.TLS, timeout: cfg.DialTimeout}}
	if opts.Registerer != nil {
		s.batch.register(opts.Registerer)
	}
	return s, nil
}

// Client returns the underlying etcd client (for benchmarks that compare against raw requests).
func (s *Store) Client() *clientv3.Client { return s.cli }

func fromPB(kv *mvccpb.KeyValue) store.KV {
	return store.KV{
		Key: string(kv.Key), Value: kv.Value,
		CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Lease: store.LeaseID(kv.Lease),
	}
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (*store.KV, error) {
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("etcd get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	kv := fromPB(resp.Kvs[0])
	return &kv, nil
}

// List implements store.Store. Pages are read at the revision of the first page.
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	var out []store.KV
	var rev int64
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(s.pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("etcd list %s: %w", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
			if out == nil {
				out = make([]store.KV, 0, resp.Count)
			}
		}
		for _, kv := range resp.Kvs {
			out = append(out, fromPB(kv))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func toOps(ops []store.Op) []clientv3.Op {
	out := make([]clientv3.Op, len(ops))
	for i, op := range ops {
		switch {
		case op.IsGet():
			out[i] = clientv3.OpGet(op.Key)
		case op.IsPut():
			if op.Lease != store.NoLease {
				out[i] = clientv3.OpPut(op.Key, string(op.Value), clientv3.WithLease(clientv3.LeaseID(op.Lease)))
			} else {
				out[i] = clientv3.OpPut(op.Key, string(op.Value))
			}
		case op.IsDelete():
			out[i] = clientv3.OpDelete(op.Key)
		}
	}
	return out
}

func compares(cmps []store.Cmp) []clientv3.Cmp {
	cs := make([]clientv3.Cmp, len(cmps))
	for i, c := range cmps {
		cs[i] = clientv3.Compare(clientv3.ModRevision(c.Key), "=", c.ModRevision)
	}
	return cs
}

// result is a transaction's outcome: rev is the store's revision after it,
// responses those of the branch that ran.
func result(succeeded bool, rev int64, responses []*etcdserverpb.ResponseOp) store.TxnResult {
	res := store.TxnResult{Succeeded: succeeded, Revision: rev}
	for _, r := range responses {
		rr := r.GetResponseRange()
		if rr == nil {
			continue
		}
		if len(rr.Kvs) == 0 {
			res.Gets = append(res.Gets, nil)
			continue
		}
		kv := fromPB(rr.Kvs[0])
		res.Gets = append(res.Gets, &kv)
	}
	return res
}

// Grant implements store.Store.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	secs := int64(math.Ceil(ttl.Seconds()))
	if secs < 1 {
		secs = 1
	}
	resp, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return 0, fmt.Errorf("etcd grant lease of %ds: %w", secs, err)
	}
	return store.LeaseID(resp.ID), nil
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	_, err := s.cli.Revoke(ctx, clientv3.LeaseID(id))
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("etcd revoke lease %x: %w", int64(id), err)
	}
	return nil
}

// Watch implements store.Store.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) <-chan store.WatchResponse {
	out := make(chan store.WatchResponse)
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRev > 0 {
		opts = append(opts, clientv3.WithRev(fromRev))
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.cli.Watch(wctx, prefix, opts...)
	go func() {
		defer close(out)
		defer cancel()
		for resp := range wch {
			var wr store.WatchResponse
			switch {
			case resp.CompactRevision != 0:
				wr.Err = &store.CompactedError{CompactRevision: resp.CompactRevision}
			case resp.Err() != nil:
				wr.Err = fmt.Errorf("etcd watch %s: %w", prefix, resp.Err())
			default:
				wr.Events = make([]store.Event, len(resp.Events))
				for i, ev := range resp.Events {
					e := store.Event{KV: fromPB(ev.Kv)}
					if ev.Type == clientv3.EventTypeDelete {
						e.Type = store.EventDelete
						e.KV.Value = nil
					}
					wr.Events[i] = e
				}
			}
			if len(wr.Events) == 0 && wr.Err == nil {
				continue // progress notification
			}
			select {
			case out <- wr:
			case <-ctx.Done():
				return
			}
			if wr.Err != nil {
				return
			}
		}
	}()
	return out
}

// Close implements store.Store.
func (s *Store) Close() error { return s.cli.Close() }
