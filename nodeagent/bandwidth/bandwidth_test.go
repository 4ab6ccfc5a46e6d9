package bandwidth

import (
	"math"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/stickynet/stickynet/internal/annotations"
)

func TestResolveEgressMode(t *testing.T) {
	tests := []struct {
		mode     EgressMode
		dp       string
		want     EgressMode
		wantFail bool
	}{
		{mode: EgressAuto, dp: "netdev", want: EgressMeter},
		{mode: "", dp: "netdev", want: EgressMeter},
		{mode: EgressAuto, dp: "system", want: EgressPolicing},
		{mode: EgressMeter, dp: "system", want: EgressMeter},
		{mode: EgressPolicing, dp: "netdev", want: EgressPolicing},
		{mode: "police", dp: "netdev", wantFail: true},
	}
	for _, tt := range tests {
		got, err := ResolveEgressMode(tt.mode, tt.dp)
		if tt.wantFail {
			if err == nil || !strings.Contains(err.Error(), "auto, meter or policing") {
				t.Errorf("ResolveEgressMode(%q) = %q, %v; want an error naming the choices", tt.mode, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ResolveEgressMode(%q, %q) = %q, %v; want %q", tt.mode, tt.dp, got, err, tt.want)
		}
	}
}

func TestTBF(t *testing.T) {
	tests := []struct {
		name    string
		limit   annotations.Limit
		mtu     int
		want    TBFParams
		wantErr string
	}{
		// 20 Mbit/s: 2.5 MB/s; 8 ms is 20 kB, below the 64 KiB floor; queue 50 ms = 125 kB.
		{name: "20M default burst", limit: annotations.Limit{Rate: 20e6}, want: TBFParams{RateBytes: 2_500_000, BurstBytes: 65536, LimitBytes: 125_000}},
		// 300 Mbit/s: 37.5 MB/s; burst 8 ms = 300 kB; queue 50 ms = 1.875 MB.
		{name: "300M default burst", limit: annotations.Limit{Rate: 300e6}, want: TBFParams{RateBytes: 37_500_000, BurstBytes: 300_000, LimitBytes: 1_875_000}},
		// A given burst wins; the queue is never smaller than the burst.
		{name: "explicit big burst", limit: annotations.Limit{Rate: 1e6, Burst: 4e6}, want: TBFParams{RateBytes: 125_000, BurstBytes: 500_000, LimitBytes: 500_000}},
		{name: "1 Tbit/s queue clamps", limit: annotations.Limit{Rate: 1e12}, want: TBFParams{RateBytes: 125e9, BurstBytes: 1e9, LimitBytes: math.MaxUint32}},
		{name: "no rate", limit: annotations.Limit{}, wantErr: "positive rate"},
		// Buckets longer than the kernel keeps (4.295 s at the rate) are cut to
		// 4.294 s: explicit ones (admission refuses new ones) and the default
		// at low rates (64 KiB is 5.2 s at 100 kbit/s).
		{name: "burst over the kernel's 4.29 s", limit: annotations.Limit{Rate: 10e6, Burst: 100e6}, want: TBFParams{RateBytes: 1_250_000, BurstBytes: 5_367_459, LimitBytes: 5_367_459}},
		{name: "default burst at 100 kbit/s", limit: annotations.Limit{Rate: 100e3}, want: TBFParams{RateBytes: 12_500, BurstBytes: 53_674, LimitBytes: 53_674}},
		{name: "longest burst at 1 kbit/s", limit: annotations.Limit{Rate: 1000, Burst: annotations.MaxBurst}, want: TBFParams{RateBytes: 125, BurstBytes: 536, LimitBytes: 536}},
		// A burst below one frame (set by a live edit, which admission does not see) is raised to one.
		{name: "4-bit burst", limit: annotations.Limit{Rate: 10e6, Burst: 4}, want: TBFParams{RateBytes: 1_250_000, BurstBytes: 1518, LimitBytes: 62_500}},
		{name: "4 s burst", limit: annotations.Limit{Rate: 10e6, Burst: 40e6}, want: TBFParams{RateBytes: 1_250_000, BurstBytes: 5_000_000, LimitBytes: 5_000_000}},
		// Admission's smallest burst at high rates: the kernel's bucket, in
		// ticks, must still hold it (checked below for every case).
		{name: "one frame at 1 Gbit/s", limit: annotations.Limit{Rate: 1e9, Burst: annotations.MinBurst}, want: TBFParams{RateBytes: 125e6, BurstBytes: 1518, LimitBytes: 6_250_000}},
		{name: "one frame at 20 Gbit/s", limit: annotations.Limit{Rate: 20e9, Burst: annotations.MinBurst}, want: TBFParams{RateBytes: 2_500_000_000, BurstBytes: 1518, LimitBytes: 125_000_000}},
		// With jumbo frames the floor is one frame of the MTU: admission's
		// checks know 1518-byte frames only, and a 5,000-byte burst dropped
		// every larger frame.
		{name: "5000-byte burst at MTU 9000", limit: annotations.Limit{Rate: 100e6, Burst: 40e3}, mtu: 9000, want: TBFParams{RateBytes: 12_500_000, BurstBytes: 9018, LimitBytes: 625_000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := TBF(tt.limit, tt.mtu)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("TBF = %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("TBF = %+v, %v; want %+v", got, err, tt.want)
			}
			q := got.Qdisc(7)
			if q.LinkIndex != 7 || q.Parent != netlink.HANDLE_ROOT || q.Handle != netlink.MakeHandle(1, 0) || q.Rate != got.RateBytes || q.Limit != got.LimitBytes {
				t.Errorf("Qdisc = %+v", q)
			}
			if !got.Matches(q) {
				t.Error("params do not match their own qdisc")
			}
			// What the kernel holds: Buffer ticks at the rate. Rounded
			// down, one frame at 1 Gbit/s was 1,496 bytes (tbf drops
			// larger packets) and at 20 Gbit/s 0 ticks (refused).
			if bucket := float64(q.Buffer) / netlink.TickInUsec() / 1e6 * float64(got.RateBytes); bucket < float64(got.BurstBytes) {
				t.Errorf("Buffer %d ticks holds %.0f bytes at the rate; want at least the burst, %d", q.Buffer, bucket, got.BurstBytes)
			}
			other := *q
			other.Rate++
			if got.Matches(&other) || got.Matches(nil) {
				t.Error("params match a different qdisc")
			}
		})
	}
}

func TestPolicer(t *testing.T) {
	tests := []struct {
		limit annotations.Limit
		mtu   int
		gso   bool
		want  PolicerParams
	}{
		{limit: annotations.Limit{Rate: 20e6}, want: PolicerParams{RateKbps: 20000, BurstKbits: 16000}},
		{limit: annotations.Limit{Rate: 300e6}, want: PolicerParams{RateKbps: 300000, BurstKbits: 240000}},
		{limit: annotations.Limit{Rate: 10e6, Burst: 2e6}, want: PolicerParams{RateKbps: 10000, BurstKbits: 2000}},
		// Never below one full frame (12,144 bits) plus 1 ms at the rate,
		// rounded up: admission's smallest burst, and the default at low
		// rates, gave 12 or 8 kbits, which no full-size frame fits in.
		{limit: annotations.Limit{Rate: 10e6, Burst: annotations.MinBurst}, want: PolicerParams{RateKbps: 10000, BurstKbits: 23}},
		{limit: annotations.Limit{Rate: 1e9, Burst: annotations.MinBurst}, want: PolicerParams{RateKbps: 1_000_000, BurstKbits: 1013}},
		{limit: annotations.Limit{Rate: 10e3}, want: PolicerParams{RateKbps: 10, BurstKbits: 13}},
		{limit: annotations.Limit{Rate: 1000, Burst: 1}, want: PolicerParams{RateKbps: 1, BurstKbits: 13}},
		{limit: annotations.Limit{Rate: 10e6, Burst: 2_000_001}, want: PolicerParams{RateKbps: 10000, BurstKbits: 2001}},
		{limit: annotations.Limit{Rate: 10e6, Burst: annotations.MinBurst}, mtu: 9000, want: PolicerParams{RateKbps: 10000, BurstKbits: 83}},
		// With GSO (the kernel datapath) never below the largest GSO packet
		// (64 KiB) plus 1 ms at the rate: tc's police action drops every
		// packet longer than its burst.
		{limit: annotations.Limit{Rate: 10e6, Burst: annotations.MinBurst}, gso: true, want: PolicerParams{RateKbps: 10000, BurstKbits: 535}},
		{limit: annotations.Limit{Rate: 10e6, Burst: 100e3}, mtu: 9000, gso: true, want: PolicerParams{RateKbps: 10000, BurstKbits: 535}},
		{limit: annotations.Limit{Rate: 10e3}, gso: true, want: PolicerParams{RateKbps: 10, BurstKbits: 525}},
		{limit: annotations.Limit{Rate: 20e6}, gso: true, want: PolicerParams{RateKbps: 20000, BurstKbits: 16000}},
		{limit: annotations.Limit{Rate: 10e6, Burst: 2e6}, gso: true, want: PolicerParams{RateKbps: 10000, BurstKbits: 2000}},
	}
	for _, tt := range tests {
		if got, err := Policer(tt.limit, tt.mtu, tt.gso); err != nil || got != tt.want {
			t.Errorf("Policer(%+v, mtu %d, gso %t) = %+v, %v; want %+v", tt.limit, tt.mtu, tt.gso, got, err, tt.want)
		}
	}
	if _, err := Policer(annotations.Limit{}, 0, false); err == nil {
		t.Error("Policer without rate: want error")
	}
}

// annotations.MinIngressRate is the lowest rate whose bucket, as TBF sets it,
// holds one full frame: admission and the node agent agree.
func TestMinIngressRateHoldsAFrame(t *testing.T) {
	frame := uint32(annotations.MinBurst / 8)
	at, err := TBF(annotations.Limit{Rate: annotations.MinIngressRate}, 0)
	if err != nil || at.BurstBytes < frame {
		t.Fatalf("TBF at %d bit/s: bucket %d bytes, %v; want at least %d", annotations.MinIngressRate, at.BurstBytes, err, frame)
	}
	below, err := TBF(annotations.Limit{Rate: annotations.MinIngressRate - 1}, 0)
	if err != nil || below.BurstBytes >= frame {
		t.Fatalf("TBF at %d bit/s: bucket %d bytes, %v; MinIngressRate is not the lowest rate that holds a frame", annotations.MinIngressRate-1, below.BurstBytes, err)
	}
}
