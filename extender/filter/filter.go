// Package filter owns the extender's filter verb: which of the candidate
// nodes can host a pod's sticky address and, for an SR-IOV pod, its VF. A
// node outside the nodeSelector of the pod's IPPool fails (the subnet is not
// reachable there); a node that lacks the pod's SriovNetwork or a free VF of
// it fails with a reason naming the network; every failure is reported as
// one preemption cannot resolve (Result.Failed). Pods stickynet did not
// admit pass every node at once.
//
// Free VFs are the node's allocatable VFs minus those held by the pods bound
// to it, as the extender's informers saw them. For a pod that requests the
// network's resource (the webhook adds the request), the scheduler has
// already checked the same before calling the extender, against a cache that
// also holds the pods it has just placed and is never behind; by default the
// extender then leaves the count to the scheduler (Options.CountRequestedVFs).
// Its own view may lag by the few milliseconds its watch takes, and a node it
// rejects on stale data is only looked at again on the scheduler's next
// cluster event (any pod or node change; IPPool and SriovNetwork edits are
// none) or after 5 minutes.
package filter

import (
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/stickynet/stickynet/extender/demand"
	"github.com/stickynet/stickynet/extender/state"
	"github.com/stickynet/stickynet/internal/annotations"
)

// reader is the part of the extender's cluster view the filter reads.
type reader interface {
	Node(name string) *state.Node
	Pool(name string) *state.Selection
	Network(name string) *state.Selection
	Resource(name corev1.ResourceName) state.Resource
	VFs(n *state.Node, res state.Resource) (allocatable, used int64)
	PodVFs(uid types.UID, name corev1.ResourceName) int64
}

var _ reader = state.Reader{}

// Cause classifies why a node failed.
type Cause uint8

// The causes of failure.
const (
	CauseUnknownNode Cause = iota + 1
	CausePoolMissing
	CausePoolSelector
	CauseNetworkMissing
	CauseNetworkSelector
	CauseNoVFs
	CauseNoFreeVF
	numCauses
)

var causeNames = [numCauses]string{
	CauseUnknownNode:     "unknown_node",
	CausePoolMissing:     "pool_missing",
	CausePoolSelector:    "pool_selector",
	CauseNetworkMissing:  "network_missing",
	CauseNetworkSelector: "network_selector",
	CauseNoVFs:           "no_vfs",
	CauseNoFreeVF:        "no_free_vf",
}

// String names the cause, as in metrics.
func (c Cause) String() string {
	if c < numCauses {
		return causeNames[c]
	}
	return "unknown"
}

// Failure is a node that cannot host the pod.
type Failure struct {
	// Node is the node's name.
	Node string
	// Cause is why; Result.Reason words it.
	Cause Cause
}

// Result is the outcome of filtering the candidate nodes for one pod.
type Result struct {
	// Passed are the nodes that can host the pod, in the order given.
	Passed []string
	// Failures are the others, in the order given.
	Failures []Failure
	reasons  [numCauses]string
}

// Reason is the message for the scheduler for nodes that failed for cause
// c. Reasons do not name the node: the scheduler counts nodes per reason in
// its FailedScheduling event ("3 node(s) outside ...").
func (r *Result) Reason(c Cause) string {
	if c < numCauses {
		return r.reasons[c]
	}
	return ""
}

// Failed returns the failures as the map of the scheduler's API. The
// scheduler gets them all as unresolvable (FailedAndUnresolvableNodes):
// no eviction it would make helps. It shows the extender only the nodes its
// own plugins passed, and its preemption simulates evictions with those
// plugins alone, so on such a node it found the pod fitting with no victim
// and failed the attempt with "expected at least one victim pod on node"
// (kube-scheduler 1.37, preemption.go) whenever the node ran pods of lower
// priority; nor can it count the VFs that evicting a pod would free (those
// it counts itself, for pods that request them, it checks before calling
// the extender). Nodes its plugins rejected reach the preempt verb instead.
func (r *Result) Failed() map[string]string {
	m := make(map[string]string, len(r.Failures))
	for _, f := range r.Failures {
		m[f.Node] = r.reasons[f.Cause]
	}
	return m
}

// Options configure the filter.
type Options struct {
	// CountRequestedVFs makes the filter count free VFs also for pods that
	// request the network's resource: needed only if the scheduler ignores
	// that resource (managedResources with ignoredByScheduler: true).
	CountRequestedVFs bool
}

// Filter returns which of the nodes can host a pod with demand d. For a pod
// that is not placed (demand.Demand.Placed) every node passes and r is not read.
func (o Options) Filter(d demand.Demand, nodes []string, r reader) *Result {
	res := &Result{}
	o.Into(res, d, nodes, r)
	return res
}

// Into is Filter writing into res, whose slices it reuses.
func (o Options) Into(res *Result, d demand.Demand, nodes []string, r reader) {
	into(res, d, nodes, r, !d.Requested || o.CountRequestedVFs, nil)
}

// Preemption is Into for the nodes where the scheduler would evict pods to
// make room for a pod with demand d, victims[node] being the pods it would
// evict there: a node fails where the eviction cannot make the pod fit by
// the extender's rules. The VFs the victims hold count as free; where the
// scheduler counts the pod's VFs itself (Into's rule), it has already
// checked them with the victims gone, and they are not counted here.
func (o Options) Preemption(res *Result, d demand.Demand, victims map[string][]types.UID, r reader) {
	nodes := slices.Collect(maps.Keys(victims))
	freed := func(node string) int64 {
		var n int64
		for _, uid := range victims[node] {
			n += r.PodVFs(uid, d.Resource)
		}
		return n
	}
	into(res, d, nodes, r, !d.Requested || o.CountRequestedVFs, freed)
}

func into(res *Result, d demand.Demand, nodes []string, r reader, countVFs bool, freed func(node string) int64) {
	res.Passed, res.Failures = res.Passed[:0], res.Failures[:0]
	res.reasons = [numCauses]string{}
	if !d.Placed() {
		res.Passed = append(res.Passed, nodes...)
		return
	}
	c := newCheck(d, r, &res.reasons)
	c.countVFs, c.freed = countVFs, freed
	for _, name := range nodes {
		if cause := c.node(name); cause != 0 {
			res.Failures = append(res.Failures, Failure{Node: name, Cause: cause})
		} else {
			res.Passed = append(res.Passed, name)
		}
	}
}

// check holds what is looked up and worded once per request.
type check struct {
	d       demand.Demand
	r       reader
	pool    *state.Selection
	network *state.Selection
	res     state.Resource
	// countVFs is false when the scheduler's count of free VFs decides.
	countVFs bool
	// freed, if set, is how many of a node's VFs in use count as free
	// (those of the pods preemption would evict there).
	freed func(node string) int64
}

// newCheck looks up the pod's pool and network and words the reasons.
func newCheck(d demand.Demand, r reader, reasons *[numCauses]string) *check {
	c := &check{d: d, r: r}
	reasons[CauseUnknownNode] = "node(s) not yet known to the stickynet extender"
	if d.Pool != "" {
		c.pool = r.Pool(d.Pool)
		switch {
		case c.pool == nil:
			reasons[CausePoolMissing] = fmt.Sprintf("node(s) rejected: IPPool %q (%s) does not exist", d.Pool, annotations.AssignedPool)
		case c.pool.Err() != nil:
			reasons[CausePoolSelector] = fmt.Sprintf("node(s) rejected: IPPool %q has an invalid nodeSelector: %v", d.Pool, c.pool.Err())
		default:
			reasons[CausePoolSelector] = fmt.Sprintf("node(s) outside the nodeSelector of IPPool %q", d.Pool)
		}
	}
	if d.Network != "" {
		c.res = r.Resource(d.Resource)
		c.network = r.Network(d.Network)
		switch {
		case c.network == nil:
			reasons[CauseNetworkMissing] = fmt.Sprintf("node(s) rejected: SriovNetwork %q (%s) does not exist", d.Network, annotations.SriovNetwork)
		case c.network.Err() != nil:
			reasons[CauseNetworkSelector] = fmt.Sprintf("node(s) rejected: SriovNetwork %q has an invalid nodeSelector: %v", d.Network, c.network.Err())
		default:
			reasons[CauseNetworkSelector] = fmt.Sprintf("node(s) outside the nodeSelector of SriovNetwork %q", d.Network)
		}
		reasons[CauseNoVFs] = fmt.Sprintf("node(s) advertising no VFs of SriovNetwork %q (%s)", d.Network, d.Resource)
		if d.VFs == 1 {
			reasons[CauseNoFreeVF] = fmt.Sprintf("node(s) without a free VF of SriovNetwork %q (%s)", d.Network, d.Resource)
		} else {
			reasons[CauseNoFreeVF] = fmt.Sprintf("node(s) without %d free VFs of SriovNetwork %q (%s)", d.VFs, d.Network, d.Resource)
		}
	}
	return c
}

// node returns why the node cannot host the pod, or 0 if it can. A node not
// yet in the extender's cache fails only where its record is needed: a
// nodeSelector or the extender's count of VFs (a pool without a selector
// on a node just added passed only after the Node reached the watch; the
// scheduler then retried the pod at its next event, or 5 min later).
func (c *check) node(name string) Cause {
	n := c.r.Node(name) // nil: not yet known
	if c.d.Pool != "" {
		switch {
		case c.pool == nil:
			return CausePoolMissing
		case c.pool.SelectsAll():
		case n == nil:
			return CauseUnknownNode
		case !c.pool.Selects(n):
			return CausePoolSelector
		}
	}
	if c.d.Network != "" {
		switch {
		case c.network == nil:
			return CauseNetworkMissing
		case c.network.SelectsAll():
		case n == nil:
			return CauseUnknownNode
		case !c.network.Selects(n):
			return CauseNetworkSelector
		}
		if !c.countVFs {
			return 0
		}
		if n == nil {
			return CauseUnknownNode
		}
		alloc, used := c.r.VFs(n, c.res)
		if alloc <= 0 {
			return CauseNoVFs
		}
		if c.freed != nil {
			used -= c.freed(name)
		}
		if alloc-used < c.d.VFs {
			return CauseNoFreeVF
		}
	}
	return 0
}
