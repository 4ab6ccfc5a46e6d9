package app

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/stickynet/stickynet/extender/score"
)

func TestValidate(t *testing.T) {
	ok := Options{BindAddress: ":8888", VFPlacement: score.Spread}
	for _, tc := range []struct {
		name    string
		change  func(*Options)
		wantErr string
	}{
		{name: "defaults", change: func(*Options) {}},
		{name: "TLS pair", change: func(o *Options) { o.TLSCertFile, o.TLSKeyFile = "tls.crt", "tls.key" }},
		{name: "no address", change: func(o *Options) { o.BindAddress = "" }, wantErr: "bind address: must be set"},
		{name: "certificate without key", change: func(o *Options) { o.TLSCertFile = "tls.crt" }, wantErr: "must be given together"},
		{name: "negative body limit", change: func(o *Options) { o.MaxRequestBytes = -1 }, wantErr: "max request bytes -1"},
		{name: "negative TTL", change: func(o *Options) { o.LastNodeTTL = -time.Second }, wantErr: "last node TTL -1s"},
		{name: "unknown placement", change: func(o *Options) { o.VFPlacement = "random" }, wantErr: `VF placement "random": expected spread, pack or none`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ok
			tc.change(&o)
			err := o.Validate()
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRunFailsFast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{name: "invalid options", opts: Options{VFPlacement: score.Spread}, wantErr: "invalid options"},
		{
			name:    "no API server",
			opts:    Options{RESTConfig: &rest.Config{Host: "http://127.0.0.1:1"}, BindAddress: "127.0.0.1:0", VFPlacement: score.Spread},
			wantErr: "connection refused",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(ctx, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Run = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestHandlerUnwrapsTombstones(t *testing.T) {
	var set, deleted []string
	h := handler(func(n *corev1.Node) { set = append(set, n.Name) }, func(n *corev1.Node) { deleted = append(deleted, n.Name) })
	a := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "a"}}
	b := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "b"}}
	h.OnAdd(a, true)
	h.OnUpdate(a, b)
	h.OnAdd(&corev1.Pod{}, false) // another type: ignored
	h.OnDelete(a)
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "b", Obj: b})
	h.OnDelete(toolscache.DeletedFinalStateUnknown{Key: "c", Obj: "garbage"})
	if strings.Join(set, ",") != "a,b" || strings.Join(deleted, ",") != "a,b" {
		t.Errorf("set %v, deleted %v; want a,b both", set, deleted)
	}
	// A pod deleted and created again under its name while the watch was
	// broken comes as one update: the old UID is deleted (its VF was
	// counted until the extender restarted), the new one set.
	var setUIDs, deletedUIDs []types.UID
	p := handler(func(p *corev1.Pod) { setUIDs = append(setUIDs, p.UID) }, func(p *corev1.Pod) { deletedUIDs = append(deletedUIDs, p.UID) })
	old := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web-0", UID: "uid-1"}}
	again := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web-0", UID: "uid-2"}}
	p.OnUpdate(old, old)
	p.OnUpdate(old, again)
	if fmt.Sprint(setUIDs) != "[uid-1 uid-2]" || fmt.Sprint(deletedUIDs) != "[uid-1]" {
		t.Errorf("set %v, deleted %v; want uid-1 and uid-2 set, uid-1 deleted", setUIDs, deletedUIDs)
	}
}

func TestMaxListed(t *testing.T) {
	for in, want := range map[int]int{0: score.DefaultMaxListed, -1: 0, 7: 7} {
		if got := maxListed(in); got != want {
			t.Errorf("MaxRankedNodes %d gives the scorer MaxListed %d; want %d", in, got, want)
		}
	}
}
