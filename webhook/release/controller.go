// Package release is stickynet's release controller (leader-elected, in the
// webhook binary). It reconciles the allocator's addresses with the cluster:
// it confirms reservations when their pods appear, records which pod carries
// which address, frees addresses by the retention rules of DESIGN.md
// ("Identity and stickiness") — never one that a live pod carries — keeps
// IPPool status counts current, re-resolves pods' bandwidth annotations
// when BandwidthPolicies change, and has the scheduler try again the pods it
// found no node for when their pool's or network's nodeSelector changes.
package release

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/workload"
	"github.com/stickynet/stickynet/webhook/policy"
)

// allocator is what the controller needs from the IPAM core.
type allocator interface {
	List(match func(ipam.Entry) bool) []ipam.Entry
	Bind(ctx context.Context, b ipam.Binding) error
	Rebind(ctx context.Context, pool string, ip netip.Addr, pod, to string) error
	Release(ctx context.Context, pool string, ip netip.Addr, identity string, force bool) (bool, error)
	Adopt(ctx context.Context, ad ipam.Adoption) (bool, error)
	LearnPool(name string, spec v1alpha1.IPPoolSpec) (*ipam.Pool, error)
	Stats(p *ipam.Pool) ipam.Stats
	PoolKeys(ctx context.Context, pool string) ([]string, error)
}

var _ allocator = (*ipam.Allocator)(nil)

// Controller reconciles addresses with the cluster. It runs on the leader
// only, a new Controller for each term as leader.
type Controller struct {
	Client    client.Client // cached reads; writes
	APIReader client.Reader // uncached reads that confirm a workload or pod is gone
	Cache     cache.Cache   // informers whose events trigger a reconcile (nil: periodic only)
	Alloc     allocator
	Recorder  events.EventRecorder
	Metrics   *Metrics // nil: none
	// Grace is how long after its last change an address is left alone before
	// it may be unbound or released, covering pods still being admitted (the
	// admission chain runs before the pod exists). Default workload.DefaultGrace.
	Grace time.Duration
	// Resync is the period of the full reconcile without events. Default 30 s.
	Resync time.Duration
	// MinInterval spaces event-triggered reconciles. Default 200 ms.
	MinInterval time.Duration
	// NodeAgent is the node agents' DaemonSet, whose stale resources each
	// pass withdraws from the Nodes it does not select (noderesources.go).
	// Empty: none.
	NodeAgent types.NamespacedName
	// Ready, if set, is closed once the allocator's cache has its first list:
	// before that the cache knows no address and pool status would read empty.
	Ready <-chan struct{}

	trigger chan struct{}
	// dueTimer triggers the pass due when an address's grace ends; each
	// pass replaces it with its own.
	dueTimer *time.Timer
	mu       sync.Mutex
	seen     map[types.UID]bool   // pods already given an Assigned event
	warned   map[types.UID]string // the last StickyAddressConflict of each pod
	offNet   map[types.UID]string // the address each pod off stickynet's network was last told about
	// ingressWarned counts, by BandwidthPolicy, the SR-IOV pods its last
	// IngressNotEnforced event named.
	ingressWarned map[types.UID]int
	// goneSince is when each object ("type ns/name") was first found gone.
	goneSince map[string]time.Time
	// placements are the nodeSelectors the term's last pass saw (requeue).
	placements placements
	// staleRetry is when each node whose stale resources could not be
	// withdrawn is tried again (noderesources.go).
	staleRetry map[string]time.Time
}

var _ manager.Runnable = (*Controller)(nil)

// Start runs the controller until ctx ends.
func (c *Controller) Start(ctx context.Context) error {
	log := klog.FromContext(ctx).WithName("release")
	ctx = klog.NewContext(ctx, log)
	if c.Grace == 0 {
		c.Grace = workload.DefaultGrace
	}
	if c.Resync == 0 {
		c.Resync = 30 * time.Second
	}
	if c.MinInterval == 0 {
		c.MinInterval = 200 * time.Millisecond
	}
	c.trigger = make(chan struct{}, 1)
	if c.Cache != nil {
		for _, obj := range []client.Object{
			&corev1.Pod{}, &appsv1.StatefulSet{}, &appsv1.Deployment{}, &appsv1.ReplicaSet{}, &appsv1.DaemonSet{},
			&corev1.Node{}, &v1alpha1.IPPool{}, &v1alpha1.BandwidthPolicy{}, &v1alpha1.SriovNetwork{},
		} {
			inf, err := c.Cache.GetInformer(ctx, obj)
			if err != nil {
				if ctx.Err() != nil { // the term ended while it started
					return nil
				}
				return fmt.Errorf("informer for %T: %w", obj, err)
			}
			reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
				AddFunc: func(any) { c.Trigger() },
				UpdateFunc: func(o, n any) {
					if relevantUpdate(o, n) {
						c.Trigger()
					}
				},
				DeleteFunc: func(any) { c.Trigger() },
			})
			if err != nil {
				return fmt.Errorf("watch %T: %w", obj, err)
			}
			// The informers outlive a term as leader: a replica that leads
			// again runs a new Controller on them.
			defer func() { _ = inf.RemoveEventHandler(reg) }()
		}
		if !c.Cache.WaitForCacheSync(ctx) {
			if ctx.Err() != nil {
				return nil
			}
			return errors.New("caches did not sync")
		}
	}
	if c.Ready != nil {
		select {
		case <-c.Ready:
		case <-ctx.Done():
			return nil
		}
	}
	// The gauge is the leader's: a replica whose term ended would report its
	// last count for good, and an alert on it never clear.
	defer c.Metrics.offNetwork(0)
	tick := time.NewTicker(c.Resync)
	defer tick.Stop()
	defer func() { // Reconcile, which sets it, runs on this goroutine
		if c.dueTimer != nil {
			c.dueTimer.Stop()
		}
	}()
	c.Trigger()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		began := time.Now()
		err := c.Reconcile(rctx)
		took := time.Since(began)
		c.Metrics.pass(took, err)
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Error(brief(err), "Reconcile failed; retrying")
			time.AfterFunc(time.Second, c.Trigger)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.pause(took)):
		}
	}
}

// pause is the rest after a reconcile that took d before the next one: at
// least MinInterval, and four times d, so that the full passes of a large
// cluster under a stream of pod events take at most a fifth of a core from
// the admissions the same process serves; but at most maxPause: a pass that
// took long waiting (etcd unreachable until the pass's deadline) used no
// CPU, and four times its length would leave reservations unconfirmed for
// minutes after etcd is back, as long as the reservation TTL.
func (c *Controller) pause(d time.Duration) time.Duration {
	return min(max(c.MinInterval, 4*d), maxPause)
}

// maxPause bounds the rest between passes (pause).
const maxPause = 10 * time.Second

// relevantUpdate reports whether an update can change what a pass does. A
// pass reads specs, labels, annotations, owners, deletions and whether a pod
// has terminated; status alone (node heartbeats, the status of workloads and
// running pods, the IPPool status a pass writes itself) would keep passes
// running back to back in a large cluster, each O(pods + addresses). The
// periodic resync catches whatever this leaves out.
func relevantUpdate(oldObj, newObj any) bool {
	o, ok := oldObj.(client.Object)
	n, ok2 := newObj.(client.Object)
	if !ok || !ok2 {
		return true
	}
	if o.GetGeneration() != n.GetGeneration() || !o.GetDeletionTimestamp().Equal(n.GetDeletionTimestamp()) ||
		!maps.Equal(o.GetLabels(), n.GetLabels()) || !maps.Equal(o.GetAnnotations(), n.GetAnnotations()) ||
		!slices.EqualFunc(o.GetOwnerReferences(), n.GetOwnerReferences(), func(a, b metav1.OwnerReference) bool { return a.UID == b.UID }) {
		return true
	}
	if op, isPod := o.(*corev1.Pod); isPod {
		np, _ := n.(*corev1.Pod)
		return np == nil || workload.Terminated(op) != workload.Terminated(np)
	}
	return false
}

// Trigger asks for a reconcile soon.
func (c *Controller) Trigger() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// podInfo is a pod that carries an assignment.
type podInfo struct {
	pod      *corev1.Pod
	key      string // ns/name
	identity string
	pool     string
	ip       netip.Addr
	token    string
	live     bool // not terminal: its sandbox may still use the address
}

func podsWithAssignment(list []corev1.Pod) []podInfo {
	var out []podInfo
	for i := range list {
		p := &list[i]
		ann := p.Annotations
		id, ipStr := ann[annotations.Identity], ann[annotations.AssignedIP]
		if id == "" || ipStr == "" {
			continue
		}
		pfx, err := annotations.ParsePrefixes(annotations.AssignedIP, ipStr)
		if err != nil || len(pfx) == 0 {
			continue
		}
		if p.Spec.HostNetwork || annotations.OtherNamespace(id, p.Namespace) != "" {
			// Output annotations copied from another pod's manifest (into
			// a host-network pod, or a namespace the webhook does not
			// serve, where nothing strips them): not a carrier of them.
			continue
		}
		out = append(out, podInfo{
			pod: p, key: p.Namespace + "/" + p.Name, identity: id, pool: ann[annotations.AssignedPool],
			ip: pfx[0].Addr(), token: ann[annotations.Reservation],
			live: !workload.Terminated(p),
		})
	}
	return out
}

// addrsInUse are the addresses that live pods have, by their status
// (podIPs, as the runtime reported what the CNI plugin set up), whatever
// their annotations say: annotations edited after admission (an identity
// taken off by hand, a tool that rewrites them) must not free an address
// under the pod that uses it. Host-network pods have the node's. Each is
// keyed by the pool the pod's annotations name, or none.
type addrsInUse map[string]bool

func addressesInUse(list []corev1.Pod) addrsInUse {
	out := addrsInUse{}
	for i := range list {
		for _, a := range statusAddrs(&list[i]) {
			out[addrKey(list[i].Annotations[annotations.AssignedPool], a)] = true
		}
	}
	return out
}

// has reports whether a live pod has e's address, unless that pod's
// annotations name another pool: an address that two pools gave out (see
// ipam.Pool.Sharing) is not held in one for a pod of the other, which kept
// it from being freed while that pod lived, and the first pool's deletion
// waiting on it.
func (u addrsInUse) has(e ipam.Entry) bool {
	return u[addrKey(e.Pool, e.IP)] || u[addrKey("", e.IP)]
}

// statusAddrs returns the addresses p has by its status while it is live
// (none for a host-network pod, which has the node's).
func statusAddrs(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork || workload.Terminated(p) {
		return nil
	}
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// Reconcile runs one full pass.
func (c *Controller) Reconcile(ctx context.Context) error {
	// The pods are read only (a patch goes to a fresh object): no deep copy
	// of every pod in the cluster on each pass.
	podList := &corev1.PodList{}
	if err := c.Client.List(ctx, podList, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	pods := podsWithAssignment(podList.Items)
	inUse := addressesInUse(podList.Items)
	byToken := map[string]*podInfo{}
	byAddr := map[string]*podInfo{} // pool/ip → live pod carrying it
	byKey := map[string]*podInfo{}
	for i := range pods {
		p := &pods[i]
		byKey[p.key] = p
		if p.token != "" {
			byToken[p.token] = p
		}
		if p.live {
			byAddr[addrKey(p.pool, p.ip)] = p
		}
	}

	// The allocator learns each pool's spec before anything is released:
	// a freshly elected leader has admitted nothing, and would otherwise
	// cool released addresses for the default reuse delay, not the pool's.
	pools := &v1alpha1.IPPoolList{}
	if err := c.Client.List(ctx, pools); err != nil {
		return fmt.Errorf("list IPPools: %w", err)
	}
	specs := make(map[string]poolSpec, len(pools.Items))
	for i := range pools.Items {
		p, err := c.Alloc.LearnPool(pools.Items[i].Name, pools.Items[i].Spec)
		var shared netip.Addr
		if err == nil {
			p.Sharing, shared = ipam.Sharing(p, pools.Items)
		}
		specs[pools.Items[i].Name] = poolSpec{pool: p, err: err, shared: shared}
	}

	now := time.Now()
	c.forgetGone(now)
	reads, cancel := context.WithTimeout(ctx, carriedBudget)
	defer cancel()
	ps := &pass{now: now, grace: c.Grace, byToken: byToken, byKey: byKey, inUse: inUse, specs: specs, released: map[string][]releasedAddr{}, reads: reads}
	// An address left alone for its grace gets a pass when the grace is
	// over, whether or not an event comes.
	defer func() {
		if c.dueTimer != nil {
			c.dueTimer.Stop()
			c.dueTimer = nil
		}
		if !ps.due.IsZero() {
			c.dueTimer = time.AfterFunc(time.Until(ps.due), c.Trigger)
		}
	}()
	held := map[string]int{} // pool → its addresses in the cache, cooling ones too
	entries := c.Alloc.List(func(e ipam.Entry) bool { held[e.Pool]++; return !e.Cooling })
	byIdentity := map[string][]int{} // identity → its entries' indices
	var identities []string
	carriers := make([]*podInfo, len(entries))
	var unseen []ipam.Entry // bound, past the grace, and no pod in the cache carries it
	for i, e := range entries {
		if _, ok := byIdentity[e.Identity]; !ok {
			identities = append(identities, e.Identity)
		}
		byIdentity[e.Identity] = append(byIdentity[e.Identity], i)
		carrier := byAddr[addrKey(e.Pool, e.IP)]
		if carrier != nil && carrier.identity != e.Identity {
			carrier = nil // a pod that claims an address it does not own
		}
		carriers[i] = carrier
		if carrier == nil && e.Pod != "" && !e.Reserved && !e.Held && !inUse.has(e) && now.Sub(e.Since) >= c.Grace {
			unseen = append(unseen, e)
		}
	}
	// The cache holds only pods labelled stickynet.io/managed: ask the API
	// server about the others before believing them gone.
	var err error
	if ps.carried, err = c.stillCarried(ctx, ps, unseen); err != nil {
		ps.fail(err)
	}
	// Each identity's entries are settled in order, by one worker (a
	// Deployment's surplus depends on the members released before it);
	// identities in parallel, settleWorkers at a time: each step is an etcd
	// transaction, and one by one the 2,000 addresses of a deleted workload
	// took seconds per pass.
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(settleWorkers, len(identities)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				members := make([]ipam.Entry, len(byIdentity[id]))
				for j, i := range byIdentity[id] {
					members[j] = entries[i]
				}
				for _, i := range byIdentity[id] {
					c.settle(ctx, ps, entries[i], carriers[i], &members)
				}
			}
		}()
	}
	for _, id := range identities {
		work <- id
	}
	close(work)
	wg.Wait()
	if n := ps.unasked.Load(); n > 0 {
		klog.FromContext(ctx).Info("Not every unbound address whose pod may be back was checked with the API server in this pass; they are kept, and the next pass checks them",
			"unchecked", n, "budget", carriedBudget)
		c.Trigger()
	}
	errs := ps.errs
	c.announce(ctx, ps.released)
	if err := c.adopt(ctx, ps, pods, specs); err != nil {
		errs = append(errs, err)
	}
	unobserved := unobservedPools(pools.Items) // before updatePools writes their status
	if err := c.updatePools(ctx, pools.Items, specs, held); err != nil {
		errs = append(errs, err)
	}
	if err := c.reresolveBandwidth(ctx, pods); err != nil {
		errs = append(errs, err)
	}
	if err := c.requeue(ctx, pods, pools.Items, unobserved); err != nil {
		errs = append(errs, err)
	}
	c.withdrawStale(ctx)
	c.offNetwork(pods)
	c.forget(pods)
	return errors.Join(errs...)
}

// settle does what a pass owes one address: confirm or bind it to the pod
// that carries it, unbind it from a pod that is gone, or release it when the
// identity's rules say so. members are the identity's addresses not yet
// released in this pass.
func (c *Controller) settle(ctx context.Context, ps *pass, e ipam.Entry, carrier *podInfo, members *[]ipam.Entry) {
	switch {
	case e.Reserved || e.Held:
		// Confirm a reservation when its pod appears; unconfirmed ones expire by themselves.
		if p := ps.byToken[e.Token]; p != nil && p.identity == e.Identity && p.ip == e.IP && p.pool == e.Pool {
			if err := c.Alloc.Bind(ctx, ipam.Binding{Pool: e.Pool, IP: e.IP, Identity: e.Identity, Pod: p.key, Token: e.Token}); err != nil {
				if lost := (*ipam.LostError)(nil); errors.As(err, &lost) {
					// The reservation expired or the address went elsewhere
					// meanwhile: adopt, later in this pass, records it again
					// for the pod if no one has it, else warns the pod.
					klog.FromContext(ctx).V(1).Info("Reservation not confirmed", "pod", p.key, "reason", err)
					return
				}
				ps.fail(err) // etcd did not answer: the next pass tries again
				return
			}
			c.assigned(p)
		}
		return
	case e.Pod == "" && carrier != nil:
		if err := c.Alloc.Bind(ctx, ipam.Binding{Pool: e.Pool, IP: e.IP, Identity: e.Identity, Pod: carrier.key}); err != nil {
			ps.fail(err)
		} else {
			c.assigned(carrier)
		}
		return
	case carrier == nil && ps.inUse.has(e):
		// A live pod has the address, by its status, while no pod's
		// annotations say so (they were edited after admission): it is
		// neither unbound nor freed under that pod.
		klog.FromContext(ctx).V(1).Info("A live pod has the address but not its annotations; keeping it", "pool", e.Pool, "ip", e.IP, "identity", e.Identity, "boundTo", e.Pod)
		return
	case e.Pod != "" && (carrier == nil || carrier.key != e.Pod):
		// The pod the address is bound to is gone or no longer carries it,
		// as the (synced) pod cache sees it; the grace covers a pod that is
		// still being admitted or not yet in the cache.
		if ps.waiting(e.Since) {
			return
		}
		if bp := ps.byKey[e.Pod]; bp != nil && bp.live && bp.identity == e.Identity && bp.pool == e.Pool && bp.ip == e.IP {
			return // the bound pod carries it still; another that does too is a conflict (adopt)
		}
		if carrier == nil {
			if live, known := ps.carried[addrKey(e.Pool, e.IP)]; live || !known {
				return // carried by a pod without the label, or not known: the API server did not answer
			}
		}
		if carrier != nil {
			// Another live pod of the identity carries it: bound to that pod
			// at once, a shared member never looks free to a third.
			if err := c.Alloc.Rebind(ctx, e.Pool, e.IP, e.Pod, carrier.key); err != nil {
				ps.fail(err)
			} else {
				c.assigned(carrier)
			}
			return
		}
		if err := c.Alloc.Rebind(ctx, e.Pool, e.IP, e.Pod, ""); err != nil {
			ps.fail(err)
		}
		ps.again(ps.now)
		// Freeing waits for a later pass, a grace after the unbind (which
		// restarts Since). A pod re-created under the same name between
		// the API server's answer above and the unbind leaves no trace in
		// the state (its admission keeps the record as it is), so this
		// unbind may be wrong; by then the pod is in the cache and is
		// bound again, or its admission (now under another pod than the
		// record's) has changed the record, which fails Release's
		// compare-and-swap.
		return
	case e.Pod != "":
		// Bound at admission (a named pod): announced by the first pass
		// that sees the pod, not again by a new leader, whose memory of
		// announced pods starts empty, for pods long running.
		if p := ps.byKey[e.Pod]; p != nil && ps.now.Sub(p.pod.CreationTimestamp.Time) < announceWithin {
			c.assigned(p)
		}
		return
	}
	if e.Held {
		return
	}
	if ps.waiting(e.Since) {
		return
	}
	why, err := c.releaseReason(ctx, ps, e, *members)
	if err != nil {
		ps.fail(err)
		return
	}
	if why == "" {
		return
	}
	released, err := c.Alloc.Release(ctx, e.Pool, e.IP, e.Identity, false)
	if err != nil {
		if !errors.Is(err, ipam.ErrInUse) {
			ps.fail(err)
		}
		return
	}
	if released { // else another freed it first: an admission (which logs it), a leader before this one
		klog.FromContext(ctx).Info("Released address", "pool", e.Pool, "ip", e.IP, "identity", e.Identity, "reason", why)
		kind, _, _ := strings.Cut(e.Identity, "/")
		c.Metrics.release(kind)
		ps.release(e, why)
	}
	ms := *members
	for i := range ms {
		if ms[i].IP == e.IP && ms[i].Pool == e.Pool {
			*members = append(ms[:i:i], ms[i+1:]...)
			break
		}
	}
}

// settleWorkers is how many identities a pass settles at once.
const settleWorkers = 16

// pass is what one Reconcile shares between the identities it settles.
type pass struct {
	now            time.Time
	grace          time.Duration // Controller.Grace
	byToken, byKey map[string]*podInfo
	inUse          addrsInUse      // read-only
	carried        map[string]bool // from stillCarried, read-only
	specs          map[string]poolSpec
	reads          context.Context // ends carriedBudget after the pass starts: see readsOver
	unasked        atomic.Int64    // unbound addresses kept as unlessCarried ran out of reads

	mu       sync.Mutex
	errs     []error
	due      time.Time                 // when the next pass is due for an address in its grace
	released map[string][]releasedAddr // pool → addresses freed in this pass
	gone     map[string]*goneAnswer    // "type ns/name" → the API server's answer
}

// outside reports whether e's pool, as the pass read it, no longer allows
// e's address (its spec was edited since the address was claimed).
func (p *pass) outside(e ipam.Entry) bool {
	pool := p.specs[e.Pool].pool
	return pool != nil && !pool.Contains(e.IP)
}

// goneAnswer is the API server's answer to whether an object is gone, once
// ready is closed.
type goneAnswer struct {
	ready chan struct{}
	gone  bool
}

// askGone returns ask = false when the API server has said in this pass
// that what is gone. Otherwise the caller asks it, and passes the answer to
// done; callers for the same object meanwhile wait for that answer, and ask
// again themselves unless it is gone.
func (p *pass) askGone(what string) (ask bool, done func(gone bool)) {
	p.mu.Lock()
	a, asked := p.gone[what]
	if !asked {
		if p.gone == nil {
			p.gone = map[string]*goneAnswer{}
		}
		a = &goneAnswer{ready: make(chan struct{})}
		p.gone[what] = a
	}
	p.mu.Unlock()
	if asked {
		<-a.ready
		if a.gone {
			return false, nil
		}
		return true, func(bool) {}
	}
	return true, func(gone bool) {
		a.gone = gone
		close(a.ready)
	}
}

// readsOver reports whether the pass has spent its time for asking the API
// server about pods (carriedBudget), while ctx, the pass's own, goes on.
func (p *pass) readsOver(ctx context.Context) bool {
	return p.reads.Err() != nil && ctx.Err() == nil
}

func (p *pass) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.errs = append(p.errs, err)
}

// waiting reports whether a change at since is still in its grace, and if
// so asks for a pass when the grace is over.
func (p *pass) waiting(since time.Time) bool {
	if p.now.Sub(since) >= p.grace {
		return false
	}
	p.again(since)
	return true
}

// again asks for a pass when the grace of a change at since is over.
func (p *pass) again(since time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := since.Add(p.grace); p.due.IsZero() || d.Before(p.due) {
		p.due = d
	}
}

func (p *pass) release(e ipam.Entry, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.released[e.Pool] = append(p.released[e.Pool], releasedAddr{e, why})
}

// adopt records the addresses that live pods carry but the state does not
// hold: a reservation that expired before its pod was confirmed (the leader
// was away longer than --reservation-ttl), or state lost or restored from an
// older backup. Left so, the address would look free and go to a second pod.
// A pod gets its address and MAC recorded again for its identity when no one
// holds them; when someone else does, or they cannot be recorded, the pod
// gets a Warning event saying why (once while the reason lasts). Pods younger
// than the grace are left to their admission and confirmation; one whose
// address nobody holds gets a pass when its grace ends.
func (c *Controller) adopt(ctx context.Context, ps *pass, pods []podInfo, specs map[string]poolSpec) error {
	holders := map[string]ipam.Entry{}
	for _, e := range c.Alloc.List(func(ipam.Entry) bool { return true }) {
		holders[addrKey(e.Pool, e.IP)] = e
	}
	log := klog.FromContext(ctx)
	var errs []error
	for i := range pods {
		p := &pods[i]
		if !p.live {
			continue
		}
		key := addrKey(p.pool, p.ip)
		h, held := holders[key]
		if ps.now.Sub(p.pod.CreationTimestamp.Time) < ps.grace {
			if !held {
				ps.again(p.pod.CreationTimestamp.Time) // a pass when its grace ends
			}
			continue
		}
		if held {
			if who := otherHolder(h, p, ps.byKey); who != "" {
				c.warn(p, "%s of pool %s, which this pod carries as %s, is %s; recreate the pod to get an address of its own", p.ip, p.pool, p.identity, who)
			} else {
				c.unwarn(p)
			}
			continue
		}
		pool := specs[p.pool].pool
		if pool == nil {
			why := fmt.Sprintf("IPPool %q does not exist", p.pool)
			if err := specs[p.pool].err; err != nil {
				why = err.Error()
			}
			c.warn(p, "%s, which this pod carries as %s, is not recorded and cannot be: %s", p.ip, p.identity, why)
			continue
		}
		mac, err := annotations.ParseMAC(annotations.AssignedMAC, p.pod.Annotations[annotations.AssignedMAC])
		var id annotations.ID
		if err == nil {
			id, err = annotations.ParseIdentity(p.identity)
		}
		if err != nil {
			c.warn(p, "%s of pool %s, which this pod carries, is not recorded and cannot be: %v", p.ip, p.pool, err)
			continue
		}
		ok, err := c.Alloc.Adopt(ctx, ipam.Adoption{Pool: pool, Identity: p.identity, Shared: id.Shared(), Pod: p.key, IP: p.ip, MAC: mac})
		switch {
		case errors.Is(err, ipam.ErrNotAdoptable):
			c.warn(p, "%s of pool %s, which this pod carries as %s, is not recorded and %v; recreate the pod to get an address of its own", p.ip, p.pool, p.identity, err)
		case err != nil:
			errs = append(errs, err)
		case ok:
			c.unwarn(p)
			// A second live pod that carries the address conflicts with this one.
			holders[key] = ipam.Entry{Allocation: ipam.Allocation{Pool: p.pool, IP: p.ip, Identity: p.identity, Pod: p.key}}
			log.Info("Recorded an address a pod carries that the state did not hold", "pod", p.key, "pool", p.pool, "ip", p.ip, "mac", mac, "identity", p.identity)
			c.event(p.pod, corev1.EventTypeNormal, "StickyAddressRecorded",
				"%s with MAC %s of pool %s was not in stickynet's state (a reservation that expired before the pod was confirmed, or lost state); recorded again for %s", p.ip, mac, p.pool, p.identity)
		}
	}
	return errors.Join(errs...)
}

// otherHolder says who other than live pod p holds the address p carries,
// as its record h says, or "" when the record is p's: the same identity,
// not cooling, not reserved under another pod's token, and not bound to
// another live pod (an identity's record may still name its previous pod,
// which is gone, until the pass unbinds it). byKey holds the pass's pods.
func otherHolder(h ipam.Entry, p *podInfo, byKey map[string]*podInfo) string {
	switch {
	case h.Cooling:
		return "released by " + h.Identity + " and cooling down"
	case h.Identity != p.identity:
		return "held by " + h.Identity
	case (h.Reserved || h.Held) && h.Token != p.token:
		return "reserved for another pod of " + h.Identity + " that is being created"
	case h.Pod != "" && h.Pod != p.key && byKey[h.Pod] != nil && byKey[h.Pod].live:
		return "carried by pod " + h.Pod + " of " + h.Identity + " as well"
	}
	return ""
}

// unwarn forgets p's last StickyAddressConflict: its address is its own
// now, and a conflict that comes back is told again.
func (c *Controller) unwarn(p *podInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.warned, p.pod.UID)
}

// warn emits a StickyAddressConflict Warning on p's pod, unless the last
// one it got said the same and the conflict has lasted since.
func (c *Controller) warn(p *podInfo, format string, args ...any) {
	if msg := fmt.Sprintf(format, args...); c.toldAnew(&c.warned, p.pod.UID, msg) {
		c.event(p.pod, corev1.EventTypeWarning, "StickyAddressConflict", "%s", msg)
	}
}

// toldAnew records what (a warning, or what it is about) as the last one
// told to pod uid in memory m, and reports whether it differs from the one
// before: a warning is given again only when it changes.
func (c *Controller) toldAnew(m *map[types.UID]string, uid types.UID, what string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[types.UID]string{}
	}
	if (*m)[uid] == what {
		return false
	}
	(*m)[uid] = what
	return true
}

// poolSpec is an IPPool's spec as the allocator takes it, or why it cannot
// take it, and the first address it shares with another pool (Sharing); a
// pass parses each once.
type poolSpec struct {
	pool   *ipam.Pool
	err    error
	shared netip.Addr
}

// addrKey names an address in the maps of a pass: "pool/ip".
func addrKey(pool string, ip netip.Addr) string { return pool + "/" + ip.String() }

// unlabelled selects the pods the webhook's pod cache leaves out: those
// without stickynet.io/managed=true.
var unlabelled = func() client.MatchingLabelsSelector {
	r, err := labels.NewRequirement(annotations.ManagedLabel, selection.NotEquals, []string{"true"})
	if err != nil {
		panic(err)
	}
	return client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*r)}
}()

// listThreshold is how many pods of one namespace stillCarried asks the API
// server about one by one; with more, it lists the namespace's pods without
// the label once (a workload deleted at once frees its addresses in one
// request).
const listThreshold = 8

// stillCarried asks the API server (not the cache) whether the pods the
// entries are bound to exist, have not terminated and still carry their
// addresses, as when someone removed a pod's stickynet.io/managed label. It
// answers by address (pool/ip): true while its pod carries it, false when
// not; an address whose pod could not be read is missing from the answer.
func (c *Controller) stillCarried(ctx context.Context, ps *pass, entries []ipam.Entry) (map[string]bool, error) {
	out := make(map[string]bool, len(entries))
	if c.APIReader == nil {
		for _, e := range entries {
			out[addrKey(e.Pool, e.IP)] = false
		}
		return out, nil
	}
	byNS := map[string][]ipam.Entry{}
	for _, e := range entries {
		ns, _, _ := strings.Cut(e.Pod, "/")
		byNS[ns] = append(byNS[ns], e)
	}
	var errs []error
	left := 0
	for ns, es := range byNS { // in random order: each pass asks about others first
		if ps.readsOver(ctx) {
			left += len(es)
			continue
		}
		pods, err := c.readPods(ps.reads, ns, es)
		if err != nil && ps.readsOver(ctx) {
			left += len(es)
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range es {
			addr := addrKey(e.Pool, e.IP)
			out[addr] = false
			p := pods[e.Pod]
			if p == nil {
				continue
			}
			for _, info := range podsWithAssignment([]corev1.Pod{*p}) {
				if info.live && info.identity == e.Identity && info.ip == e.IP {
					klog.FromContext(ctx).V(1).Info("Pod carries its address but lacks the label; keeping the address bound",
						"pod", e.Pod, "label", annotations.ManagedLabel, "ip", e.IP)
					out[addr] = true
				}
			}
			if slices.Contains(statusAddrs(p), e.IP) {
				out[addr] = true // its annotations edited too, but it has the address
			}
		}
	}
	if left > 0 {
		klog.FromContext(ctx).Info("Not every address whose pod the cache lacks was checked with the API server in this pass; they stay bound, and the next pass checks them",
			"unchecked", left, "checked", len(entries)-left, "budget", carriedBudget)
		c.Trigger()
	}
	return out, errors.Join(errs...)
}

// unlessCarried is why e is freed, unless the API server has pod name (of
// e's identity's namespace) carrying e's address ("" then). e is unbound and
// was judged from the cache, which holds only labelled pods and may lag: a
// pod made again under its name (an operator's, whose admission writes
// nothing) that the cache had not seen a grace after the unbind lost its
// address to cooling, to be handed to another after the reuse delay.
// releaseReason asks it for the bare pod of a pod identity, and for a
// StatefulSet ordinal's pod when the StatefulSet was scaled below it (the
// set scaled up again meanwhile, the cache behind on both); not for the
// ordinals of a deleted StatefulSet, where asking would cost a read per
// ordinal and no pod of theirs comes back.
//
// Its reads share the pass's carriedBudget with stillCarried's: once that is
// spent, e is kept until a later pass asks.
func (c *Controller) unlessCarried(ctx context.Context, ps *pass, e ipam.Entry, name, why string) (string, error) {
	if ps.readsOver(ctx) {
		ps.unasked.Add(1)
		return "", nil
	}
	carried, err := c.namedPodCarries(ps.reads, e, name)
	if err != nil && ps.readsOver(ctx) {
		ps.unasked.Add(1)
		return "", nil
	}
	if err != nil || carried {
		return "", err
	}
	return why, nil
}

// namedPodCarries asks the API server whether pod name carries e's address
// (unlessCarried).
func (c *Controller) namedPodCarries(ctx context.Context, e ipam.Entry, name string) (bool, error) {
	id, err := annotations.ParseIdentity(e.Identity)
	if err != nil || c.APIReader == nil {
		return false, nil
	}
	p := &corev1.Pod{}
	if err := c.APIReader.Get(ctx, client.ObjectKey{Namespace: id.Namespace, Name: name}, p); apierrors.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("read pod %s/%s before freeing %s: %w", id.Namespace, name, e.IP, err)
	}
	for _, info := range podsWithAssignment([]corev1.Pod{*p}) {
		if info.live && info.identity == e.Identity && info.ip == e.IP {
			klog.FromContext(ctx).Info("Pod carries the address the cache had it without; keeping it", "pod", klog.KObj(p), "ip", e.IP, "identity", e.Identity)
			return true, nil
		}
	}
	return !workload.Terminated(p) && slices.Contains(statusAddrs(p), e.IP), nil
}

// carriedBudget bounds the time a pass spends asking the API server about
// pods the cache lacks: stillCarried's about bound addresses, then
// unlessCarried's about unbound ones. Asking about the pods of thousands of
// emptied namespaces, or thousands of deleted bare or Job pods, one by one
// (at --kube-api-qps, or from a slow API server) could take the pass's
// whole deadline, every pass: the pass then confirmed no reservation that
// sorted after them, and they expired under their running pods, their
// addresses free for others. The addresses not asked about stay bound, or
// unbound and kept, until a later pass asks.
var carriedBudget = 30 * time.Second

// readPods reads from the API server the pods of namespace ns that the
// entries are bound to, by ns/name; a pod that does not exist is missing.
// With more than listThreshold pods to ask about, it lists instead the
// namespace's pods without the label, the ones the cache does not have. A
// labelled pod missing from the cache was deleted (a DELETED event took it
// out), or is one re-created under the same name that the cache has not
// seen yet: settle's unbind of its address is then undone once it has (see
// settle). Listing every pod of a large namespace at each pass while a big
// workload went away cost the API server, and the replica, thousands of
// pods' encoding and decoding per pass.
func (c *Controller) readPods(ctx context.Context, ns string, entries []ipam.Entry) (map[string]*corev1.Pod, error) {
	pods := map[string]*corev1.Pod{}
	if len(entries) > listThreshold {
		list := &corev1.PodList{}
		if err := c.APIReader.List(ctx, list, client.InNamespace(ns), unlabelled); err != nil {
			return nil, fmt.Errorf("list pods in %s: %w", ns, err)
		}
		for i := range list.Items {
			p := &list.Items[i]
			pods[p.Namespace+"/"+p.Name] = p
		}
		return pods, nil
	}
	var errs []error
	for _, e := range entries {
		_, name, _ := strings.Cut(e.Pod, "/")
		p := &corev1.Pod{}
		err := c.APIReader.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, p)
		switch {
		case err == nil:
			pods[e.Pod] = p
		case !apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("read pod %s: %w", e.Pod, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return pods, nil
}

// retention is the StatefulSet's stickynet.io/ip-retention, from its own
// annotations or else its pod template's. An invalid value keeps every
// address (Retain) and is reported on the StatefulSet.
func (c *Controller) retention(sts *appsv1.StatefulSet) string {
	v, ok := sts.Annotations[annotations.IPRetention]
	if !ok {
		v = sts.Spec.Template.Annotations[annotations.IPRetention]
	}
	ret, err := annotations.ParseRetention(v)
	if err != nil {
		c.event(sts, corev1.EventTypeWarning, "InvalidIPRetention", "%s; every ordinal keeps its address (%s)", err, annotations.RetentionRetain)
		return annotations.RetentionRetain
	}
	return ret
}

// releaseReason says why an address that no pod carries should be freed now
// ("" to keep it).
func (c *Controller) releaseReason(ctx context.Context, ps *pass, e ipam.Entry, members []ipam.Entry) (string, error) {
	id, err := annotations.ParseIdentity(e.Identity)
	if err != nil {
		return "", nil // not ours to judge
	}
	key := client.ObjectKey{Namespace: id.Namespace, Name: id.Name}
	switch id.Kind {
	case annotations.KindPod:
		return c.unlessCarried(ctx, ps, e, id.Name, "the pod is gone")
	case annotations.KindStatefulSet:
		sts := &appsv1.StatefulSet{}
		if at, err := c.find(ctx, ps, key, sts); err != nil || at != present {
			return reason(at, "the StatefulSet was deleted"), err
		}
		if c.retention(sts) != annotations.RetentionRelease {
			return "", nil
		}
		ord, _ := id.Ordinal()
		start := 0
		if sts.Spec.Ordinals != nil {
			start = int(sts.Spec.Ordinals.Start)
		}
		if end := start + int(workload.Replicas(sts.Spec.Replicas)); ord < start || ord >= end {
			ordinals := fmt.Sprintf("ordinals %d..%d", start, end-1)
			if end == start {
				ordinals = "no ordinals (0 replicas)"
			}
			return c.unlessCarried(ctx, ps, e, fmt.Sprintf("%s-%d", id.Name, ord),
				fmt.Sprintf("ordinal %d is outside the StatefulSet's %s with %s: %s", ord, ordinals, annotations.IPRetention, annotations.RetentionRelease))
		}
	case annotations.KindDeployment:
		dep := &appsv1.Deployment{}
		if at, err := c.find(ctx, ps, key, dep); err != nil || at != present {
			return reason(at, "the Deployment was deleted"), err
		}
		limit := workload.DeploymentCap(dep)
		if n := int32(len(members)); n > limit && isSurplus(e, members, limit, ps.outside) {
			return fmt.Sprintf("the Deployment needs at most %d addresses (replicas + maxSurge) and has %d", limit, n), nil
		}
	case annotations.KindReplicaSet:
		rs := &appsv1.ReplicaSet{}
		if at, err := c.find(ctx, ps, key, rs); err != nil || at != present {
			return reason(at, "the ReplicaSet was deleted"), err
		}
		if dep := metav1.GetControllerOf(rs); dep != nil && dep.Kind == "Deployment" {
			// Adopted by a Deployment (re-applied after a delete with
			// --cascade=orphan): its next pods take the Deployment's
			// addresses, and this identity's free members would stay held,
			// as its replicas never fall below them.
			if isSurplus(e, members, 0, ps.outside) {
				return "the ReplicaSet belongs to Deployment " + dep.Name + " now, whose pods take the Deployment's addresses", nil
			}
			return "", nil
		}
		limit := workload.Replicas(rs.Spec.Replicas)
		if n := int32(len(members)); n > limit && isSurplus(e, members, limit, ps.outside) {
			return fmt.Sprintf("the ReplicaSet needs at most %d addresses and has %d", limit, n), nil
		}
	case annotations.KindDaemonSet:
		ds := &appsv1.DaemonSet{}
		if at, err := c.find(ctx, ps, key, ds); err != nil || at != present {
			return reason(at, "the DaemonSet was deleted"), err
		}
		node := &corev1.Node{}
		if at, err := c.find(ctx, ps, client.ObjectKey{Name: id.Member}, node); err != nil || at != present {
			return reason(at, "node "+id.Member+" was deleted"), err
		}
		if !workload.Selects(ds, node) {
			return "the DaemonSet's nodeSelector and node affinity no longer select node " + id.Member, nil
		}
	}
	return "", nil
}

// presence is what find found of an object.
type presence int

const (
	present  presence = iota // there: obj holds it
	justGone                 // gone, not yet for a grace: everything is kept
	gone                     // gone for a grace
)

// reason is why when at is gone: the addresses go; "" otherwise.
func reason(at presence, why string) string {
	if at == gone {
		return why
	}
	return ""
}

// find reads an object from the cache and, when absent there, from the API
// server; when present, obj holds it. An answer of absent holds for the
// pass, and workers that ask at the same time wait for the first one's
// answer: the ordinals of a deleted StatefulSet, or the members of a
// deleted Deployment, ask the API server once. Any other answer is not kept
// (each caller needs the object).
func (c *Controller) find(ctx context.Context, ps *pass, key client.ObjectKey, obj client.Object) (presence, error) {
	what := fmt.Sprintf("%T %s", obj, key)
	err := c.Client.Get(ctx, key, obj)
	if err == nil {
		c.present(what)
		return present, nil
	}
	if !apierrors.IsNotFound(err) {
		return present, fmt.Errorf("read %s: %w", what, err)
	}
	ask, done := ps.askGone(what)
	if ask {
		err = c.APIReader.Get(ctx, key, obj)
		absent := apierrors.IsNotFound(err)
		done(absent)
		if err != nil && !absent {
			return present, fmt.Errorf("read %s: %w", what, err)
		}
		if !absent {
			c.present(what)
			return present, nil
		}
	}
	// Gone for a grace: one deleted and made again at once (kubectl delete
	// --cascade=orphan then apply, to change what a StatefulSet does not
	// let one edit; replace --force) keeps the addresses of its members
	// that had no pod at the moment, as it keeps its pods. Within the
	// grace, nothing is judged from obj, which holds nothing: an empty
	// Deployment has room for 2 addresses, an empty Node is selected by no
	// DaemonSet with a nodeSelector.
	if ps.waiting(c.goneFor(what, ps.now)) {
		return justGone, nil
	}
	return gone, nil
}

// forgetGone drops what goneFor learned long ago (ten graces, at least 10
// min): such an object has had its addresses released (or they are carried
// by live pods, which keep them), and one found gone again waits another
// grace.
func (c *Controller) forgetGone(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for what, since := range c.goneSince {
		if now.Sub(since) > max(10*c.Grace, 10*time.Minute) {
			delete(c.goneSince, what)
		}
	}
}

// present records that the object what exists.
func (c *Controller) present(what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.goneSince, what)
}

// goneFor records that the object what is gone at now and returns since
// when this replica has seen it gone.
func (c *Controller) goneFor(what string, now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	since, ok := c.goneSince[what]
	if !ok {
		if c.goneSince == nil {
			c.goneSince = map[string]time.Time{}
		}
		since = now
		c.goneSince[what] = since
	}
	return since
}

// isSurplus reports whether e is among the members to drop to get down to limit:
// the free ones that their pool's spec no longer allows go first (no pod
// would be given them), then those with the highest addresses.
func isSurplus(e ipam.Entry, members []ipam.Entry, limit int32, outside func(ipam.Entry) bool) bool {
	var free []ipam.Entry
	for _, m := range members {
		if m.Pod == "" && !m.Held && !m.Reserved {
			free = append(free, m)
		}
	}
	sort.Slice(free, func(i, j int) bool {
		if oi, oj := outside(free[i]), outside(free[j]); oi != oj {
			return oi
		}
		return free[j].IP.Less(free[i].IP)
	})
	excess := len(members) - int(limit)
	for i := 0; i < excess && i < len(free); i++ {
		if free[i].IP == e.IP && free[i].Pool == e.Pool {
			return true
		}
	}
	return false
}

// updatePools writes each IPPool's counts and readiness to its status.
func (c *Controller) updatePools(ctx context.Context, pools []v1alpha1.IPPool, specs map[string]poolSpec, held map[string]int) error {
	var errs []error
	for i := range pools {
		ipp := &pools[i]
		unseen, letGo, perr := c.protect(ctx, ipp, held[ipp.Name])
		if perr != nil {
			errs = append(errs, perr)
		}
		if letGo { // the API server deletes it: no status to write
			continue
		}
		st := ipp.Status.DeepCopy()
		st.ObservedGeneration = ipp.Generation
		pool, err := specs[ipp.Name].pool, specs[ipp.Name].err
		cond := metav1.Condition{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Valid", Message: "the pool hands out addresses", ObservedGeneration: ipp.Generation}
		var s ipam.Stats
		if pool != nil {
			s = c.Alloc.Stats(pool)
			st.Total, st.Allocated, st.Held, st.Cooling = clampInt64(s.Total), int64(s.Allocated), int64(s.Held), int64(s.Cooling)
			st.OtherPools, st.Free = int64(s.Shared+s.Elsewhere), clampInt64(s.Free)
		}
		switch {
		case ipp.DeletionTimestamp != nil:
			cond.Status, cond.Reason = metav1.ConditionFalse, "Deleting"
			cond.Message = fmt.Sprintf("the IPPool is being deleted: it hands out no address to an identity that holds none of its addresses, and goes once none is held (%d now); the identities holding them keep them until their workloads, nodes or pods are gone and the addresses have cooled",
				held[ipp.Name])
			if unseen != "" {
				cond.Message += "; " + unseen
			}
			st.Free = 0
		case err != nil:
			// The other counts are the last valid spec's; none is handed out.
			cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, "InvalidSpec", err.Error()
			st.Free = 0
		case len(pool.Sharing) > 0 && s.Outside == 0:
			// Ready still: an address one of them has is not handed out by
			// the other, so the free count can be less than it says.
			cond.Reason = "SharesAddresses"
			cond.Message = fmt.Sprintf("the pool hands out addresses; IPPools %s can hand out some of them too (%s, for one): one that either has is not handed out by the other, nor counted free",
				strings.Join(pool.Sharing, ", "), specs[ipp.Name].shared)
		default:
			if s.Outside > 0 {
				// Ready still: the pool hands out its addresses. The others are
				// not freed here: a spec edited by mistake and put right costs
				// no workload its addresses.
				cond.Reason = "AddressesOutsideSpec"
				cond.Message = fmt.Sprintf("the pool hands out addresses; addresses outside the current spec, claimed under an earlier one: %d. None is handed out again: a StatefulSet's, DaemonSet's or bare pod's identity moves off its at its next pod, and a Deployment's or ReplicaSet's set gives up such members once no pod carries them, when it is at its cap or shrinks", s.Outside)
			}
		}
		meta.SetStatusCondition(&st.Conditions, cond)
		if statusEqual(&ipp.Status, st) {
			continue
		}
		ipp.Status = *st
		// A full update (not a merge patch) so that zero counts are written too;
		// a conflict is retried by the next reconcile.
		if err := c.Client.Status().Update(ctx, ipp); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			errs = append(errs, fmt.Errorf("update status of IPPool %s: %w", ipp.Name, err))
		}
	}
	return errors.Join(errs...)
}

// protect keeps v1alpha1.IPPoolInUseFinalizer on every IPPool, and takes it
// off one being deleted once none of its addresses is held: the allocator's
// cache holds none (held) and etcd itself holds no key of the pool (the cache
// may lag a claim made a moment ago). Without it the deletion of a pool in
// use went through, its identities kept their records in etcd, and an IPPool
// created under another name over the same addresses handed them out again
// to other pods. On every pool, not only those in use: one that went empty
// and lost it would be unguarded from its next claim to the next pass. A
// conflict waits for the next pass. unseen says what etcd holds of a pool
// being deleted that the cache does not show; letGo, that the finalizer
// came off the last one and the API server deletes the pool.
func (c *Controller) protect(ctx context.Context, ipp *v1alpha1.IPPool, held int) (unseen string, letGo bool, _ error) {
	has := controllerutil.ContainsFinalizer(ipp, v1alpha1.IPPoolInUseFinalizer)
	orig := ipp.DeepCopy()
	switch {
	case ipp.DeletionTimestamp == nil && !has: // none can be added to an object being deleted
		controllerutil.AddFinalizer(ipp, v1alpha1.IPPoolInUseFinalizer)
	case ipp.DeletionTimestamp != nil && has && held == 0:
		keys, err := c.Alloc.PoolKeys(ctx, ipp.Name)
		if err != nil {
			return "", false, err
		}
		if len(keys) > 0 {
			return fmt.Sprintf("etcd holds %d keys of its addresses that this replica's cache does not show (a claim made a moment ago, or records it cannot read), such as %s", len(keys), keys[0]), false, nil
		}
		controllerutil.RemoveFinalizer(ipp, v1alpha1.IPPoolInUseFinalizer)
	default:
		return "", false, nil
	}
	err := c.Client.Patch(ctx, ipp, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return "", false, fmt.Errorf("update the finalizers of IPPool %s: %w", ipp.Name, err)
	}
	if err == nil && has {
		klog.FromContext(ctx).Info("IPPool let go: none of its addresses is held any more", "pool", ipp.Name)
		return "", len(ipp.Finalizers) == 0, nil
	}
	return "", false, nil
}

// brief shortens an error joined of many (a pass that failed on each of
// thousands of addresses while etcd was out of reach: one log line of
// megabytes, every few seconds) to their count and the first few.
func brief(err error) error {
	var all []error
	var flatten func(error)
	flatten = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				flatten(x)
			}
			return
		}
		all = append(all, e)
	}
	flatten(err)
	if len(all) <= briefErrors {
		return err
	}
	return fmt.Errorf("%d errors, the first %d: %w", len(all), briefErrors, errors.Join(all[:briefErrors]...))
}

const briefErrors = 5

func clampInt64(v uint64) int64 {
	if v > 1<<62 {
		return 1 << 62
	}
	return int64(v)
}

func statusEqual(a, b *v1alpha1.IPPoolStatus) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// reresolveBandwidth brings the bandwidth annotations of pods whose limits
// come from policies (or that have none of their own) in line with the
// current BandwidthPolicies.
func (c *Controller) reresolveBandwidth(ctx context.Context, pods []podInfo) error {
	list := &v1alpha1.BandwidthPolicyList{}
	if err := c.Client.List(ctx, list); err != nil {
		return fmt.Errorf("list BandwidthPolicies: %w", err)
	}
	var errs []error
	// A policy whose podSelector does not parse selects no new pod; the pods
	// it gave limits to keep them until it is fixed or deleted.
	badSelector := map[types.NamespacedName]bool{}
	for i := range list.Items {
		pol := &list.Items[i]
		if err := policy.SelectorError(pol); err != nil {
			badSelector[types.NamespacedName{Namespace: pol.Namespace, Name: pol.Name}] = true
			c.event(pol, corev1.EventTypeWarning, "InvalidBandwidthPolicy", "%s; the pods it gave limits to keep them", err)
		}
	}
	reported := map[types.UID]bool{}
	onVF := map[types.NamespacedName][]string{} // policies with an ingress limit: the SR-IOV pods they select
	for _, p := range pods {
		if !p.live || p.pod.DeletionTimestamp != nil || policy.Own(p.pod) {
			continue
		}
		if badSelector[types.NamespacedName{Namespace: p.pod.Namespace, Name: p.pod.Annotations[annotations.BandwidthPolicy]}] {
			continue
		}
		res, err := policy.Resolve(p.pod, false, list.Items)
		if err != nil {
			// A policy the API server took that cannot work (annotations.Limit.Check):
			// not a failed pass; the pods keep their limits, and the policy says why.
			if pol := policy.Match(p.pod, list.Items); pol != nil {
				if !reported[pol.UID] {
					reported[pol.UID] = true
					c.event(pol, corev1.EventTypeWarning, "InvalidBandwidthPolicy", "%s; the pods it selects keep their current limits", err)
				}
				continue
			}
			errs = append(errs, err)
			continue
		}
		if _, vf := p.pod.Annotations[annotations.SriovNetwork]; vf && res.Policy != "" && res.Bandwidth.Ingress.Rate > 0 {
			k := types.NamespacedName{Namespace: p.pod.Namespace, Name: res.Policy}
			onVF[k] = append(onVF[k], p.pod.Name)
		}
		want := res.Bandwidth.Annotations()
		if res.Policy != "" {
			want[annotations.BandwidthPolicy] = res.Policy
		}
		changes := map[string]any{}
		for _, k := range []string{annotations.IngressBandwidth, annotations.EgressBandwidth, annotations.IngressBurst, annotations.EgressBurst, annotations.BandwidthPolicy} {
			cur, has := p.pod.Annotations[k]
			w, wants := want[k]
			switch {
			case wants && (!has || cur != w):
				changes[k] = w
			case !wants && has:
				changes[k] = nil
			}
		}
		if len(changes) == 0 {
			continue
		}
		if err := c.patchAnnotations(ctx, p.pod, changes); err != nil {
			switch {
			case apierrors.IsNotFound(err), replaced(err): // gone: nothing to write; a new pod is the next pass's
			case refusedForGood(err):
				// Not a failed pass, which was tried again every second,
				// refused every time. The pod keeps its limits and says
				// why; later passes try once each.
				c.event(p.pod, corev1.EventTypeWarning, "BandwidthNotUpdated", "bandwidth limits %s not written: %v", describe(res), err)
			default:
				errs = append(errs, fmt.Errorf("update bandwidth of pod %s: %w", p.key, err))
			}
			continue
		}
		c.event(p.pod, corev1.EventTypeNormal, "BandwidthUpdated", "bandwidth limits now %s", describe(res))
	}
	c.ingressOnVFs(list.Items, onVF)
	return errors.Join(errs...)
}

// refusedForGood reports whether the API server refused a pod's annotation
// patch for a reason that trying again will not change (a policy on pod
// updates, annotations at their size limit).
func refusedForGood(err error) bool { return apierrors.IsForbidden(err) || apierrors.IsInvalid(err) }

// patchAnnotations sets (or, for nil values, removes) annotations of pod,
// read from the cache: a merge patch of those keys alone, on the pod as the
// API server has it, if it is still that pod. The patch carries pod's UID,
// which the API server will not change: a pod made again under the name
// since (a StatefulSet's, whose new admission chose its limits) refuses it,
// and replaced reports that refusal.
func (c *Controller) patchAnnotations(ctx context.Context, pod *corev1.Pod, changes map[string]any) error {
	meta := map[string]any{"annotations": changes}
	if pod.UID != "" {
		meta["uid"] = pod.UID
	}
	body, _ := json.Marshal(map[string]any{"metadata": meta})
	target := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name}}
	return c.Client.Patch(ctx, target, client.RawPatch(types.MergePatchType, body))
}

// replaced reports whether patchAnnotations found another pod under the
// name: the API server refuses to change metadata.uid ("field is immutable").
func replaced(err error) bool {
	var status apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &status) || status.Status().Details == nil {
		return false
	}
	return slices.ContainsFunc(status.Status().Details.Causes, func(c metav1.StatusCause) bool { return c.Field == "metadata.uid" })
}

// ingressOnVFs gives each policy whose ingress limit reaches SR-IOV pods
// (onVF: their names, by policy) a Warning event, again only when the count
// changes: traffic into a VF comes from the wire, and the agent sets only
// the VF's max_tx_rate (the egress limit). The webhook refuses a VF pod's
// own ingress limit; a policy's it admits, with an admission warning that
// a workload's pods give their controller, not the user.
func (c *Controller) ingressOnVFs(policies []v1alpha1.BandwidthPolicy, onVF map[types.NamespacedName][]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	last := c.ingressWarned
	c.ingressWarned = map[types.UID]int{}
	for i := range policies {
		pol := &policies[i]
		names := onVF[types.NamespacedName{Namespace: pol.Namespace, Name: pol.Name}]
		if len(names) == 0 {
			continue
		}
		c.ingressWarned[pol.UID] = len(names)
		if last[pol.UID] == len(names) {
			continue
		}
		slices.Sort(names)
		shown := strings.Join(names[:min(len(names), 5)], ", ")
		if len(names) > 5 {
			shown += ", ..."
		}
		c.event(pol, corev1.EventTypeWarning, "IngressNotEnforced", "its ingress limit does not apply to the %d SR-IOV pod(s) it selects (%s): "+
			"traffic into a VF comes from the wire, not through the node; their egress limit (the VF's max_tx_rate) applies", len(names), shown)
	}
}

func describe(r policy.Result) string {
	if r.Bandwidth.IsZero() {
		return "none (no BandwidthPolicy selects the pod)"
	}
	return fmt.Sprintf("ingress %d bit/s, egress %d bit/s from BandwidthPolicy %s", r.Bandwidth.Ingress.Rate, r.Bandwidth.Egress.Rate, r.Policy)
}

// event emits an event, its note cut to the API server's limit (which
// refuses a longer one).
func (c *Controller) event(obj client.Object, kind, reason, format string, args ...any) {
	if c.Recorder != nil {
		c.Recorder.Eventf(obj, nil, kind, reason, reason, "%s", truncate(fmt.Sprintf(format, args...), noteLimit))
	}
}

// announceWithin is how old a pod bound at admission may be for a pass to
// give it its Assigned event: a leader that took over later (a webhook
// rollout) would otherwise announce every running pod again. The previous
// leader announced such a pod within a pass of its creation, unless it was
// away for this long.
const announceWithin = 10 * time.Minute

// assigned emits the Assigned event once per pod.
func (c *Controller) assigned(p *podInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen[p.pod.UID] {
		return
	}
	if c.seen == nil {
		c.seen = map[types.UID]bool{}
	}
	c.seen[p.pod.UID] = true
	c.event(p.pod, corev1.EventTypeNormal, "StickyAddressAssigned", "%s with MAC %s from pool %s for %s",
		p.pod.Annotations[annotations.AssignedIP], p.pod.Annotations[annotations.AssignedMAC], p.pool, p.identity)
}

// forget drops pods that are gone from the Assigned-event memory.
func (c *Controller) forget(pods []podInfo) {
	live := make(map[types.UID]bool, len(pods))
	for _, p := range pods {
		live[p.pod.UID] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for uid := range c.seen {
		if !live[uid] {
			delete(c.seen, uid)
		}
	}
	for _, m := range []map[types.UID]string{c.warned, c.offNet} {
		for uid := range m {
			if !live[uid] {
				delete(m, uid)
			}
		}
	}
}

// offNetwork warns, once per pod and address, of live pods that run with an
// address other than their assignment by their status: the node's own
// network attached them, not stickynet's (no node agent serving on the node
// when the pod started: nodeAgent.nodeSelector leaves the node out, a node
// that joined before its agent was ready, another CNI configuration taking
// precedence). Nothing else tells: the pod runs, its identity keeps its
// address, and the pod is reachable at neither where its peers expect.
func (c *Controller) offNetwork(pods []podInfo) {
	off := 0
	for i := range pods {
		p := &pods[i]
		have := statusAddrs(p.pod)
		if !p.live || len(have) == 0 || slices.Contains(have, p.ip) {
			continue
		}
		off++
		if c.toldAnew(&c.offNet, p.pod.UID, have[0].String()) {
			c.event(p.pod, corev1.EventTypeWarning, "NotOnStickynetNetwork",
				"the pod runs with address %s, not its stickynet address %s: the network of node %s attached it, not stickynet's (no stickynet node agent serving there when the pod started); "+
					"delete the pod once the agent serves on its node, or keep the pool's pods off the node with the IPPool's nodeSelector; its identity keeps %s",
				have[0], p.ip, p.pod.Spec.NodeName, p.ip)
		}
	}
	c.Metrics.offNetwork(off)
}

// releasedAddr is an address a pass freed, and why.
type releasedAddr struct {
	e   ipam.Entry
	why string
}

// Released events: a pass gives each IPPool it freed addresses of one
// event that counts them and names up to releasedNamed, with the reason
// (the log names each). The events.k8s.io recorder folds events about one
// object (the pool, at one resourceVersion) with one reason into a series
// that keeps the first note: one event per address would show a single
// address and a count.
const (
	releasedNamed = 5
	noteLimit     = 1024 // the API server's limit on an event's note, in bytes
)

// announce emits the Released events of a pass.
func (c *Controller) announce(ctx context.Context, released map[string][]releasedAddr) {
	for pool, rs := range released {
		ipp := &v1alpha1.IPPool{}
		if err := c.Client.Get(ctx, client.ObjectKey{Name: pool}, ipp); err != nil {
			continue
		}
		slices.SortFunc(rs, func(x, y releasedAddr) int { return x.e.IP.Compare(y.e.IP) })
		c.event(ipp, corev1.EventTypeNormal, "StickyAddressReleased", "%s", releasedNote(rs))
	}
}

// releasedNote says which addresses were released and why: as many as fit
// in a note, at most releasedNamed, and how many more.
func releasedNote(rs []releasedAddr) string {
	if len(rs) == 1 {
		return fmt.Sprintf("%s released from %s: %s", rs[0].e.IP, rs[0].e.Identity, rs[0].why)
	}
	named := make([]string, 0, releasedNamed)
	for _, r := range rs[:min(len(rs), releasedNamed)] {
		named = append(named, fmt.Sprintf("%s from %s (%s)", r.e.IP, r.e.Identity, r.why))
	}
	note := func() string {
		n := fmt.Sprintf("%d addresses released: %s", len(rs), strings.Join(named, ", "))
		if more := len(rs) - len(named); more > 0 {
			n += fmt.Sprintf(" and %d more (the webhook's log names each)", more)
		}
		return n
	}
	for len(named) > 1 && len(note()) > noteLimit {
		named = named[:len(named)-1]
	}
	return note() // event cuts what is still too long
}

// truncate cuts s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
