package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/storetest"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func startAllocator(t *testing.T, s store.Store, opts Options) *Allocator {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a := New(s, opts)
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return a
}

func mustPool(t *testing.T, name string, spec v1alpha1.IPPoolSpec) *Pool {
	t.Helper()
	p, err := NewPool(name, spec)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func alloc(t *testing.T, a *Allocator, req Request) Allocation {
	t.Helper()
	got, err := a.Allocate(testCtx(t), req)
	if err != nil {
		t.Fatalf("Allocate(%s): %v", req.Identity, err)
	}
	return got
}

// vacate does what the release controller does when a pod is gone for good:
// unbinds the address from the pod, then releases it from the identity.
func vacate(t *testing.T, a *Allocator, pool string, ip netip.Addr, identity, pod string) {
	t.Helper()
	if err := a.Unbind(testCtx(t), pool, ip, pod); err != nil {
		t.Fatal(err)
	}
	if released, err := a.Release(testCtx(t), pool, ip, identity, false); err != nil || !released {
		t.Fatalf("release of %s from %s: %v, %v; want true, nil", ip, identity, released, err)
	}
}

func TestStickyAndDistinct(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"})
	first := map[string]Allocation{}
	seenIP, seenMAC := map[netip.Addr]string{}, map[string]string{}
	for i := range 50 {
		id := fmt.Sprintf("statefulset/ns/web/%d", i)
		got := alloc(t, a, Request{Pool: p, Identity: id, Pod: fmt.Sprintf("ns/web-%d", i)})
		if !got.New || got.Reserved || got.Prefix.Bits() != 24 {
			t.Fatalf("first allocation %+v", got)
		}
		if other, dup := seenIP[got.IP]; dup {
			t.Fatalf("%s handed to %s and %s", got.IP, other, id)
		}
		if other, dup := seenMAC[got.MAC.String()]; dup {
			t.Fatalf("MAC %s handed to %s and %s", got.MAC, other, id)
		}
		if got.MAC[0]&3 != 2 {
			t.Fatalf("MAC %s is not locally administered unicast", got.MAC)
		}
		seenIP[got.IP], seenMAC[got.MAC.String()] = id, id
		first[id] = got
	}
	for id, want := range first {
		got := alloc(t, a, Request{Pool: p, Identity: id, Pod: want.Pod})
		if got.IP != want.IP || got.MAC.String() != want.MAC.String() || got.New {
			t.Fatalf("repeat for %s = %s %s; want %s %s", id, got.IP, got.MAC, want.IP, want.MAC)
		}
	}
	// A second allocator on the same store (another webhook replica) agrees.
	b := startAllocator(t, aStore(a), Options{})
	for id, want := range first {
		if got := alloc(t, b, Request{Pool: p, Identity: id, Pod: want.Pod}); got.IP != want.IP {
			t.Fatalf("second allocator gives %s to %s; want %s", got.IP, id, want.IP)
		}
	}
}

func aStore(a *Allocator) store.Store { return a.s }

func TestNeverHandsOutReservedAddresses(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "small", v1alpha1.IPPoolSpec{
		CIDR: "10.9.0.0/28", Gateway: "10.9.0.1",
		Ranges:  []v1alpha1.IPRange{{Start: "10.9.0.0", End: "10.9.0.12"}},
		Exclude: []string{"10.9.0.4/31", "10.9.0.9"},
	})
	// Allocatable: 2,3,6,7,8,10,11,12 (0 network, 1 gateway, 4-5 and 9 excluded, 13-15 outside the range).
	want := map[string]bool{"10.9.0.2": true, "10.9.0.3": true, "10.9.0.6": true, "10.9.0.7": true, "10.9.0.8": true, "10.9.0.10": true, "10.9.0.11": true, "10.9.0.12": true}
	got := map[string]bool{}
	for i := range len(want) {
		al := alloc(t, a, Request{Pool: p, Identity: fmt.Sprintf("pod/ns/p%d", i), Pod: fmt.Sprintf("ns/p%d", i)})
		got[al.IP.String()] = true
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("allocated %v; want exactly %v", got, want)
	}
	// Unbind two pods: their identities keep the addresses (held, sticky).
	for _, i := range []int{0, 1} {
		al := a.Lookup(fmt.Sprintf("pod/ns/p%d", i))[0]
		if err := a.Unbind(testCtx(t), "small", al.IP, al.Pod); err != nil {
			t.Fatal(err)
		}
	}
	_, err := a.Allocate(testCtx(t), Request{Pool: p, Identity: "pod/ns/late", Pod: "ns/late"})
	var ex *ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("allocation from a full pool: %v; want *ExhaustedError", err)
	}
	if ex.Stats.Total != 8 || ex.Stats.Held != 2 || ex.Stats.Allocated != 6 || ex.Stats.Free != 0 {
		t.Fatalf("exhausted stats = %+v", ex.Stats)
	}
	for _, part := range []string{"pool small is exhausted", "all 8 addresses", "2 held by sticky identities"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q lacks %q", err, part)
		}
	}
}

func TestExplicitRequests(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"})
	ctx := testCtx(t)
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
	got := alloc(t, a, Request{Pool: p, Identity: "pod/ns/a", Pod: "ns/a", IP: netip.MustParseAddr("10.0.0.50"), MAC: mac})
	if got.IP.String() != "10.0.0.50" || got.MAC.String() != mac.String() {
		t.Fatalf("explicit request gave %s %s", got.IP, got.MAC)
	}

	_, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", IP: netip.MustParseAddr("10.0.0.50")})
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Holder != "pod/ns/a" || !strings.Contains(err.Error(), "address 10.0.0.50 of pool p is held by pod/ns/a") {
		t.Fatalf("taken IP: %v", err)
	}
	_, err = a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", MAC: mac})
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "MAC 02:00:00:00:00:42") || ce.Holder != "pod/ns/a" {
		t.Fatalf("taken MAC: %v", err)
	}
	var na *NotAllocatableError
	for ip, why := range map[string]string{"10.0.1.5": "outside pool p", "10.0.0.1": "gateway", "10.0.0.255": "broadcast"} {
		_, err = a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", IP: netip.MustParseAddr(ip)})
		if !errors.As(err, &na) || !strings.Contains(err.Error(), why) {
			t.Fatalf("IP %s: %v; want NotAllocatableError with %q", ip, err, why)
		}
	}
	_, err = a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", MAC: net.HardwareAddr{0x00, 0x1b, 0x21, 1, 2, 3}})
	var me *MACNotAllowedError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), "universally administered") {
		t.Fatalf("universal MAC: %v; want MACNotAllowedError", err)
	}
	pu := mustPool(t, "pu", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", AllowUniversalMAC: true})
	alloc(t, a, Request{Pool: pu, Identity: "pod/ns/c", Pod: "ns/c", MAC: net.HardwareAddr{0x00, 0x1b, 0x21, 1, 2, 3}})
	// Nothing half-written by the failures: b has no address.
	if l := a.Lookup("pod/ns/b"); len(l) != 0 {
		t.Fatalf("failed requests left %v", l)
	}
}

func TestIPv6(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "v6", v1alpha1.IPPoolSpec{CIDR: "fd00:20::/64", Gateway: "fd00:20::1", MACPrefix: "0a:58"})
	seen := map[netip.Addr]bool{}
	for i := range 100 {
		got := alloc(t, a, Request{Pool: p, Identity: fmt.Sprintf("statefulset/ns/db/%d", i), Pod: fmt.Sprintf("ns/db-%d", i)})
		if !got.IP.Is6() || !p.Prefix.Contains(got.IP) || got.IP == p.Gateway || got.IP == p.Prefix.Addr() || seen[got.IP] {
			t.Fatalf("bad v6 allocation %s", got.IP)
		}
		if got.Prefix.String() != got.IP.String()+"/64" || !strings.HasPrefix(got.MAC.String(), "0a:58:") {
			t.Fatalf("allocation %s %s", got.Prefix, got.MAC)
		}
		seen[got.IP] = true
	}
}

// An address record etcd holds that does not decode (a hand edit) is named
// in the claim's error; before, every attempt lost to it and the caller was
// told of contention.
func TestUndecodableRecordNamed(t *testing.T) {
	mem := store.NewMemory()
	a := startAllocator(t, mem, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ip := netip.MustParseAddr("10.0.0.5")
	key := a.keys.addrKey("p", ip)
	if _, err := mem.Txn(testCtx(t), nil, []store.Op{store.Put(key, []byte("not json"), 0)}, nil); err != nil {
		t.Fatal(err)
	}
	_, err := a.Allocate(testCtx(t), Request{Pool: p, Identity: "pod/ns/a", Pod: "ns/a", IP: ip})
	if err == nil || !strings.Contains(err.Error(), "the record "+key+" in etcd does not decode") {
		t.Errorf("claim of %s over an undecodable record: %v; want the record named", ip, err)
	}
	// An address the allocator picks itself is picked again instead: in a
	// pool of two, the other one (half the time the first pick lands on
	// the record).
	small := mustPool(t, "small", v1alpha1.IPPoolSpec{CIDR: "10.0.1.0/30"})
	if _, err := mem.Txn(testCtx(t), nil, []store.Op{store.Put(a.keys.addrKey("small", netip.MustParseAddr("10.0.1.1")), []byte("not json"), 0)}, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := a.Allocate(testCtx(t), Request{Pool: small, Identity: "pod/ns/b", Pod: "ns/b"}); err != nil || got.IP != netip.MustParseAddr("10.0.1.2") {
		t.Errorf("a pick in a pool of two, one with an undecodable record: %v, %v; want 10.0.1.2", got.IP, err)
	}
}

func TestReleaseAndReuseDelay(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(2)})
	ctx := testCtx(t)
	first := alloc(t, a, Request{Pool: p, Identity: "pod/ns/a", Pod: "ns/a"})
	if _, err := a.Release(ctx, "p", first.IP, "pod/ns/a", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("release of an address a pod carries: %v; want ErrInUse", err)
	}
	vacate(t, a, "p", first.IP, "pod/ns/a", "ns/a")
	if s := a.Stats(p); s.Cooling != 1 || s.Held != 0 {
		t.Fatalf("stats after release: %+v", s)
	}
	if released, err := a.Release(ctx, "p", first.IP, "pod/ns/a", false); err != nil || released {
		t.Fatalf("release of a cooling address: %v, %v; want false, nil (released before)", released, err)
	}
	// Another identity may not take it while it cools down.
	_, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", IP: first.IP})
	var ce *ConflictError
	if !errors.As(err, &ce) || !ce.Cooling || !strings.Contains(err.Error(), "cooling down") {
		t.Fatalf("taking a cooling address: %v", err)
	}
	// The identity that released it gets it back, with its MAC.
	again := alloc(t, a, Request{Pool: p, Identity: "pod/ns/a", Pod: "ns/a"})
	if again.IP != first.IP || again.MAC.String() != first.MAC.String() {
		t.Fatalf("reclaim gave %s %s; want %s %s", again.IP, again.MAC, first.IP, first.MAC)
	}
	if _, err := a.Release(ctx, "p", first.IP, "pod/ns/a", true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", IP: first.IP})
		if err == nil {
			break
		}
		if !errors.As(err, &ce) || time.Now().After(deadline) {
			t.Fatalf("address not reusable after the reuse delay: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestReservationExpiresOrIsBound(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{ReservationTTL: time.Second})
	// No reuse delay: a reservation taken again by a pod under another
	// token starts over, and lasts at least the reuse delay from its claim.
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(0)})
	ctx := testCtx(t)
	lost := alloc(t, a, Request{Pool: p, Identity: "daemonset/ns/agent/node-1", Token: "t1"})
	kept := alloc(t, a, Request{Pool: p, Identity: "daemonset/ns/agent/node-2", Token: "t2"})
	if !lost.Reserved || lost.Token != "t1" {
		t.Fatalf("token allocation %+v not reserved", lost)
	}
	// Re-admission under another token before confirmation returns the same reservation.
	if again := alloc(t, a, Request{Pool: p, Identity: "daemonset/ns/agent/node-1", Token: "t9"}); again.IP != lost.IP || again.Token != "t1" {
		t.Fatalf("repeat of a reservation = %+v", again)
	}
	if err := a.Bind(ctx, Binding{Pool: "p", IP: kept.IP, Identity: kept.Identity, Pod: "ns/agent-x", Token: "wrong"}); err == nil {
		t.Fatal("bind with the wrong token succeeded")
	}
	if err := a.Bind(ctx, Binding{Pool: "p", IP: kept.IP, Identity: kept.Identity, Pod: "ns/agent-x", Token: "t2"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(a.Lookup(lost.Identity)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("unconfirmed reservation still there: %v", a.Lookup(lost.Identity))
		}
		time.Sleep(100 * time.Millisecond)
	}
	kv, _ := s.Get(ctx, a.keys.macKey(lost.MAC.String()))
	if kv != nil {
		t.Fatal("MAC key of an expired reservation is still there")
	}
	l := a.Lookup(kept.Identity)
	if len(l) != 1 || l[0].Reserved || l[0].Pod != "ns/agent-x" {
		t.Fatalf("bound reservation = %+v", l)
	}
	var le *LostError
	if err := a.Bind(ctx, Binding{Pool: "p", IP: lost.IP, Identity: lost.Identity, Pod: "ns/agent-y", Token: "t1"}); !errors.As(err, &le) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("bind after expiry: %v", err)
	}
}

// A pod admitted under a token takes back its identity's address while it
// cools, and never appears: when its reservation ends, the address and MAC
// still wait out the rest of the reuse delay before anyone else may have them.
func TestReservationOverCoolingAddress(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{ReservationTTL: 500 * time.Millisecond})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(3600)})
	ctx := testCtx(t)
	for _, shared := range []bool{true, false} {
		id := "daemonset/ns/agent/node-1"
		if shared {
			id = "deployment/ns/web"
		}
		first := alloc(t, a, Request{Pool: p, Identity: id, Shared: shared, Pod: "ns/first"})
		vacate(t, a, "p", first.IP, id, "ns/first")
		again := alloc(t, a, Request{Pool: p, Identity: id, Shared: shared, Token: "never-bound"})
		if again.IP != first.IP || !again.Reserved {
			t.Fatalf("%s took back %+v; want its cooling address %s reserved", id, again, first.IP)
		}
		// The reservation's lease (0.5 s plus 2 s of slack, 3 s in the
		// in-memory store, which grants whole seconds) is over; the
		// cooling (1 h) is not.
		time.Sleep(4 * time.Second)
		for _, k := range []string{a.keys.addrKey("p", first.IP), a.keys.macKey(first.MAC.String())} {
			if kv, err := s.Get(ctx, k); err != nil || kv == nil {
				t.Fatalf("%s: %s is gone with the reservation (%v): free to anyone before its reuse delay", id, k, err)
			}
		}
		if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", IP: first.IP}); err == nil {
			t.Fatalf("%s: another identity took %s within the reuse delay", id, first.IP)
		}
	}
}

func TestSharedIdentity(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ctx := testCtx(t)
	const dep = "deployment/ns/api"
	var members []Allocation
	for i := range 3 {
		got := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Token: fmt.Sprintf("tok%d", i)})
		members = append(members, got)
		if err := a.Bind(ctx, Binding{Pool: "p", IP: got.IP, Identity: dep, Pod: fmt.Sprintf("ns/api-%d", i), Token: got.Token}); err != nil {
			t.Fatal(err)
		}
	}
	if members[0].IP == members[1].IP || members[1].IP == members[2].IP || members[0].IP == members[2].IP {
		t.Fatalf("members share an address: %v", members)
	}
	// Pod 1 is gone: the next pod takes its member, not a new address.
	if err := a.Unbind(ctx, "p", members[1].IP, "ns/api-1"); err != nil {
		t.Fatal(err)
	}
	next := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Token: "tok3"})
	if next.IP != members[1].IP || next.New || !next.Reserved {
		t.Fatalf("new pod got %+v; want the freed member %s", next, members[1].IP)
	}
	// While held, that member is not given to yet another pod.
	other := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Token: "tok4"})
	if other.IP == next.IP || !other.New {
		t.Fatalf("held member handed out twice: %+v", other)
	}
	if err := a.Bind(ctx, Binding{Pool: "p", IP: next.IP, Identity: dep, Pod: "ns/api-3", Token: "tok3"}); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Lookup(dep)); n != 4 {
		t.Fatalf("deployment owns %d addresses; want 4", n)
	}
	// The ips annotation limits the set. (In a pool of its own: the members
	// above are random addresses of p and might be among the candidates.)
	q := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24"})
	cands := []netip.Addr{netip.MustParseAddr("10.1.0.100"), netip.MustParseAddr("10.1.0.101")}
	for i := range 2 {
		got := alloc(t, a, Request{Pool: q, Identity: "deployment/ns/pinned", Shared: true, Pod: fmt.Sprintf("ns/pinned-%d", i), Candidates: cands})
		if got.IP != cands[0] && got.IP != cands[1] {
			t.Fatalf("pinned deployment got %s", got.IP)
		}
	}
	_, err := a.Allocate(ctx, Request{Pool: q, Identity: "deployment/ns/pinned", Shared: true, Pod: "ns/pinned-2", Candidates: cands})
	var ex *ExhaustedError
	if !errors.As(err, &ex) || !strings.Contains(err.Error(), "the 2 addresses listed for deployment/ns/pinned") {
		t.Fatalf("third pinned pod: %v", err)
	}
}

func TestMove(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)})
	q := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: i32(0)})
	ctx := testCtx(t)
	id := "statefulset/ns/web/0"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0"})
	target := netip.MustParseAddr("10.0.0.77")
	if first.IP == target { // the first address is random
		target = target.Next()
	}
	moved := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: target})
	if moved.IP != target || moved.MAC.String() != first.MAC.String() {
		t.Fatalf("move gave %s %s; want %s with MAC %s", moved.IP, moved.MAC, target, first.MAC)
	}
	if l := a.Lookup(id); len(l) != 1 || l[0].IP != moved.IP {
		t.Fatalf("identity owns %v after the move", l)
	}
	_, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/x", Pod: "ns/x", IP: first.IP})
	var ce *ConflictError
	if !errors.As(err, &ce) || !ce.Cooling {
		t.Fatalf("old address after a move: %v; want cooling conflict", err)
	}
	// Moving to another pool.
	inQ := alloc(t, a, Request{Pool: q, Identity: id, Pod: "ns/web-0"})
	if !q.Prefix.Contains(inQ.IP) || inQ.MAC.String() != first.MAC.String() {
		t.Fatalf("pool move gave %s %s", inQ.IP, inQ.MAC)
	}
	if l := a.Lookup(id); len(l) != 1 || l[0].Pool != "q" {
		t.Fatalf("identity owns %v after the pool move", l)
	}
	// Changing the MAC only.
	newMAC := net.HardwareAddr{0x02, 1, 2, 3, 4, 5}
	m := alloc(t, a, Request{Pool: q, Identity: id, Pod: "ns/web-0", MAC: newMAC})
	if m.IP != inQ.IP || m.MAC.String() != newMAC.String() {
		t.Fatalf("MAC change gave %s %s", m.IP, m.MAC)
	}
}

// frozenWatch is a store whose watches deliver nothing: an allocator on it
// learns only from its own transactions, like a replica whose watch lags.
type frozenWatch struct{ store.Store }

func (f frozenWatch) Watch(ctx context.Context, _ string, _ int64) <-chan store.WatchResponse {
	ch := make(chan store.WatchResponse)
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch
}

// TestLostMoveLearnsTheOldAddress: a replica whose cache missed another
// replica's move of an identity loses its own move of it, and learns from
// that loss where the identity is now, so its next attempt succeeds.
func TestLostMoveLearnsTheOldAddress(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)})
	id := "statefulset/ns/web/0"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: netip.MustParseAddr("10.0.0.5")})
	stale := startAllocator(t, frozenWatch{s}, Options{MaxAttempts: 3})
	alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: netip.MustParseAddr("10.0.0.6")})
	// stale still sees the identity on .5 and moves it from there.
	got := alloc(t, stale, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: netip.MustParseAddr("10.0.0.7")})
	if got.IP.String() != "10.0.0.7" || got.MAC.String() != first.MAC.String() {
		t.Fatalf("move by the stale replica gave %s %s; want 10.0.0.7 with MAC %s", got.IP, got.MAC, first.MAC)
	}
	if l := stale.Lookup(id); len(l) != 1 || l[0].IP != got.IP {
		t.Fatalf("the stale replica sees the identity own %v after the moves", l)
	}
	// The other replica's watch shows the same.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		l := a.Lookup(id)
		if len(l) == 1 && l[0].IP == got.IP {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("identity owns %v after the moves", l)
		}
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	before := s.Revision()
	got := alloc(t, a, Request{Pool: p, Identity: "pod/ns/a", Pod: "ns/a", DryRun: true})
	if !got.IP.IsValid() || s.Revision() != before {
		t.Fatalf("dry run: %+v, revision %d -> %d", got, before, s.Revision())
	}
	alloc(t, a, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Token: "t", DryRun: true})
	if s.Revision() != before || len(a.Lookup("pod/ns/a")) != 0 {
		t.Fatal("dry run wrote")
	}
	// A dry run asking for an address or MAC another identity holds gets the
	// conflict the real claim would get; the holder's own dry run does not.
	held := alloc(t, a, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b"})
	for _, req := range []Request{
		{Pool: p, Identity: "pod/ns/c", Pod: "ns/c", IP: held.IP, DryRun: true},
		{Pool: p, Identity: "pod/ns/c", Pod: "ns/c", MAC: held.MAC, DryRun: true},
	} {
		_, err := a.Allocate(context.Background(), req)
		var ce *ConflictError
		if !errors.As(err, &ce) || ce.Holder != "pod/ns/b" {
			t.Errorf("dry run asking for %s/%s held by pod/ns/b: %v; want a ConflictError naming the holder", req.IP, req.MAC, err)
		}
	}
	alloc(t, a, Request{Pool: p, Identity: "pod/ns/b", Pod: "ns/b", IP: held.IP, MAC: held.MAC, DryRun: true})
}

func TestConcurrentInMemory(t *testing.T) {
	s := store.NewMemory()
	var as []*Allocator
	for range 4 {
		as = append(as, startAllocator(t, s, Options{}))
	}
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/23"})
	var mu sync.Mutex
	got := map[string]Allocation{}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				id := fmt.Sprintf("pod/ns/w%d-%d", w, i)
				al, err := as[w%4].Allocate(context.Background(), Request{Pool: p, Identity: id, Pod: "ns/x"})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[id] = al
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	ips, macs := map[netip.Addr]bool{}, map[string]bool{}
	for _, al := range got {
		if ips[al.IP] || macs[al.MAC.String()] {
			t.Fatalf("duplicate %s %s", al.IP, al.MAC)
		}
		ips[al.IP], macs[al.MAC.String()] = true, true
	}
	if len(got) != 16*30 {
		t.Fatalf("%d allocations", len(got))
	}
}

func TestSharedSetCap(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ctx := testCtx(t)
	var first []Allocation
	for i := range 2 {
		first = append(first, alloc(t, a, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Pod: fmt.Sprintf("ns/d-%d", i), MaxMembers: 2}))
	}
	_, err := a.Allocate(ctx, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Token: "t", MaxMembers: 2})
	var sf *SetFullError
	if !errors.As(err, &sf) || sf.Members != 2 || !strings.Contains(err.Error(), "capped at 2") {
		t.Fatalf("third pod of a full set: %v", err)
	}
	// A re-invoked admission of a held reservation keeps it.
	if err := a.Unbind(ctx, "p", first[0].IP, "ns/d-0"); err != nil {
		t.Fatal(err)
	}
	got := alloc(t, a, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Token: "t", MaxMembers: 2})
	again := alloc(t, a, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Token: "t", MaxMembers: 2})
	if got.IP != first[0].IP || again.IP != got.IP || !again.Reserved {
		t.Fatalf("freed member %s: got %+v then %+v", first[0].IP, got, again)
	}
}

// gatedStore holds every write transaction until the test opens the gate,
// counting the ones that wait: concurrent claims are all in flight at once.
type gatedStore struct {
	store.Store
	arrived chan struct{}
	open    chan struct{}
}

func (g *gatedStore) Txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	if len(then) > 0 {
		g.arrived <- struct{}{}
		<-g.open
	}
	return g.Store.Txn(ctx, cmps, then, els)
}

// stuckGrant holds the first lease grant until its context ends, as a grant
// sent to an etcd member gone silent waits for the keepalive.
// The others take slow each, counting how many run at once.
type stuckGrant struct {
	store.Store
	stuck          atomic.Bool
	held           chan struct{}
	slow           time.Duration
	inflight, peak atomic.Int32
}

func (g *stuckGrant) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if g.stuck.CompareAndSwap(false, true) {
		close(g.held)
		<-ctx.Done()
		return 0, ctx.Err()
	}
	n := g.inflight.Add(1)
	defer g.inflight.Add(-1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	time.Sleep(g.slow)
	return g.Store.Grant(ctx, ttl)
}

// A claim under a token needs a lease; one caller's grant that hangs does
// not hold up the others past a second (they grant their own). Before, they
// waited behind it until their deadline: a release's grant stuck on a
// silent etcd member for its 2-minute pass failed every reserving admission
// of the replica until the connection closed.
func TestStuckGrantDoesNotHoldOthers(t *testing.T) {
	g := &stuckGrant{Store: store.NewMemory(), held: make(chan struct{})}
	a := startAllocator(t, g, Options{ReservationTTL: time.Minute})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	long, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		_, _ = a.Allocate(long, Request{Pool: p, Identity: "deployment/ns/first", Shared: true, Token: "t0"})
	}()
	<-g.held
	ctx, cancel3 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel3()
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Token: "t1"}); err != nil {
		t.Fatalf("a claim under a token, another caller's grant stuck: %v", err)
	}
	// Many callers behind slow grants (etcd busy): a few grants at once
	// beside the stuck one, not one for every caller.
	a.leaseMu.Lock()
	clear(a.leases) // the bucket empty again
	a.leaseMu.Unlock()
	g.slow = 1500 * time.Millisecond
	errs := make(chan error, 20)
	for i := range 20 {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := a.Allocate(ctx, Request{Pool: p, Identity: fmt.Sprintf("deployment/ns/many-%d", i), Shared: true, Token: fmt.Sprintf("m%d", i)})
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Errorf("a claim under a token behind slow grants: %v", err)
		}
	}
	if p := g.peak.Load(); p > grantsBeside {
		t.Errorf("%d grants at once beside a stuck one; want at most %d", p, grantsBeside)
	}
}

// A burst of a ReplicaSet's pods admitted together by one replica: the
// members being claimed count against the cap, so the set stops at it.
func TestSharedSetCapUnderBurst(t *testing.T) {
	const burst, capN = 8, 3
	g := &gatedStore{Store: store.NewMemory(), arrived: make(chan struct{}, burst), open: make(chan struct{})}
	a := startAllocator(t, g, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ctx := testCtx(t)
	errs := make(chan error, burst)
	for i := range burst {
		go func() {
			_, err := a.Allocate(ctx, Request{Pool: p, Identity: "deployment/ns/d", Shared: true, Pod: fmt.Sprintf("ns/d-%d", i), MaxMembers: capN})
			errs <- err
		}()
	}
	// Every pod either waits at the gate with its claim or was refused
	// before sending one; then the claims go through.
	var full, claimed int
	for full+claimed < burst {
		select {
		case err := <-errs:
			var sf *SetFullError
			if !errors.As(err, &sf) || sf.Claiming == 0 || !strings.Contains(err.Error(), "being claimed") {
				t.Fatalf("a pod refused before its claim: %v", err)
			}
			full++
		case <-g.arrived:
			claimed++
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	close(g.open)
	for range claimed {
		if err := <-errs; err != nil {
			t.Fatalf("claim: %v", err)
		}
	}
	if claimed != capN || full != burst-capN {
		t.Fatalf("%d pods claimed a member and %d were told the set is full; want %d and %d", claimed, full, capN, burst-capN)
	}
	if n := len(a.Lookup("deployment/ns/d")); n != capN {
		t.Fatalf("the set has %d members; capped at %d", n, capN)
	}
	// Nothing stays counted once the claims are done.
	if got := len(a.cache.growing); got != 0 {
		t.Fatalf("%d identities still counted as growing", got)
	}
}

// An identity moved away from an address may move back to it while it cools
// down: within a pool (an ips list rolled back) and across pools; every
// address it holds then has a MAC, and the address it left cools in turn.
func TestMoveBack(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)})
	q := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: i32(30)})
	ctx := testCtx(t)
	id := "statefulset/ns/web/0"
	x, y := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: x})
	alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: y})
	back := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: x})
	if back.IP != x || back.MAC.String() != first.MAC.String() {
		t.Fatalf("moving back gave %s %s; want %s %s", back.IP, back.MAC, x, first.MAC)
	}
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", IP: y}); err == nil {
		t.Fatalf("%s, left by %s, was given to another identity at once", y, id)
	}

	// To pool q and back to p: the identity gets its cooling address in p back.
	inQ := alloc(t, a, Request{Pool: q, Identity: id, Pod: "ns/web-0"})
	again := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0"})
	if again.IP != x || again.MAC.String() != first.MAC.String() {
		t.Fatalf("back to pool p gave %s %s; want %s %s", again.IP, again.MAC, x, first.MAC)
	}
	if l := a.Lookup(id); len(l) != 1 || l[0].Pool != "p" {
		t.Fatalf("identity owns %v after moving back", l)
	}
	if _, err := a.Allocate(ctx, Request{Pool: q, Identity: "pod/ns/other", Pod: "ns/other", IP: inQ.IP}); err == nil {
		t.Fatalf("%s, left in pool q by %s, was given to another identity at once", inQ.IP, id)
	}
}

// An address whose MAC moved on with its identity (a move to another pool)
// is reclaimed with that MAC when the identity comes back after its later
// address was released: it takes the MAC back from that cooling address,
// which keeps cooling without it; and back again the same way.
func TestReclaimKeepsTheIdentitysMAC(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)})
	q := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: i32(30)})
	ctx := testCtx(t)
	id := "pod/ns/db"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/db"})
	inQ := alloc(t, a, Request{Pool: q, Identity: id, Pod: "ns/db"})
	vacate(t, a, "q", inQ.IP, id, "ns/db")
	back := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/db"})
	if back.IP != first.IP || back.MAC.String() != first.MAC.String() {
		t.Fatalf("back in pool p: %s %s; want %s with its MAC %s", back.IP, back.MAC, first.IP, first.MAC)
	}
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", MAC: back.MAC}); err == nil {
		t.Fatalf("MAC %s of %s was given to another identity", back.MAC, id)
	}
	// The address in q still cools, without a MAC; taken back in turn, it
	// takes the MAC back from the address in p.
	vacate(t, a, "p", back.IP, id, "ns/db")
	again := alloc(t, a, Request{Pool: q, Identity: id, Pod: "ns/db"})
	if again.IP != inQ.IP || again.MAC.String() != first.MAC.String() {
		t.Fatalf("back in pool q: %s %s; want %s with its MAC %s", again.IP, again.MAC, inQ.IP, first.MAC)
	}
}

// Refresh reads an identity's addresses from the store into a cache that has
// not seen them: here an allocator whose watch never started, as a replica
// whose watch lags behind another replica's write.
func TestRefresh(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ctx := testCtx(t)
	got := alloc(t, a, Request{Pool: p, Identity: "deployment/ns/api", Shared: true, Token: "t1"})
	alloc(t, a, Request{Pool: p, Identity: "deployment/ns/api-2", Shared: true, Token: "t2"}) // a name this one's is a prefix of
	b := New(s, Options{})
	if l := b.Lookup("deployment/ns/api"); len(l) != 0 {
		t.Fatalf("a cache without a watch already holds %v", l)
	}
	if err := b.Refresh(ctx, "deployment/ns/api"); err != nil {
		t.Fatal(err)
	}
	l := b.Lookup("deployment/ns/api")
	if len(l) != 1 || l[0].IP != got.IP || l[0].Token != "t1" || !l[0].Reserved {
		t.Fatalf("after Refresh the cache holds %+v; want %s reserved under t1", l, got.IP)
	}
	if l := b.Lookup("deployment/ns/api-2"); len(l) != 0 {
		t.Fatalf("Refresh of deployment/ns/api read deployment/ns/api-2's %v", l)
	}
}

// An identity that moved to another address and MAC and asks for its old
// address and MAC again (a rolled-back manifest) gets both back from their
// cooling; its later address and MAC cool in turn.
func TestMoveBackWithOldMAC(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)})
	id := "statefulset/ns/web/0"
	x, y := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	m1, _ := net.ParseMAC("02:00:00:00:00:01")
	m2, _ := net.ParseMAC("02:00:00:00:00:02")
	alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: x, MAC: m1})
	alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: y, MAC: m2})
	back := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/web-0", IP: x, MAC: m1})
	if back.IP != x || back.MAC.String() != m1.String() {
		t.Fatalf("moving back gave %s %s; want %s %s", back.IP, back.MAC, x, m1)
	}
	for _, req := range []Request{
		{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", IP: y},
		{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", MAC: m2},
	} {
		if _, err := a.Allocate(testCtx(t), req); err == nil {
			t.Errorf("%s/%s, left by %s, was given to another identity at once", req.IP, req.MAC, id)
		}
	}
}

// A single identity with a bound address that asks for a new MAC under a
// reservation token whose pod is never confirmed keeps the address at
// least the pool's reuse delay, as cooling would.
func TestMACChangeUnderTokenOutlivesReservation(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{ReservationTTL: 500 * time.Millisecond})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(3600)})
	ctx := testCtx(t)
	id := "daemonset/ns/agent/node-1"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/first"})
	m2, _ := net.ParseMAC("02:00:00:00:00:02")
	again := alloc(t, a, Request{Pool: p, Identity: id, Token: "never-bound", MAC: m2})
	if again.IP != first.IP || !again.Reserved {
		t.Fatalf("%s with a new MAC got %+v; want %s reserved", id, again, first.IP)
	}
	// The reservation's lease (0.5 s plus 2 s of slack, 3 s in the
	// in-memory store, which grants whole seconds) is over; the reuse delay
	// (1 h) is not.
	time.Sleep(4 * time.Second)
	if kv, err := s.Get(ctx, a.keys.addrKey("p", first.IP)); err != nil || kv == nil {
		t.Fatalf("%s is gone with the reservation (%v): free to anyone at once", first.IP, err)
	}
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", IP: first.IP}); err == nil {
		t.Fatalf("another identity took %s within the reuse delay", first.IP)
	}
}

// A single identity's unbound address taken by a pod admitted under a token
// (a DaemonSet pod) is held for that token: a release decided before the
// pod showed up finds it in use; Bind with the token gives it to the pod; a
// second admission of the same pod keeps it without writing again.
func TestTokenKeepOfUnboundAddressHolds(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ctx := testCtx(t)
	id := "daemonset/ns/agent/node-1"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/agent-old"})
	if err := a.Unbind(ctx, "p", first.IP, "ns/agent-old"); err != nil {
		t.Fatal(err)
	}
	got := alloc(t, a, Request{Pool: p, Identity: id, Token: "tok"})
	if got.IP != first.IP || !got.Reserved || got.Token != "tok" {
		t.Fatalf("token admission onto the unbound address: %+v; want %s reserved for tok", got, first.IP)
	}
	rev := s.Revision()
	if again := alloc(t, a, Request{Pool: p, Identity: id, Token: "tok"}); again.IP != first.IP || again.Token != "tok" || s.Revision() != rev {
		t.Errorf("re-admission under the same token: %+v, revision %d -> %d; want the same answer, nothing written", again, rev, s.Revision())
	}
	if _, err := a.Release(ctx, "p", first.IP, id, false); !errors.Is(err, ErrInUse) {
		t.Fatalf("release of the held address: %v; want ErrInUse", err)
	}
	if err := a.Bind(ctx, Binding{Pool: "p", IP: first.IP, Identity: id, Pod: "ns/agent-new", Token: "tok"}); err != nil {
		t.Fatal(err)
	}
	if l := a.Lookup(id); len(l) != 1 || l[0].Pod != "ns/agent-new" || l[0].Held || l[0].Reserved {
		t.Fatalf("after Bind: %+v; want bound to ns/agent-new, no hold", l)
	}
}

// TestOrphanedClaimGivenBack: a shared identity's claim that etcd took while
// its caller timed out (so the pod was refused) is given back once etcd
// answers again, not a reservation TTL later: a set at its cap takes the
// pod's next try. A single identity's is left: the next try gets it.
func TestOrphanedClaimGivenBack(t *testing.T) {
	s := storetest.NewLossy()
	a := startAllocator(t, s, Options{}) // reservations live 60 s
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	ctx := testCtx(t)
	const dep = "deployment/ns/d"
	var members []Allocation
	for i := range 2 {
		members = append(members, alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Pod: fmt.Sprintf("ns/d-%d", i), MaxMembers: 2}))
	}
	if err := a.Unbind(ctx, "p", members[0].IP, "ns/d-0"); err != nil {
		t.Fatal(err)
	}
	// The replacement's claim (a hold on the free member) is taken by etcd,
	// but its answer is lost, and etcd goes quiet.
	s.Set(true, false)
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: dep, Shared: true, Token: "t1", MaxMembers: 2}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("claim whose answer was lost: %v", err)
	}
	// waitMember waits until member 0 is held under token ("": not held).
	waitMember := func(token string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l := a.Lookup(dep)
			for _, e := range l {
				if e.IP == members[0].IP && e.Held == (token != "") && (token == "" || e.Token == token) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("member %s not held under %q: %+v", members[0].IP, token, l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitMember("t1")
	var sf *SetFullError
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: dep, Shared: true, Token: "t2", MaxMembers: 2}); !errors.As(err, &sf) {
		t.Fatalf("next try while the orphan holds the member: %v; want set full", err)
	}
	s.Set(false, false) // etcd answers again
	waitMember("")      // the hold is gone
	got := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Token: "t2", MaxMembers: 2})
	if got.IP != members[0].IP || got.Token != "t2" {
		t.Fatalf("next try after etcd came back: %+v; want member %s under t2", got, members[0].IP)
	}

	// A new member reserved under a lost answer is released (it cools, as
	// a released address does).
	big := mustPool(t, "big", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24"})
	// stored says whether etcd (not the allocator's cache, which may not
	// have seen the claim yet) holds an address of identity that is not
	// cooling, under token if one is given.
	stored := func(identity, token string) bool {
		t.Helper()
		kvs, _, err := s.List(ctx, a.keys.addr)
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range kvs {
			var r record
			if json.Unmarshal(kv.Value, &r) == nil && r.ID == identity && r.State != stateCooling && (token == "" || r.Token == token) {
				return true
			}
		}
		return false
	}
	// lost makes req's claim go through with its answer lost, and checks
	// that etcd took it; etcd answers again after.
	lost := func(req Request) {
		t.Helper()
		s.Set(true, false)
		if _, err := a.Allocate(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("claim of %s whose answer was lost: %v", req.Identity, err)
		}
		if !stored(req.Identity, req.Token) {
			t.Fatalf("claim of %s under %s not in etcd: another write took the lost answer", req.Identity, req.Token)
		}
		s.Set(false, false)
	}
	// waitReleased waits until the identity has no address, in etcd and
	// in the cache: its orphan is settled, and no give-back is left to
	// take the next lost answer.
	waitReleased := func(identity string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			l := a.Lookup(identity)
			if len(l) == 0 && !stored(identity, "") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("orphaned claim of %s: %+v; want it released", identity, l)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	lost(Request{Pool: big, Identity: "deployment/ns/e", Shared: true, Token: "t3"})
	waitReleased("deployment/ns/e")

	// So is a bare pod's named by generateName: its identity is named after
	// the token, and no later try claims under it.
	const bare = "pod/ns/job-t6"
	lost(Request{Pool: big, Identity: bare, Token: "t6", Ephemeral: true})
	waitReleased(bare)

	// Another single identity's reservation under a lost answer stays: the
	// pod's next try (another token) gets it.
	const ds = "daemonset/ns/agent/node-1"
	lost(Request{Pool: p, Identity: ds, Token: "t4"})
	time.Sleep(2 * orphanRetry)
	if l := a.Lookup(ds); len(l) != 1 || !l[0].Reserved || l[0].Token != "t4" || !stored(ds, "t4") {
		t.Fatalf("single identity's reservation after etcd came back: %+v; want it kept under t4", l)
	}
	if again := alloc(t, a, Request{Pool: p, Identity: ds, Token: "t5"}); again.Token != "t4" {
		t.Fatalf("next try of the single identity: %+v; want the reservation under t4", again)
	}
}

// An IPPool's spec edited under its claims (an address excluded, the cidr
// changed): an address the pool no longer allows is never handed out again.
// A single identity moves off it at its next pod, keeping its MAC, and back
// onto its own cooling address when the spec allows that again; a shared
// set's free member outside the spec is neither taken nor, cooling, taken
// back; the pool's stats count what lies outside.
func TestEditedPool(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	spec := v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1", ReuseDelaySeconds: i32(30)}
	p := mustPool(t, "p", spec)
	ctx := testCtx(t)
	const id, pod = "statefulset/ns/web/0", "ns/web-0"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: pod})

	// Another cidr: the identity moves into it, with the new prefix.
	renum := spec
	renum.CIDR, renum.Gateway = "10.1.0.0/25", "10.1.0.1"
	pr := mustPool(t, "p", renum)
	if s := a.Stats(pr); s.Outside != 1 || s.Allocated != 0 {
		t.Fatalf("stats after the cidr changed: %+v; want %s outside", s, first.IP)
	}
	// A dry run says what the admission would do, and does nothing.
	if dry := alloc(t, a, Request{Pool: pr, Identity: id, Pod: pod, DryRun: true}); !pr.Contains(dry.IP) {
		t.Fatalf("dry run after the cidr changed gave %s", dry.IP)
	}
	if s := a.Stats(pr); s.Outside != 1 {
		t.Fatalf("stats after a dry run: %+v", s)
	}
	in := alloc(t, a, Request{Pool: pr, Identity: id, Pod: pod})
	if !pr.Contains(in.IP) || in.Prefix.Bits() != 25 || in.MAC.String() != first.MAC.String() {
		t.Fatalf("after the cidr changed the identity got %s (%s) %s; want an address of %s, MAC %s", in.IP, in.Prefix, in.MAC, renum.CIDR, first.MAC)
	}
	if again := alloc(t, a, Request{Pool: pr, Identity: id, Pod: pod}); again.IP != in.IP {
		t.Fatalf("repeat gave %s; want %s", again.IP, in.IP)
	}
	if s := a.Stats(pr); s.Outside != 0 || s.Allocated != 1 {
		t.Fatalf("stats after the move: %+v", s)
	}
	// The first spec again, within the reuse delay: back onto its own
	// address, still cooling.
	if back := alloc(t, a, Request{Pool: p, Identity: id, Pod: pod}); back.IP != first.IP || back.MAC.String() != first.MAC.String() {
		t.Fatalf("back to the first spec gave %s %s; want %s %s", back.IP, back.MAC, first.IP, first.MAC)
	}
	// Its address excluded: it moves to another one of the pool.
	excl := spec
	excl.Exclude = []string{first.IP.String()}
	pe := mustPool(t, "p", excl)
	moved := alloc(t, a, Request{Pool: pe, Identity: id, Pod: pod})
	if moved.IP == first.IP || !pe.Contains(moved.IP) || moved.MAC.String() != first.MAC.String() {
		t.Fatalf("after %s was excluded the identity got %s %s; want another address of the pool, MAC %s", first.IP, moved.IP, moved.MAC, first.MAC)
	}

	// Released, cooling with its MAC, then excluded: a new address, the MAC kept.
	const id1, pod1 = "statefulset/ns/web/1", "ns/web-1"
	one := alloc(t, a, Request{Pool: pe, Identity: id1, Pod: pod1})
	vacate(t, a, "p", one.IP, id1, pod1)
	excl.Exclude = []string{first.IP.String(), one.IP.String()}
	pe = mustPool(t, "p", excl)
	if got := alloc(t, a, Request{Pool: pe, Identity: id1, Pod: pod1}); got.IP == one.IP || got.MAC.String() != one.MAC.String() {
		t.Fatalf("after its cooling %s was excluded web-1 got %s %s; want another address, MAC %s", one.IP, got.IP, got.MAC, one.MAC)
	}

	// A shared set: its free member outside the spec is not taken.
	const dep = "deployment/ns/d"
	var members []Allocation
	for i := range 2 {
		members = append(members, alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Pod: fmt.Sprintf("ns/d-%d", i)}))
	}
	if err := a.Unbind(ctx, "p", members[0].IP, "ns/d-0"); err != nil {
		t.Fatal(err)
	}
	excl.Exclude = []string{first.IP.String(), members[0].IP.String()}
	pe = mustPool(t, "p", excl)
	if got := alloc(t, a, Request{Pool: pe, Identity: dep, Shared: true, Pod: "ns/d-2"}); got.IP == members[0].IP || !got.New {
		t.Fatalf("pod of the set got %+v; want a new member, not %s", got, members[0].IP)
	}
	if _, err := a.Allocate(ctx, Request{Pool: pe, Identity: dep, Shared: true, Pod: "ns/d-3", MaxMembers: 3}); !errors.As(err, new(*SetFullError)) {
		t.Fatalf("set at its cap with a member outside the spec: %v; want it full (the webhook releases that member)", err)
	}
	// Released and cooling, outside the spec: not taken back either.
	if _, err := a.Release(ctx, "p", members[0].IP, dep, false); err != nil {
		t.Fatal(err)
	}
	if got := alloc(t, a, Request{Pool: pe, Identity: dep, Shared: true, Pod: "ns/d-3", MaxMembers: 3}); got.IP == members[0].IP {
		t.Fatalf("cooling member %s outside the spec taken back", got.IP)
	}
	// Allowed again, within its reuse delay, it is.
	if got := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Pod: "ns/d-4"}); got.IP != members[0].IP {
		t.Fatalf("pod of the set got %s; want its cooling member %s back", got.IP, members[0].IP)
	}
	// A re-invoked admission whose reservation the pool no longer allows
	// (edited between its rounds) gets another member.
	held := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Token: "re"})
	excl.Exclude = append(excl.Exclude, held.IP.String())
	pe = mustPool(t, "p", excl)
	if got := alloc(t, a, Request{Pool: pe, Identity: dep, Shared: true, Token: "re"}); got.IP == held.IP || !pe.Contains(got.IP) {
		t.Fatalf("re-invoked admission after %s was excluded got %s", held.IP, got.IP)
	}
}

// A DaemonSet's node identity moved off an address the pool no longer
// allows by a pod that is then never created (another admission step
// refuses it) keeps its new address and its MAC once the pod's hold ends:
// a reservation would have left it nothing.
func TestEditedPoolMoveUnderToken(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{ReservationTTL: 500 * time.Millisecond})
	spec := v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)}
	p := mustPool(t, "p", spec)
	ctx := testCtx(t)
	const id = "daemonset/ns/agent/node-1"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/agent-old"})
	if err := a.Unbind(ctx, "p", first.IP, "ns/agent-old"); err != nil {
		t.Fatal(err)
	}
	spec.Exclude = []string{first.IP.String()}
	pe := mustPool(t, "p", spec)
	moved := alloc(t, a, Request{Pool: pe, Identity: id, Token: "never"})
	if moved.IP == first.IP || !moved.Reserved || moved.Token != "never" || moved.MAC.String() != first.MAC.String() {
		t.Fatalf("pod under a token after %s was excluded: %+v; want another address reserved for it, MAC %s", first.IP, moved, first.MAC)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		l := a.Lookup(id)
		if len(l) == 1 && !l[0].Held && !l[0].Reserved {
			if l[0].IP != moved.IP || l[0].MAC.String() != first.MAC.String() {
				t.Fatalf("after the hold ended the identity holds %+v; want %s, MAC %s", l[0], moved.IP, first.MAC)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hold did not end: %+v", l)
		}
	}
	if next := alloc(t, a, Request{Pool: pe, Identity: id, Token: "next"}); next.IP != moved.IP || next.MAC.String() != first.MAC.String() {
		t.Fatalf("the node's next pod got %s %s; want %s %s", next.IP, next.MAC, moved.IP, first.MAC)
	}

	// A DaemonSet that lists its addresses (ips): the move picks one of the
	// list, edited to drop the excluded one.
	const id2 = "daemonset/ns/agent/node-2"
	// Three addresses that node-1's random picks above did not take (one
	// run in about 40 picked one of a fixed 10.0.0.200-202 and failed).
	var x, y, z netip.Addr
	for base := 200; ; base += 10 {
		x, y, z = netip.AddrFrom4([4]byte{10, 0, 0, byte(base)}), netip.AddrFrom4([4]byte{10, 0, 0, byte(base + 1)}), netip.AddrFrom4([4]byte{10, 0, 0, byte(base + 2)})
		if taken := []netip.Addr{first.IP, moved.IP}; !slices.Contains(taken, x) && !slices.Contains(taken, y) && !slices.Contains(taken, z) {
			break
		}
	}
	two := alloc(t, a, Request{Pool: pe, Identity: id2, Pod: "ns/agent-2", Candidates: []netip.Addr{x}})
	if two.IP != x {
		t.Fatalf("node-2 got %s; want %s, the one listed", two.IP, x)
	}
	spec.Exclude = append(spec.Exclude, x.String())
	pe = mustPool(t, "p", spec)
	if got := alloc(t, a, Request{Pool: pe, Identity: id2, Pod: "ns/agent-2", Candidates: []netip.Addr{y}}); got.IP != y || got.MAC.String() != two.MAC.String() {
		t.Fatalf("after %s was excluded node-2 got %s %s; want %s, the one now listed, MAC %s", x, got.IP, got.MAC, y, two.MAC)
	}
	// The list edited alone: the identity moves to an address it lists, and
	// a pod under a token that is never created leaves it that address.
	got := alloc(t, a, Request{Pool: pe, Identity: id2, Token: "gone", Candidates: []netip.Addr{z}})
	if got.IP != z || got.MAC.String() != two.MAC.String() {
		t.Fatalf("after its list was edited node-2 got %s %s; want %s, MAC %s", got.IP, got.MAC, z, two.MAC)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l := a.Lookup(id2); len(l) == 1 && l[0].IP == z && !l[0].Held && !l[0].Reserved {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("node-2 holds %+v; want %s, without a hold or reservation", l, z)
		}
	}
}

// A DaemonSet's node identity and its ips list: edited, the identity moves to
// an address the list names, with its MAC, and back when the edit is undone
// within the reuse delay; released and then given another list, it keeps
// its MAC. A pod under a token that takes the MAC of a released identity's
// address and is never created does not bring the identity back for good.
func TestDaemonSetListEdited(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{ReservationTTL: 200 * time.Millisecond})
	spec := v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)}
	p := mustPool(t, "p", spec)
	ip := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	const n1 = "daemonset/ns/agent/node-1"
	x := alloc(t, a, Request{Pool: p, Identity: n1, Pod: "ns/a1", Candidates: ip("10.0.0.10")})
	y := alloc(t, a, Request{Pool: p, Identity: n1, Pod: "ns/a1", Candidates: ip("10.0.0.11")})
	back := alloc(t, a, Request{Pool: p, Identity: n1, Pod: "ns/a1", Candidates: ip("10.0.0.10")})
	if y.IP.String() != "10.0.0.11" || back.IP != x.IP || y.MAC.String() != x.MAC.String() || back.MAC.String() != x.MAC.String() {
		t.Fatalf("node-1 with list [x], [y], [x]: %s %s, %s %s, %s %s; want x, y, x with one MAC", x.IP, x.MAC, y.IP, y.MAC, back.IP, back.MAC)
	}

	const n2 = "daemonset/ns/agent/node-2"
	u := alloc(t, a, Request{Pool: p, Identity: n2, Pod: "ns/a2", Candidates: ip("10.0.0.20")})
	vacate(t, a, "p", u.IP, n2, "ns/a2")
	if v := alloc(t, a, Request{Pool: p, Identity: n2, Pod: "ns/a2", Candidates: ip("10.0.0.21")}); v.IP.String() != "10.0.0.21" || v.MAC.String() != u.MAC.String() {
		t.Fatalf("released node-2 given another list got %s %s; want 10.0.0.21, MAC %s", v.IP, v.MAC, u.MAC)
	}

	q := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: i32(1)})
	const n3 = "daemonset/ns/agent/node-3"
	w := alloc(t, a, Request{Pool: q, Identity: n3, Pod: "ns/a3"})
	vacate(t, a, "q", w.IP, n3, "ns/a3")
	qe := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: i32(1), Exclude: []string{w.IP.String()}})
	got := alloc(t, a, Request{Pool: qe, Identity: n3, Token: "never"})
	if got.IP == w.IP || got.MAC.String() != w.MAC.String() || !got.Reserved {
		t.Fatalf("released node-3, its address excluded, under a token: %+v; want another address reserved, MAC %s", got, w.MAC)
	}
	for deadline := time.Now().Add(10 * time.Second); len(a.Lookup(n3)) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node-3 still holds %+v after its reservation should have ended", a.Lookup(n3))
		}
	}
}

// A bare ReplicaSet's set is capped at its replicas: it has no surge.
func TestSetFullErrorNamesTheCap(t *testing.T) {
	for id, want := range map[string]string{
		"deployment/ns/api":      "capped at 3: replicas + maxSurge)",
		"replicaset/ns/api-6c9f": "capped at 3: replicas)",
	} {
		if got := (&SetFullError{Identity: id, Members: 3, Max: 3}).Error(); !strings.Contains(got, want) {
			t.Errorf("%s: %q; want it to say %q", id, got, want)
		}
	}
}

// grantHangs is etcd that does not answer lease grants while hang is set
// (out of reach: the client waits until its caller's deadline).
type grantHangs struct {
	*store.Memory
	hang atomic.Bool
}

func (g *grantHangs) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if g.hang.Load() {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	return g.Memory.Grant(ctx, ttl)
}

// A claim that needs a lease does not wait past its own deadline behind
// another caller's grant, which waits for an etcd out of reach as long as
// that caller's deadline allows (the release controller's passes have 2
// minutes): the admission answers that etcd did not, inside its timeout.
func TestLeaseWaitEndsWithTheCallersDeadline(t *testing.T) {
	s := &grantHangs{Memory: store.NewMemory()}
	a := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"})
	got := alloc(t, a, Request{Pool: p, Identity: "statefulset/ns/web/0", Pod: "ns/web-0"})
	s.hang.Store(true)
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	released := make(chan struct{})
	go func() {
		defer close(released)
		_, _ = a.Release(rctx, "p", got.IP, "statefulset/ns/web/0", true) // grants the cooling lease, and hangs
	}()
	defer func() { cancel(); <-released }()
	for len(a.granting) == 0 { // the release holds the grant
		time.Sleep(time.Millisecond)
	}
	actx, acancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer acancel()
	_, err := a.Allocate(actx, Request{Pool: p, Identity: "deployment/ns/api", Shared: true, Token: "tok-1"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("claim behind a hanging grant: %v; want its own deadline", err)
	}
	select {
	case <-released:
		t.Fatal("the release gave up first: the claim's return shows nothing")
	default:
	}
}

// lateTxn is etcd whose first transaction that writes, once late is set,
// is applied after its caller gave up: the caller's deadline ends first, as
// when a claim rides a group-commit batch that runs on for the other claims
// in it. Reads, and writes after that one, are applied at once. landedRev
// is the late write's revision, set before landed closes.
type lateTxn struct {
	*store.Memory
	late      atomic.Bool
	landed    chan struct{}
	landedRev atomic.Int64
}

func (l *lateTxn) Txn(ctx context.Context, cmps []store.Cmp, then, els []store.Op) (store.TxnResult, error) {
	writes := slices.ContainsFunc(then, store.Op.IsPut)
	if !writes || !l.late.CompareAndSwap(true, false) {
		return l.Memory.Txn(ctx, cmps, then, els)
	}
	<-ctx.Done()
	go func() {
		defer close(l.landed)
		time.Sleep(200 * time.Millisecond) // after the allocator's first look
		if res, err := l.Memory.Txn(context.Background(), cmps, then, els); err == nil {
			l.landedRev.Store(res.Revision)
		}
	}()
	return store.TxnResult{}, ctx.Err()
}

// A claim whose pod was refused because etcd did not answer in time, and
// that lands in etcd after the allocator first looked for it, is still
// given back: the set's next pod is not refused until the claim's lease ends.
func TestOrphanThatLandsLateIsGivenBack(t *testing.T) {
	s := &lateTxn{Memory: store.NewMemory(), landed: make(chan struct{})}
	a := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"})
	s.late.Store(true)
	// A deadline long enough for the claim's transaction to be sent on a
	// busy machine: one that ends before would leave nothing to land late.
	actx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := a.Allocate(actx, Request{Pool: p, Identity: "deployment/ns/api", Shared: true, Token: "tok-1", MaxMembers: 1}); err == nil {
		t.Fatal("the claim succeeded; want its deadline")
	}
	ctx := testCtx(t)
	select {
	case <-s.landed:
	case <-ctx.Done():
		t.Fatalf("the claim's transaction was never sent (late still %v)", s.late.Load())
	}
	// The cache has seen the claim (the give-back may have undone it
	// already: Lookup would not tell the two apart).
	if s.landedRev.Load() == 0 {
		t.Fatal("the late claim's transaction failed: nothing landed")
	}
	if err := a.Reflector().WaitForRevision(ctx, s.landedRev.Load()); err != nil {
		t.Fatalf("the late claim (revision %d) never reached the cache: %v", s.landedRev.Load(), err)
	}
	for {
		_, err := a.Allocate(ctx, Request{Pool: p, Identity: "deployment/ns/api", Shared: true, Token: "tok-2", MaxMembers: 1})
		if err == nil {
			return
		}
		var full *SetFullError
		if !errors.As(err, &full) {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the refused pod's claim, landed late, still fills the set: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// A pool whose macPrefix leaves few MACs hands out every one of them, and
// then refuses with an error that names the prefix (not an internal error).
func TestMACPrefixExhausted(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/16", MACPrefix: "02:42:ac:11:00"})
	ctx := context.Background()
	macs := map[string]bool{}
	for i := range 256 {
		al, err := a.Allocate(ctx, Request{Pool: p, Identity: fmt.Sprintf("pod/ns/p%d", i), Pod: fmt.Sprintf("ns/p%d", i)})
		if err != nil {
			t.Fatalf("allocation %d of the prefix's 256 MACs: %v", i+1, err)
		}
		macs[al.MAC.String()] = true
	}
	if len(macs) != 256 {
		t.Fatalf("%d distinct MACs; want 256", len(macs))
	}
	_, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/one-more", Pod: "ns/one-more"})
	var mx *MACExhaustedError
	if !errors.As(err, &mx) || !strings.Contains(err.Error(), "the 256 under its spec.macPrefix 02:42:ac:11:00 are all taken") {
		t.Fatalf("the 257th: %v; want a MACExhaustedError naming the prefix", err)
	}
}

// A pool whose macPrefix is universally administered (a vendor's OUI, which
// the spec accepts) hands out MACs under it; those are the pool's own, so
// they are recorded again after lost state and may be asked for. Adopt
// refused them as universally administered without spec.allowUniversalMAC,
// so after an etcd restore (or a reservation that expired unconfirmed) the
// pod kept running with an address the next identity was given.
func TestUniversalMACPrefixIsThePools(t *testing.T) {
	ctx := testCtx(t)
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", MACPrefix: "00:16:3e"})
	al := alloc(t, startAllocator(t, store.NewMemory(), Options{}), Request{Pool: p, Identity: "statefulset/ns/db/0", Pod: "ns/db-0"})
	if !strings.HasPrefix(al.MAC.String(), "00:16:3e:") {
		t.Fatalf("MAC %s; want one under the pool's prefix", al.MAC)
	}
	a := startAllocator(t, store.NewMemory(), Options{}) // the state lost
	ok, err := a.Adopt(ctx, Adoption{Pool: p, Identity: "statefulset/ns/db/0", Pod: "ns/db-0", IP: al.IP, MAC: al.MAC})
	if err != nil || !ok {
		t.Fatalf("Adopt of the pool's own MAC %s: %v, %v; want it recorded again", al.MAC, ok, err)
	}
	_, err = a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", IP: al.IP})
	var conflict *ConflictError
	if !errors.As(err, &conflict) {
		t.Fatalf("another identity asking for %s after the adoption: %v; want a ConflictError", al.IP, err)
	}
	asked := net.HardwareAddr{0x00, 0x16, 0x3e, 1, 2, 3}
	if got := alloc(t, a, Request{Pool: p, Identity: "pod/ns/asks", Pod: "ns/asks", MAC: asked}); got.MAC.String() != asked.String() {
		t.Errorf("asked for %s under the pool's prefix, got %s", asked, got.MAC)
	}
	_, err = a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/outside", Pod: "ns/outside", MAC: net.HardwareAddr{0x00, 0x1b, 0x21, 1, 2, 3}})
	var refused *MACNotAllowedError
	if !errors.As(err, &refused) {
		t.Errorf("a universally administered MAC outside the prefix: %v; want MACNotAllowedError", err)
	}
}

// Two replicas give a Deployment's one free member to two pods being created
// (no name yet: each takes it under a hold key, which leaves the address's
// record as it was): the second, whose cache has not seen the first's hold,
// is refused it by the hold's absence check and takes another address. The
// e2e test of two replicas has bare pods only, whose addresses are new.
func TestTwoReplicasTakeOneFreeMember(t *testing.T) {
	s := store.NewMemory()
	a1 := startAllocator(t, s, Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	const dep = "deployment/ns/d"
	var members []Allocation
	for i := range 2 {
		members = append(members, alloc(t, a1, Request{Pool: p, Identity: dep, Shared: true, Pod: fmt.Sprintf("ns/d-%d", i), MaxMembers: 3}))
	}
	if err := a1.Unbind(testCtx(t), "p", members[0].IP, "ns/d-0"); err != nil {
		t.Fatal(err)
	}
	a2 := startAllocator(t, frozenWatch{s}, Options{}) // sees members[0] free, and nothing after
	one := alloc(t, a1, Request{Pool: p, Identity: dep, Shared: true, Token: "t1", MaxMembers: 3})
	two := alloc(t, a2, Request{Pool: p, Identity: dep, Shared: true, Token: "t2", MaxMembers: 3})
	if one.IP == two.IP {
		t.Fatalf("two pods admitted by two replicas both got %s", one.IP)
	}
}

// A free member that a pod being created took under a hold, whose creation
// a later admission step refused (a quota, a policy), is free again once the
// reservation TTL passes: the release controller never clears holds. The
// e2e test of a refused reservation has a bare pod's only.
func TestRefusedMembersHoldExpires(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{ReservationTTL: 500 * time.Millisecond})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24"})
	const dep = "deployment/ns/d"
	first := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Pod: "ns/d-0", MaxMembers: 2})
	alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Pod: "ns/d-1", MaxMembers: 2})
	if err := a.Unbind(testCtx(t), "p", first.IP, "ns/d-0"); err != nil {
		t.Fatal(err)
	}
	if got := alloc(t, a, Request{Pool: p, Identity: dep, Shared: true, Token: "refused", MaxMembers: 2}); got.IP != first.IP {
		t.Fatalf("the refused pod got %s; want the free member %s", got.IP, first.IP)
	}
	member := func() Entry {
		for _, e := range a.Lookup(dep) {
			if e.IP == first.IP {
				return e
			}
		}
		t.Fatalf("%s is no longer a member of %s", first.IP, dep)
		return Entry{}
	}
	if !member().Held {
		t.Fatalf("%s not held after the refused pod's admission", first.IP)
	}
	deadline := time.Now().Add(10 * time.Second)
	for member().Held && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if e := member(); e.Held || e.Pod != "" {
		t.Fatalf("%s 10 s after the hold's 500 ms TTL: held %v, pod %q; want free", first.IP, e.Held, e.Pod)
	}
}

// sharingPools are two pools of one CIDR that know each other (Pool.Sharing).
func sharingPools(t *testing.T) (*Pool, *Pool) {
	a := mustPool(t, "a", v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/29"})
	b := mustPool(t, "b", v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/29"})
	a.Sharing, b.Sharing = []string{"b"}, []string{"a"}
	return a, b
}

// An address one of two sharing pools has is not given by the other on any
// path: asked for (also by a replica whose cache has not seen it yet, and on
// a dry run), moved onto, or adopted; an identity moving from one pool to
// the other keeps it.
func TestSharingPools(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{})
	stale := startAllocator(t, frozenWatch{s}, Options{MaxAttempts: 3})
	pa, pb := sharingPools(t)
	ctx := testCtx(t)
	held := netip.MustParseAddr("10.30.0.3")
	alloc(t, a, Request{Pool: pb, Identity: "pod/ns/holder", Pod: "ns/holder", IP: held})
	var ce *ConflictError
	for name, r := range map[string]struct {
		al  *Allocator
		req Request
	}{
		"asked for":           {a, Request{Pool: pa, Identity: "pod/ns/x", Pod: "ns/x", IP: held}},
		"asked for, lagging":  {stale, Request{Pool: pa, Identity: "pod/ns/y", Pod: "ns/y", IP: held}},
		"asked for, dry run":  {a, Request{Pool: pa, Identity: "pod/ns/z", Pod: "ns/z", IP: held, DryRun: true}},
		"moved onto (a to a)": {a, Request{Pool: pa, Identity: "pod/ns/mover", Pod: "ns/mover", IP: held}},
	} {
		if name == "moved onto (a to a)" {
			alloc(t, a, Request{Pool: pa, Identity: "pod/ns/mover", Pod: "ns/mover", IP: netip.MustParseAddr("10.30.0.5")})
		}
		if _, err := r.al.Allocate(ctx, r.req); !errors.As(err, &ce) || ce.Holder != "pod/ns/holder" || ce.Pool != "b" {
			t.Errorf("%s: %v; want a ConflictError naming pod/ns/holder of pool b", name, err)
		}
	}
	ok, err := a.Adopt(ctx, Adoption{Pool: pa, Identity: "statefulset/ns/db/0", Pod: "ns/db-0", IP: held, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}})
	if ok || !errors.Is(err, ErrNotAdoptable) || !errors.As(err, &ce) {
		t.Errorf("adopt of pool b's address into pool a: %v %v; want not adoptable, naming its holder", ok, err)
	}
	// From pool b to pool a, keeping its address.
	kept := netip.MustParseAddr("10.30.0.4")
	alloc(t, a, Request{Pool: pb, Identity: "pod/ns/m", Pod: "ns/m", IP: kept})
	if got := alloc(t, a, Request{Pool: pa, Identity: "pod/ns/m", Pod: "ns/m", IP: kept}); got.IP != kept || got.Pool != "a" {
		t.Errorf("move from pool b to a keeping %s: got %s of pool %s", kept, got.IP, got.Pool)
	}
	// Off its address in pool b (cooling there, its own), then asking pool
	// a for it: a conflict, not a claim that fails its compare each time.
	own := netip.MustParseAddr("10.30.0.6")
	alloc(t, a, Request{Pool: pb, Identity: "pod/ns/n", Pod: "ns/n", IP: own})
	alloc(t, a, Request{Pool: pa, Identity: "pod/ns/n", Pod: "ns/n", IP: netip.MustParseAddr("10.30.0.1")})
	if _, err := a.Allocate(ctx, Request{Pool: pa, Identity: "pod/ns/n", Pod: "ns/n", IP: own}); !errors.As(err, &ce) || ce.Pool != "b" {
		t.Errorf("asking pool a for its own address cooling in pool b: %v; want a ConflictError of pool b", err)
	}
}

// Two pools of one CIDR edited apart: pool b's identity keeps an address
// that b's spec no longer allows and a's now does. Pool a does not hand it
// out, asked for or picked, though neither pool names the other in Sharing
// (worked out from the specs). Before, a gave it to its next pod: the same
// address on two live pods.
func TestPoolsEditedApartKeepHeldAddresses(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	ctx := testCtx(t)
	held := netip.MustParseAddr("10.31.0.3")
	alloc(t, a, Request{Pool: mustPool(t, "b", v1alpha1.IPPoolSpec{CIDR: "10.31.0.0/29"}), Identity: "statefulset/ns/db/0", Pod: "ns/db-0", IP: held})
	// The edit: a takes .1–.3, b .4–.6.
	pa := mustPool(t, "a", v1alpha1.IPPoolSpec{CIDR: "10.31.0.0/29", Ranges: []v1alpha1.IPRange{{Start: "10.31.0.1", End: "10.31.0.3"}}})
	var ce *ConflictError
	if _, err := a.Allocate(ctx, Request{Pool: pa, Identity: "pod/ns/x", Pod: "ns/x", IP: held}); !errors.As(err, &ce) || ce.Pool != "b" || ce.Holder != "statefulset/ns/db/0" {
		t.Errorf("pool a asked for %s, which pool b's identity holds: %v; want a ConflictError naming it", held, err)
	}
	for i := range 2 {
		if got := alloc(t, a, Request{Pool: pa, Identity: fmt.Sprintf("pod/ns/p%d", i), Pod: fmt.Sprintf("ns/p%d", i)}); got.IP == held {
			t.Fatalf("pool a handed out %s, which pool b's identity holds", held)
		}
	}
	var ex *ExhaustedError
	if got, err := a.Allocate(ctx, Request{Pool: pa, Identity: "pod/ns/p2", Pod: "ns/p2"}); !errors.As(err, &ex) ||
		!strings.Contains(err.Error(), "all 3 addresses are taken (2 by live or starting pods, 0 held by sticky identities without a live pod, 0 cooling down after release, 1 by identities of IPPools b, which hold them from an earlier spec)") {
		t.Errorf("pool a with .1 and .2 taken and .3 pool b's: got %+v, %v; want an ExhaustedError that counts the address pool b's identity holds", got, err)
	}
}

// A pool's free count leaves out the addresses of its spec that other pools
// have: a pool sharing its addresses, and a pool whose identity holds one
// from an earlier spec (edited apart), named. Before, both counted free, and
// the IPPool's status said addresses were free that no pod could get.
func TestStatsLeaveOutOthersAddresses(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	pa, pb := sharingPools(t) // 10.30.0.0/29: 6 addresses
	alloc(t, a, Request{Pool: pb, Identity: "pod/ns/b1", Pod: "ns/b1", IP: netip.MustParseAddr("10.30.0.1")})
	alloc(t, a, Request{Pool: pa, Identity: "pod/ns/a1", Pod: "ns/a1", IP: netip.MustParseAddr("10.30.0.2")})
	old := mustPool(t, "old", v1alpha1.IPPoolSpec{CIDR: "10.30.0.0/29"}) // since edited apart
	alloc(t, a, Request{Pool: old, Identity: "statefulset/ns/db/0", Pod: "ns/db-0", IP: netip.MustParseAddr("10.30.0.3")})
	s := a.Stats(pa)
	if s.Total != 6 || s.Allocated != 1 || s.Shared != 1 || s.Elsewhere != 1 || !slices.Equal(s.ElsewherePools, []string{"old"}) || s.Free != 3 {
		t.Errorf("pool a with .2 its own, .1 pool b's and .3 pool old's: %+v; want total 6, allocated 1, shared 1, elsewhere 1 (pool old), free 3", s)
	}
	if s := a.Stats(pb); s.Allocated != 1 || s.Shared != 1 || s.Elsewhere != 1 || s.Free != 3 {
		t.Errorf("pool b with .1 its own, .2 pool a's and .3 pool old's: %+v; want allocated 1, shared 1, elsewhere 1, free 3", s)
	}
}

// A bare pod created again under its name while its address cools, asking
// for its MAC with another address: it gets that address with its MAC. Asking
// for its cooling address with another MAC: a denial that names the MAC the
// address keeps. Before, both claims failed their compare with the
// identity's own keys on every attempt, and the pod was refused with "too
// many concurrent changes; try again" until the reuse delay ended.
func TestOwnCoolingAddressAndMACAskedApart(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(3600)})
	ctx := testCtx(t)
	ipA, ipB := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	m, m2 := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	first := alloc(t, a, Request{Pool: p, Identity: "pod/ns/db", Pod: "ns/db", IP: ipA, MAC: m})
	vacate(t, a, "p", first.IP, "pod/ns/db", "ns/db")
	var ne *NotAllocatableError
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/db", Pod: "ns/db", IP: ipA, MAC: m2}); !errors.As(err, &ne) || !strings.Contains(err.Error(), "cooling with MAC 02:00:00:00:00:01") {
		t.Errorf("its cooling address with another MAC: %v; want a NotAllocatableError naming the MAC the address keeps", err)
	}
	got, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/db", Pod: "ns/db", IP: ipB, MAC: m})
	if err != nil || got.IP != ipB || got.MAC.String() != m.String() {
		t.Fatalf("another address with its cooling MAC: %+v, %v; want %s with MAC %s", got, err, ipB, m)
	}
	if _, err := a.Allocate(ctx, Request{Pool: p, Identity: "pod/ns/other", Pod: "ns/other", IP: ipA}); err == nil {
		t.Errorf("another identity took %s within its reuse delay", ipA)
	}
}

// A DaemonSet's pod refused after admission, and the node's next pod
// admitted under another token near the end of the first one's
// reservation: the reservation starts over with the new pod, so it does not
// end before the release controller confirms that pod. Before, the new pod
// got what was left of the first one's lease, and the address, its identity
// and MAC keys went with it (no cooling), free to others while the pod
// carried it.
func TestReservationStartsOverForNextPod(t *testing.T) {
	s := store.NewMemory()
	a := startAllocator(t, s, Options{ReservationTTL: 4 * time.Second})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(0)})
	ctx := testCtx(t)
	const id = "daemonset/ns/agent/node-1"
	first := alloc(t, a, Request{Pool: p, Identity: id, Token: "refused"})
	began := time.Now()
	// The first reservation's lease (4 s plus 2 s of slack) ends at most 6 s
	// after began; 2.5 s in, less than a reservation's 4 s is left of it,
	// so a reservation made now needs a lease of its own. The next pod has
	// 3.5 s to take the reservation before the first lease could end.
	time.Sleep(2500 * time.Millisecond)
	next := alloc(t, a, Request{Pool: p, Identity: id, Token: "next"})
	if next.IP != first.IP || !next.Reserved {
		t.Fatalf("the node's next pod got %+v; want the pending reservation of %s", next, first.IP)
	}
	time.Sleep(time.Until(began.Add(7 * time.Second)))
	for _, k := range []string{a.keys.addrKey("p", first.IP), a.keys.identKey(id, false, first.IP), a.keys.macKey(first.MAC.String())} {
		if kv, err := s.Get(ctx, k); err != nil || kv == nil {
			t.Errorf("%s gone with the first pod's reservation (%v), after the first pod's lease ended", k, err)
		}
	}
	if err := a.Bind(ctx, Binding{Pool: "p", IP: first.IP, Identity: id, Pod: "ns/agent-next", Token: next.Token}); err != nil {
		t.Errorf("binding the next pod: %v", err)
	}
}

// A DaemonSet's node identity moved into another pool (its template's pool
// edited) by a pod that is then never created keeps its new address and its
// MAC once the pod's hold ends. Before, the move was a reservation: when it
// ended, the identity had neither, and its MAC was free to anyone.
func TestPoolChangeMoveUnderToken(t *testing.T) {
	a := startAllocator(t, store.NewMemory(), Options{ReservationTTL: 500 * time.Millisecond})
	p := mustPool(t, "p", v1alpha1.IPPoolSpec{CIDR: "10.0.0.0/24", ReuseDelaySeconds: i32(30)})
	q := mustPool(t, "q", v1alpha1.IPPoolSpec{CIDR: "10.1.0.0/24", ReuseDelaySeconds: i32(30)})
	ctx := testCtx(t)
	const id = "daemonset/ns/agent/node-1"
	first := alloc(t, a, Request{Pool: p, Identity: id, Pod: "ns/agent-old"})
	if err := a.Unbind(ctx, "p", first.IP, "ns/agent-old"); err != nil {
		t.Fatal(err)
	}
	moved := alloc(t, a, Request{Pool: q, Identity: id, Token: "never"})
	if moved.Pool != "q" || !moved.Reserved || moved.Token != "never" || moved.MAC.String() != first.MAC.String() {
		t.Fatalf("pod under a token after the pool changed: %+v; want an address of q for it, MAC %s", moved, first.MAC)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var inQ []Entry
		for _, e := range a.Lookup(id) {
			if e.Pool == "q" {
				inQ = append(inQ, e)
			}
		}
		if len(inQ) == 1 && !inQ[0].Held && !inQ[0].Reserved {
			if inQ[0].IP != moved.IP || inQ[0].MAC.String() != first.MAC.String() {
				t.Fatalf("after the hold ended the identity holds %+v in q; want %s, MAC %s", inQ[0], moved.IP, first.MAC)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the identity holds %+v in q 10 s after the pod's hold began; want %s, neither held nor reserved", inQ, moved.IP)
		}
	}
	if next := alloc(t, a, Request{Pool: q, Identity: id, Token: "next"}); next.IP != moved.IP || next.MAC.String() != first.MAC.String() {
		t.Fatalf("the node's next pod got %s %s; want %s %s", next.IP, next.MAC, moved.IP, first.MAC)
	}
}
