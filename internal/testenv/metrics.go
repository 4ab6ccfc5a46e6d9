package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// StoreRequests reads the state-store requests that g's
// stickynet_store_request_duration_seconds has recorded, counted by
// "op/result" ("txn/ok", "txn/conflict", "get/error", ...).
func StoreRequests(t testing.TB, g prometheus.Gatherer) map[string]uint64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, f := range families {
		if f.GetName() != "stickynet_store_request_duration_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			counts[labels["op"]+"/"+labels["result"]] += m.GetHistogram().GetSampleCount()
		}
	}
	return counts
}
