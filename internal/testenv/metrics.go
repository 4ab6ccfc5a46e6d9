package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics returns the series of the metric family name in g (nil when it
// has none).
func Metrics(t testing.TB, g prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}

// StoreRequests reads the state-store requests that g's
// stickynet_store_request_duration_seconds has recorded, counted by
// "op/result" ("txn/ok", "txn/conflict", "get/error", ...).
func StoreRequests(t testing.TB, g prometheus.Gatherer) map[string]uint64 {
	t.Helper()
	counts := map[string]uint64{}
	for _, m := range Metrics(t, g, "stickynet_store_request_duration_seconds") {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		counts[labels["op"]+"/"+labels["result"]] += m.GetHistogram().GetSampleCount()
	}
	return counts
}

// TxnBatches is what the etcd driver's group commit metrics in a registry say.
type TxnBatches struct {
	Requests     uint64  // etcd transaction requests
	Transactions float64 // the transactions they carried
	Shared       uint64  // requests that carried more than one
	Refused      uint64  // batches etcd refused as a whole
}

// StoreBatches reads stickynet_store_txn_batch_size and
// stickynet_store_txn_batches_refused_total from g.
func StoreBatches(t testing.TB, g prometheus.Gatherer) TxnBatches {
	t.Helper()
	var b TxnBatches
	for _, m := range Metrics(t, g, "stickynet_store_txn_batch_size") {
		h := m.GetHistogram()
		b.Requests += h.GetSampleCount()
		b.Transactions += h.GetSampleSum()
		b.Shared += h.GetSampleCount() - h.GetBucket()[0].GetCumulativeCount() // above le=1
	}
	for _, m := range Metrics(t, g, "stickynet_store_txn_batches_refused_total") {
		b.Refused += uint64(m.GetCounter().GetValue())
	}
	return b
}
