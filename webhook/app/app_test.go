package app

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/certs"
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

// Validate names the flag and value it refuses; zero durations are the
// defaults. A negative --release-grace was used as given (every address
// past its grace at once, pods still being admitted included), and an empty
// DNS name reached the certificate.
func TestValidate(t *testing.T) {
	ok := Options{Certs: certs.Options{Mode: certs.ModeSelf, DNSNames: []string{"stickynet-webhook.stickynet-system.svc"}, WebhookConfig: "stickynet"}}
	for _, tc := range []struct {
		change func(*Options)
		want   string
	}{
		{func(*Options) {}, ""},
		{func(o *Options) { o.ReleaseGrace = -time.Second }, `--release-grace -1s: expected a duration of 0 (the default) or more`},
		{func(o *Options) { o.StoreTimeout = -time.Second }, `--store-timeout -1s`},
		{func(o *Options) { o.ReservationTTL = -time.Minute }, `--reservation-ttl -1m0s`},
		{func(o *Options) { o.ShutdownDelay = -time.Second }, `--shutdown-delay -1s`},
		{func(o *Options) { o.Certs.DNSNames = []string{""} }, `--cert-dns-names "": expected comma-separated DNS names, none of them empty`},
		{func(o *Options) { o.Certs.DNSNames = append(o.Certs.DNSNames, " ") }, `--cert-dns-names "stickynet-webhook.stickynet-system.svc, "`},
		// A space after a comma made a certificate for " b.svc".
		{func(o *Options) { o.Certs.DNSNames = []string{"a.svc", " b.svc"} }, `--cert-dns-names "a.svc, b.svc": " b.svc" is not a DNS name: a lowercase RFC 1123 subdomain`},
		{func(o *Options) { o.Certs.DNSNames = []string{"a.svc", "b.svc.cluster.local"} }, ""},
		{func(o *Options) {
			o.Certs.Secret = types.NamespacedName{Namespace: "stickynet-system", Name: "stickynet-webhook-cert"}
		}, ""},
		// Refused by the API server only once the webhook ran, naming no flag.
		{func(o *Options) { o.Certs.Secret = types.NamespacedName{Namespace: "ns", Name: "a/b"} }, `--cert-secret "ns/a/b": expected namespace/name of a Secret: a lowercase RFC 1123 subdomain`},
		{func(o *Options) { o.Certs = certs.Options{Mode: certs.ModeCertManager} }, ""},
		// A mistyped mode was found only after the etcd connection and the
		// manager's start, without naming the flag.
		{func(o *Options) { o.Certs.Mode = "Self" }, `--cert-mode "Self": expected self or cert-manager`},
		{func(o *Options) { o.Certs.WebhookConfig = "" }, `--webhook-config-name "": expected the name of the MutatingWebhookConfiguration`},
		// A negative port turned the server off while /readyz passed.
		{func(o *Options) { o.Port = -1 }, `--port -1: expected a TCP port from 1 to 65535`},
		{func(o *Options) { o.Port = 70000 }, `--port 70000`},
		{func(o *Options) { o.Port = 9443 }, ""},
		{func(o *Options) { o.KubeAPIQPS = -1 }, `--kube-api-qps -1`},
		{func(o *Options) { o.KubeAPIBurst = -5 }, `--kube-api-burst -5`},
		{func(o *Options) { o.NodeAgentDaemonSet = "stickynet-system/stickynet-nodeagent" }, ""},
		{func(o *Options) { o.NodeAgentDaemonSet = "stickynet-nodeagent" }, `--node-agent-daemonset: "stickynet-nodeagent": expected namespace/name of the DaemonSet that runs the node agents`},
	} {
		o := ok
		tc.change(&o)
		err := o.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v; want it accepted", o, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: %v; want an error containing %q", o, err, tc.want)
		}
	}
}
