package ipam

import (
	"encoding/json"
	"maps"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/stickynet/stickynet/internal/store"
)

// Record states.
const (
	stateAllocated = "a" // durable, owned by an identity
	stateReserved  = "r" // provisional, attached to a reservation lease until bound
	stateCooling   = "c" // freed, attached to a lease of the pool's reuse delay
)

// record is the value of an address key.
type record struct {
	ID     string `json:"id"`            // owning identity (former owner while cooling)
	Shared bool   `json:"sh,omitempty"`  // a member of a shared identity's set
	MAC    string `json:"mac"`           // canonical lower-case MAC
	Pod    string `json:"pod,omitempty"` // ns/name of the live pod carrying the address
	Token  string `json:"tok,omitempty"` // reservation token while reserved
	State  string `json:"st"`
	Since  int64  `json:"t,omitempty"` // unix seconds of the last state change
}

// hold is the value of an address's hold key: a pod being created has taken a
// free member of a shared identity under a reservation token.
type hold struct {
	Token string `json:"tok"`
}

// pointer is the value of identity-index and MAC keys.
type pointer struct {
	Pool string `json:"pool"`
	IP   string `json:"ip"`
}

// decodePointer returns the address an identity-index or MAC key names;
// ok is false for a value that is not a pointer.
func decodePointer(value []byte) (pool string, ip netip.Addr, ok bool) {
	var p pointer
	if json.Unmarshal(value, &p) != nil {
		return "", netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(p.IP)
	return p.Pool, ip, err == nil
}

// entry is the cached state of one address key (and its hold key).
type entry struct {
	pool    string
	ip      netip.Addr
	rec     record
	rev     int64
	lease   store.LeaseID
	hold    *hold
	holdRev int64
}

// busy reports whether a live pod or a pending reservation uses the address.
func (e *entry) busy() bool { return busy(e.rec.Pod, e.hold != nil, e.rec.State == stateReserved) }

// busy: a pod is bound to the address, a pod being created holds it as a
// shared member, or it is reserved for a pod being created.
func busy(pod string, held, reserved bool) bool { return pod != "" || held || reserved }

// count adds the address to the count of its state.
func (s *Stats) count(e *entry) {
	switch stateOf(e.rec.State == stateCooling, e.busy()) {
	case StateCooling:
		s.Cooling++
	case StateAllocated:
		s.Allocated++
	default:
		s.Held++
	}
}

// keys lays out the allocator's keys under a prefix:
//
//	<prefix>ipam/addr/<pool>/<ip>        record (watched and cached)
//	<prefix>ipam/addr/<pool>/<ip>/hold   hold (watched and cached)
//	<prefix>ipam/ident/<identity>        pointer, single-address identities
//	<prefix>ipam/ident/<identity>/<ip>   pointer, one per member of a shared identity
//	<prefix>ipam/mac/<mac>               pointer
type keys struct{ addr, ident, mac string }

func newKeys(prefix string) keys {
	return keys{addr: prefix + "ipam/addr/", ident: prefix + "ipam/ident/", mac: prefix + "ipam/mac/"}
}

func (k keys) addrKey(pool string, ip netip.Addr) string { return k.addr + pool + "/" + ip.String() }
func (k keys) holdKey(pool string, ip netip.Addr) string { return k.addrKey(pool, ip) + "/hold" }
func (k keys) macKey(mac string) string                  { return k.mac + mac }

func (k keys) identKey(identity string, shared bool, ip netip.Addr) string {
	if shared {
		return k.ident + identity + "/" + ip.String()
	}
	return k.ident + identity
}

// parseAddrKey splits an address or hold key.
func (k keys) parseAddrKey(key string) (pool string, ip netip.Addr, isHold, ok bool) {
	rest, found := strings.CutPrefix(key, k.addr)
	if !found {
		return "", netip.Addr{}, false, false
	}
	rest, isHold = strings.CutSuffix(rest, "/hold")
	pool, ipStr, found := strings.Cut(rest, "/")
	if !found {
		return "", netip.Addr{}, false, false
	}
	ip, err := netip.ParseAddr(ipStr)
	return pool, ip, isHold, err == nil
}

// cache is the allocator's watch-fed view of every address and hold key,
// indexed by pool, identity and MAC. It also tracks the
// addresses and MACs this process is trying to claim right now, so that its
// own concurrent requests do not race for the same candidate.
type cache struct {
	keys keys

	mu       sync.Mutex
	pools    map[string]map[netip.Addr]*entry
	idents   map[string][]*entry // usually one; a shared identity's members
	macs     map[string]*entry
	inflight map[string]map[netip.Addr]struct{} // pool → addresses being claimed here
	inMACs   map[string]struct{}
	growing  map[string]int // shared identity → members being added here (counted against MaxMembers)
	bad      int            // undecodable values seen (logged by the allocator)
	// watched is the revision up to which the watch has delivered every
	// change (the list's, then each event's): applyLate skips what is older.
	watched int64
}

func newCache(k keys) *cache {
	c := &cache{keys: k, inflight: map[string]map[netip.Addr]struct{}{}, inMACs: map[string]struct{}{}, growing: map[string]int{}}
	c.reset()
	return c
}

func (c *cache) reset() {
	c.pools = map[string]map[netip.Addr]*entry{}
	c.idents = map[string][]*entry{}
	c.macs = map[string]*entry{}
}

// Replace implements store.Handler. Values are decoded on every core before
// the cache is locked and indexed (a rebuild from 100,000 addresses is mostly decoding).
func (c *cache) Replace(kvs []store.KV, rev int64) {
	type decoded struct {
		pool   string
		ip     netip.Addr
		isHold bool
		ok     bool
		rec    record
		hold   hold
	}
	out := make([]decoded, len(kvs))
	workers := min(runtime.GOMAXPROCS(0), 1+len(kvs)/1000)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(kvs); i += workers {
				d := &out[i]
				d.pool, d.ip, d.isHold, d.ok = c.keys.parseAddrKey(kvs[i].Key)
				if !d.ok {
					continue
				}
				var err error
				if d.isHold {
					err = json.Unmarshal(kvs[i].Value, &d.hold)
				} else {
					err = json.Unmarshal(kvs[i].Value, &d.rec)
				}
				d.ok = err == nil
			}
		}()
	}
	wg.Wait()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset()
	c.watched = rev
	c.idents = make(map[string][]*entry, len(kvs))
	c.macs = make(map[string]*entry, len(kvs))
	perPool := map[string]int{}
	for i := range out {
		perPool[out[i].pool]++
	}
	for pool, n := range perPool {
		c.pools[pool] = make(map[netip.Addr]*entry, n)
	}
	entries := make([]entry, len(kvs)) // one allocation for all entries
	for i := range out {
		d := &out[i]
		if !d.ok {
			c.bad++
			continue
		}
		e := c.get(d.pool, d.ip)
		if e == nil {
			e = &entries[i]
			e.pool, e.ip = d.pool, d.ip
			c.link(e)
		}
		if d.isHold {
			h := d.hold
			e.hold, e.holdRev = &h, kvs[i].ModRevision
			continue
		}
		e.rec, e.rev, e.lease = d.rec, kvs[i].ModRevision, kvs[i].Lease
		c.indexRecord(e)
	}
}

// Apply implements store.Handler: the watch's events, in order.
func (c *cache) Apply(events []store.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range events {
		c.watched = max(c.watched, events[i].KV.ModRevision)
		c.applyLocked(&events[i])
	}
}

// applyLate applies what the allocator learnt outside the watch (its own
// writes, what a lost claim read): it may arrive after the watch delivered
// a later change of the same key. A put at or below the watched revision is
// skipped: the cache holds it already, or what came after it (a delete the
// cache keeps no trace of, which the put would otherwise undo).
func (c *cache) applyLate(events []store.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range events {
		if events[i].Type != store.EventDelete && events[i].KV.ModRevision <= c.watched {
			continue
		}
		c.applyLocked(&events[i])
	}
}

func (c *cache) applyLocked(ev *store.Event) {
	if ev.Type == store.EventDelete {
		c.deleteLocked(ev.KV.Key, ev.KV.ModRevision)
	} else {
		c.putLocked(&ev.KV)
	}
}

func (c *cache) get(pool string, ip netip.Addr) *entry {
	if m := c.pools[pool]; m != nil {
		return m[ip]
	}
	return nil
}

func (c *cache) putLocked(kv *store.KV) {
	pool, ip, isHold, ok := c.keys.parseAddrKey(kv.Key)
	if !ok {
		return
	}
	e := c.get(pool, ip)
	// Skip what the cache has already seen (its own writes are applied before
	// the watch delivers them), before paying for decoding.
	if e != nil && (isHold && kv.ModRevision <= e.holdRev || !isHold && kv.ModRevision <= e.rev) {
		return
	}
	if isHold {
		var h hold
		if err := json.Unmarshal(kv.Value, &h); err != nil {
			c.bad++
			return
		}
		if e == nil {
			// A hold without its address record: keep a placeholder so the
			// address counts as taken until the record shows up or the hold ends.
			e = &entry{pool: pool, ip: ip}
			c.link(e)
		}
		e.hold, e.holdRev = &h, kv.ModRevision
		return
	}
	var r record
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		c.bad++
		return
	}
	if e == nil {
		e = &entry{pool: pool, ip: ip}
		c.link(e)
	} else {
		c.unindexRecord(e)
	}
	e.rec, e.rev, e.lease = r, kv.ModRevision, kv.Lease
	c.indexRecord(e)
}

func (c *cache) deleteLocked(key string, rev int64) {
	pool, ip, isHold, ok := c.keys.parseAddrKey(key)
	if !ok {
		return
	}
	e := c.get(pool, ip)
	if e == nil {
		return
	}
	if isHold {
		if e.hold == nil || rev < e.holdRev {
			return
		}
		e.hold, e.holdRev = nil, 0
		if e.rev == 0 {
			delete(c.pools[pool], ip)
		}
		return
	}
	if rev < e.rev {
		return
	}
	c.unindexRecord(e)
	e.rec, e.rev, e.lease = record{}, 0, 0
	if e.hold == nil {
		delete(c.pools[pool], ip)
	}
}

func (c *cache) link(e *entry) {
	m := c.pools[e.pool]
	if m == nil {
		m = map[netip.Addr]*entry{}
		c.pools[e.pool] = m
	}
	m[e.ip] = e
}

func (c *cache) indexRecord(e *entry) {
	if e.rev == 0 {
		return
	}
	c.idents[e.rec.ID] = append(c.idents[e.rec.ID], e)
	if e.rec.MAC != "" {
		c.macs[e.rec.MAC] = e
	}
}

func (c *cache) unindexRecord(e *entry) {
	if e.rev == 0 {
		return
	}
	es := c.idents[e.rec.ID]
	for i, x := range es {
		if x == e {
			es[i] = es[len(es)-1]
			es = es[:len(es)-1]
			break
		}
	}
	if len(es) == 0 {
		delete(c.idents, e.rec.ID)
	} else {
		c.idents[e.rec.ID] = es
	}
	if c.macs[e.rec.MAC] == e {
		delete(c.macs, e.rec.MAC)
	}
}

// taken reports whether an address is stored or being claimed by this process.
func (c *cache) taken(pool string, ip netip.Addr) bool {
	if e := c.get(pool, ip); e != nil {
		return true
	}
	_, ok := c.inflight[pool][ip]
	return ok
}

// takenIn returns the entry of ip in the first of pools that has one (nil
// if none does; an address being claimed there counts, with no record yet).
func (c *cache) takenIn(pools []string, ip netip.Addr) *entry {
	for _, pool := range pools {
		if e := c.get(pool, ip); e != nil {
			return e
		}
		if _, ok := c.inflight[pool][ip]; ok {
			return &entry{pool: pool, ip: ip, rec: record{ID: "a pod being admitted"}}
		}
	}
	return nil
}

// heldElsewhere returns a record of ip in a pool other than pool, of an
// identity other than identity ("": of anyone), if the cache has one. A pool
// keeps what its identities hold when its spec moves off those addresses (a
// running pod keeps its address), so Sharing, worked out from the specs,
// need not name every pool that has ip: two pools edited apart, the one no
// longer allowing an address that the other now does.
func (c *cache) heldElsewhere(pool string, ip netip.Addr, identity string) *entry {
	for name, m := range c.pools {
		if name == pool {
			continue
		}
		if e := m[ip]; e != nil && (identity == "" || e.rec.ID != identity) {
			return e
		}
	}
	return nil
}

// others counts the addresses of pool's spec (of candidates, when set) that
// pool has no record of and other pools have: those of pools that can hand
// out the same addresses (Pool.Sharing), and those of the others, which it
// names (pools edited apart: a pool keeps what its identities hold when its
// spec moves off those addresses). Neither is handed out. It reads every
// other pool's records.
func (c *cache) others(pool *Pool, candidates []netip.Addr) (shared, elsewhere int, elsewherePools []string) {
	seen := map[netip.Addr]bool{}
	names := map[string]bool{}
	for name, m := range c.pools {
		if name == pool.Name {
			continue
		}
		sharing := slices.Contains(pool.Sharing, name)
		for ip, rec := range m {
			if rec.rev == 0 || seen[ip] || !pool.Contains(ip) || c.pools[pool.Name][ip] != nil || candidates != nil && !slices.Contains(candidates, ip) {
				continue
			}
			seen[ip] = true
			if sharing {
				shared++
				continue
			}
			elsewhere++
			names[name] = true
		}
	}
	return shared, elsewhere, slices.Sorted(maps.Keys(names))
}

// sharedConflict says whether another pool has ip (a pool sharing addresses
// with pool, its Sharing, or any pool with a record of it), for an identity
// other than identity ("": for anyone).
func (c *cache) sharedConflict(pool *Pool, ip netip.Addr, identity string) error {
	e := c.takenIn(pool.Sharing, ip)
	if e == nil || identity != "" && e.rec.ID == identity {
		e = c.heldElsewhere(pool.Name, ip, identity)
	}
	if e != nil && (identity == "" || e.rec.ID != identity) {
		return &ConflictError{Pool: e.pool, What: "address " + ip.String(), Holder: e.rec.ID, Cooling: e.rec.State == stateCooling}
	}
	return nil
}

func (c *cache) macTaken(mac string) bool {
	if _, ok := c.macs[mac]; ok {
		return true
	}
	_, ok := c.inMACs[mac]
	return ok
}

// claimLocal marks ip and mac as being claimed by this process.
func (c *cache) claimLocal(pool string, ip netip.Addr, mac string) {
	m := c.inflight[pool]
	if m == nil {
		m = map[netip.Addr]struct{}{}
		c.inflight[pool] = m
	}
	m[ip] = struct{}{}
	if mac != "" {
		c.inMACs[mac] = struct{}{}
	}
}

func (c *cache) unclaimLocal(pool string, ip netip.Addr, mac, growing string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.inflight[pool], ip)
	delete(c.inMACs, mac)
	if growing != "" {
		if c.growing[growing]--; c.growing[growing] <= 0 {
			delete(c.growing, growing)
		}
	}
}

// Stats counts a pool's addresses by what uses them.
type Stats struct {
	Total     uint64 // allocatable addresses
	Allocated int    // carried by a live pod or reserved for one being created
	Held      int    // sticky, owned by an identity without a live pod
	Cooling   int    // freed, waiting out the reuse delay
	// Shared counts the addresses, in no count above, that pools able to
	// hand out the same ones (Pool.Sharing) have; Elsewhere those that other
	// pools' identities hold from an earlier spec (pools edited apart),
	// ElsewherePools names those pools. Neither is handed out.
	Shared, Elsewhere int
	ElsewherePools    []string
	Free              uint64 // available to a new identity now
	// Outside counts addresses claimed under an earlier spec of the pool
	// that the current one no longer allows (not cooling; in no count above).
	// The allocator hands none out again.
	Outside int
}

// list returns the entries that match, unsorted. Only copying the entries
// holds the lock, which admissions wait for (records and holds are replaced,
// never changed in place); converting and matching them does not.
func (c *cache) list(match func(Entry) bool) []Entry {
	c.mu.Lock()
	n := 0
	for _, m := range c.pools {
		n += len(m)
	}
	snap := make([]entry, 0, n)
	for _, m := range c.pools {
		for _, e := range m {
			if e.rev != 0 {
				snap = append(snap, *e)
			}
		}
	}
	c.mu.Unlock()
	var out []Entry
	for i := range snap {
		if en := entryOf(&snap[i]); match == nil || match(en) {
			out = append(out, en)
		}
	}
	return out
}

func (c *cache) stats(p *Pool) Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.statsLocked(p)
}

func (c *cache) statsLocked(p *Pool) Stats {
	s := Stats{Total: p.Size()}
	var inPool uint64
	for ip, e := range c.pools[p.Name] {
		if !p.Contains(ip) {
			if e.rev > 0 && e.rec.State != stateCooling {
				s.Outside++
			}
			continue
		}
		inPool++
		s.count(e)
	}
	s.Shared, s.Elsewhere, s.ElsewherePools = c.others(p, nil)
	if taken := inPool + uint64(s.Shared+s.Elsewhere); taken < s.Total {
		s.Free = s.Total - taken
	}
	return s
}
