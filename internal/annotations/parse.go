package annotations

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Accepted forms, quoted in errors.
const (
	acceptRate      = "a rate in bit/s from 1k to 1T as a Kubernetes quantity, such as 10M or 1G"
	acceptBurst     = "a burst in bits from 1 to 34359738360 (4Gi bytes) as a Kubernetes quantity, such as 1M"
	acceptIP        = "an IP address such as 10.20.0.5 or fd00::5"
	acceptIPList    = "a comma-separated list of distinct IP addresses such as 10.20.0.5,10.20.0.6"
	acceptMAC       = "a unicast MAC address of 6 octets such as 02:42:ac:11:00:02"
	acceptRetention = RetentionRetain + " or " + RetentionRelease
	acceptPrefixes  = "a comma-separated list of addresses with prefix length such as 10.20.0.5/24,fd00::5/64"
	acceptAddrs     = "a comma-separated list of IP addresses such as 10.20.0.1,fd00::1"
	acceptVLAN      = "a VLAN ID from 0 to 4094"
	acceptName      = "a Kubernetes object name (lower-case letters, digits, '-' and '.', at most 253 characters)"
)

// Limits of rates and bursts.
const (
	MinRate  = 1_000
	MaxRate  = 1_000_000_000_000
	MaxBurst = 34_359_738_360
	// MinBurst is one full Ethernet frame (1518 bytes): a smaller bucket
	// never passes a full-size packet. Admission refuses smaller bursts.
	MinBurst = 1518 * 8
	// MaxBurstTime is the longest ingress burst at the rate: the kernel keeps
	// a tbf bucket in 32-bit nanoseconds.
	MaxBurstTime = time.Duration(1<<32 - 1)
	// MinIngressRate is the lowest ingress rate whose longest tbf bucket, as
	// the node agent sets it (whole bytes/s, 1 ms short of MaxBurstTime),
	// holds one full frame.
	MinIngressRate = 2_832
)

// Error is a bad annotation value. Its message names the key, the value and the accepted form.
type Error struct {
	Key      string
	Value    string
	Accepted string
	Err      error // the underlying cause, if any
}

func (e *Error) Error() string {
	what := "annotation " + e.Key
	if strings.Contains(e.Key, " ") { // a resource's field, such as "BandwidthPolicy ns/name spec.ingress.rate"
		what = e.Key
	}
	msg := fmt.Sprintf("%s: invalid value %s: expected %s", what, shown(e.Value), e.Accepted)
	if e.Err != nil {
		msg += " (" + e.Err.Error() + ")"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// shown is a value as an Error quotes it: whole up to 100 bytes, else its
// start and its length, so that a long one (an annotation may hold 256 KiB)
// does not swamp a denial, a log line or an event, whose note the API server
// refuses past 1 KiB.
func shown(v string) string {
	if len(v) <= 100 {
		return strconv.Quote(v)
	}
	cut := 64
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return fmt.Sprintf("%q… (%d bytes)", v[:cut], len(v))
}

func invalid(key, value, accepted string, err error) error {
	return &Error{Key: key, Value: value, Accepted: accepted, Err: err}
}

// ParseRate parses a rate in bit/s.
func ParseRate(key, value string) (int64, error) {
	return parseQuantity(key, value, MinRate, MaxRate, acceptRate)
}

// ParseBurst parses a burst in bits.
func ParseBurst(key, value string) (int64, error) {
	return parseQuantity(key, value, 1, MaxBurst, acceptBurst)
}

// quantityShape is what a rate or burst may look like before
// resource.ParseQuantity reads it: a Kubernetes quantity with an exponent of
// at most two digits, in at most 40 characters. ParseQuantity takes any
// exponent: 1e-100000000 ran past TestParseRate's 15 s timeout without this
// check (a review measured 2.5 s for 1e-10000000), the webhook's CPU while
// the API server's call timed out; and it wraps one past 32 bits
// (1e4294967305 read as 1e9, TestParseRate).
var quantityShape = regexp.MustCompile(`^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]{1,2})?$`)

func parseQuantity(key, value string, lo, hi int64, accepted string) (int64, error) {
	v := strings.TrimSpace(value)
	if len(v) > 40 || !quantityShape.MatchString(v) {
		return 0, invalid(key, value, accepted, nil)
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, invalid(key, value, accepted, nil)
	}
	if q.Sign() <= 0 || q.Cmp(*resource.NewQuantity(hi, resource.DecimalSI)) > 0 {
		return 0, invalid(key, value, accepted, nil)
	}
	n := q.Value() // rounds a fraction up
	if n < lo {
		return 0, invalid(key, value, accepted, nil)
	}
	return n, nil
}

// ParseIP parses a single IP address without zone.
func ParseIP(key, value string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(value))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, invalid(key, value, acceptIP, nil)
	}
	return a.Unmap(), nil
}

// ParseIPList parses a comma-separated list of distinct IP addresses.
func ParseIPList(key, value string) ([]netip.Addr, error) {
	parts := strings.Split(value, ",")
	out := make([]netip.Addr, 0, len(parts))
	seen := make(map[netip.Addr]bool, len(parts))
	for i, p := range parts {
		a, err := netip.ParseAddr(strings.TrimSpace(p))
		if err != nil || a.Zone() != "" {
			return nil, invalid(key, value, acceptIPList, fmt.Errorf("entry %d %q is not an IP address", i, strings.TrimSpace(p)))
		}
		a = a.Unmap()
		if seen[a] {
			return nil, invalid(key, value, acceptIPList, fmt.Errorf("entry %d %s is listed twice", i, a))
		}
		seen[a] = true
		out = append(out, a)
	}
	return out, nil
}

// ParseMAC parses a 6-octet unicast MAC address other than all zeros.
func ParseMAC(key, value string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(strings.TrimSpace(value))
	if err != nil || len(m) != 6 {
		return nil, invalid(key, value, acceptMAC, nil)
	}
	if m[0]&1 == 1 {
		return nil, invalid(key, value, acceptMAC, errors.New("multicast bit is set"))
	}
	if string(m) == "\x00\x00\x00\x00\x00\x00" {
		return nil, invalid(key, value, acceptMAC, errors.New("all zeros"))
	}
	return m, nil
}

// IsLocallyAdministered reports whether the MAC has the locally administered bit set.
func IsLocallyAdministered(m net.HardwareAddr) bool { return len(m) > 0 && m[0]&2 == 2 }

// ParseRetention parses the ip-retention value; empty means Retain.
func ParseRetention(value string) (string, error) {
	switch strings.TrimSpace(value) {
	case "", RetentionRetain:
		return RetentionRetain, nil
	case RetentionRelease:
		return RetentionRelease, nil
	}
	return "", invalid(IPRetention, value, acceptRetention, nil)
}

// ParseName checks an object name such as a pool or SriovNetwork name.
func ParseName(key, value string) (string, error) {
	v := strings.TrimSpace(value)
	if v == "" || len(v) > 253 {
		return "", invalid(key, value, acceptName, nil)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '-' || c == '.') && i > 0 && i < len(v)-1
		if !ok {
			return "", invalid(key, value, acceptName, nil)
		}
	}
	return v, nil
}

// ParsePrefixes parses a comma-separated list of addresses with prefix length
// (the assigned-ip form, such as 10.20.0.5/24,fd00::5/64).
func ParsePrefixes(key, value string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for p := range strings.SplitSeq(value, ",") {
		pf, err := netip.ParsePrefix(strings.TrimSpace(p))
		if err != nil {
			return nil, invalid(key, value, acceptPrefixes, nil)
		}
		out = append(out, pf)
	}
	return out, nil
}

// ParseAddrs parses a comma-separated list of addresses (the gateway form).
func ParseAddrs(key, value string) ([]netip.Addr, error) {
	var out []netip.Addr
	for p := range strings.SplitSeq(value, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(p))
		if err != nil || a.Zone() != "" {
			return nil, invalid(key, value, acceptAddrs, nil)
		}
		out = append(out, a)
	}
	return out, nil
}

// ParseVLAN parses a VLAN ID.
func ParseVLAN(key, value string) (int, error) {
	var v int
	if _, err := fmt.Sscanf(strings.TrimSpace(value), "%d", &v); err != nil || v < 0 || v > 4094 ||
		fmt.Sprint(v) != strings.TrimSpace(value) {
		return 0, invalid(key, value, acceptVLAN, nil)
	}
	return v, nil
}
