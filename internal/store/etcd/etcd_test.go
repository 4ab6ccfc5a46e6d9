package etcd_test

import (
	"context"
	"testing"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
	"github.com/stickynet/stickynet/internal/store/storetest"
	"github.com/stickynet/stickynet/internal/testenv"
)

// TestEtcdConformance runs the driver against a real etcd server process.
func TestEtcdConformance(t *testing.T) {
	e := testenv.StartEtcd(t)
	storetest.Run(t, storetest.Driver{
		New: func(t *testing.T) store.Store {
			s, err := etcd.New(etcd.Options{Endpoints: []string{e.Endpoint}, PageSize: 1000})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		Compact: func(t *testing.T, s store.Store, rev int64) {
			if _, err := s.(*etcd.Store).Client().Compact(context.Background(), rev); err != nil {
				t.Fatalf("compact to %d: %v", rev, err)
			}
		},
	})
}
