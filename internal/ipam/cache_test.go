package ipam

import (
	"net/netip"
	"testing"

	"github.com/stickynet/stickynet/internal/store"
)

// What the allocator learns outside the watch (its own writes, what a lost
// claim read) can arrive after the watch delivered a later delete of the
// same key: it must not bring the deleted record back. A put newer than
// what the watch delivered is applied.
func TestLatePutDoesNotUndoDelete(t *testing.T) {
	k := newKeys("/stickynet/")
	c := newCache(k)
	c.Replace(nil, 5)
	ip, ip2 := netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")
	rec := encode(record{ID: "pod/ns/a", MAC: "02:00:00:00:00:05", State: stateCooling})
	put := store.KV{Key: k.addrKey("p", ip), Value: rec, ModRevision: 10}
	c.Apply([]store.Event{{Type: store.EventPut, KV: put}})
	c.Apply([]store.Event{{Type: store.EventDelete, KV: store.KV{Key: put.Key, ModRevision: 11}}})
	c.applyLate([]store.Event{{Type: store.EventPut, KV: put}})
	if e := c.get("p", ip); e != nil {
		t.Errorf("a put at revision 10 applied after the watch's delete at 11 brought the record back: %+v", e.rec)
	}
	if c.macTaken("02:00:00:00:00:05") {
		t.Error("the deleted record's MAC counts as taken")
	}
	ahead := store.KV{Key: k.addrKey("p", ip2), Value: rec, ModRevision: 12}
	c.applyLate([]store.Event{{Type: store.EventPut, KV: ahead}})
	if e := c.get("p", ip2); e == nil || e.rev != 12 {
		t.Errorf("a put ahead of the watch (12 > 11) was not applied: %+v", e)
	}
}
