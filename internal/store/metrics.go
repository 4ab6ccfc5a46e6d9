package store

import (
	"context"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stickynet/stickynet/internal/promreg"
)

// Request results in the stickynet_store_request_duration_seconds metric.
const (
	ResultOK       = "ok"
	ResultConflict = "conflict" // a transaction whose conditions did not hold
	ResultError    = "error"
)

// Instrument returns s with the time of each request recorded in reg as
// stickynet_store_request_duration_seconds{op,result}: op is get, list,
// txn, read (a transaction of reads only), grant or revoke; result is ok,
// conflict (a transaction whose conditions did not hold: another writer
// came first) or error. Watches are not timed. Several stores instrumented
// in one registry share the metric.
func Instrument(s Store, reg prometheus.Registerer) Store {
	h := promreg.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "stickynet_store_request_duration_seconds",
		Help: "Time of a request to the state store (etcd), by operation (get, list, txn, read, grant, revoke) and result (ok, conflict, error).",
		Buckets: []float64{
			.0005, .001, .002, .003, .004, .005, .0075, .01, .0125, .015, .02, .03, .05, .1, .25, .5, 1, 2.5, 5, 10,
		},
	}, []string{"op", "result"}))
	return &instrumented{Store: s, h: h}
}

type instrumented struct {
	Store
	h *prometheus.HistogramVec
}

// observe records a request that began at start: conflict says a
// transaction's conditions did not hold.
func (s *instrumented) observe(op string, start time.Time, err error, conflict bool) {
	result := ResultOK
	switch {
	case err != nil:
		result = ResultError
	case conflict:
		result = ResultConflict
	}
	s.h.WithLabelValues(op, result).Observe(time.Since(start).Seconds())
}

func (s *instrumented) Get(ctx context.Context, key string) (*KV, error) {
	start := time.Now()
	kv, err := s.Store.Get(ctx, key)
	s.observe("get", start, err, false)
	return kv, err
}

func (s *instrumented) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	start := time.Now()
	kvs, rev, err := s.Store.List(ctx, prefix)
	s.observe("list", start, err, false)
	return kvs, rev, err
}

func (s *instrumented) Txn(ctx context.Context, cmps []Cmp, then, els []Op) (TxnResult, error) {
	start := time.Now()
	res, err := s.Store.Txn(ctx, cmps, then, els)
	op := "txn"
	if len(cmps) == 0 && len(els) == 0 && !slices.ContainsFunc(then, func(o Op) bool { return !o.IsGet() }) {
		op = "read" // several keys at one revision, such as a lost claim reading what beat it
	}
	s.observe(op, start, err, !res.Succeeded)
	return res, err
}

func (s *instrumented) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	start := time.Now()
	id, err := s.Store.Grant(ctx, ttl)
	s.observe("grant", start, err, false)
	return id, err
}

func (s *instrumented) Revoke(ctx context.Context, id LeaseID) error {
	start := time.Now()
	err := s.Store.Revoke(ctx, id)
	s.observe("revoke", start, err, false)
	return err
}
