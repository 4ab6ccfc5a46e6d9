package annotations

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "10M", want: 10_000_000},
		{in: "1G", want: 1_000_000_000},
		{in: "1k", want: 1000},
		{in: "1Mi", want: 1 << 20},
		{in: " 100M ", want: 100_000_000},
		{in: "1T", want: 1_000_000_000_000},
		{in: "999", wantErr: true},
		{in: "0", wantErr: true},
		{in: "-10M", wantErr: true},
		{in: "2T", wantErr: true},
		{in: "10X", wantErr: true},
		{in: "", wantErr: true},
		{in: "10 M", wantErr: true},
		{in: "1e9", want: 1_000_000_000},
		{in: "1.5e+6", want: 1_500_000},
		{in: "+10M", want: 10_000_000},
		{in: "10000000000m", want: 10_000_000},
		// Exponents resource.ParseQuantity takes minutes over, or wraps
		// past 32 bits (read as 1e9 before).
		{in: "1e-100000000", wantErr: true},
		{in: "1e-2147483647", wantErr: true},
		{in: "1e4294967305", wantErr: true},
		{in: "1" + strings.Repeat("0", 40) + "m", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(IngressBandwidth, tt.in)
			if tt.wantErr {
				var ae *Error
				if !errors.As(err, &ae) {
					t.Fatalf("ParseRate(%q) = %d, %v; want *Error", tt.in, got, err)
				}
				for _, part := range []string{IngressBandwidth, tt.in, "such as 10M"} {
					if !strings.Contains(err.Error(), part) {
						t.Errorf("error %q does not name %q", err, part)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRate(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseBurst(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "1M": 1_000_000, "34359738360": MaxBurst, "0.5": 1} {
		if got, err := ParseBurst(EgressBurst, in); err != nil || got != want {
			t.Errorf("ParseBurst(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "34359738361", "-1", "x"} {
		if _, err := ParseBurst(EgressBurst, in); err == nil {
			t.Errorf("ParseBurst(%q): want error", in)
		}
	}
}

func TestParseIPList(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "10.0.0.1", want: []string{"10.0.0.1"}},
		{in: "10.0.0.1, 10.0.0.2,fd00::1", want: []string{"10.0.0.1", "10.0.0.2", "fd00::1"}},
		{in: "::ffff:10.0.0.1", want: []string{"10.0.0.1"}},
		{in: "10.0.0.1,,10.0.0.2", wantErr: `entry 1 ""`},
		{in: "10.0.0.1,10.0.0.1", wantErr: "listed twice"},
		{in: "10.0.0.300", wantErr: "not an IP"},
		{in: "fe80::1%eth0", wantErr: "not an IP"},
		{in: "", wantErr: "entry 0"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseIPList(IPs, tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), IPs) {
					t.Fatalf("ParseIPList(%q) error = %v; want one containing %q and the key", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, a := range got {
				s = append(s, a.String())
			}
			if !reflect.DeepEqual(s, tt.want) {
				t.Fatalf("got %v, want %v", s, tt.want)
			}
		})
	}
}

func TestParseMAC(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{in: "02:42:ac:11:00:02"},
		{in: "02-42-AC-11-00-02"},
		{in: "00:1b:21:3a:4f:10"},
		{in: "01:00:5e:00:00:01", wantErr: "multicast"},
		{in: "00:00:00:00:00:00", wantErr: "all zeros"},
		{in: "02:42:ac:11:00", wantErr: "6 octets"},
		{in: "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", wantErr: "6 octets"},
		{in: "zz:42:ac:11:00:02", wantErr: "6 octets"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseMAC(MAC, tt.in)
			if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseMAC(%q) = %v; want error containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
	if m, _ := ParseMAC(MAC, "02:42:ac:11:00:02"); !IsLocallyAdministered(m) {
		t.Error("02:... should be locally administered")
	}
	if m, _ := ParseMAC(MAC, "00:1b:21:3a:4f:10"); IsLocallyAdministered(m) {
		t.Error("00:... should be universal")
	}
}

// An error quotes a long value by its start and length: a denial, a log
// line or an event (the API server refuses a note past 1 KiB) is not
// swamped by an annotation of up to 256 KiB. A short value is quoted whole.
func TestErrorQuotesLongValueShort(t *testing.T) {
	long := "é" + strings.Repeat("x", 300000)
	msg := invalid(IngressBandwidth, long, "a rate", nil).Error()
	if len(msg) > 200 || !strings.Contains(msg, `invalid value "éxxx`) || !strings.Contains(msg, fmt.Sprintf("… (%d bytes): expected a rate", len(long))) || !utf8.ValidString(msg) {
		t.Errorf("error for a %d-byte value: %d bytes, %q; want its start and length", len(long), len(msg), msg)
	}
	if msg := invalid(IngressBandwidth, "10Mbps", "a rate", nil).Error(); msg != `annotation stickynet.io/ingress-bandwidth: invalid value "10Mbps": expected a rate` {
		t.Errorf("error for a short value: %q", msg)
	}
}

func TestParseBandwidth(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		want    Bandwidth
		wantErr string
	}{
		{name: "none", ann: map[string]string{}},
		{
			name: "stickynet keys",
			ann:  map[string]string{IngressBandwidth: "10M", EgressBandwidth: "20M", IngressBurst: "1M"},
			want: Bandwidth{Ingress: Limit{Rate: 10e6, Burst: 1e6}, Egress: Limit{Rate: 20e6}},
		},
		{
			name: "kubernetes keys",
			ann:  map[string]string{KubernetesIngressBandwidth: "10M", KubernetesEgressBandwidth: "1G"},
			want: Bandwidth{Ingress: Limit{Rate: 10e6}, Egress: Limit{Rate: 1e9}},
		},
		{
			name: "both agree",
			ann:  map[string]string{IngressBandwidth: "10M", KubernetesIngressBandwidth: "10000k"},
			want: Bandwidth{Ingress: Limit{Rate: 10e6}},
		},
		{
			name:    "both disagree",
			ann:     map[string]string{IngressBandwidth: "10M", KubernetesIngressBandwidth: "20M"},
			wantErr: KubernetesIngressBandwidth,
		},
		{name: "burst without rate", ann: map[string]string{EgressBurst: "1M"}, wantErr: "unless " + EgressBandwidth + " (or " + KubernetesEgressBandwidth + ") is set"},
		{name: "bad rate", ann: map[string]string{EgressBandwidth: "fast"}, wantErr: `"fast"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBandwidth(tt.ann)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
			if rt, err := ParseBandwidth(got.Annotations()); err != nil || rt != got {
				t.Fatalf("round trip = %+v, %v; want %+v", rt, err, got)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	good := []string{
		"statefulset/ns/web/0", "statefulset/ns/web/12", "deployment/ns/api", "replicaset/ns/api-5d8f",
		"daemonset/kube/agent/node-1", "pod/ns/solo",
	}
	for _, s := range good {
		id, err := ParseIdentity(s)
		if err != nil || id.String() != s {
			t.Errorf("ParseIdentity(%q) = %v, %v", s, id, err)
		}
	}
	bad := []string{
		"", "statefulset/ns/web", "statefulset/ns/web/-1", "statefulset/ns/web/01", "statefulset/ns/web/x",
		"deployment/ns/api/1", "daemonset/ns/agent", "job/ns/x", "pod//x", "pod/ns/x/",
	}
	for _, s := range bad {
		if _, err := ParseIdentity(s); err == nil {
			t.Errorf("ParseIdentity(%q): want error", s)
		}
	}
	if id, _ := ParseIdentity("deployment/ns/api"); !id.Shared() {
		t.Error("deployment identity should be shared")
	}
	if id, _ := ParseIdentity("statefulset/ns/web/3"); id.Shared() || id.Workload() != "statefulset/ns/web" {
		t.Errorf("statefulset identity: shared=%v workload=%q", id.Shared(), id.Workload())
	}
	if n, ok := StatefulSetID("ns", "web", 7).Ordinal(); !ok || n != 7 {
		t.Errorf("Ordinal = %d, %v", n, ok)
	}
}

func TestAssignmentRoundTrip(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:ac:11:00:02")
	a := Assignment{
		Identity: "statefulset/ns/web/0", Pool: "pool-a",
		IPs: []netip.Prefix{netip.MustParsePrefix("10.20.0.5/24"), netip.MustParsePrefix("fd00::5/64")},
		MAC: mac, Gateways: []netip.Addr{netip.MustParseAddr("10.20.0.1")}, VLAN: 100,
		Bandwidth:       Bandwidth{Ingress: Limit{Rate: 10e6, Burst: 1e6}},
		BandwidthPolicy: "gold",
	}
	ann := a.Annotations()
	if ann[AssignedIP] != "10.20.0.5/24,fd00::5/64" || ann[VLAN] != "100" || ann[AssignedMAC] != "02:42:ac:11:00:02" {
		t.Fatalf("annotations = %v", ann)
	}
	got, err := ParseAssignment(ann)
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("ParseAssignment = %+v, %v; want %+v", got, err, a)
	}
	if _, err := ParseAssignment(map[string]string{}); !errors.Is(err, ErrNotAssigned) {
		t.Fatalf("empty annotations: %v, want ErrNotAssigned", err)
	}
	// A kubernetes.io rate edited onto the admitted pod, or malformed,
	// leaves its assignment readable, with the stickynet limit in force
	// (the node agent read it as an error: the pod's next sandbox failed);
	// ParseBandwidth, as admission reads, still tells the conflict. Where
	// the stickynet key is gone, the kubernetes.io key applies.
	for _, v := range []string{"20M", "10Mbps"} {
		ann[KubernetesIngressBandwidth] = v
		if got, err := ParseAssignment(ann); err != nil || got.Bandwidth != a.Bandwidth {
			t.Errorf("%s %q beside %s %q: ParseAssignment = %+v, %v; want the limits %+v", KubernetesIngressBandwidth, v, IngressBandwidth, ann[IngressBandwidth], got.Bandwidth, err, a.Bandwidth)
		}
		var ae *Error
		if _, err := ParseBandwidth(ann); !errors.As(err, &ae) || ae.Key != KubernetesIngressBandwidth || ae.Value != v {
			t.Errorf("%s %q: ParseBandwidth = %v; want an error naming it", KubernetesIngressBandwidth, v, err)
		}
	}
	ann[KubernetesIngressBandwidth] = "20M"
	delete(ann, IngressBandwidth)
	delete(ann, IngressBurst)
	if got, err := ParseAssignment(ann); err != nil || got.Bandwidth.Ingress != (Limit{Rate: 20e6}) {
		t.Errorf("%s alone: ParseAssignment = %+v, %v; want an ingress rate of 20M", KubernetesIngressBandwidth, got.Bandwidth, err)
	}
	ann[AssignedMAC] = "nope"
	if _, err := ParseAssignment(ann); err == nil || !strings.Contains(err.Error(), AssignedMAC) {
		t.Fatalf("bad MAC: %v", err)
	}
}

func TestParseSmall(t *testing.T) {
	if v, err := ParseVLAN(VLAN, "4094"); err != nil || v != 4094 {
		t.Errorf("ParseVLAN(4094) = %d, %v", v, err)
	}
	for _, s := range []string{"4095", "-1", "1x", "01", ""} {
		if _, err := ParseVLAN(VLAN, s); err == nil {
			t.Errorf("ParseVLAN(%q): want error", s)
		}
	}
	if r, err := ParseRetention(""); err != nil || r != RetentionRetain {
		t.Errorf("ParseRetention(\"\") = %q, %v", r, err)
	}
	if _, err := ParseRetention("release"); err == nil || !strings.Contains(err.Error(), "Retain or Release") {
		t.Errorf("ParseRetention(release) = %v", err)
	}
	for _, s := range []string{"pool-a", "a", "a.b-c"} {
		if _, err := ParseName(Pool, s); err != nil {
			t.Errorf("ParseName(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "-a", "a-", "A", "a_b", strings.Repeat("a", 254)} {
		if _, err := ParseName(Pool, s); err == nil {
			t.Errorf("ParseName(%q): want error", s)
		}
	}
	if _, err := ParseIP(IP, "10.0.0.1"); err != nil {
		t.Error(err)
	}
}

// Admission refuses limits that cannot work: a burst below one frame, an
// ingress rate whose longest tbf bucket holds no frame, an ingress burst
// longer than the kernel's tbf allows. An egress burst (a meter or
// policer) has no time cap. Each error names the key and value.
func TestCheckBandwidth(t *testing.T) {
	ok := map[string]string{IngressBandwidth: "10M", IngressBurst: "40M", EgressBandwidth: "10M", EgressBurst: "100M"}
	if b, err := ParseBandwidth(ok); err != nil || CheckBandwidth(ok, b) != nil {
		t.Fatalf("4 s ingress burst, 10 s egress burst: %v, %v", err, CheckBandwidth(ok, b))
	}
	for _, tt := range []struct {
		ann       map[string]string
		key, want string
	}{
		{map[string]string{IngressBandwidth: "10M", IngressBurst: "100M"}, IngressBurst, "4.295s"},
		{map[string]string{IngressBandwidth: "10M", IngressBurst: "8k"}, IngressBurst, "at least 12144 bits"},
		{map[string]string{EgressBandwidth: "10M", EgressBurst: "1"}, EgressBurst, "at least 12144 bits"},
		{map[string]string{KubernetesIngressBandwidth: "2k"}, KubernetesIngressBandwidth, "at least 2832 bit/s"},
	} {
		b, err := ParseBandwidth(tt.ann)
		if err != nil {
			t.Fatalf("ParseBandwidth(%v): %v (the node agent must accept what earlier webhooks wrote)", tt.ann, err)
		}
		err = CheckBandwidth(tt.ann, b)
		var ae *Error
		if !errors.As(err, &ae) || ae.Key != tt.key || ae.Value != tt.ann[tt.key] || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckBandwidth(%v) = %v; want an error naming %s, its value and %q", tt.ann, err, tt.key, tt.want)
		}
	}
}
