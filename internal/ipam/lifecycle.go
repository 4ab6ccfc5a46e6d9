package ipam

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/store"
)

// Binding names an allocation and the pod that carries it.
type Binding struct {
	Pool     string
	IP       netip.Addr
	Identity string
	Pod      string // ns/name
	Token    string // the reservation token the pod was admitted with, if any
}

// ErrInUse is returned by Release for an address that a live or starting pod carries.
var ErrInUse = errors.New("address is in use by a pod")

// snapshot returns a copy of the cached entry, reading the store when the
// cache does not show what the caller expects (it may lag behind the store).
func (a *Allocator) snapshot(ctx context.Context, pool string, ip netip.Addr, identity string, force bool) (*entry, error) {
	a.cache.mu.Lock()
	e := a.cache.get(pool, ip)
	var cp *entry
	if e != nil {
		c := *e
		cp = &c
	}
	a.cache.mu.Unlock()
	if !force && cp != nil && cp.rev != 0 && cp.rec.ID == identity {
		return cp, nil
	}
	ak, hk := a.keys.addrKey(pool, ip), a.keys.holdKey(pool, ip)
	res, err := a.s.Txn(ctx, nil, []store.Op{store.Get(ak), store.Get(hk)}, nil)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ak, err)
	}
	var evs []store.Event
	for i, key := range []string{ak, hk} {
		if kv := res.Gets[i]; kv != nil {
			evs = append(evs, store.Event{Type: store.EventPut, KV: *kv})
		} else {
			evs = append(evs, store.Event{Type: store.EventDelete, KV: store.KV{Key: key, ModRevision: res.Revision}})
		}
	}
	a.applyLate(evs)
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	if e := a.cache.get(pool, ip); e != nil {
		c := *e
		return &c, nil
	}
	return nil, nil
}

// Bind records that a pod carries an address: a reservation made under the
// pod's token becomes durable, a held member becomes the pod's. It is what the
// release controller calls when a pod admitted under a token appears.
func (a *Allocator) Bind(ctx context.Context, b Binding) error {
	for attempt := range a.opts.MaxAttempts {
		e, err := a.snapshot(ctx, b.Pool, b.IP, b.Identity, attempt > 0)
		if err != nil {
			return err
		}
		lost := func(why string) error { return &LostError{Pool: b.Pool, IP: b.IP, Reason: why} }
		switch {
		case e == nil || e.rev == 0:
			if b.Token != "" {
				return lost("the reservation expired before the pod was confirmed")
			}
			return lost("it is no longer allocated")
		case e.rec.ID != b.Identity:
			return lost("it now belongs to " + e.rec.ID)
		case e.rec.State == stateCooling:
			return lost("it was released")
		}
		ak := a.keys.addrKey(b.Pool, b.IP)
		r := e.rec
		r.Pod, r.Since = b.Pod, a.now().Unix()
		var cmps []store.Cmp
		var ops []store.Op
		switch {
		case e.rec.State == stateReserved:
			if e.rec.Token != b.Token {
				return lost("it is reserved for another pod being created")
			}
			r.State, r.Token = stateAllocated, ""
			ptr := encode(pointer{Pool: b.Pool, IP: b.IP.String()})
			cmps = []store.Cmp{store.At(ak, e.rev)}
			ops = []store.Op{
				store.Put(ak, encode(r), store.NoLease),
				store.Put(a.keys.identKey(r.ID, r.Shared, b.IP), ptr, store.NoLease),
				store.Put(a.keys.macKey(r.MAC), ptr, store.NoLease),
			}
		case e.hold != nil && e.hold.Token == b.Token && b.Token != "":
			cmps = []store.Cmp{store.At(ak, e.rev), store.At(a.keys.holdKey(b.Pool, b.IP), e.holdRev)}
			ops = []store.Op{store.Put(ak, encode(r), e.lease), store.Delete(a.keys.holdKey(b.Pool, b.IP))}
		case e.rec.Pod == b.Pod:
			return nil
		case e.hold != nil:
			return lost("it is held for another pod being created")
		case e.rec.Shared && e.rec.Pod != "":
			return lost("it is carried by pod " + e.rec.Pod)
		default:
			// A single identity has one pod at a time; a shared member is free.
			cmps = []store.Cmp{store.At(ak, e.rev), store.Absent(a.keys.holdKey(b.Pool, b.IP))}
			ops = []store.Op{store.Put(ak, encode(r), e.lease)}
		}
		res, err := a.s.Txn(ctx, cmps, ops, nil)
		if err != nil {
			return fmt.Errorf("bind %s of pool %s to pod %s: %w", b.IP, b.Pool, b.Pod, err)
		}
		if res.Succeeded {
			a.applyLocal(ops, res.Revision)
			return nil
		}
	}
	return fmt.Errorf("bind %s of pool %s to pod %s: %w", b.IP, b.Pool, b.Pod, ErrContention)
}

// Adoption is an address a live pod carries, as its annotations say.
type Adoption struct {
	Pool     *Pool
	Identity string
	Shared   bool
	Pod      string // ns/name
	IP       netip.Addr
	MAC      net.HardwareAddr
}

// ErrNotAdoptable wraps each reason Adopt cannot record an address for the
// pod that carries it: the pool does not hand it out, the pool refuses the
// MAC, someone else holds the address or the MAC, or the identity holds
// another address.
var ErrNotAdoptable = errors.New("cannot be recorded again")

// Adopt records an address that a live pod carries but the state does not
// hold (its reservation expired before the pod was confirmed, or the state
// was lost or restored from an older backup): the pod's identity gets the
// address and the pod's MAC back, bound to the pod, in one transaction that
// finds the address, identity and MAC keys absent. It reports false, and
// nothing is written, when the transaction finds any of them present but
// not held by another identity (the cache learns what it found; a cache
// that lagged behind). An error that wraps ErrNotAdoptable says why the
// address cannot be recorded; a single identity that holds another address
// is not moved.
func (a *Allocator) Adopt(ctx context.Context, ad Adoption) (bool, error) {
	if why := ad.Pool.WhyNot(ad.IP); why != "" {
		return false, fmt.Errorf("%w: %w", ErrNotAdoptable, &NotAllocatableError{IP: ad.IP, Reason: why})
	}
	if err := ad.Pool.checkMAC(ad.MAC); err != nil {
		return false, fmt.Errorf("%w: %w", ErrNotAdoptable, err)
	}
	if !ad.Shared {
		for _, e := range a.Lookup(ad.Identity) {
			if e.Pool != ad.Pool.Name || e.IP != ad.IP {
				return false, fmt.Errorf("%w: identity %s already holds address %s of pool %s", ErrNotAdoptable, ad.Identity, e.IP, e.Pool)
			}
		}
	}
	a.cache.mu.Lock()
	err := a.cache.sharedConflict(ad.Pool, ad.IP, "")
	a.cache.mu.Unlock()
	if err != nil { // another pool, sharing addresses with this one, has it
		return false, fmt.Errorf("%w: %w", ErrNotAdoptable, err)
	}
	req := Request{Pool: ad.Pool, Identity: ad.Identity, Shared: ad.Shared, Pod: ad.Pod, IP: ad.IP, MAC: ad.MAC}
	p := a.claimNew(&req, ad.IP, ad.MAC.String())
	a.guardSharing(p, ad.Pool, ad.IP, "")
	won, beat, err := a.commit(ctx, p)
	if err != nil {
		return false, fmt.Errorf("record %s of pool %s for pod %s: %w", ad.IP, ad.Pool.Name, ad.Pod, err)
	}
	if won {
		return true, nil
	}
	if _, err := a.learn(ctx, &req, p, beat); err != nil {
		var conflict *ConflictError
		if errors.As(err, &conflict) {
			return false, fmt.Errorf("%w: %w", ErrNotAdoptable, err)
		}
		return false, err
	}
	return false, nil
}

// Unbind records that pod no longer carries the address (the pod is gone). The
// address stays with its identity. Nothing happens when another pod carries it.
func (a *Allocator) Unbind(ctx context.Context, pool string, ip netip.Addr, pod string) error {
	return a.Rebind(ctx, pool, ip, pod, "")
}

// Rebind records that the address, bound to pod, is now carried by pod to of
// the same identity ("": by none, as Unbind), in one compare-and-swap: a
// shared member never looks free to a new pod while another carries it.
// Nothing happens when the address is no longer bound to pod.
func (a *Allocator) Rebind(ctx context.Context, pool string, ip netip.Addr, pod, to string) error {
	for range a.opts.MaxAttempts {
		a.cache.mu.Lock()
		e := a.cache.get(pool, ip)
		var cp entry
		if e != nil {
			cp = *e
		}
		a.cache.mu.Unlock()
		if e == nil || cp.rev <= 0 || cp.rec.Pod != pod {
			return nil
		}
		ak := a.keys.addrKey(pool, ip)
		r := cp.rec
		r.Pod, r.Since = to, a.now().Unix()
		ops := []store.Op{store.Put(ak, encode(r), cp.lease)}
		res, err := a.s.Txn(ctx, []store.Cmp{store.At(ak, cp.rev)}, ops, []store.Op{store.Get(ak)})
		if err != nil {
			return fmt.Errorf("rebind %s of pool %s from pod %s to %q: %w", ip, pool, pod, to, err)
		}
		if res.Succeeded {
			a.applyLocal(ops, res.Revision)
			return nil
		}
		a.learnGets([]string{ak}, res)
	}
	return fmt.Errorf("rebind %s of pool %s from pod %s: %w", ip, pool, pod, ErrContention)
}

// Release frees an identity's address: it cools down for the pool's reuse
// delay (only the same identity may take it back meanwhile), then it is gone.
// It returns ErrInUse when a pod carries the address or is being created with
// it, unless force is set. Releasing an address the identity does not own, or
// that is already cooling, does nothing; released reports whether this call
// freed it (another caller may have, between the caller's read and this).
func (a *Allocator) Release(ctx context.Context, pool string, ip netip.Addr, identity string, force bool) (released bool, err error) {
	for attempt := range a.opts.MaxAttempts {
		e, err := a.snapshot(ctx, pool, ip, identity, attempt > 0)
		if err != nil {
			return false, err
		}
		if e == nil || e.rev <= 0 || e.rec.ID != identity || e.rec.State == stateCooling {
			return false, nil
		}
		if e.busy() && !force {
			return false, fmt.Errorf("release %s of pool %s from %s: %w", ip, pool, identity, ErrInUse)
		}
		done, err := a.release(ctx, e)
		if err != nil {
			return false, fmt.Errorf("release %s of pool %s from %s: %w", ip, pool, identity, err)
		}
		if done {
			return true, nil
		}
	}
	return false, fmt.Errorf("release %s of pool %s from %s: %w", ip, pool, identity, ErrContention)
}

// release cools e (as Release does) if neither its record nor its hold has
// changed since the snapshot; false means they have (or a lease ended).
func (a *Allocator) release(ctx context.Context, e *entry) (bool, error) {
	ak, hk, mk := a.keys.addrKey(e.pool, e.ip), a.keys.holdKey(e.pool, e.ip), a.keys.macKey(e.rec.MAC)
	cmps := []store.Cmp{store.At(ak, e.rev), store.At(hk, e.holdRev)}
	delay := a.ReuseDelay(e.pool)
	cool := record{ID: e.rec.ID, Shared: e.rec.Shared, MAC: e.rec.MAC, State: stateCooling, Since: a.now().Unix()}
	p := &plan{then: []store.Op{
		a.coolOrDelete(ak, encode(cool), delay),
		a.coolOrDelete(mk, encode(pointer{Pool: e.pool, IP: e.ip.String()}), delay),
		store.Delete(hk),
		store.Delete(a.keys.identKey(e.rec.ID, e.rec.Shared, e.ip)),
	}}
	if delay > 0 {
		p.needLease(delay, 0)
	}
	if err := a.fillLeases(ctx, p); err != nil {
		return false, err
	}
	res, err := a.s.Txn(ctx, cmps, p.then, nil)
	if errors.Is(err, store.ErrLeaseNotFound) {
		a.dropLeases(p)
		return false, nil
	}
	if err != nil || !res.Succeeded {
		return false, err
	}
	a.applyLocal(p.then, res.Revision)
	return true, nil
}

// An orphan is a shared or ephemeral identity's claim under a token whose
// transaction's outcome its caller never learnt (the store call failed: a
// timeout most often, etcd having taken it or not). The caller refused the
// pod, and no other pod is ever admitted under that token, so nothing will
// confirm the claim. Left alone it would lapse with its lease
// (ReservationTTL), and meanwhile the member would stay held (a set at its
// cap, a Deployment without surge room, would refuse the pod's next try as
// full) or the ephemeral identity's address taken. The allocator gives
// orphans back as soon as etcd answers. Another single identity's claim is
// not an orphan: its pod's next try, under another token, is given the same
// reservation.
type orphan struct {
	pool  string
	ip    netip.Addr
	token string
	until time.Time // its lease has surely ended by then
}

// orphanRetry is how often the allocator tries again to give back orphans
// while etcd does not answer.
const orphanRetry = 2 * time.Second

// noteOrphan records p's claim for req, whose transaction failed, as an
// orphan.
func (a *Allocator) noteOrphan(req *Request, p *plan) {
	if !req.Shared && !req.Ephemeral || p.result.Token == "" || len(p.then) == 0 {
		return
	}
	a.orphanMu.Lock()
	a.orphans = append(a.orphans, orphan{
		pool: p.result.Pool, ip: p.result.IP, token: p.result.Token,
		until: a.now().Add(a.opts.ReservationTTL + max(a.opts.ReservationTTL, a.ReuseDelay(p.result.Pool))),
	})
	a.orphanMu.Unlock()
	select {
	case a.orphanKick <- struct{}{}:
	default:
	}
}

// dropOrphans gives back orphans until ctx ends: at once when one is
// noted, then every orphanRetry while some are left.
func (a *Allocator) dropOrphans(ctx context.Context) {
	t := time.NewTicker(orphanRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.orphanKick:
		case <-t.C:
		}
		a.orphanMu.Lock()
		todo := a.orphans
		a.orphans = nil
		a.orphanMu.Unlock()
		var left []orphan
		for _, o := range todo {
			if a.now().After(o.until) {
				continue
			}
			octx, cancel := context.WithTimeout(ctx, orphanRetry)
			settled, err := a.dropOrphan(octx, o)
			cancel()
			if err != nil {
				klog.FromContext(ctx).V(2).Info("Cannot give back a claim whose outcome was not known yet; trying again", "pool", o.pool, "ip", o.ip, "err", err.Error())
			}
			if !settled {
				left = append(left, o)
			}
		}
		a.orphanMu.Lock()
		a.orphans = append(a.orphans, left...)
		a.orphanMu.Unlock()
	}
}

// dropOrphan reads o's address from etcd and, if the claim went through,
// gives it back: a hold under o's token is removed (the member is free for
// the identity's next pod), a reservation under it is released (it cools,
// as a released address does). settled is false while nothing under o's
// token is there: the claim's transaction may still be on its way (its
// caller gave up on it, not etcd, and a batch it went in runs on for the
// others), so the orphan is looked at again, every orphanRetry, until its
// lease would have ended.
func (a *Allocator) dropOrphan(ctx context.Context, o orphan) (settled bool, _ error) {
	for range a.opts.MaxAttempts {
		e, err := a.snapshot(ctx, o.pool, o.ip, "", true)
		if err != nil {
			return false, err
		}
		var done bool
		switch {
		case e == nil || e.rev <= 0:
			return false, nil // not taken (yet), or it lapsed
		case e.hold != nil && e.hold.Token == o.token:
			hk := a.keys.holdKey(o.pool, o.ip)
			ops := []store.Op{store.Delete(hk)}
			res, err := a.s.Txn(ctx, []store.Cmp{store.At(hk, e.holdRev)}, ops, nil)
			if err != nil {
				return false, err
			}
			if done = res.Succeeded; done {
				a.applyLocal(ops, res.Revision)
			}
		case e.rec.State == stateReserved && e.rec.Token == o.token:
			if done, err = a.release(ctx, e); err != nil {
				return false, err
			}
		default:
			return false, nil // nothing under o's token (yet)
		}
		if done {
			klog.FromContext(ctx).Info("Gave back a claim whose pod was refused when etcd did not answer in time",
				"pool", o.pool, "ip", o.ip, "identity", e.rec.ID)
			return true, nil
		}
	}
	return false, fmt.Errorf("give back %s of pool %s: %w", o.ip, o.pool, ErrContention)
}

func (a *Allocator) learnGets(keys []string, res store.TxnResult) {
	var evs []store.Event
	for i, k := range keys {
		if i >= len(res.Gets) {
			break
		}
		if kv := res.Gets[i]; kv != nil {
			evs = append(evs, store.Event{Type: store.EventPut, KV: *kv})
		} else {
			evs = append(evs, store.Event{Type: store.EventDelete, KV: store.KV{Key: k, ModRevision: res.Revision}})
		}
	}
	a.applyLate(evs)
}

// Entry is an address as the cache sees it, for controllers and status.
type Entry struct {
	Allocation
	Shared  bool
	Cooling bool      // released, waiting out the reuse delay (Identity is the former owner)
	Held    bool      // a pod being created holds this shared member under Token
	Since   time.Time // last change of the address's state (claim, bind, unbind, release)
}

// The states of an address, as IPPool status counts them.
const (
	StateAllocated = "allocated" // a live pod carries it, or a pod being created has it
	StateHeld      = "held"      // its sticky identity has no live pod right now
	StateCooling   = "cooling"   // freed, waiting out the pool's reuse delay
)

// stateOf is the one place that classifies an address for status counts
// (Stats.count) and lists (Entry.State).
func stateOf(cooling, busy bool) string {
	switch {
	case cooling:
		return StateCooling
	case busy:
		return StateAllocated
	}
	return StateHeld
}

// State is the address's state as IPPool status counts it (StateAllocated,
// StateHeld or StateCooling).
func (e Entry) State() string { return stateOf(e.Cooling, busy(e.Pod, e.Held, e.Reserved)) }

func entryOf(e *entry) Entry {
	mac, _ := net.ParseMAC(e.rec.MAC)
	en := Entry{
		Allocation: Allocation{
			Pool: e.pool, IP: e.ip, MAC: mac, Identity: e.rec.ID, Pod: e.rec.Pod,
			Token: e.rec.Token, Reserved: e.rec.State == stateReserved,
		},
		Shared: e.rec.Shared, Cooling: e.rec.State == stateCooling, Held: e.hold != nil,
		Since: time.Unix(e.rec.Since, 0),
	}
	if e.hold != nil {
		en.Token = e.hold.Token
	}
	return en
}

func sortList(out []Entry) []Entry {
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pool != out[j].Pool {
			return out[i].Pool < out[j].Pool
		}
		return out[i].IP.Less(out[j].IP)
	})
	return out
}

// List returns the cached addresses that match (all when match is nil), sorted by pool and address.
// The sort runs after the cache is unlocked: admissions wait for that lock.
func (a *Allocator) List(match func(Entry) bool) []Entry {
	return sortList(a.cache.list(match))
}

// Refresh reads the identity's addresses from etcd into the cache (one list
// of its index keys, one read per address): for a caller that must see what
// another replica wrote a moment ago, which this replica's watch may not
// have delivered yet.
func (a *Allocator) Refresh(ctx context.Context, identity string) error {
	prefix := a.keys.ident + identity
	kvs, _, err := a.s.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("read the addresses of %s: %w", identity, err)
	}
	for _, kv := range kvs {
		if rest := kv.Key[len(prefix):]; rest != "" && !strings.HasPrefix(rest, "/") {
			continue // another identity that starts with this one's name
		}
		pool, ip, ok := decodePointer(kv.Value)
		if !ok {
			continue
		}
		if _, err := a.snapshot(ctx, pool, ip, identity, true); err != nil {
			return err
		}
	}
	return nil
}

// Lookup returns the identity's addresses that are not cooling.
func (a *Allocator) Lookup(identity string) []Entry {
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	var out []Entry
	for _, e := range a.cache.idents[identity] {
		if e.rec.State != stateCooling {
			out = append(out, entryOf(e))
		}
	}
	return sortList(out)
}

// HoldsOutside reports whether the identity has an address in pool p, held
// or cooling, that p's spec does not allow.
func (a *Allocator) HoldsOutside(identity string, p *Pool) bool {
	a.cache.mu.Lock()
	defer a.cache.mu.Unlock()
	for _, e := range a.cache.idents[identity] {
		if e.pool == p.Name && !p.Contains(e.ip) {
			return true
		}
	}
	return false
}

// PoolKeys returns the etcd keys of the pool's addresses (records,
// allocated, reserved, held or cooling, and holds), read from etcd itself:
// the cache may lag a claim made a moment ago by another replica, and skips
// records it cannot decode.
func (a *Allocator) PoolKeys(ctx context.Context, pool string) ([]string, error) {
	kvs, _, err := a.s.List(ctx, a.keys.addr+pool+"/")
	if err != nil {
		return nil, fmt.Errorf("read the addresses of IPPool %s from etcd: %w", pool, err)
	}
	keys := make([]string, len(kvs))
	for i, kv := range kvs {
		keys[i] = kv.Key
	}
	return keys, nil
}

// Stats counts the pool's addresses as the cache sees them.
func (a *Allocator) Stats(p *Pool) Stats { return a.cache.stats(p) }
