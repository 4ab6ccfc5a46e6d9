package store_test

import (
	"testing"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, storetest.Driver{
		New: func(t *testing.T) store.Store {
			s := store.NewMemory()
			t.Cleanup(func() { s.Close() })
			return s
		},
		Compact: func(_ *testing.T, s store.Store, rev int64) { s.(*store.Memory).Compact(rev) },
	})
}
