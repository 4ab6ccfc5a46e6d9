package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// StoreTxns counts the state-store transactions with the result
// (store.ResultOK, ResultConflict, ResultError) that g's
// stickynet_store_request_duration_seconds has recorded.
func StoreTxns(t testing.TB, g prometheus.Gatherer, result string) uint64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, f := range families {
		if f.GetName() != "stickynet_store_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["op"] == "txn" && labels["result"] == result {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}
