package promreg

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterSharesTheFirstCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "x_total", Help: "x"}
	first := Register(reg, prometheus.NewCounter(opts))
	second := Register(reg, prometheus.NewCounter(opts))
	if first != second {
		t.Fatal("a second registration under the same name did not return the first collector")
	}
	second.Inc()
	if n, _ := reg.Gather(); len(n) != 1 || n[0].GetMetric()[0].GetCounter().GetValue() != 1 {
		t.Fatalf("gathered %v; want x_total 1", n)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a clashing registration (same name, other help) did not panic")
		}
	}()
	Register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "other"}))
}
