package app

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/ipam"
)

type poolRecorder map[string]*ipam.Pool

func (r poolRecorder) SetPool(p *ipam.Pool) { r[p.Name] = p }

// poolFeed hands the allocator each IPPool the informer adds or updates,
// with its reuse delay; a spec that does not parse is left out.
func TestPoolFeed(t *testing.T) {
	got := poolRecorder{}
	feed := poolFeed(got)
	delay := func(s int32) *int32 { return &s }
	slow := &v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "slow"}, Spec: v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: delay(3600)}}
	feed.OnAdd(slow, true)
	if p := got["slow"]; p == nil || p.ReuseDelay != time.Hour {
		t.Fatalf("after add: %+v; want pool slow with a reuse delay of 1h", p)
	}
	quick := slow.DeepCopy()
	quick.Spec.ReuseDelaySeconds = delay(5)
	feed.OnUpdate(slow, quick)
	if p := got["slow"]; p.ReuseDelay != 5*time.Second {
		t.Errorf("after update: reuse delay %s; want 5s", p.ReuseDelay)
	}
	feed.OnAdd(&v1alpha1.IPPool{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: v1alpha1.IPPoolSpec{CIDR: "not-a-cidr"}}, false)
	if _, ok := got["bad"]; ok {
		t.Error("a pool whose spec does not parse was handed on")
	}
}
