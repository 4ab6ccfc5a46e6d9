package annotations

import (
	"errors"
	"testing"
)

// FuzzParsers feeds arbitrary values to every parser: none may panic, every
// failure must be an *Error that names the key, and what parses must round-trip.
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
		if r, err := ParseRate(IngressBandwidth, s); err == nil && (r < MinRate || r > MaxRate) {
			t.Fatalf("ParseRate(%q) = %d out of range", s, r)
		} else {
			check("ParseRate", err)
		}
		if b, err := ParseBurst(IngressBurst, s); err == nil && (b < 1 || b > MaxBurst) {
			t.Fatalf("ParseBurst(%q) = %d out of range", s, b)
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
		_, err := ParsePrefixes(AssignedIP, s)
		check("ParsePrefixes", err)
		_, err = ParseVLAN(VLAN, s)
		check("ParseVLAN", err)
		if id, err := ParseIdentity(s); err == nil {
			if id.String() != s {
				t.Fatalf("identity %q renders as %q", s, id)
			}
		} else {
			check("ParseIdentity", err)
		}
		_, err = ParseBandwidth(map[string]string{IngressBandwidth: s, KubernetesIngressBandwidth: s, IngressBurst: s})
		check("ParseBandwidth", err)
	})
}
