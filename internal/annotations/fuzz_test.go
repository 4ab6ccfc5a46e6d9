package annotations

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsers feeds arbitrary values to every parser: none may panic, every
// failure must be an *Error that names the key, and what parses must
// round-trip through the form stickynet writes it in (rates and bursts as
// decimal bits, addresses and prefixes comma-separated, MACs and identities
// as String renders them); ParseBandwidth, which the others make up, only
// the first two.
func FuzzParsers(f *testing.F) {
	for _, s := range []string{"10M", "1G", "0.5", "10.0.0.1,fd00::1", "02:42:ac:11:00:02", "10.0.0.5/24", "4094", "statefulset/ns/web/0", "1e3", "Retain"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(name string, err error) {
			if err == nil {
				return
			}
			var ae *Error
			if !errors.As(err, &ae) || ae.Key == "" {
				t.Fatalf("%s(%q): error %v is not an *Error naming a key", name, s, err)
			}
		}
		// roundTrip fails unless parse(written) gives back what parse(s) gave.
		roundTrip := func(name string, got any, written string, parse func(string) (any, error)) {
			again, err := parse(written)
			if err != nil || fmt.Sprint(again) != fmt.Sprint(got) {
				t.Fatalf("%s(%q) = %v, written %q, parses as %v, %v", name, s, got, written, again, err)
			}
		}
		if r, err := ParseRate(IngressBandwidth, s); err == nil && (r < MinRate || r > MaxRate) {
			t.Fatalf("ParseRate(%q) = %d out of range", s, r)
		} else if err == nil {
			roundTrip("ParseRate", r, strconv.FormatInt(r, 10), func(v string) (any, error) { return ParseRate(IngressBandwidth, v) })
		} else {
			check("ParseRate", err)
		}
		if b, err := ParseBurst(IngressBurst, s); err == nil && (b < 1 || b > MaxBurst) {
			t.Fatalf("ParseBurst(%q) = %d out of range", s, b)
		} else if err == nil {
			roundTrip("ParseBurst", b, strconv.FormatInt(b, 10), func(v string) (any, error) { return ParseBurst(IngressBurst, v) })
		} else {
			check("ParseBurst", err)
		}
		if l, err := ParseIPList(IPs, s); err == nil {
			seen := map[string]bool{}
			for _, a := range l {
				if seen[a.String()] {
					t.Fatalf("ParseIPList(%q) returned %s twice", s, a)
				}
				seen[a.String()] = true
			}
			roundTrip("ParseIPList", l, joined(l), func(v string) (any, error) { return ParseIPList(IPs, v) })
		} else {
			check("ParseIPList", err)
		}
		if m, err := ParseMAC(MAC, s); err == nil {
			if m2, err := ParseMAC(MAC, m.String()); err != nil || m2.String() != m.String() {
				t.Fatalf("MAC %q does not round-trip: %v", s, err)
			}
		} else {
			check("ParseMAC", err)
		}
		if p, err := ParsePrefixes(AssignedIP, s); err == nil {
			roundTrip("ParsePrefixes", p, joined(p), func(v string) (any, error) { return ParsePrefixes(AssignedIP, v) })
		} else {
			check("ParsePrefixes", err)
		}
		if v, err := ParseVLAN(VLAN, s); err == nil {
			roundTrip("ParseVLAN", v, strconv.Itoa(v), func(w string) (any, error) { return ParseVLAN(VLAN, w) })
		} else {
			check("ParseVLAN", err)
		}
		if id, err := ParseIdentity(s); err == nil {
			if id.String() != s {
				t.Fatalf("identity %q renders as %q", s, id)
			}
		} else {
			check("ParseIdentity", err)
		}
		_, err := ParseBandwidth(map[string]string{IngressBandwidth: s, KubernetesIngressBandwidth: s, IngressBurst: s})
		check("ParseBandwidth", err)
	})
}

// joined is what stickynet writes for a list: its items comma-separated.
func joined[T fmt.Stringer](l []T) string {
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}
