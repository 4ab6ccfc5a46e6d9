package annotations

import (
	"fmt"
	"strconv"
	"time"
)

// Limit is a rate limit in one direction. Zero Rate means no limit; zero Burst
// means the default burst for the rate.
type Limit struct {
	Rate  int64 // bit/s
	Burst int64 // bits
}

// Bandwidth holds the limits in both directions, as seen from the pod.
type Bandwidth struct {
	Ingress Limit // into the pod
	Egress  Limit // out of the pod
}

// IsZero reports whether no limit is set in either direction.
func (b Bandwidth) IsZero() bool { return b == Bandwidth{} }

// ParseBandwidth reads the bandwidth keys from annotations, as admission
// does. The stickynet keys win; the kubernetes.io rate keys are accepted
// where they are absent, and a conflict between the two is an error. A burst
// without a rate is an error.
func ParseBandwidth(ann map[string]string) (Bandwidth, error) {
	return parseBandwidth(ann, true)
}

// AssignedBandwidth reads the limits of an admitted pod, whose stickynet
// keys the webhook wrote from the limits it resolved: as ParseBandwidth, but
// a kubernetes.io rate key beside a stickynet key is not read at all, so
// that one edited after admission cannot make the pod's assignment
// unreadable (ParseBandwidth tells such a conflict).
func AssignedBandwidth(ann map[string]string) (Bandwidth, error) {
	return parseBandwidth(ann, false)
}

func parseBandwidth(ann map[string]string, strict bool) (Bandwidth, error) {
	var b Bandwidth
	var err error
	if b.Ingress.Rate, err = rate(ann, IngressBandwidth, KubernetesIngressBandwidth, strict); err != nil {
		return Bandwidth{}, err
	}
	if b.Egress.Rate, err = rate(ann, EgressBandwidth, KubernetesEgressBandwidth, strict); err != nil {
		return Bandwidth{}, err
	}
	if b.Ingress.Burst, err = burst(ann, IngressBurst, b.Ingress.Rate, IngressBandwidth, KubernetesIngressBandwidth); err != nil {
		return Bandwidth{}, err
	}
	if b.Egress.Burst, err = burst(ann, EgressBurst, b.Egress.Rate, EgressBandwidth, KubernetesEgressBandwidth); err != nil {
		return Bandwidth{}, err
	}
	return b, nil
}

// VFRateMbps is the limit as an SR-IOV VF's max_tx_rate, which is whole
// Mbit/s: rounded up (a VF cannot do less than 1); 0 without a limit. The
// VF has no burst.
func (l Limit) VFRateMbps() int {
	if l.Rate <= 0 {
		return 0
	}
	return int((l.Rate + 999_999) / 1_000_000)
}

// BurstTime is how long the burst lasts at the rate.
func (l Limit) BurstTime() time.Duration {
	if l.Rate <= 0 {
		return 0
	}
	return time.Duration(float64(l.Burst) / float64(l.Rate) * float64(time.Second))
}

// Check refuses, at admission, a limit that cannot work as asked: a burst
// below one full frame and, into the pod (a tbf), a rate too low for a frame
// to fit the kernel's longest bucket or a burst longer than MaxBurstTime at
// the rate. Errors name the key (or field) and value they came from. The node
// agent applies whatever it is given, as annotations written earlier may be.
func (l Limit) Check(ingress bool, rateKey, rateValue, burstKey, burstValue string) error {
	if l.Burst > 0 && l.Burst < MinBurst {
		return invalid(burstKey, burstValue, fmt.Sprintf("a burst of at least %d bits (one 1518-byte Ethernet frame)", MinBurst), nil)
	}
	if !ingress || l.Rate == 0 {
		return nil
	}
	if l.Rate < MinIngressRate {
		return invalid(rateKey, rateValue, fmt.Sprintf("an ingress rate of at least %d bit/s: below it the kernel's tbf bucket, at most %s at the rate, holds less than one 1518-byte frame",
			MinIngressRate, MaxBurstTime.Round(time.Millisecond)), nil)
	}
	if l.BurstTime() > MaxBurstTime {
		return invalid(burstKey, burstValue, fmt.Sprintf("a burst that lasts at most %s at the rate of %d bit/s (at most %d bits), as the kernel's tbf allows",
			MaxBurstTime.Round(time.Millisecond), l.Rate, int64(MaxBurstTime.Seconds()*float64(l.Rate))), nil)
	}
	return nil
}

// CheckBandwidth runs Limit.Check on limits parsed from a pod's annotations,
// naming the keys the values came from.
func CheckBandwidth(ann map[string]string, b Bandwidth) error {
	rateKey := func(key, k8sKey string) string {
		if _, ok := ann[key]; ok {
			return key
		}
		return k8sKey
	}
	ik, ek := rateKey(IngressBandwidth, KubernetesIngressBandwidth), rateKey(EgressBandwidth, KubernetesEgressBandwidth)
	if err := b.Ingress.Check(true, ik, ann[ik], IngressBurst, ann[IngressBurst]); err != nil {
		return err
	}
	return b.Egress.Check(false, ek, ann[ek], EgressBurst, ann[EgressBurst])
}

// BandwidthKeys are the annotations a pod's limits are read from.
var BandwidthKeys = []string{
	IngressBandwidth, EgressBandwidth, IngressBurst, EgressBurst,
	KubernetesIngressBandwidth, KubernetesEgressBandwidth,
}

// HasBandwidth reports whether any bandwidth key is present.
func HasBandwidth(ann map[string]string) bool {
	for _, k := range BandwidthKeys {
		if _, ok := ann[k]; ok {
			return true
		}
	}
	return false
}

func rate(ann map[string]string, key, k8sKey string, strict bool) (int64, error) {
	v, ok := ann[key]
	kv, kok := ann[k8sKey]
	if ok && !strict {
		kok = false
	}
	if !ok && !kok {
		return 0, nil
	}
	var r int64
	if ok {
		var err error
		if r, err = ParseRate(key, v); err != nil {
			return 0, err
		}
	}
	if kok {
		kr, err := ParseRate(k8sKey, kv)
		if err != nil {
			return 0, err
		}
		if ok && kr != r {
			return 0, invalid(k8sKey, kv, fmt.Sprintf("the same rate as %s (%q) or no value", key, v), nil)
		}
		r = kr
	}
	return r, nil
}

func burst(ann map[string]string, key string, rate int64, rateKey, k8sRateKey string) (int64, error) {
	v, ok := ann[key]
	if !ok {
		return 0, nil
	}
	if rate == 0 {
		return 0, invalid(key, v, "no value unless "+rateKey+" (or "+k8sRateKey+") is set too", nil)
	}
	return ParseBurst(key, v)
}

// Annotations returns the stickynet bandwidth keys for b (only the non-zero ones).
func (b Bandwidth) Annotations() map[string]string {
	out := map[string]string{}
	put := func(k string, v int64) {
		if v > 0 {
			out[k] = strconv.FormatInt(v, 10)
		}
	}
	put(IngressBandwidth, b.Ingress.Rate)
	put(IngressBurst, b.Ingress.Burst)
	put(EgressBandwidth, b.Egress.Rate)
	put(EgressBurst, b.Egress.Burst)
	return out
}
