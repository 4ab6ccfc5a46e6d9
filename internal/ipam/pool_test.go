package ipam

import (
	"net/netip"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
)

func i32(v int32) *int32 { return &v }

func TestNewPoolErrors(t *testing.T) {
	tests := []struct {
		name string
		spec v1alpha1.IPPoolSpec
		want string // substring: field and reason
	}{
		{"bad cidr", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/33"}, `spec.cidr "10.0.0.0/33"`},
		{"host bits", v1alpha1.IPPoolSpec{CIDR: "10.0.0.5/24"}, "expected 10.0.0.0/24"},
		{"IPv4-mapped", v1alpha1.IPPoolSpec{CIDR: "::ffff:10.0.0.0/120"}, `spec.cidr "::ffff:10.0.0.0/120": an IPv4-mapped IPv6 network; expected the IPv4 network itself`},
		{"gateway outside", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.1.1"}, `spec.gateway "10.0.1.1": outside cidr 10.0.0.0/24`},
		{"gateway family", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "fd00::1"}, "spec.gateway"},
		{"range outside", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Ranges: []v1alpha1.IPRange{{Start: "10.0.0.10", End: "10.0.1.10"}}}, "spec.ranges[0].end"},
		{"range reversed", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Ranges: []v1alpha1.IPRange{{Start: "10.0.0.10", End: "10.0.0.5"}}}, "start must not be after end"},
		{"exclude outside", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Exclude: []string{"10.0.0.0/16"}}, "spec.exclude[0]"},
		{"exclude garbage", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Exclude: []string{"x"}}, `spec.exclude[0] "x"`},
		{"multicast mac prefix", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", MACPrefix: "01:00"}, "multicast"},
		{"long mac prefix", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", MACPrefix: "02:00:00:00:00:00"}, "one to five octets"},
		{"nothing left", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/30", Gateway: "10.0.0.1", Exclude: []string{"10.0.0.2"}}, "no allocatable address"},
		{"negative delay", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(-1)}, "reuseDelaySeconds"},
		{"exclude host bits", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Exclude: []string{"10.0.0.5/28"}}, `spec.exclude[0] "10.0.0.5/28": host bits are set; expected 10.0.0.0/28`},
		{"namespace selector operator", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", NamespaceSelector: &metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "In"}},
		}}, `spec.namespaceSelector "{\"matchExpressions\":[{\"key\":\"team\",\"operator\":\"In\"}]}": not a label selector: values: Invalid value: null`},
		{"node selector label value", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", NodeSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"rack": "a b"}}}, `spec.nodeSelector "{\"matchLabels\":{\"rack\":\"a b\"}}": not a label selector: values[0][rack]: Invalid value: "a b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewPool("p", tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "IPPool p") {
				t.Fatalf("NewPool error = %v; want one naming the pool and containing %q", err, tt.want)
			}
		})
	}
}

func TestPoolAddresses(t *testing.T) {
	tests := []struct {
		name  string
		spec  v1alpha1.IPPoolSpec
		size  uint64
		first string
		last  string
	}{
		{"v4 /24 with gateway", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"}, 253, "10.0.0.2", "10.0.0.254"},
		{"v4 /31", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/31"}, 2, "10.0.0.0", "10.0.0.1"},
		{"v4 /32", v1alpha1.IPPoolSpec{CIDR: "10.0.0.7/32"}, 1, "10.0.0.7", "10.0.0.7"},
		{
			"ranges and excludes",
			v1alpha1.IPPoolSpec{
				CIDR: "10.0.0.0/24", Gateway: "10.0.0.11",
				Ranges:  []v1alpha1.IPRange{{Start: "10.0.0.10", End: "10.0.0.20"}, {Start: "10.0.0.15", End: "10.0.0.30"}},
				Exclude: []string{"10.0.0.16/30", "10.0.0.30"},
			},
			// 10..29 is 20 addresses, minus gateway 11 and 16..19.
			15, "10.0.0.10", "10.0.0.29",
		},
		{"v6 /120", v1alpha1.IPPoolSpec{CIDR: "fd00::/120", Gateway: "fd00::1"}, 254, "fd00::2", "fd00::ff"},
		{"v6 /64 saturates", v1alpha1.IPPoolSpec{CIDR: "fd00::/64"}, 1<<64 - 1, "fd00::1", "fd00::ffff:ffff:ffff:ffff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPool("p", tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if p.Size() != tt.size {
				t.Fatalf("Size = %d; want %d", p.Size(), tt.size)
			}
			if got := p.nth(0).String(); got != tt.first {
				t.Errorf("first = %s; want %s", got, tt.first)
			}
			if got := p.nth(p.Size() - 1).String(); got != tt.last {
				t.Errorf("last = %s; want %s", got, tt.last)
			}
			if p.Size() < 1000 {
				for i := range p.Size() {
					a := p.nth(i)
					if !p.Contains(a) || p.WhyNot(a) != "" {
						t.Fatalf("nth(%d) = %s not contained", i, a)
					}
				}
			}
		})
	}
}

func TestWhyNot(t *testing.T) {
	p, err := NewPool("blue", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1", Exclude: []string{"10.0.0.9"}})
	if err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[string]string{
		"10.0.1.1":   "outside pool blue (10.0.0.0/24)",
		"10.0.0.1":   "the gateway of pool blue",
		"10.0.0.0":   "the network address",
		"10.0.0.255": "the broadcast address",
		"10.0.0.9":   "excluded",
		"10.0.0.8":   "",
	} {
		got := p.WhyNot(netip.MustParseAddr(ip))
		if want == "" && got != "" || !strings.Contains(got, want) {
			t.Errorf("WhyNot(%s) = %q; want %q", ip, got, want)
		}
	}
	// A /31 or /127 has no network address, both of its addresses usable:
	// one left out is excluded, not "the network address".
	for _, tc := range []struct{ cidr, exclude, want string }{
		{"10.40.0.0/31", "10.40.0.0", "excluded"},
		{"fd00::/127", "fd00::", "excluded"},
		{"fd00::/64", "", "the subnet-router anycast address"},
	} {
		spec := v1alpha1.IPPoolSpec{CIDR: tc.cidr}
		if tc.exclude != "" {
			spec.Exclude = []string{tc.exclude}
		}
		p, err := NewPool("p", spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.WhyNot(p.Prefix.Addr()); !strings.Contains(got, tc.want) {
			t.Errorf("%s: WhyNot(%s) = %q; want %q", tc.cidr, p.Prefix.Addr(), got, tc.want)
		}
	}
}

func TestRandomMAC(t *testing.T) {
	p, _ := NewPool("p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	pp, _ := NewPool("p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", MACPrefix: "0a:58:0a"})
	var n uint64
	rnd := func() uint64 { n = n*6364136223846793005 + 1442695040888963407; return n }
	for range 1000 {
		m := p.randomMAC(rnd)
		if m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("random MAC %s is not locally administered unicast", m)
		}
		if m := pp.randomMAC(rnd); !strings.HasPrefix(m.String(), "0a:58:0a:") {
			t.Fatalf("random MAC %s lacks the pool's prefix", m)
		}
	}
}
