// Package ipam is stickynet's sticky address allocator (DESIGN.md, "Identity
// and stickiness"). An identity always gets its IP and MAC back; addresses are
// claimed with one compare-and-swap transaction over the address key, the
// identity index and the MAC key together, so allocator instances in separate
// webhook replicas never hand out one address twice. Candidates come from a
// watch-fed cache of every address record; the store is the only authority.
//
// Pods that have no name yet (generateName) are served under a reservation
// token: a new address is attached to a lease until Bind confirms it, a free
// member of a shared identity is taken by a leased hold key. Unconfirmed
// reservations expire by themselves. Freed addresses are kept, attached to a
// lease of the pool's reuse delay, for that long before anyone else may take them.
package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/store"
)

// Options configure an Allocator.
type Options struct {
	// Prefix of every key, default "/stickynet/".
	Prefix string
	// ReservationTTL is how long an unconfirmed reservation lives, default 60 s.
	ReservationTTL time.Duration
	// MaxAttempts bounds the compare-and-swap retries of one request, default 32.
	MaxAttempts int
}

// Allocator hands out sticky addresses. It is safe for concurrent use; start
// it with Start before use.
type Allocator struct {
	s     store.Store
	keys  keys
	cache *cache
	refl  *store.Reflector
	opts  Options

	leaseMu sync.Mutex // guards leases
	leases  map[time.Duration]*bucketLease
	// granting is held by the one caller granting a lease to refill a
	// bucket; beside's slots by callers that waited grantWait for it (see
	// lease).
	granting, beside chan struct{}
	delays           sync.Map // pool name → the reuse delay of addresses released from it
	now              func() time.Time

	orphanMu   sync.Mutex
	orphans    []orphan
	orphanKick chan struct{}
}

type bucketLease struct {
	id      store.LeaseID
	expires time.Time // conservative: from before the grant request
}

// New returns an allocator over s.
func New(s store.Store, opts Options) *Allocator {
	if opts.Prefix == "" {
		opts.Prefix = "/stickynet/"
	}
	if opts.ReservationTTL <= 0 {
		opts.ReservationTTL = 60 * time.Second
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 32
	}
	k := newKeys(opts.Prefix)
	c := newCache(k)
	return &Allocator{
		s: s, keys: k, cache: c, opts: opts,
		refl:       store.NewReflector(s, k.addr, c),
		leases:     map[time.Duration]*bucketLease{},
		granting:   make(chan struct{}, 1),
		beside:     make(chan struct{}, grantsBeside),
		now:        time.Now,
		orphanKick: make(chan struct{}, 1),
	}
}

// Start runs the cache's reflector, and gives back orphaned claims, until
// ctx ends; it waits for the reflector's first list.
func (a *Allocator) Start(ctx context.Context) error {
	go a.refl.Run(ctx)
	go a.dropOrphans(ctx)
	if err := a.refl.WaitForRevision(ctx, 0); err != nil {
		return fmt.Errorf("wait for the address cache: %w", err)
	}
	return nil
}

// Reflector returns the cache's reflector (for its revision and re-list count).
func (a *Allocator) Reflector() *store.Reflector { return a.refl }

// Request asks for an identity's address in a pool.
type Request struct {
	Pool     *Pool
	Identity string
	// Shared identities (Deployment, ReplicaSet) own a set of addresses that
	// their pods draw from; the others own exactly one.
	Shared bool
	// Pod is ns/name of the pod being admitted, when it has a name.
	Pod string
	// Token identifies a reservation for a pod without a name yet; set exactly
	// one of Pod and Token. Bind with the same token confirms it.
	Token string
	// Ephemeral says that the identity is this request's alone (named after
	// Token: a bare pod created through generateName), so that no later
	// request claims under it.
	Ephemeral bool
	// IP requests this address (single identities).
	IP netip.Addr
	// Candidates restricts a shared identity to these addresses (the ips annotation).
	Candidates []netip.Addr
	// MaxMembers caps a shared identity's set (replicas + maxSurge); 0: no cap.
	// A pod that finds no free member in a full set gets a *SetFullError.
	MaxMembers int
	// MAC requests this MAC (single identities).
	MAC net.HardwareAddr
	// DryRun answers without writing anything.
	DryRun bool
}

// Allocation is an identity's address.
type Allocation struct {
	Pool     string
	IP       netip.Addr
	Prefix   netip.Prefix // IP with the pool's prefix length
	MAC      net.HardwareAddr
	Identity string
	Pod      string // live pod carrying it, if known
	Token    string // reservation token while unconfirmed
	// Reserved is true while the allocation waits for Bind.
	Reserved bool
	// New is true when this request created the allocation or reclaimed it from cooling.
	New bool
}

// Allows reports whether the request may be given ip: an address its pool's
// current spec allows and, when it lists candidates, one of them.
func (r *Request) Allows(ip netip.Addr) bool {
	return r.Pool.Contains(ip) && (len(r.Candidates) == 0 || slices.Contains(r.Candidates, ip))
}

func (r *Request) check() error {
	switch {
	case r.Pool == nil:
		return fmt.Errorf("%w: no pool", ErrInvalidRequest)
	case r.Identity == "":
		return fmt.Errorf("%w: no identity", ErrInvalidRequest)
	case (r.Pod == "") == (r.Token == ""):
		return fmt.Errorf("%w: set exactly one of pod and token", ErrInvalidRequest)
	case r.Shared && r.MAC != nil:
		return fmt.Errorf("%w: a shared identity's pods cannot request one MAC", ErrInvalidRequest)
	}
	if r.IP.IsValid() {
		if why := r.Pool.WhyNot(r.IP); why != "" {
			return &NotAllocatableError{IP: r.IP, Reason: why}
		}
	}
	for _, c := range r.Candidates {
		if why := r.Pool.WhyNot(c); why != "" {
			return &NotAllocatableError{IP: c, Reason: why}
		}
	}
	if r.MAC != nil {
		if err := r.Pool.checkMAC(r.MAC); err != nil {
			return err
		}
	}
	return nil
}

// plan is one compare-and-swap attempt.
type plan struct {
	cmps      []store.Cmp
	then, els []store.Op
	result    Allocation
	localIP   netip.Addr // claimed in the cache's in-flight set
	localMAC  string
	growing   string                  // the shared identity this plan adds a member to (in the cache's growing count)
	leases    map[time.Duration][]int // puts in then (by index) that need a lease of that TTL
	reused    bool                    // result existed already (no write unless pod changed)
}

// needLease marks the puts at then[from:] as taking a lease of ttl.
func (p *plan) needLease(ttl time.Duration, from int) {
	if p.leases == nil {
		p.leases = map[time.Duration][]int{}
	}
	for i := from; i < len(p.then); i++ {
		if p.then[i].IsPut() {
			p.leases[ttl] = append(p.leases[ttl], i)
		}
	}
}

// Allocate returns the identity's address in the pool, claiming one if it has none.
func (a *Allocator) Allocate(ctx context.Context, req Request) (Allocation, error) {
	if err := req.check(); err != nil {
		return Allocation{}, err
	}
	if req.IP.IsValid() && req.Shared {
		req.Candidates, req.IP = []netip.Addr{req.IP}, netip.Addr{}
	}
	a.delays.Store(req.Pool.Name, req.Pool.ReuseDelay)
	log := klog.FromContext(ctx)
	for attempt := 0; attempt < a.opts.MaxAttempts; attempt++ {
		p, err := a.plan(&req)
		if err != nil {
			return Allocation{}, err
		}
		if req.DryRun {
			a.unclaim(req.Pool.Name, p)
			if err := a.cache.requestConflict(&req); err != nil {
				return Allocation{}, err
			}
			return p.result, nil
		}
		if err := a.fillLeases(ctx, p); err != nil {
			a.unclaim(req.Pool.Name, p)
			return Allocation{}, fmt.Errorf("claim address for %s in pool %s: %w", req.Identity, req.Pool.Name, err)
		}
		won, beat, err := a.commit(ctx, p)
		a.unclaim(req.Pool.Name, p)
		if errors.Is(err, store.ErrLeaseNotFound) {
			a.dropLeases(p)
			continue
		}
		if err != nil {
			a.noteOrphan(&req, p)
			return Allocation{}, fmt.Errorf("claim address for %s in pool %s: %w", req.Identity, req.Pool.Name, err)
		}
		if won {
			return p.result, nil
		}
		rev, err := a.learn(ctx, &req, p, beat)
		if err != nil {
			return Allocation{}, err
		}
		a.catchUp(ctx, rev)
		log.V(4).Info("Claim lost a race; retrying", "identity", req.Identity, "pool", req.Pool.Name, "attempt", attempt)
	}
	return Allocation{}, fmt.Errorf("claim address for %s in pool %s: %w", req.Identity, req.Pool.Name, ErrContention)
}

// catchUpWait bounds how long a claim that lost a race waits for the cache.
const catchUpWait = time.Second

// catchUp waits, briefly, until the cache has seen rev, the newest address
// record that beat a claim, and with it every address written before: a
// cache that lags behind busy replicas (near a pool's exhaustion, on a
// starved machine) would otherwise pick taken addresses and lose race after
// race until MaxAttempts.
func (a *Allocator) catchUp(ctx context.Context, rev int64) {
	if rev == 0 {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, catchUpWait)
	defer cancel()
	_ = a.refl.WaitForRevision(wctx, rev) // late: plan from what the cache has
}

// requestConflict reports, from the cache, a requested address or MAC that
// another identity holds. A claim learns that from etcd (its transaction
// finds the key present: learn); a dry run, which sends none, only here.
func (c *cache) requestConflict(req *Request) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if req.IP.IsValid() {
		if e := c.get(req.Pool.Name, req.IP); e != nil && e.rec.ID != req.Identity {
			return &ConflictError{Pool: req.Pool.Name, What: "address " + req.IP.String(), Holder: e.rec.ID, Cooling: e.rec.State == stateCooling}
		}
		if err := c.sharedConflict(req.Pool, req.IP, req.Identity); err != nil {
			return err
		}
	}
	if req.MAC != nil {
		if e := c.macs[req.MAC.String()]; e != nil && e.rec.ID != req.Identity {
			return &ConflictError{Pool: e.pool, What: "MAC " + req.MAC.String(), Holder: e.rec.ID, Cooling: e.rec.State == stateCooling}
		}
	}
	return nil
}

func (a *Allocator) unclaim(pool string, p *plan) {
	if p.localIP.IsValid() || p.growing != "" {
		a.cache.unclaimLocal(pool, p.localIP, p.localMAC, p.growing)
	}
}

// plan decides, from the cache, what to try.
func (a *Allocator) plan(req *Request) (*plan, error) {
	c := a.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	pool := req.Pool

	// An address the pool's spec no longer allows (its cidr, ranges,
	// exclude or gateway edited since it was claimed) is never handed out
	// again: a single identity moves off it (keeping its MAC), a shared one's
	// free member is not taken, and neither is taken back from cooling.
	var inPool, cooling, coolingOutside, elsewhere []*entry
	for _, e := range c.idents[req.Identity] {
		switch {
		case e.rec.State == stateCooling:
			switch {
			case e.pool != pool.Name:
			case pool.Contains(e.ip):
				cooling = append(cooling, e)
			case e.rec.MAC != "":
				coolingOutside = append(coolingOutside, e)
			}
		case e.pool == pool.Name:
			inPool = append(inPool, e)
		default:
			elsewhere = append(elsewhere, e)
		}
	}
	sortEntries(inPool)
	sortEntries(cooling)

	if !req.Shared {
		matches := func(e *entry) bool {
			return (!req.IP.IsValid() || req.IP == e.ip) && req.Allows(e.ip) && (req.MAC == nil || req.MAC.String() == e.rec.MAC)
		}
		if len(inPool) > 0 {
			e := inPool[0]
			if matches(e) {
				return a.planKeep(req, e), nil
			}
			// The identity asks for another address or MAC than it has, or
			// may no longer use its address (the pool's spec or the list was
			// edited): move it, back onto an address of its own still
			// cooling if one fits (an edit undone).
			for _, o := range cooling {
				if matches(o) {
					return a.planMove(req, e, o.ip)
				}
			}
			return a.planMove(req, e, netip.Addr{})
		}
		for _, e := range cooling {
			if matches(e) {
				if len(elsewhere) > 0 {
					// Back to the pool it left: move there, onto its own cooling address.
					return a.planMove(req, elsewhere[0], e.ip)
				}
				return a.planReclaim(req, e)
			}
		}
		if len(elsewhere) > 0 {
			// The identity now asks for another pool: move it there.
			return a.planMove(req, elsewhere[0], netip.Addr{})
		}
		// Its address, released, cools where it may no longer go (outside
		// the pool's spec or its list), or the pod asks for another address
		// with the MAC that cools there: a new address, with the identity's
		// MAC. (A claim of the MAC as new would fail its compare with the
		// identity's own MAC key on every attempt.)
		for _, e := range slices.Concat(cooling, coolingOutside) {
			if e.rec.MAC != "" && (req.MAC == nil || req.MAC.String() == e.rec.MAC) {
				return a.planNewWithMAC(req, e)
			}
		}
		if req.IP.IsValid() && req.MAC != nil {
			// Its own cooling address asked for with another MAC: taking the
			// address back keeps its MAC, so say which.
			for _, e := range cooling {
				if e.ip == req.IP && e.rec.MAC != "" {
					return nil, &NotAllocatableError{IP: req.IP, Reason: fmt.Sprintf(
						"this identity's, cooling with MAC %s for pool %s's reuse delay: ask for it with that MAC or with no %s, or for another address",
						e.rec.MAC, pool.Name, annotations.MAC)}
				}
			}
		}
		return a.planNew(req)
	}

	for _, e := range inPool {
		// The same pod, or the same reservation (an admission retried or re-invoked), keeps its member.
		if !pool.Contains(e.ip) {
			continue
		}
		if req.Pod != "" && e.rec.Pod == req.Pod ||
			req.Token != "" && (e.rec.Token == req.Token || e.hold != nil && e.hold.Token == req.Token) {
			return a.planKeep(req, e), nil
		}
	}
	// A free member: no live pod, no hold, confirmed. Start at a random one so
	// that concurrent pods of one workload spread over the free members.
	if n := len(inPool); n > 0 {
		off := rand.IntN(n)
		for i := range n {
			e := inPool[(i+off)%n]
			if e.rec.State == stateAllocated && !e.busy() && req.Allows(e.ip) && !c.inflightLocked(pool.Name, e.ip) {
				return a.planTake(req, e), nil
			}
		}
	}
	// Members this process is adding right now count too: a burst of a
	// ReplicaSet's pods admitted together would otherwise each see room
	// for one more and overshoot the cap together.
	if n := len(inPool) + len(elsewhere) + c.growing[req.Identity]; req.MaxMembers > 0 && n >= req.MaxMembers {
		return nil, &SetFullError{Identity: req.Identity, Members: n, Max: req.MaxMembers, Claiming: c.growing[req.Identity]}
	}
	p, err := a.planGrow(req, cooling)
	if err == nil {
		c.growing[req.Identity]++
		p.growing = req.Identity
	}
	return p, err
}

// planGrow adds a member to a shared identity's set: one of its own cooling
// addresses back, or a new one.
func (a *Allocator) planGrow(req *Request, cooling []*entry) (*plan, error) {
	for _, e := range cooling {
		if req.Allows(e.ip) && !a.cache.inflightLocked(req.Pool.Name, e.ip) {
			return a.planReclaim(req, e)
		}
	}
	return a.planNew(req)
}

func sortEntries(es []*entry) { sort.Slice(es, func(i, j int) bool { return es[i].ip.Less(es[j].ip) }) }

func (c *cache) inflightLocked(pool string, ip netip.Addr) bool {
	_, ok := c.inflight[pool][ip]
	return ok
}

func (a *Allocator) allocation(req *Request, e *entry) Allocation {
	mac, _ := net.ParseMAC(e.rec.MAC)
	al := Allocation{
		Pool: e.pool, IP: e.ip, Prefix: req.Pool.PrefixOf(e.ip), MAC: mac, Identity: e.rec.ID,
		Pod: e.rec.Pod, Token: e.rec.Token, Reserved: e.rec.State == stateReserved,
	}
	if e.hold != nil {
		al.Token, al.Reserved = e.hold.Token, true
	}
	return al
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain structs are encoded
	}
	return b
}

// planKeep returns an existing address, checking that it is still there and
// recording the pod that now carries it.
func (a *Allocator) planKeep(req *Request, e *entry) *plan {
	ak := a.keys.addrKey(e.pool, e.ip)
	p := &plan{result: a.allocation(req, e), reused: true}
	p.cmps = []store.Cmp{store.At(ak, e.rev)}
	p.els = []store.Op{store.Get(ak)}
	if e.hold != nil {
		// Kept under a hold's token: the hold must still be there (its lease
		// may have just expired, and another pod may take the member then).
		hk := a.keys.holdKey(e.pool, e.ip)
		p.cmps = append(p.cmps, store.At(hk, e.holdRev))
		p.els = append(p.els, store.Get(hk))
	}
	switch {
	case req.Pod != "" && e.rec.Pod != req.Pod && e.rec.State == stateAllocated:
		r := e.rec
		r.Pod, r.Since = req.Pod, a.now().Unix()
		p.then = []store.Op{store.Put(ak, encode(r), e.lease)}
		p.result.Pod = req.Pod
	case req.Token != "" && !req.Shared && e.rec.Pod == "" && e.hold == nil && e.rec.State == stateAllocated:
		// A pod being created under a token (a DaemonSet's) takes its
		// identity's unbound address: a hold marks it in use, so that a
		// release decided before the pod showed up (its DaemonSet or node
		// deleted and made again) finds it busy, until Bind confirms the pod
		// or the hold's lease ends.
		hk := a.keys.holdKey(e.pool, e.ip)
		p.cmps = append(p.cmps, store.Absent(hk))
		p.els = append(p.els, store.Get(hk))
		p.then = []store.Op{store.Put(hk, encode(hold{Token: req.Token}), store.NoLease)}
		p.needLease(a.opts.ReservationTTL, 0)
		p.result.Token, p.result.Reserved = req.Token, true
	case req.Token != "" && !req.Shared && e.rec.State == stateReserved && e.rec.Token != req.Token:
		// A pod created again under another token (a DaemonSet's, the first
		// refused after admission) gets the reservation still pending for its
		// identity, under the first pod's token: the reservation starts over, or it
		// could end before the release controller confirms the new pod, and
		// its address look free while the pod carries it. Not shorter than a
		// reservation over a cooling address has to last: the reuse delay
		// from when it was claimed.
		ttl := a.opts.ReservationTTL
		if a.now().Add(ttl).Before(time.Unix(e.rec.Since, 0).Add(req.Pool.ReuseDelay)) {
			ttl = max(ttl, req.Pool.ReuseDelay)
		}
		p.then = a.recordOps(e.pool, e.ip, e.rec)
		p.needLease(ttl, 0)
	}
	return p
}

// planTake gives a free member of a shared identity to the pod.
func (a *Allocator) planTake(req *Request, e *entry) *plan {
	ak, hk := a.keys.addrKey(e.pool, e.ip), a.keys.holdKey(e.pool, e.ip)
	p := &plan{result: a.allocation(req, e), reused: true}
	p.cmps = []store.Cmp{store.At(ak, e.rev), store.Absent(hk)}
	p.els = []store.Op{store.Get(ak), store.Get(hk)}
	if req.Pod != "" {
		r := e.rec
		r.Pod, r.Since = req.Pod, a.now().Unix()
		p.then = []store.Op{store.Put(ak, encode(r), e.lease)}
		p.result.Pod = req.Pod
	} else {
		p.then = []store.Op{store.Put(hk, encode(hold{Token: req.Token}), store.NoLease)}
		p.needLease(a.opts.ReservationTTL, 0)
		p.result.Token, p.result.Reserved = req.Token, true
	}
	a.cache.claimLocal(e.pool, e.ip, "")
	p.localIP = e.ip
	return p
}

// planReclaim takes a cooling address back for the identity that released it.
// An address whose MAC moved on with its identity takes that MAC back from
// the identity's other cooling address when it is there (a pool left and
// returned to), or else gets a new MAC.
func (a *Allocator) planReclaim(req *Request, e *entry) (*plan, error) {
	ak := a.keys.addrKey(e.pool, e.ip)
	ik := a.keys.identKey(req.Identity, req.Shared, e.ip)
	cmps := []store.Cmp{store.At(ak, e.rev), store.Absent(ik)}
	mac, newMAC := e.rec.MAC, ""
	var from *entry // the identity's other cooling address that holds its MAC
	if mac == "" && !req.Shared {
		for _, o := range a.cache.idents[req.Identity] {
			if o != e && o.rec.State == stateCooling && o.rec.MAC != "" {
				from = o
				break
			}
		}
	}
	switch {
	case from != nil:
		mac = from.rec.MAC
	case mac == "":
		var err error
		if mac, err = a.newMAC(req); err != nil {
			return nil, err
		}
		newMAC = mac
		cmps = append(cmps, store.Absent(a.keys.macKey(mac)))
	}
	p := a.claimOps(req, e.ip, mac, cmps, true)
	if from != nil {
		a.takeMAC(p, from)
	}
	if newMAC != "" {
		p.els = append(p.els, store.Get(a.keys.macKey(mac)))
	}
	a.cache.claimLocal(e.pool, e.ip, newMAC)
	p.localIP, p.localMAC = e.ip, newMAC
	return p, nil
}

// newAddr chooses an address for the request to claim: the one it asks for,
// a free one of those it lists, or a free one of the pool.
func (a *Allocator) newAddr(req *Request) (netip.Addr, error) {
	c := a.cache
	pool := req.Pool
	taken := func(ip netip.Addr) bool {
		return c.taken(pool.Name, ip) || c.takenIn(pool.Sharing, ip) != nil || c.heldElsewhere(pool.Name, ip, "") != nil
	}
	switch {
	case req.IP.IsValid():
		// Even the identity's own record there: a claim of ip would fail its
		// compare with that record on every attempt.
		if err := c.sharedConflict(pool, req.IP, ""); err != nil {
			return netip.Addr{}, err
		}
		return req.IP, nil
	case len(req.Candidates) > 0:
		off := rand.IntN(len(req.Candidates))
		for i := range req.Candidates {
			if cand := req.Candidates[(i+off)%len(req.Candidates)]; !taken(cand) {
				return cand, nil
			}
		}
		return netip.Addr{}, &ExhaustedError{Pool: pool.Name, Of: fmt.Sprintf("the %d addresses listed for %s", len(req.Candidates), req.Identity), Stats: c.candidateStats(pool, req.Candidates), Sharing: pool.Sharing}
	}
	ip, ok := c.pickFree(pool, taken)
	if !ok {
		return netip.Addr{}, &ExhaustedError{Pool: pool.Name, Stats: c.statsLocked(pool), Sharing: pool.Sharing}
	}
	return ip, nil
}

// guardSharing makes p's claim of ip in pool fail if a pool that shares
// addresses with it (Pool.Sharing) has ip meanwhile, and a lost claim learn
// that pool's record; but the pool of released, whose record of ip the plan
// itself releases (an identity moving between the pools, keeping ip).
func (a *Allocator) guardSharing(p *plan, pool *Pool, ip netip.Addr, released string) {
	for _, other := range pool.Sharing {
		if other == released {
			continue
		}
		k := a.keys.addrKey(other, ip)
		p.cmps = append(p.cmps, store.Absent(k))
		p.els = append(p.els, store.Get(k))
	}
}

// closed refuses an address of a pool being deleted to an identity that
// holds none of it: a new identity, one moving in from another pool, a set
// growing past its members. Identities that hold addresses of the pool keep
// them, take their own cooling ones back, and move within it (planMove, and
// planNewWithMAC off an address that cools outside the spec).
func closed(pool *Pool) error {
	if pool.Deleting {
		return &PoolDeletingError{Pool: pool.Name}
	}
	return nil
}

// planNew claims a new address.
func (a *Allocator) planNew(req *Request) (*plan, error) {
	c := a.cache
	pool := req.Pool
	if err := closed(pool); err != nil {
		return nil, err
	}
	ip, err := a.newAddr(req)
	if err != nil {
		return nil, err
	}
	mac, err := a.newMAC(req)
	if err != nil {
		return nil, err
	}
	p := a.claimNew(req, ip, mac)
	a.guardSharing(p, pool, ip, "")
	c.claimLocal(pool.Name, ip, mac)
	p.localIP, p.localMAC = ip, mac
	return p, nil
}

// planNewWithMAC claims a new address for a single identity whose address in
// the pool, released, cools where the request may not go (outside the pool's
// spec or its list): the identity keeps its MAC, taken from that address,
// which keeps cooling without it. As in planReclaim, which takes a MAC back
// the same way, a claim under a token is a reservation that lives at least
// the reuse delay: the identity had been released, and a pod that never
// appears does not bring it back for good.
func (a *Allocator) planNewWithMAC(req *Request, from *entry) (*plan, error) {
	c := a.cache
	pool := req.Pool
	ip, err := a.newAddr(req)
	if err != nil {
		return nil, err
	}
	p := a.claimOps(req, ip, from.rec.MAC, []store.Cmp{
		store.Absent(a.keys.addrKey(pool.Name, ip)),
		store.Absent(a.keys.identKey(req.Identity, false, ip)),
	}, true)
	a.takeMAC(p, from)
	a.guardSharing(p, pool, ip, "")
	c.claimLocal(pool.Name, ip, "")
	p.localIP = ip
	return p, nil
}

// takeMAC adds to p the taking of the MAC of from, an address of the same
// identity still cooling. from's MAC key carries from's lease, so while
// from's record is at its revision (compared) the MAC is the identity's and
// no one else's; from keeps cooling without the MAC, whose key p points to
// the new address; a lost claim learns from's state.
func (a *Allocator) takeMAC(p *plan, from *entry) {
	fk := a.keys.addrKey(from.pool, from.ip)
	cool := from.rec
	cool.MAC = ""
	p.cmps = append(p.cmps, store.At(fk, from.rev))
	p.then = append(p.then, store.Put(fk, encode(cool), from.lease))
	p.els = append(p.els, store.Get(fk))
}

// claimHeld is claimOps for a single identity that moves onto another
// address under a token (a DaemonSet's pod): the new address is written as
// allocated, with a hold for the token, as planKeep takes an unbound
// address, rather than reserved: a pod that never appears then leaves the
// identity its new address and MAC when the hold's lease ends, where a
// reservation's end would leave it nothing.
func (a *Allocator) claimHeld(req *Request, ip netip.Addr, mac string, cmps []store.Cmp) *plan {
	bare := *req
	bare.Token = ""
	p := a.claimOps(&bare, ip, mac, cmps, false)
	hk := a.keys.holdKey(req.Pool.Name, ip)
	p.cmps = append(p.cmps, store.Absent(hk))
	p.els = append(p.els, store.Get(hk))
	n := len(p.then)
	p.then = append(p.then, store.Put(hk, encode(hold{Token: req.Token}), store.NoLease))
	p.needLease(a.opts.ReservationTTL, n)
	p.result.Token, p.result.Reserved = req.Token, true
	return p
}

// recordOps writes r as the record of ip in pool, with the identity key and
// the MAC key (if it has a MAC) that point to it, all without a lease.
func (a *Allocator) recordOps(pool string, ip netip.Addr, r record) []store.Op {
	ptr := encode(pointer{Pool: pool, IP: ip.String()})
	ops := []store.Op{
		store.Put(a.keys.addrKey(pool, ip), encode(r), store.NoLease),
		store.Put(a.keys.identKey(r.ID, r.Shared, ip), ptr, store.NoLease),
	}
	if r.MAC != "" {
		ops = append(ops, store.Put(a.keys.macKey(r.MAC), ptr, store.NoLease))
	}
	return ops
}

// claimNew claims an address, identity key and MAC that are all absent.
func (a *Allocator) claimNew(req *Request, ip netip.Addr, mac string) *plan {
	p := a.claimOps(req, ip, mac, []store.Cmp{
		store.Absent(a.keys.addrKey(req.Pool.Name, ip)),
		store.Absent(a.keys.identKey(req.Identity, req.Shared, ip)),
		store.Absent(a.keys.macKey(mac)),
	}, false)
	p.els = append(p.els, store.Get(a.keys.macKey(mac)))
	return p
}

// newMAC returns the requested MAC or a random one that no address has.
func (a *Allocator) newMAC(req *Request) (string, error) {
	if req.MAC != nil {
		return req.MAC.String(), nil
	}
	for range 1000 {
		if m := req.Pool.randomMAC(rand.Uint64).String(); !a.cache.macTaken(m) {
			return m, nil
		}
	}
	if n := len(req.Pool.MACPrefix); n >= 4 {
		// At most 65,536 MACs under the prefix, nearly all taken: look at each.
		size := uint64(1) << (8 * (6 - n))
		start := rand.Uint64N(size)
		for i := range size {
			v := (start + i) % size
			if m := req.Pool.randomMAC(func() uint64 { return v << (8 * n) }).String(); !a.cache.macTaken(m) {
				return m, nil
			}
		}
	}
	return "", &MACExhaustedError{Pool: req.Pool.Name, Prefix: req.Pool.MACPrefix}
}

// planMove gives a single identity the address or MAC it now asks for (or an
// address in the pool it now asks for), releasing what it had in the same
// transaction. The MAC stays unless another is requested.
func (a *Allocator) planMove(req *Request, old *entry, back netip.Addr) (*plan, error) {
	c := a.cache
	pool := req.Pool
	ip := req.IP
	if ip.IsValid() && old.ip != ip {
		// A sharing pool has the address it moves onto. (Keeping its
		// address, in its pool or from a sharing pool into this one,
		// claims nothing new.)
		if err := c.sharedConflict(pool, ip, ""); err != nil {
			return nil, err
		}
	}
	if !ip.IsValid() {
		switch {
		case old.pool == pool.Name && req.Allows(old.ip):
			ip = old.ip
		case back.IsValid():
			ip = back
		default:
			if old.pool != pool.Name {
				if err := closed(pool); err != nil { // moving in (below, for an address asked for)
					return nil, err
				}
			}
			var err error
			if ip, err = a.newAddr(req); err != nil {
				return nil, err
			}
		}
	}
	mac := old.rec.MAC
	if req.MAC != nil {
		mac = req.MAC.String()
	}
	sameAddr := old.pool == pool.Name && old.ip == ip
	cmps := []store.Cmp{store.At(a.keys.addrKey(old.pool, old.ip), old.rev)}
	backOnCooling := false
	if !sameAddr {
		// The target is free, or the identity's own address still cooling
		// (it moves back, e.g. a rolled-back ips list).
		if t := c.get(pool.Name, ip); t != nil && t.rev > 0 && t.rec.State == stateCooling && t.rec.ID == req.Identity {
			cmps = append(cmps, store.At(a.keys.addrKey(pool.Name, ip), t.rev))
			backOnCooling = true
		} else {
			if old.pool != pool.Name {
				// Into a pool being deleted, onto an address of its that
				// the identity does not have. (A move within it gives one
				// back as it takes one.)
				if err := closed(pool); err != nil {
					return nil, err
				}
			}
			cmps = append(cmps, store.Absent(a.keys.addrKey(pool.Name, ip)))
		}
	}
	// The MAC it asks for is free, or its own still cooling with an address
	// it left (takeMAC).
	var macFrom *entry
	if mac != old.rec.MAC {
		o := c.macs[mac]
		ownCooling := o != nil && o.rev > 0 && o.rec.State == stateCooling && o.rec.ID == req.Identity
		switch {
		case ownCooling && o.pool == pool.Name && o.ip == ip:
			// The address it moves back onto: compared already.
		case ownCooling:
			macFrom = o
		default:
			cmps = append(cmps, store.Absent(a.keys.macKey(mac)))
		}
	}
	// Under a reservation token, the address it keeps (a new MAC only) is
	// rewritten as reserved: its lease must outlive the reuse delay, as the
	// cooling it would have had, should its pod never be confirmed.
	// A move onto another address under a token (a DaemonSet's pod: off
	// an address it may no longer use, or into the pool its template now
	// names) is held, not reserved, so that a pod that is never created
	// leaves the identity its new address and MAC rather than nothing.
	var p *plan
	if req.Token != "" && !sameAddr {
		p = a.claimHeld(req, ip, mac, cmps)
	} else {
		p = a.claimOps(req, ip, mac, cmps, backOnCooling || sameAddr)
	}
	if macFrom != nil {
		a.takeMAC(p, macFrom)
	} else if mac != old.rec.MAC {
		p.els = append(p.els, store.Get(a.keys.macKey(mac)))
	}
	if !sameAddr {
		// A lost claim learns the old address's state too: a cache that
		// missed its move would otherwise plan the same move again.
		p.els = append(p.els, store.Get(a.keys.addrKey(old.pool, old.ip)))
		if !backOnCooling {
			released := ""
			if old.ip == ip {
				released = old.pool
			}
			a.guardSharing(p, pool, ip, released)
		}
	}
	// Release what the identity no longer uses: its old address (with the old
	// MAC, unless kept) and its old MAC.
	delay := a.ReuseDelay(old.pool)
	n := len(p.then)
	ak, hk, mk := a.keys.addrKey(old.pool, old.ip), a.keys.holdKey(old.pool, old.ip), a.keys.macKey(old.rec.MAC)
	cool := record{ID: old.rec.ID, MAC: old.rec.MAC, State: stateCooling, Since: a.now().Unix()}
	if !sameAddr {
		if mac != old.rec.MAC {
			p.then = append(p.then, a.coolOrDelete(ak, encode(cool), delay), a.coolOrDelete(mk, encode(pointer{Pool: old.pool, IP: old.ip.String()}), delay))
		} else {
			cool.MAC = "" // the MAC moves along with the identity
			p.then = append(p.then, a.coolOrDelete(ak, encode(cool), delay))
		}
		p.then = append(p.then, store.Delete(hk))
	} else if mac != old.rec.MAC {
		p.then = append(p.then, store.Delete(mk)) // the address keeps no old MAC to cool
	}
	if delay > 0 {
		p.needLease(delay, n)
	}
	c.claimLocal(pool.Name, ip, mac)
	p.localIP, p.localMAC = ip, mac
	return p, nil
}

// coolOrDelete keeps a released key for the reuse delay (its lease is filled
// in later) or deletes it at once when there is no delay.
func (a *Allocator) coolOrDelete(key string, value []byte, delay time.Duration) store.Op {
	if delay > 0 {
		return store.Put(key, value, store.NoLease)
	}
	return store.Delete(key)
}

// ReuseDelay returns how long an address released from pool cools: the
// pool's reuse delay as last learnt (Allocate learns its request's pool,
// LearnPool any), else DefaultReuseDelay.
func (a *Allocator) ReuseDelay(pool string) time.Duration {
	if d, ok := a.delays.Load(pool); ok {
		return d.(time.Duration)
	}
	return DefaultReuseDelay
}

// LearnPool tells the allocator an IPPool's current spec, whose reuse delay
// applies when addresses leave the pool, and returns NewPool's answer. A spec
// refused for another field still gives its reuseDelaySeconds: such a pool
// keeps its claims, released as its workloads go, and they cool for the
// pool's delay, not the default (to a replica elected after the edit the
// pool was never valid).
func (a *Allocator) LearnPool(name string, spec v1alpha1.IPPoolSpec) (*Pool, error) {
	p, err := NewPool(name, spec)
	if d, ok := reuseDelayOf(spec); ok {
		a.delays.Store(name, d)
	}
	return p, err
}

// claimOps writes the address record, identity index and MAC key of a claim.
// A reservation's keys go with its lease: one that takes back an address
// still cooling (overCooling) lives at least the pool's reuse delay, so that
// if its pod never appears the address and MAC are not free to anyone
// before their cooling would have ended.
func (a *Allocator) claimOps(req *Request, ip netip.Addr, mac string, cmps []store.Cmp, overCooling bool) *plan {
	pool := req.Pool
	r := record{ID: req.Identity, Shared: req.Shared, MAC: mac, Pod: req.Pod, State: stateAllocated, Since: a.now().Unix()}
	if req.Token != "" {
		r.State, r.Token = stateReserved, req.Token
	}
	ak := a.keys.addrKey(pool.Name, ip)
	ik := a.keys.identKey(req.Identity, req.Shared, ip)
	p := &plan{cmps: cmps, then: a.recordOps(pool.Name, ip, r)}
	if req.Token != "" {
		ttl := a.opts.ReservationTTL
		if overCooling {
			ttl = max(ttl, pool.ReuseDelay)
		}
		p.needLease(ttl, 0)
	}
	p.els = []store.Op{store.Get(ak), store.Get(ik)}
	m, _ := net.ParseMAC(mac)
	p.result = Allocation{
		Pool: pool.Name, IP: ip, Prefix: pool.PrefixOf(ip), MAC: m, Identity: req.Identity,
		Pod: req.Pod, Token: req.Token, Reserved: req.Token != "", New: true,
	}
	return p
}

// commit sends p's transaction and, when it wins, folds its writes into the
// cache. The transaction carries no Else branch, which keeps every claim's
// etcd request and raft entry smaller: when it loses (rarely), what beat it
// is read then (p.els) and returned for learn.
func (a *Allocator) commit(ctx context.Context, p *plan) (won bool, beat store.TxnResult, err error) {
	res, err := a.s.Txn(ctx, p.cmps, p.then, nil)
	if err != nil {
		return false, res, err
	}
	if res.Succeeded {
		a.applyLocal(p.then, res.Revision)
		return true, res, nil
	}
	if beat, err = a.s.Txn(ctx, nil, p.els, nil); err != nil {
		return false, beat, fmt.Errorf("read what beat it: %w", err)
	}
	return false, beat, nil
}

// learn folds what a failed transaction read into the cache, and turns a
// conflict over an explicitly requested address or MAC into an error. It
// returns the newest revision among the address records it read (0: none).
func (a *Allocator) learn(ctx context.Context, req *Request, p *plan, res store.TxnResult) (int64, error) {
	var newest int64
	for i, op := range p.els {
		if i >= len(res.Gets) {
			break
		}
		kv := res.Gets[i]
		pool, ip, _, isAddr := a.keys.parseAddrKey(op.Key)
		switch {
		case isAddr && kv == nil:
			a.applyLate([]store.Event{{Type: store.EventDelete, KV: store.KV{Key: op.Key, ModRevision: res.Revision}}})
		case isAddr:
			a.applyLate([]store.Event{{Type: store.EventPut, KV: *kv}})
			newest = max(newest, kv.ModRevision)
			var r record
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				if ip != req.IP {
					continue // a pick of the allocator's: the next attempt picks again
				}
				// Not stickynet's writing (a hand edit): the cache skips it,
				// so every attempt at the address asked for would lose to it,
				// and the caller be told of contention instead.
				return 0, fmt.Errorf("claim address %s for %s in pool %s: the record %s in etcd does not decode (%w): mend or delete it", ip, req.Identity, req.Pool.Name, op.Key, err)
			}
			if !p.reused && ip == req.IP && (pool == req.Pool.Name || slices.Contains(req.Pool.Sharing, pool)) && r.ID != req.Identity {
				return 0, &ConflictError{Pool: pool, What: "address " + ip.String(), Holder: r.ID, Cooling: r.State == stateCooling}
			}
		case kv != nil:
			// An identity index or MAC key that the cache did not know: fetch the
			// address record it points to so the next plan sees it.
			ppool, pip, ok := decodePointer(kv.Value)
			if !ok {
				continue
			}
			ak := a.keys.addrKey(ppool, pip)
			got, err := a.s.Get(ctx, ak)
			if err != nil {
				return 0, fmt.Errorf("claim address for %s in pool %s: read %s: %w", req.Identity, req.Pool.Name, ak, err)
			}
			if got != nil {
				a.applyLate([]store.Event{{Type: store.EventPut, KV: *got}})
				var r record
				if json.Unmarshal(got.Value, &r) == nil && req.MAC != nil && op.Key == a.keys.macKey(req.MAC.String()) && r.ID != req.Identity {
					return 0, &ConflictError{Pool: ppool, What: "MAC " + req.MAC.String(), Holder: r.ID, Cooling: r.State == stateCooling}
				}
			}
		}
	}
	return newest, nil
}

// applyLate hands the cache what the allocator learnt from etcd's answers
// (cache.applyLate), and the reflector their revision (Reflector.Saw).
func (a *Allocator) applyLate(evs []store.Event) {
	var rev int64
	for _, ev := range evs {
		rev = max(rev, ev.KV.ModRevision)
	}
	a.refl.Saw(rev)
	a.cache.applyLate(evs)
}

// applyLocal folds a successful transaction's writes into the cache at once,
// ahead of the watch.
func (a *Allocator) applyLocal(ops []store.Op, rev int64) {
	var evs []store.Event
	for _, op := range ops {
		if _, _, _, ok := a.keys.parseAddrKey(op.Key); !ok {
			continue
		}
		switch {
		case op.IsPut():
			evs = append(evs, store.Event{Type: store.EventPut, KV: store.KV{Key: op.Key, Value: op.Value, ModRevision: rev, Lease: op.Lease}})
		case op.IsDelete():
			evs = append(evs, store.Event{Type: store.EventDelete, KV: store.KV{Key: op.Key, ModRevision: rev}})
		}
	}
	a.applyLate(evs)
}

// lease returns a shared lease that lives at least ttl from now. Reservations
// and cooling records made within a few seconds share one lease, so a claim
// costs one transaction, not a grant plus a transaction.
func (a *Allocator) lease(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if id, ok := a.bucket(ttl); ok {
		return id, nil
	}
	slack := max(ttl/4, 2*time.Second)
	// One caller grants, the others wait for it. A grant that takes longer
	// than grantWait may have gone to an etcd member gone silent, where it
	// waits until the keepalive closes the connection (about 40 s), and
	// everyone behind it failed at their deadline meanwhile: those that have
	// waited that long may also take one of the slots beside, and grant
	// their own, likely from a member that answers (a lease too many expires
	// by itself). A grant merely slow (etcd busy) gets at most as many
	// others beside it, not one for every caller.
	var beside chan struct{} // nil (never ready) until grantWait has passed
	wait := time.NewTimer(grantWait)
	defer wait.Stop()
	for waiting := true; waiting; {
		select {
		case a.granting <- struct{}{}:
			defer func() { <-a.granting }()
			waiting = false
		case beside <- struct{}{}:
			defer func() { <-a.beside }()
			waiting = false
		case <-wait.C:
			beside = a.beside
		case <-ctx.Done():
			return 0, fmt.Errorf("grant a lease of %s: %w", ttl+slack, ctx.Err())
		}
	}
	if id, ok := a.bucket(ttl); ok { // filled by a grant waited for
		return id, nil
	}
	now := a.now()
	id, err := a.s.Grant(ctx, ttl+slack)
	if err != nil {
		return 0, fmt.Errorf("grant a lease of %s: %w", ttl+slack, err)
	}
	a.leaseMu.Lock()
	if l := a.leases[ttl]; l == nil || l.expires.Before(now.Add(ttl+slack)) {
		a.leases[ttl] = &bucketLease{id: id, expires: now.Add(ttl + slack)}
	}
	a.leaseMu.Unlock()
	return id, nil
}

// grantWait is how long a caller waits for another's grant of a lease
// before it may grant its own (as the group commit gives up a slow
// request's place after a second), and grantsBeside how many such grants
// run at once.
var grantWait = time.Second

const grantsBeside = 3

// bucket returns the shared lease for ttl if it lives at least ttl from now.
func (a *Allocator) bucket(ttl time.Duration) (store.LeaseID, bool) {
	a.leaseMu.Lock()
	defer a.leaseMu.Unlock()
	if l := a.leases[ttl]; l != nil && l.expires.Sub(a.now()) >= ttl {
		return l.id, true
	}
	return 0, false
}

// fillLeases attaches the plan's leased puts to shared leases.
func (a *Allocator) fillLeases(ctx context.Context, p *plan) error {
	for ttl, idx := range p.leases {
		id, err := a.lease(ctx, ttl)
		if err != nil {
			return err
		}
		for _, i := range idx {
			p.then[i].Lease = id
		}
	}
	return nil
}

// dropLeases forgets the plan's leases (one of them ended early).
func (a *Allocator) dropLeases(p *plan) {
	a.leaseMu.Lock()
	defer a.leaseMu.Unlock()
	for ttl, idx := range p.leases {
		if l := a.leases[ttl]; l != nil && len(idx) > 0 && l.id == p.then[idx[0]].Lease {
			delete(a.leases, ttl)
		}
	}
}

// pickFree chooses a random address of the pool that is not taken.
func (c *cache) pickFree(p *Pool, taken func(netip.Addr) bool) (netip.Addr, bool) {
	size := p.Size()
	for range 64 {
		if ip := p.nth(rand.Uint64N(size)); !taken(ip) {
			return ip, true
		}
	}
	if size > 1<<22 {
		return netip.Addr{}, false
	}
	// Nearly full: scan from a random start.
	start := rand.Uint64N(size)
	for i := range size {
		if ip := p.nth((start + i) % size); !taken(ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func (c *cache) candidateStats(p *Pool, cands []netip.Addr) Stats {
	s := Stats{Total: uint64(len(cands))}
	n := 0
	for _, ip := range cands {
		if e := c.get(p.Name, ip); e != nil {
			s.count(e)
			n++
		}
	}
	s.Shared, s.Elsewhere, s.ElsewherePools = c.others(p, cands)
	if taken := n + s.Shared + s.Elsewhere; taken < len(cands) {
		s.Free = uint64(len(cands) - taken)
	}
	return s
}
