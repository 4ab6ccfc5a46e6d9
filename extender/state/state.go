// Package state owns the stickynet scheduler extender's view of the cluster,
// fed by informers: per node its labels and its advertised and used VFs of
// every SriovNetwork, the nodeSelector of every IPPool and SriovNetwork
// (evaluated against every node whenever a node or a selector changes, never
// per request), and the node each sticky identity last ran on. Requests read
// it under a shared lock through Reader.
package state

import (
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/extender/demand"
	"github.com/stickynet/stickynet/internal/annotations"
)

// Options configure a State.
type Options struct {
	// LastNodeTTL is how long the node an identity last ran on is remembered
	// once no pod of the identity runs there any more; 0 means forever.
	LastNodeTTL time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// State is the extender's view of the cluster. Its Set and Delete methods
// are called by informer event handlers; Read serves requests.
type State struct {
	opts Options

	mu sync.RWMutex
	// nodes holds a record per node that exists or that pods are bound to
	// (pods may be seen before their node).
	nodes    map[string]*Node
	pools    map[string]*Selection
	networks map[string]*Selection
	// resources numbers the VF resources seen, to index Node.vfs.
	resources map[corev1.ResourceName]int
	pods      map[types.UID]podRecord
	last      map[string]lastRun
	// slots maps a bit position of Node.match to the Selection that owns it.
	slots     []*Selection
	freeSlots []int
}

// Node is the extender's record of a Node.
type Node struct {
	// Name is the Node's name.
	Name string
	// known is false for a node only seen as the node of pods.
	known  bool
	labels labels.Set
	// vfs holds, per VF resource number, the allocatable VFs the node
	// advertises and how many pods bound to it hold: the first ones inline,
	// so that a request reads them without another cache miss.
	vfs     [2]vfCount
	moreVFs []vfCount
	// match holds, per selector slot, whether the node's labels match it:
	// slots 0-63 inline, the others in moreMatch.
	match     uint64
	moreMatch bitset
}

type vfCount struct{ alloc, used int64 }

// Selection is the set of nodes an IPPool or a SriovNetwork reaches, by
// its nodeSelector.
type Selection struct {
	// Name is the IPPool's or SriovNetwork's name.
	Name string
	// Resource is the SriovNetwork's VF resource; empty for an IPPool.
	Resource corev1.ResourceName
	// spec is the selector as written, to skip updates that do not change it.
	spec     *metav1.LabelSelector
	selector labels.Selector // nil: every node
	err      error
	slot     int // bit in Node.match; -1 without a selector
}

// podRecord is what a pod contributes: the VFs it holds on its node and the
// sticky key it last ran under.
type podRecord struct {
	node   string
	use    map[corev1.ResourceName]int64
	sticky string
}

// lastRun is where a sticky identity last ran.
type lastRun struct {
	node    string
	pod     types.UID
	created time.Time // the pod's creation, to let the newest pod win
	running bool
	since   time.Time // when it stopped running there
}

// New returns an empty State.
func New(opts Options) *State {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &State{
		opts:      opts,
		nodes:     map[string]*Node{},
		pools:     map[string]*Selection{},
		networks:  map[string]*Selection{},
		resources: map[corev1.ResourceName]int{},
		pods:      map[types.UID]podRecord{},
		last:      map[string]lastRun{},
	}
}

// SetNode records a node's labels and VF resources.
func (s *State) SetNode(n *corev1.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	node := s.nodes[n.Name]
	if node == nil {
		node = &Node{Name: n.Name}
		s.nodes[n.Name] = node
	}
	for i := range node.vfs {
		node.vfs[i].alloc = 0
	}
	for i := range node.moreVFs {
		node.moreVFs[i].alloc = 0
	}
	for name, q := range n.Status.Allocatable {
		if demand.IsSriovResource(name) {
			node.vf(s.resource(name)).alloc = q.Value()
		}
	}
	if node.known && maps.Equal(node.labels, labels.Set(n.Labels)) {
		return
	}
	node.known = true
	node.labels = labels.Set(maps.Clone(n.Labels))
	node.match, node.moreMatch = 0, node.moreMatch[:0]
	for slot, sel := range s.slots {
		if sel != nil && sel.selector.Matches(node.labels) {
			node.setMatch(slot, true)
		}
	}
}

// DeleteNode forgets a node. The VFs that pods still bound to it hold stay
// counted until the pods are gone.
func (s *State) DeleteNode(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	node := s.nodes[name]
	if node == nil {
		return
	}
	node.known, node.labels, node.match, node.moreMatch = false, nil, 0, nil
	s.dropIfUnused(node)
}

// dropIfUnused removes the record of a node that no longer exists once no
// pod holds VFs there. Called with the lock held.
func (s *State) dropIfUnused(node *Node) {
	if node.known {
		return
	}
	for _, c := range node.vfs {
		if c.used != 0 {
			return
		}
	}
	for _, c := range node.moreVFs {
		if c.used != 0 {
			return
		}
	}
	delete(s.nodes, node.Name)
}

// resource returns the number of a VF resource. Called with the lock held.
func (s *State) resource(name corev1.ResourceName) int {
	i, ok := s.resources[name]
	if !ok {
		i = len(s.resources)
		s.resources[name] = i
	}
	return i
}

// vf returns the node's count of resource number i.
func (n *Node) vf(i int) *vfCount {
	if i < len(n.vfs) {
		return &n.vfs[i]
	}
	i -= len(n.vfs)
	for len(n.moreVFs) <= i {
		n.moreVFs = append(n.moreVFs, vfCount{})
	}
	return &n.moreVFs[i]
}

// matches reports whether the node's labels match the selector in slot.
func (n *Node) matches(slot int) bool {
	if slot < 64 {
		return n.match&(1<<uint(slot)) != 0
	}
	return n.moreMatch.has(slot - 64)
}

// setMatch records whether the node's labels match the selector in slot.
func (n *Node) setMatch(slot int, match bool) {
	switch {
	case slot < 64 && match:
		n.match |= 1 << uint(slot)
	case slot < 64:
		n.match &^= 1 << uint(slot)
	case match:
		n.moreMatch.set(slot - 64)
	default:
		n.moreMatch.clear(slot - 64)
	}
}

// SetPool records an IPPool's nodeSelector.
func (s *State) SetPool(p *v1alpha1.IPPool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pools[p.Name] = s.selection(s.pools[p.Name], p.Name, "", p.Spec.NodeSelector)
}

// DeletePool forgets an IPPool.
func (s *State) DeletePool(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release(s.pools[name])
	delete(s.pools, name)
}

// SetNetwork records a SriovNetwork's nodeSelector.
func (s *State) SetNetwork(nw *v1alpha1.SriovNetwork) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res := corev1.ResourceName(annotations.SriovResourcePrefix + nw.Name)
	s.networks[nw.Name] = s.selection(s.networks[nw.Name], nw.Name, res, nw.Spec.NodeSelector)
}

// DeleteNetwork forgets a SriovNetwork.
func (s *State) DeleteNetwork(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release(s.networks[name])
	delete(s.networks, name)
}

// selection returns the Selection for a nodeSelector, reusing cur when the
// selector did not change, and otherwise evaluating it against every node.
// Called with the lock held.
func (s *State) selection(cur *Selection, name string, res corev1.ResourceName, spec *metav1.LabelSelector) *Selection {
	if cur != nil && equalSelector(cur.spec, spec) {
		return cur
	}
	s.release(cur)
	sel := &Selection{Name: name, Resource: res, spec: spec.DeepCopy(), slot: -1}
	if spec == nil {
		return sel
	}
	selector, err := metav1.LabelSelectorAsSelector(spec)
	switch {
	case err != nil:
		sel.err = err
		return sel
	case selector.Empty():
		return sel
	}
	sel.selector = selector
	if n := len(s.freeSlots); n > 0 {
		sel.slot, s.freeSlots = s.freeSlots[n-1], s.freeSlots[:n-1]
		s.slots[sel.slot] = sel
	} else {
		sel.slot = len(s.slots)
		s.slots = append(s.slots, sel)
	}
	for _, node := range s.nodes {
		if !node.known {
			continue
		}
		node.setMatch(sel.slot, selector.Matches(node.labels))
	}
	return sel
}

// release frees a Selection's slot. Called with the lock held.
func (s *State) release(sel *Selection) {
	if sel == nil || sel.slot < 0 {
		return
	}
	s.slots[sel.slot] = nil
	s.freeSlots = append(s.freeSlots, sel.slot)
	sel.slot = -1
}

func equalSelector(a, b *metav1.LabelSelector) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !maps.Equal(a.MatchLabels, b.MatchLabels) || len(a.MatchExpressions) != len(b.MatchExpressions) {
		return false
	}
	for i := range a.MatchExpressions {
		x, y := a.MatchExpressions[i], b.MatchExpressions[i]
		if x.Key != y.Key || x.Operator != y.Operator || len(x.Values) != len(y.Values) {
			return false
		}
		for j := range x.Values {
			if x.Values[j] != y.Values[j] {
				return false
			}
		}
	}
	return true
}

// SetPod records the VFs a pod holds on its node and the node its sticky
// identity runs on.
func (s *State) SetPod(p *corev1.Pod) {
	rec := podRecord{}
	bound := p.Spec.NodeName != ""
	live := bound && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
	if live {
		rec.node = p.Spec.NodeName
		rec.use = demand.Usage(p)
	}
	if bound {
		rec.sticky = demand.StickyKey(p.Annotations)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, had := s.pods[p.UID]
	if had {
		s.unuse(old)
	}
	if rec.use == nil && rec.sticky == "" {
		if had {
			delete(s.pods, p.UID)
			s.stopped(old, p.UID)
		}
		return
	}
	if rec.node == "" {
		rec.node = p.Spec.NodeName // finished pod: keep where it ran for stickiness
	}
	s.pods[p.UID] = rec
	if len(rec.use) > 0 {
		node := s.nodes[rec.node]
		if node == nil {
			node = &Node{Name: rec.node}
			s.nodes[rec.node] = node
		}
		for res, n := range rec.use {
			node.vf(s.resource(res)).used += n
		}
	}
	if rec.sticky != "" {
		created := p.CreationTimestamp.Time
		l, ok := s.last[rec.sticky]
		switch {
		case live:
			if !ok || l.pod == p.UID || !l.running || !created.Before(l.created) {
				s.last[rec.sticky] = lastRun{node: rec.node, pod: p.UID, created: created, running: true}
			}
		case !ok || (!l.running && l.pod != p.UID && !created.Before(l.created)):
			// First seen finished (the extender started after it stopped, a
			// StatefulSet pod evicted and not yet replaced): where it ran
			// still counts for its identity's next pod, from now.
			s.last[rec.sticky] = lastRun{node: rec.node, pod: p.UID, created: created, since: s.opts.Now()}
		default:
			s.stopped(rec, p.UID)
		}
	}
	if had && old.sticky != "" && old.sticky != rec.sticky {
		s.stopped(old, p.UID)
	}
}

// DeletePod forgets a pod: its VFs are free again, and its identity stops
// running on its node.
func (s *State) DeletePod(uid types.UID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.pods[uid]
	if !ok {
		return
	}
	delete(s.pods, uid)
	s.unuse(rec)
	s.stopped(rec, uid)
}

// unuse takes a pod's VFs off its node's count. Called with the lock held.
func (s *State) unuse(rec podRecord) {
	node := s.nodes[rec.node]
	if node == nil || len(rec.use) == 0 {
		return
	}
	for res, n := range rec.use {
		node.vf(s.resource(res)).used -= n
	}
	s.dropIfUnused(node)
}

// stopped notes that the pod uid no longer runs where its sticky identity
// was last seen, unless a newer pod of the identity took over. Called with
// the lock held.
func (s *State) stopped(rec podRecord, uid types.UID) {
	if rec.sticky == "" {
		return
	}
	if l, ok := s.last[rec.sticky]; ok && l.pod == uid && l.running {
		l.running, l.since = false, s.opts.Now()
		s.last[rec.sticky] = l
	}
}

// Prune forgets the last nodes of identities that stopped running longer
// than LastNodeTTL ago.
func (s *State) Prune() {
	if s.opts.LastNodeTTL <= 0 {
		return
	}
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.last {
		if !l.running && now.Sub(l.since) > s.opts.LastNodeTTL {
			delete(s.last, k)
		}
	}
}

// Counts are the numbers of objects the State holds, for metrics.
type Counts struct {
	Nodes, Pools, Networks, Pods, Identities int
}

// Counts returns the numbers of objects the State holds.
func (s *State) Counts() Counts {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := Counts{Pools: len(s.pools), Networks: len(s.networks), Pods: len(s.pods), Identities: len(s.last)}
	for _, n := range s.nodes {
		if n.known {
			c.Nodes++
		}
	}
	return c
}

// Read calls fn with a Reader valid only during the call; updates wait
// until it returns.
func (s *State) Read(fn func(Reader)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(Reader{s: s})
}

// Reader reads the State during State.Read.
type Reader struct{ s *State }

// Node returns the node named name, or nil if the extender has not seen it.
func (r Reader) Node(name string) *Node {
	if n := r.s.nodes[name]; n != nil && n.known {
		return n
	}
	return nil
}

// Pool returns the IPPool named name, or nil if it does not exist.
func (r Reader) Pool(name string) *Selection { return r.s.pools[name] }

// Network returns the SriovNetwork named name, or nil if it does not exist.
func (r Reader) Network(name string) *Selection { return r.s.networks[name] }

// Resource returns the handle of a VF resource for VFs; it is valid during
// this Read only.
func (r Reader) Resource(name corev1.ResourceName) Resource {
	if i, ok := r.s.resources[name]; ok {
		return Resource(i)
	}
	return NoResource
}

// Resource is the handle of a VF resource, from Reader.Resource.
type Resource int

// NoResource is the handle of a resource no node advertises and no pod holds.
const NoResource Resource = -1

// VFs returns how many VFs of the resource the node advertises as
// allocatable and how many of them pods bound to it hold.
func (r Reader) VFs(n *Node, res Resource) (allocatable, used int64) {
	switch {
	case res < 0:
		return 0, 0
	case int(res) < len(n.vfs):
		return n.vfs[res].alloc, n.vfs[res].used
	case int(res)-len(n.vfs) < len(n.moreVFs):
		c := n.moreVFs[int(res)-len(n.vfs)]
		return c.alloc, c.used
	}
	return 0, 0
}

// PodVFs returns how many VFs of the resource the pod holds on the node it
// is bound to (0 for a pod the extender does not know or that holds none).
func (r Reader) PodVFs(uid types.UID, name corev1.ResourceName) int64 {
	return r.s.pods[uid].use[name]
}

// LastNode returns the node the sticky key last ran on, if it is
// remembered (see Options.LastNodeTTL).
func (r Reader) LastNode(key string) (string, bool) {
	l, ok := r.s.last[key]
	if !ok {
		return "", false
	}
	if !l.running && r.s.opts.LastNodeTTL > 0 && r.s.opts.Now().Sub(l.since) > r.s.opts.LastNodeTTL {
		return "", false
	}
	return l.node, true
}

// SelectsAll reports whether the selection reaches every node: it has no
// nodeSelector (and none that is invalid).
func (sel *Selection) SelectsAll() bool { return sel.err == nil && sel.selector == nil }

// Selects reports whether the selection reaches node n.
func (sel *Selection) Selects(n *Node) bool {
	switch {
	case sel.err != nil:
		return false
	case sel.selector == nil:
		return true
	}
	return n.matches(sel.slot)
}

// Err is the reason the selection's nodeSelector cannot be used, if any; it
// then reaches no node.
func (sel *Selection) Err() error { return sel.err }

// bitset is a growable set of small integers.
type bitset []uint64

func (b bitset) has(i int) bool {
	w := i >> 6
	return w < len(b) && b[w]&(1<<(uint(i)&63)) != 0
}

func (b *bitset) set(i int) {
	w := i >> 6
	for len(*b) <= w {
		*b = append(*b, 0)
	}
	(*b)[w] |= 1 << (uint(i) & 63)
}

func (b *bitset) clear(i int) {
	if w := i >> 6; w < len(*b) {
		(*b)[w] &^= 1 << (uint(i) & 63)
	}
}
