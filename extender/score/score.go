// Package score owns the extender's prioritize verb. Scores run from 0 to
// 10 (extender/v1.MaxExtenderPriority): the node a pod's sticky identity
// last ran on scores 10, so that an address comes back where its neighbours
// last saw it; then, for an SR-IOV pod, the other nodes score 0 to 9 by the
// VFs of its network left free once it is placed, to spread pods over the
// nodes with the most free VFs or to pack them onto the fullest.
//
// Nodes that score 0 are left out of the answer: the scheduler adds nothing
// for them either way, and a pod with nothing to prefer gets an empty list.
// An answer lists at most Options.MaxListed nodes, only the best-scored:
// early in a fill nearly every node ties for the most free VFs, and the
// scheduler would decode and fold a list of them all for each SR-IOV pod.
package score

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"

	corev1 "k8s.io/api/core/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/stickynet/stickynet/extender/demand"
	"github.com/stickynet/stickynet/extender/state"
)

// reader is the part of the extender's cluster view the scorer reads.
type reader interface {
	Node(name string) *state.Node
	Resource(name corev1.ResourceName) state.Resource
	VFs(n *state.Node, res state.Resource) (allocatable, used int64)
	LastNode(key string) (string, bool)
}

var _ reader = state.Reader{}

// Placement is how SR-IOV pods are placed among nodes with free VFs.
type Placement string

// The placements.
const (
	// Spread prefers the nodes with the largest share of the network's VFs
	// free (as the scheduler's LeastAllocated strategy).
	Spread Placement = "spread"
	// Pack prefers the nodes with the smallest share free (MostAllocated),
	// keeping other nodes' VFs for pods that need many.
	Pack Placement = "pack"
	// None leaves VFs out of the score.
	None Placement = "none"
)

// ParsePlacement parses a Placement.
func ParsePlacement(s string) (Placement, error) {
	switch p := Placement(s); p {
	case Spread, Pack, None:
		return p, nil
	}
	return "", fmt.Errorf("VF placement %q: expected %s, %s or %s", s, Spread, Pack, None)
}

// Options configure the scorer.
type Options struct {
	// PreferLastNode gives the node the pod's identity last ran on the top score.
	PreferLastNode bool
	// Placement ranks nodes by free VFs for SR-IOV pods.
	Placement Placement
	// MaxListed bounds the nodes one answer lists; 0 means no bound. Only
	// the best-scored are listed; of the nodes that tie at the cut, a uniformly
	// random sample fills the rest, so the pods of a burst are offered
	// different nodes among those with the most (or, packing, fewest) free
	// VFs. The unlisted ones score 0 like the worst.
	MaxListed int
}

// DefaultMaxListed is the extender's default Options.MaxListed.
const DefaultMaxListed = 100

// Prefers reports whether Prioritize may score any node above another for
// a pod with demand d; if not, it scores every node 0.
func (o Options) Prefers(d demand.Demand) bool {
	return (o.PreferLastNode && d.StickyKey != "") || (d.Network != "" && o.Placement != None && o.Placement != "")
}

// top is the best score; VF scores stay below it so that the last node of
// an identity always ranks first within the extender's score.
const top = extenderv1.MaxExtenderPriority

// Prioritize scores the nodes for a pod with demand d.
//
// Only differences between nodes matter to the scheduler, which adds the
// same extender score to every node's total; scores are therefore shifted
// so that the lowest candidate scores 0, and nodes scoring 0 are left out.
// In a cluster whose nodes have the same share of VFs free, an SR-IOV pod
// thus gets an empty list, as a pod with nothing to prefer does.
func (o Options) Prioritize(d demand.Demand, nodes []string, r reader) extenderv1.HostPriorityList {
	var res Result
	o.Into(&res, d, nodes, r)
	return res.Priorities
}

// Result holds the scores of one call and the room to compute them; Into
// reuses it.
type Result struct {
	// Priorities are the nodes that score above 0; never nil.
	Priorities extenderv1.HostPriorityList
	scores     []int8
}

// Into is Prioritize writing into res.
func (o Options) Into(res *Result, d demand.Demand, nodes []string, r reader) {
	res.Priorities = res.Priorities[:0]
	if res.Priorities == nil {
		res.Priorities = extenderv1.HostPriorityList{}
	}
	last := ""
	if o.PreferLastNode && d.StickyKey != "" {
		last, _ = r.LastNode(d.StickyKey)
	}
	if d.Network == "" || o.Placement == None || o.Placement == "" {
		for _, name := range nodes {
			if name == last {
				res.Priorities = append(res.Priorities, extenderv1.HostPriority{Host: name, Score: top})
				return
			}
		}
		return
	}
	res.scores = slices.Grow(res.scores[:0], len(nodes))[:len(nodes)]
	vr := r.Resource(d.Resource)
	low := top
	for i, name := range nodes {
		s := int64(0)
		if name == last {
			res.scores[i] = int8(top)
			continue
		}
		if n := r.Node(name); n != nil {
			alloc, used := r.VFs(n, vr)
			s = vfScore(o.Placement, alloc, alloc-used-d.VFs)
		}
		res.scores[i] = int8(s)
		low = min(low, s)
	}
	// The others shifted so that the lowest scores 0; the last node keeps
	// its 10. Shifted too, it led the nodes with about as many free VFs by
	// a point or two (10 - 7 against 8 - 7), which the scheduler's own
	// scores outweighed.
	var count [top + 1]int // nodes by score
	for i, s := range res.scores {
		if nodes[i] != last {
			res.scores[i] = s - int8(low)
		}
		count[res.scores[i]]++
	}
	// List every node that scores above cut, and need of the nodes that
	// score cut: all of them, unless that makes more than MaxListed.
	cut := int8(1)
	need := count[cut]
	if o.MaxListed > 0 && len(nodes)-count[0] > o.MaxListed {
		above := 0
		for cut = int8(top); above+count[cut] < o.MaxListed; cut-- {
			above += count[cut]
		}
		need = o.MaxListed - above
	}
	avail := count[cut]
	for i, s := range res.scores {
		if s == cut {
			// Selection sampling (Knuth's algorithm S): each subset of need
			// of the avail nodes at the cut is as likely as any other.
			take := need == avail || rand.IntN(avail) < need
			avail--
			if !take {
				continue
			}
			need--
		} else if s < cut {
			continue
		}
		res.Priorities = append(res.Priorities, extenderv1.HostPriority{Host: nodes[i], Score: int64(s)})
	}
}

// vfScore scores a node with alloc VFs of which free remain once the pod is
// placed, from 0 to top-1. A node where the pod's VFs do not fit (free < 0:
// VFs held by pods the scheduler does not count, or allocatable lowered
// below what is used) scores 0 whatever the placement: packing scored it
// highest, as if it were exactly full.
func vfScore(p Placement, alloc, free int64) int64 {
	if alloc <= 0 || free < 0 {
		return 0
	}
	free = min(free, alloc)
	n := free
	if p == Pack {
		n = alloc - free
	}
	// span·n/alloc in 128 bits: a node may advertise an absurd allocatable.
	hi, lo := bits.Mul64(uint64(top-1), uint64(n))
	q, _ := bits.Div64(hi, lo, uint64(alloc))
	return int64(q)
}
