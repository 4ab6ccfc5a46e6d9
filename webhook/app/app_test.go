package app

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
)

// poolFeed hands the allocator each IPPool the informer adds or updates,
// with its reuse delay; a spec refused for another field still gives its
// reuse delay (its claims are kept, and released as its workloads go).
func TestPoolFeed(t *testing.T) {
	alloc := ipam.New(store.NewMemory(), ipam.Options{})
	feed := poolFeed(alloc)
	delay := func(s int32) *int32 { return &s }
	slow := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "slow"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: delay(3600)}}
	feed.OnAdd(slow, true)
	if d := alloc.ReuseDelay("slow"); d != time.Hour {
		t.Fatalf("after add: reuse delay %s; want 1h", d)
	}
	quick := slow.DeepCopy()
	quick.Spec.ReuseDelaySeconds = delay(5)
	feed.OnUpdate(slow, quick)
	if d := alloc.ReuseDelay("slow"); d != 5*time.Second {
		t.Errorf("after update: reuse delay %s; want 5s", d)
	}
	broken := quick.DeepCopy()
	broken.Spec.CIDR, broken.Spec.ReuseDelaySeconds = "not-a-cidr", delay(7)
	feed.OnUpdate(quick, broken)
	if d := alloc.ReuseDelay("slow"); d != 7*time.Second {
		t.Errorf("after an update to a refused spec: reuse delay %s; want its 7s", d)
	}
	if d := alloc.ReuseDelay("unseen"); d != ipam.DefaultReuseDelay {
		t.Errorf("a pool never seen: reuse delay %s; want the default", d)
	}
}
