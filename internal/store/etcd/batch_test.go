package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/testenv"
)

// newStore connects to e with the group commit's metrics in a registry of its own.
func newStore(t *testing.T, cfg etcd.Options) (*etcd.Store, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	s, err := etcd.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, reg
}

// inParallel runs fn(g, report) for each g in [0, n), each in a goroutine of
// its own, and fails t with every error reported.
func inParallel(t *testing.T, n int, fn func(g int, report func(error))) {
	t.Helper()
	var mu sync.Mutex
	var errs []error
	report := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
	}
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() { fn(g, report) })
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
}

// outcome is what one contender saw of its transaction.
type outcome struct {
	key, who string
	take     bool // it wrote the key itself; otherwise a marker of its own
	res      store.TxnResult
}

// contend has 48 goroutines race over keys: each, for every key in an order
// of its own, either takes the key or records that it found the key absent
// (a marker key of its own), both on the condition that the key is absent,
// reading the key when the condition fails. It checks the outcome against
// what one-after-another transactions allow.
func contend(t *testing.T, s store.Store, prefix string, keys int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	var outs []outcome
	inParallel(t, 48, func(g int, report func(error)) {
		who := fmt.Sprintf("g%d", g)
		for _, i := range rand.Perm(keys) {
			key := fmt.Sprintf("%s/k%03d", prefix, i)
			take := rand.IntN(2) == 0
			write := key
			if !take {
				write = key + "/absent-for/" + who
			}
			res, err := s.Txn(ctx, []store.Cmp{store.Absent(key)}, []store.Op{store.Put(write, []byte(who), store.NoLease)}, []store.Op{store.Get(key)})
			if err != nil {
				report(fmt.Errorf("%s on %s: %w", who, key, err))
				return
			}
			mu.Lock()
			outs = append(outs, outcome{key: key, who: who, take: take, res: res})
			mu.Unlock()
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	kvs, _, err := s.List(ctx, prefix+"/")
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]store.KV{}
	for _, kv := range kvs {
		stored[kv.Key] = kv
	}
	winners := map[string]string{}
	for _, o := range outs {
		k := stored[o.key]
		switch {
		case o.res.Succeeded && o.take:
			if w, dup := winners[o.key]; dup {
				t.Errorf("%s taken by both %s and %s", o.key, w, o.who)
			}
			winners[o.key] = o.who
			if string(k.Value) != o.who || k.ModRevision != o.res.Revision {
				t.Errorf("%s taken by %s at revision %d, but stored as %q at %d", o.key, o.who, o.res.Revision, k.Value, k.ModRevision)
			}
		case o.res.Succeeded:
			// Its condition held: the key did not exist at its revision.
			if k.CreateRevision != 0 && k.CreateRevision <= o.res.Revision {
				t.Errorf("%s found %s absent at revision %d, but it exists since %d", o.who, o.key, o.res.Revision, k.CreateRevision)
			}
		case len(o.res.Gets) != 1 || o.res.Gets[0] == nil:
			t.Errorf("%s lost %s but read %v instead of the key", o.who, o.key, o.res.Gets)
		case string(o.res.Gets[0].Value) != string(k.Value):
			t.Errorf("%s lost %s and read %q; it holds %q", o.who, o.key, o.res.Gets[0].Value, k.Value)
		}
	}
	for i := range keys {
		key := fmt.Sprintf("%s/k%03d", prefix, i)
		if k, ok := stored[key]; ok && winners[key] != string(k.Value) {
			t.Errorf("%s holds %q, but %q was told it took it", key, k.Value, winners[key])
		}
	}
}

// TestGroupCommit: concurrent transactions that share etcd requests keep
// the outcome of running one after another; those that name a common key
// never share one.
func TestGroupCommit(t *testing.T) {
	e := testenv.StartEtcd(t)
	s, reg := newStore(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	contend(t, s, "/gc", 200)
	if n := testenv.StoreBatches(t, reg).Shared; n == 0 {
		t.Fatal("no transaction shared a request: group commit was not exercised")
	} else {
		t.Logf("%d requests carried more than one transaction", n)
	}
	if !etcd.Idle(s) {
		t.Error("a request slot or queued transaction is left after every call returned")
	}
}

// TestGroupCommitRefused: an etcd whose --max-txn-ops refuses the batches
// has each of their transactions sent by itself, with the same outcome, and
// later batches cut to its limit.
func TestGroupCommitRefused(t *testing.T) {
	e := testenv.StartEtcd(t, "--max-txn-ops=4")
	s, reg := newStore(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	contend(t, s, "/refused", 100)
	b := testenv.StoreBatches(t, reg)
	batches, refused := b.Shared, b.Refused
	t.Logf("%d batches refused, %d requests carried more than one transaction", refused, batches)
	if refused == 0 {
		t.Fatal("etcd refused no batch: the fallback was not exercised")
	}
	// The budget halves from 128 to the 4 etcd takes: a handful of refusals
	// (two requests in flight may both be refused at each step), not one
	// per batch.
	if refused > 16 {
		t.Errorf("%d batches refused: the batches were not cut to etcd's limit", refused)
	}
	if batches <= refused {
		t.Error("no batch within etcd's limit went through")
	}
	if !etcd.Idle(s) {
		t.Error("a request slot or queued transaction is left after every call returned")
	}
}

// TestGroupCommitLostAnswer: when the answer to a batch is lost after etcd
// received it (here: a timeout error in its place), the batch may have been
// committed, so each of its transactions fails with the error, as one sent
// by itself would, and none is sent again (which would write it twice).
func TestGroupCommitLostAnswer(t *testing.T) {
	e := testenv.StartEtcd(t)
	lose := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if tr, ok := req.(*etcdserverpb.TxnRequest); ok && err == nil && len(tr.Success) > 0 && tr.Success[0].GetRequestTxn() != nil {
			return rpctypes.ErrGRPCTimeout
		}
		return err
	}
	s, reg := newStore(t, etcd.Options{ClientConfig: &clientv3.Config{
		Endpoints: []string{e.Endpoint}, DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(lose)},
	}})
	ctx := context.Background()
	inParallel(t, 32, func(g int, report func(error)) {
		for i := range 20 {
			key, count := fmt.Sprintf("/lost/%d/%d", g, i), fmt.Sprintf("/lost/%d/%d/count", g, i)
			// Sent again after its batch was applied, it would find its
			// own write and fail its condition, with no error.
			res, err := s.Txn(ctx, []store.Cmp{store.Absent(key)}, []store.Op{store.Put(key, []byte("x"), store.NoLease)}, nil)
			if err == nil && !res.Succeeded {
				report(fmt.Errorf("%s: condition failed with no error", key))
			}
			// Sent again, it would write the key twice (checked below);
			// the error it gets says its outcome is unknown.
			_, _ = s.Txn(ctx, nil, []store.Op{store.Put(count, nil, store.NoLease)}, nil)
		}
	})
	if testenv.StoreBatches(t, reg).Shared == 0 {
		t.Fatal("no transaction shared a request: group commit was not exercised")
	}
	resp, err := s.Client().Get(ctx, "/lost/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if kv.Version > 1 {
			t.Errorf("%s written %d times", kv.Key, kv.Version)
		}
	}
}

// TestGroupCommitCancelled: a transaction whose context ends while it waits
// for a request fails with the context's error and is never sent.
func TestGroupCommitCancelled(t *testing.T) {
	e := testenv.StartEtcd(t)
	s, reg := newStore(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	ctx := context.Background()
	stop := time.Now().Add(2 * time.Second)
	inParallel(t, 32, func(g int, report func(error)) {
		for i := 0; time.Now().Before(stop); i++ {
			key := fmt.Sprintf("/cancel/%d/%d", g, i)
			if g%2 == 0 { // keep requests in flight
				if _, err := s.Txn(ctx, nil, []store.Op{store.Put(key, nil, store.NoLease)}, nil); err != nil {
					report(err)
					return
				}
				continue
			}
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if _, err := s.Txn(cctx, nil, []store.Op{store.Put(key, nil, store.NoLease)}, nil); !errors.Is(err, context.Canceled) {
				report(fmt.Errorf("%s with a cancelled context: got error %s, want context.Canceled", key, fmt.Sprint(err)))
				return
			}
		}
	})
	if testenv.StoreBatches(t, reg).Shared == 0 {
		t.Fatal("no transaction shared a request: group commit was not exercised")
	}
	for g := 1; g < 32; g += 2 {
		kvs, _, err := s.List(ctx, fmt.Sprintf("/cancel/%d/", g))
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) > 0 {
			t.Errorf("%s written with a cancelled context", kvs[0].Key)
		}
	}
	if !etcd.Idle(s) {
		t.Error("a request slot or queued transaction is left after every call returned")
	}
}

// TestGroupCommitLeaseGone: a transaction that names a lease that is gone
// fails with ErrLeaseNotFound; the ones it was batched with do not.
func TestGroupCommitLeaseGone(t *testing.T) {
	e := testenv.StartEtcd(t)
	s, reg := newStore(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	ctx := context.Background()
	gone, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, gone); err != nil {
		t.Fatal(err)
	}
	inParallel(t, 32, func(g int, report func(error)) {
		for i := range 20 {
			key := fmt.Sprintf("/lease/%d/%d", g, i)
			lease := store.NoLease
			if i%5 == 0 {
				lease = gone
			}
			res, err := s.Txn(ctx, []store.Cmp{store.Absent(key)}, []store.Op{store.Put(key, nil, lease)}, nil)
			switch {
			case lease == gone && !errors.Is(err, store.ErrLeaseNotFound):
				report(fmt.Errorf("%s with a revoked lease: got %+v, error %s; want ErrLeaseNotFound", key, res, fmt.Sprint(err)))
			case lease != gone && (err != nil || !res.Succeeded):
				report(fmt.Errorf("%s: got %+v, error %s; want success", key, res, fmt.Sprint(err)))
			}
		}
	})
	if testenv.StoreBatches(t, reg).Shared == 0 {
		t.Fatal("no transaction shared a request: group commit was not exercised")
	}
}

// TestGroupCommitNoSpace: with etcd's NOSPACE alarm raised (its backend
// quota reached), the transactions that write fail with etcd's error, and
// the reads and deletes they shared requests with succeed, as they do
// alone: etcd refuses a whole request that writes before applying any of
// it. Before, every transaction of such a request failed, the readiness
// probe's read among them (from a review).
func TestGroupCommitNoSpace(t *testing.T) {
	e := testenv.StartEtcd(t)
	s, reg := newStore(t, etcd.Options{Endpoints: []string{e.Endpoint}})
	ctx := context.Background()
	for g := range 16 {
		if _, err := s.Txn(ctx, nil, []store.Op{store.Put(fmt.Sprintf("/nospace/del/%d", g), []byte("x"), store.NoLease)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	cli := s.Client()
	st, err := cli.Status(ctx, e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	mc := etcdserverpb.NewMaintenanceClient(cli.ActiveConnection())
	if _, err := mc.Alarm(ctx, &etcdserverpb.AlarmRequest{Action: etcdserverpb.AlarmRequest_ACTIVATE, MemberID: st.Header.MemberId, Alarm: etcdserverpb.AlarmType_NOSPACE}); err != nil {
		t.Fatal(err)
	}
	inParallel(t, 32, func(g int, report func(error)) {
		for i := range 20 {
			var err error
			switch g % 3 {
			case 0: // writes: refused
				_, err = s.Txn(ctx, nil, []store.Op{store.Put(fmt.Sprintf("/nospace/put/%d/%d", g, i), []byte("x"), store.NoLease)}, nil)
				if !errors.Is(err, rpctypes.ErrNoSpace) {
					report(fmt.Errorf("put with NOSPACE raised: %s; want etcd's ErrNoSpace", fmt.Sprint(err)))
				}
				continue
			case 1:
				_, err = s.Txn(ctx, nil, []store.Op{store.Get(fmt.Sprintf("/nospace/del/%d", g%16))}, nil)
			case 2:
				_, err = s.Txn(ctx, nil, []store.Op{store.Delete(fmt.Sprintf("/nospace/del/%d", (g+i)%16))}, nil)
			}
			if err != nil {
				report(fmt.Errorf("read or delete with NOSPACE raised, batched with puts: %w; want it to succeed, as alone", err))
			}
		}
	})
	if testenv.StoreBatches(t, reg).Shared == 0 {
		t.Fatal("no transaction shared a request: group commit was not exercised")
	}
}
