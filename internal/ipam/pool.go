package ipam

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
)

// DefaultReuseDelay applies when an IPPool leaves reuseDelaySeconds unset.
const DefaultReuseDelay = 60 * time.Second

// Pool is a validated IPPool: its allocatable addresses are the CIDR (or its
// ranges) minus the network and broadcast addresses, the gateway and the excludes.
type Pool struct {
	Name              string
	Prefix            netip.Prefix
	Gateway           netip.Addr // invalid when the pool has none
	VLAN              int
	ReuseDelay        time.Duration
	MACPrefix         []byte
	AllowUniversalMAC bool

	// Sharing names the other pools that can hand out some of its addresses
	// (set from the list of IPPools: Sharing); the allocator hands out none
	// that one of them has.
	Sharing []string

	// Deleting says the IPPool is being deleted (its deletion waits for
	// v1alpha1.IPPoolInUseFinalizer): the allocator hands out none of its
	// addresses to an identity that holds none (PoolDeletingError), while its
	// identities keep theirs.
	Deleting bool

	spans []span // allocatable, sorted, disjoint
	size  uint64 // number of allocatable addresses, saturating at MaxUint64
}

// PoolError is an invalid IPPool spec; it names the field, the value and the accepted form.
type PoolError struct {
	Pool, Field, Value, Reason string
}

func (e *PoolError) Error() string {
	return fmt.Sprintf("IPPool %s: spec.%s %q: %s", e.Pool, e.Field, e.Value, e.Reason)
}

// reuseDelayOf returns spec's reuse delay; ok is false when
// spec.reuseDelaySeconds is negative.
func reuseDelayOf(spec v1alpha1.IPPoolSpec) (_ time.Duration, ok bool) {
	if spec.ReuseDelaySeconds == nil {
		return DefaultReuseDelay, true
	}
	return time.Duration(*spec.ReuseDelaySeconds) * time.Second, *spec.ReuseDelaySeconds >= 0
}

// NewPool validates an IPPool spec. The API server's CEL rules check most of
// this already; NewPool is the authority (it also orders ranges and checks
// what CEL cannot, such as start <= end).
func NewPool(name string, spec v1alpha1.IPPoolSpec) (*Pool, error) {
	bad := func(field, value, reason string) error {
		return &PoolError{Pool: name, Field: field, Value: value, Reason: reason}
	}
	pfx, err := netip.ParsePrefix(spec.CIDR)
	if err != nil || pfx.Addr().Zone() != "" {
		return nil, bad("cidr", spec.CIDR, "expected a network in CIDR form such as 10.20.0.0/16 or fd00:20::/64")
	}
	if pfx.Masked() != pfx {
		return nil, bad("cidr", spec.CIDR, fmt.Sprintf("host bits are set; expected %s", pfx.Masked()))
	}
	if pfx.Addr().Is4In6() {
		// Requested addresses are read as IPv4 (annotations.ParseIP unmaps
		// them), so such a pool would deny every one of its own.
		return nil, bad("cidr", spec.CIDR, "an IPv4-mapped IPv6 network; expected the IPv4 network itself, such as 10.20.0.0/24 for ::ffff:10.20.0.0/120")
	}
	delay, ok := reuseDelayOf(spec)
	if !ok {
		return nil, bad("reuseDelaySeconds", fmt.Sprint(*spec.ReuseDelaySeconds), "expected 0 or more seconds")
	}
	p := &Pool{Name: name, Prefix: pfx, VLAN: int(spec.VLAN), AllowUniversalMAC: spec.AllowUniversalMAC, ReuseDelay: delay}
	for _, sel := range []struct {
		field string
		sel   *metav1.LabelSelector
	}{{"namespaceSelector", spec.NamespaceSelector}, {"nodeSelector", spec.NodeSelector}} {
		if _, err := metav1.LabelSelectorAsSelector(sel.sel); err != nil {
			v, _ := json.Marshal(sel.sel)
			return nil, bad(sel.field, string(v), "not a label selector: "+err.Error())
		}
	}
	if p.VLAN < 0 || p.VLAN > 4094 {
		return nil, bad("vlan", fmt.Sprint(spec.VLAN), "expected a VLAN ID from 0 to 4094")
	}
	inPool := func(field, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Addr{}, bad(field, s, "expected an IP address")
		}
		if !pfx.Contains(a) {
			return netip.Addr{}, bad(field, s, "outside cidr "+pfx.String())
		}
		return a, nil
	}
	if spec.Gateway != "" {
		if p.Gateway, err = inPool("gateway", spec.Gateway); err != nil {
			return nil, err
		}
	}
	if spec.MACPrefix != "" {
		mp, err := parseMACPrefix(spec.MACPrefix)
		if err != nil {
			return nil, bad("macPrefix", spec.MACPrefix, err.Error())
		}
		p.MACPrefix = mp
	}

	// Allocatable spans: ranges (or the whole CIDR) minus reserved addresses and excludes.
	first, last := prefixBounds(pfx)
	var spans []span
	if len(spec.Ranges) == 0 {
		spans = []span{{first, last}}
	}
	for i, r := range spec.Ranges {
		s, err := inPool(fmt.Sprintf("ranges[%d].start", i), r.Start)
		if err != nil {
			return nil, err
		}
		e, err := inPool(fmt.Sprintf("ranges[%d].end", i), r.End)
		if err != nil {
			return nil, err
		}
		if e.Less(s) {
			return nil, bad(fmt.Sprintf("ranges[%d]", i), r.Start+"-"+r.End, "start must not be after end")
		}
		spans = append(spans, span{u128From(s), u128From(e)})
	}
	var holes []span
	if pfx.Addr().Is4() && pfx.Bits() <= 30 {
		holes = append(holes, span{first, first}, span{last, last}) // network, broadcast
	} else if pfx.Addr().Is6() && pfx.Bits() <= 126 {
		holes = append(holes, span{first, first}) // subnet-router anycast
	}
	if p.Gateway.IsValid() {
		g := u128From(p.Gateway)
		holes = append(holes, span{g, g})
	}
	for i, x := range spec.Exclude {
		field := fmt.Sprintf("exclude[%d]", i)
		if strings.Contains(x, "/") {
			xp, err := netip.ParsePrefix(x)
			if err != nil {
				return nil, bad(field, x, "expected an IP address or a network in CIDR form")
			}
			if xp.Masked() != xp {
				return nil, bad(field, x, fmt.Sprintf("host bits are set; expected %s", xp.Masked()))
			}
			if !pfx.Overlaps(xp) || xp.Bits() < pfx.Bits() {
				return nil, bad(field, x, "outside cidr "+pfx.String())
			}
			lo, hi := prefixBounds(xp)
			holes = append(holes, span{lo, hi})
			continue
		}
		a, err := inPool(field, x)
		if err != nil {
			return nil, err
		}
		holes = append(holes, span{u128From(a), u128From(a)})
	}
	p.spans = subtract(merge(spans), merge(holes))
	for _, s := range p.spans {
		n := s.hi.sub(s.lo)
		if n.hi != 0 || n.lo == math.MaxUint64 || p.size+n.lo+1 < p.size {
			p.size = math.MaxUint64
			break
		}
		p.size += n.lo + 1
	}
	if p.size == 0 {
		return nil, bad("cidr", spec.CIDR, "the pool has no allocatable address left after the network, broadcast, gateway, ranges and excludes")
	}
	return p, nil
}

// parseMACPrefix parses one to five octets of a unicast MAC.
func parseMACPrefix(s string) ([]byte, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 1 || len(parts) > 5 {
		return nil, fmt.Errorf("expected one to five octets such as 02:42")
	}
	padded := s + strings.Repeat(":00", 6-len(parts))
	m, err := net.ParseMAC(padded)
	if err != nil {
		return nil, fmt.Errorf("expected one to five hex octets separated by ':' such as 02:42")
	}
	if m[0]&1 == 1 {
		return nil, fmt.Errorf("a multicast prefix: the low bit of the first octet must be clear, such as 02:42")
	}
	return m[:len(parts)], nil
}

// Size returns the number of allocatable addresses (saturating at MaxUint64).
func (p *Pool) Size() uint64 { return p.size }

// Contains reports whether a is an allocatable address of the pool.
func (p *Pool) Contains(a netip.Addr) bool {
	if !p.Prefix.Contains(a) {
		return false
	}
	u := u128From(a)
	i := sort.Search(len(p.spans), func(i int) bool { return !p.spans[i].hi.less(u) })
	return i < len(p.spans) && !u.less(p.spans[i].lo)
}

// WhyNot explains why a is not allocatable ("" when it is).
func (p *Pool) WhyNot(a netip.Addr) string {
	switch {
	case !p.Prefix.Contains(a):
		return fmt.Sprintf("outside pool %s (%s)", p.Name, p.Prefix)
	case p.Contains(a):
		return ""
	case a == p.Gateway:
		return fmt.Sprintf("the gateway of pool %s", p.Name)
	case a == p.Prefix.Addr() && a.Is4() && p.Prefix.Bits() <= 30:
		return fmt.Sprintf("the network address of pool %s (%s)", p.Name, p.Prefix)
	case a == p.Prefix.Addr() && a.Is6() && p.Prefix.Bits() <= 126:
		return fmt.Sprintf("the subnet-router anycast address of pool %s (%s)", p.Name, p.Prefix)
	}
	if _, last := prefixBounds(p.Prefix); a.Is4() && p.Prefix.Bits() <= 30 && u128From(a) == last {
		return fmt.Sprintf("the broadcast address of pool %s (%s)", p.Name, p.Prefix)
	}
	return fmt.Sprintf("excluded or outside the ranges of pool %s", p.Name)
}

// PrefixOf returns a with the pool's prefix length.
func (p *Pool) PrefixOf(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, p.Prefix.Bits()) }

// nth returns the i-th allocatable address (i < Size()).
func (p *Pool) nth(i uint64) netip.Addr {
	for _, s := range p.spans {
		n := s.hi.sub(s.lo)
		if n.hi != 0 || i <= n.lo {
			return s.lo.add(i).addr(p.Prefix.Addr().Is4())
		}
		i -= n.lo + 1
	}
	return netip.Addr{}
}

// RandomMAC returns a random MAC for the pool: under its prefix, or locally
// administered unicast.
func (p *Pool) randomMAC(rnd func() uint64) net.HardwareAddr {
	r := rnd()
	m := net.HardwareAddr{byte(r), byte(r >> 8), byte(r >> 16), byte(r >> 24), byte(r >> 32), byte(r >> 40)}
	if len(p.MACPrefix) > 0 {
		copy(m, p.MACPrefix)
		return m
	}
	m[0] = m[0]&0xfc | 0x02
	return m
}

// checkMAC validates a requested or recorded MAC against the pool. A MAC
// under the pool's macPrefix is the pool's own, universally administered or
// not: the pool hands those out.
func (p *Pool) checkMAC(m net.HardwareAddr) error {
	if len(p.MACPrefix) > 0 && bytes.HasPrefix(m, p.MACPrefix) {
		return nil
	}
	if !annotations.IsLocallyAdministered(m) && !p.AllowUniversalMAC {
		return &MACNotAllowedError{MAC: m, Pool: p.Name, Reason: fmt.Sprintf("is a universally administered MAC and pool %s does not allow those (spec.allowUniversalMAC)", p.Name)}
	}
	return nil
}

// Sharing returns the IPPools of all, other than p, that can hand out some
// of p's addresses, and the first address p shares with the first of them.
// An address is keyed by its pool, so the allocator keeps one that any of
// them has from being handed out by another (Pool.Sharing). Pools may also
// share a CIDR with ranges or excludes that keep their addresses apart.
func Sharing(p *Pool, all []v1alpha1.IPPool) (names []string, first netip.Addr) {
	for i := range all {
		o := &all[i]
		if o.Name == p.Name {
			continue
		}
		if op, err := netip.ParsePrefix(o.Spec.CIDR); err != nil || !op.Overlaps(p.Prefix) {
			continue
		}
		q, err := NewPool(o.Name, o.Spec)
		if err != nil {
			continue // hands out nothing
		}
		if a, ok := p.shared(q); ok {
			if names == nil {
				first = a
			}
			names = append(names, o.Name)
		}
	}
	return names, first
}

// shared returns the first address both pools can hand out.
func (p *Pool) shared(q *Pool) (netip.Addr, bool) {
	for i, j := 0, 0; i < len(p.spans) && j < len(q.spans); {
		a, b := p.spans[i], q.spans[j]
		lo, hi := a.lo, a.hi
		if lo.less(b.lo) {
			lo = b.lo
		}
		if b.hi.less(hi) {
			hi = b.hi
		}
		if !hi.less(lo) {
			return lo.addr(p.Prefix.Addr().Is4()), true
		}
		if a.hi.less(b.hi) {
			i++
		} else {
			j++
		}
	}
	return netip.Addr{}, false
}

// u128 is an IPv6-sized unsigned integer for address arithmetic.
type u128 struct{ hi, lo uint64 }

type span struct{ lo, hi u128 }

func u128From(a netip.Addr) u128 {
	b := a.As16()
	var u u128
	for i := range 8 {
		u.hi = u.hi<<8 | uint64(b[i])
		u.lo = u.lo<<8 | uint64(b[i+8])
	}
	return u
}

func (u u128) addr(is4 bool) netip.Addr {
	var b [16]byte
	for i := range 8 {
		b[7-i] = byte(u.hi >> (8 * i))
		b[15-i] = byte(u.lo >> (8 * i))
	}
	a := netip.AddrFrom16(b)
	if is4 {
		return a.Unmap()
	}
	return a
}

func (u u128) less(v u128) bool { return u.hi < v.hi || u.hi == v.hi && u.lo < v.lo }

func (u u128) add(n uint64) u128 {
	lo := u.lo + n
	hi := u.hi
	if lo < u.lo {
		hi++
	}
	return u128{hi, lo}
}

func (u u128) sub(v u128) u128 {
	lo := u.lo - v.lo
	hi := u.hi - v.hi
	if u.lo < v.lo {
		hi--
	}
	return u128{hi, lo}
}

func (u u128) inc() u128 { return u.add(1) }

func (u u128) dec() u128 { return u.sub(u128{0, 1}) }

func prefixBounds(p netip.Prefix) (u128, u128) {
	lo := u128From(p.Masked().Addr())
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	hostBits := 128 - bits
	var mask u128
	switch {
	case hostBits >= 128:
		mask = u128{math.MaxUint64, math.MaxUint64}
	case hostBits >= 64:
		mask = u128{1<<(hostBits-64) - 1, math.MaxUint64}
	default:
		mask = u128{0, 1<<hostBits - 1}
	}
	return lo, u128{lo.hi | mask.hi, lo.lo | mask.lo}
}

// merge sorts spans and joins overlapping or adjacent ones.
func merge(in []span) []span {
	s := append([]span(nil), in...)
	sort.Slice(s, func(i, j int) bool { return s[i].lo.less(s[j].lo) })
	var out []span
	for _, x := range s {
		if n := len(out); n > 0 && !out[n-1].hi.inc().less(x.lo) && out[n-1].hi != (u128{math.MaxUint64, math.MaxUint64}) {
			if out[n-1].hi.less(x.hi) {
				out[n-1].hi = x.hi
			}
			continue
		}
		out = append(out, x)
	}
	return out
}

// subtract removes holes (merged) from spans (merged).
func subtract(spans, holes []span) []span {
	var out []span
	for _, s := range spans {
		cur := []span{s}
		for _, h := range holes {
			var next []span
			for _, c := range cur {
				if h.hi.less(c.lo) || c.hi.less(h.lo) {
					next = append(next, c)
					continue
				}
				if c.lo.less(h.lo) {
					next = append(next, span{c.lo, h.lo.dec()})
				}
				if h.hi.less(c.hi) {
					next = append(next, span{h.hi.inc(), c.hi})
				}
			}
			cur = next
		}
		out = append(out, cur...)
	}
	return out
}
