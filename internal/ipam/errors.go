package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ExhaustedError says a pool has no address for a new identity, and why.
type ExhaustedError struct {
	Pool    string
	Of      string // what ran out when not the whole pool, such as "the 3 addresses listed for deployment/ns/api"
	Stats   Stats
	Sharing []string // other pools that can hand out some of the same addresses (Pool.Sharing)
}

func (e *ExhaustedError) Error() string {
	s := e.Stats
	what := "pool " + e.Pool
	if e.Of != "" {
		what = e.Of + " in pool " + e.Pool
	}
	shared := ""
	if s.Elsewhere > 0 {
		shared = fmt.Sprintf(", %d by identities of IPPools %s, which hold them from an earlier spec", s.Elsewhere, strings.Join(s.ElsewherePools, ", "))
	}
	if len(e.Sharing) > 0 {
		shared += fmt.Sprintf(", %d by IPPools %s, which can hand out some of the same addresses", s.Shared, strings.Join(e.Sharing, ", "))
	}
	if e.Of != "" {
		// More addresses in the pool would not help: the list is the limit.
		return fmt.Sprintf("%s are all taken (%d by live or starting pods, %d held by sticky identities without a live pod, %d cooling down after release%s); "+
			"list more, or free some by deleting the workloads that hold them", what, s.Allocated, s.Held, s.Cooling, shared)
	}
	return fmt.Sprintf("%s is exhausted: all %d addresses are taken (%d by live or starting pods, %d held by sticky identities without a live pod, %d cooling down after release%s); "+
		"free some by deleting the workloads that hold them, or add addresses to the pool", what, s.Total, s.Allocated, s.Held, s.Cooling, shared)
}

// PoolDeletingError says a pool being deleted hands out no address to an
// identity that holds none of it.
type PoolDeletingError struct {
	Pool string
}

func (e *PoolDeletingError) Error() string {
	return fmt.Sprintf("IPPool %s is being deleted: it hands out no address to an identity that holds none of its addresses (those that hold one keep it), "+
		"and it goes once none is held; name another pool with the annotation stickynet.io/pool, or create the IPPool again once it is gone", e.Pool)
}

// MACExhaustedError says every MAC under a pool's macPrefix is taken (a
// random MAC without a prefix was not found free in 1,000 tries either).
type MACExhaustedError struct {
	Pool   string
	Prefix []byte
}

func (e *MACExhaustedError) Error() string {
	if len(e.Prefix) == 0 {
		return fmt.Sprintf("pool %s: no free MAC found in 1000 tries", e.Pool)
	}
	return fmt.Sprintf("pool %s is out of MACs: the %d under its spec.macPrefix %s are all taken (MACs are unique across pools); shorten the prefix (each octet less gives 256 times as many) or free addresses",
		e.Pool, uint64(1)<<(8*(6-len(e.Prefix))), net.HardwareAddr(e.Prefix))
}

// ConflictError says a requested address or MAC belongs to another identity.
type ConflictError struct {
	Pool    string
	What    string // "address 10.20.0.5" or "MAC 02:..."
	Holder  string // identity that owns it (former owner while cooling)
	Cooling bool   // the holder released it and it waits out the pool's reuse delay
}

func (e *ConflictError) Error() string {
	if e.Cooling {
		return fmt.Sprintf("%s of pool %s was released by %s and is cooling down for the pool's reuseDelaySeconds; only %s may take it back before then", e.What, e.Pool, e.Holder, e.Holder)
	}
	return fmt.Sprintf("%s of pool %s is held by %s", e.What, e.Pool, e.Holder)
}

// NotAllocatableError says a requested address can never be handed out by the pool.
type NotAllocatableError struct {
	IP     netip.Addr
	Reason string
}

func (e *NotAllocatableError) Error() string { return fmt.Sprintf("%s is %s", e.IP, e.Reason) }

// MACNotAllowedError says a requested MAC can never be used in the pool.
type MACNotAllowedError struct {
	MAC    net.HardwareAddr
	Pool   string
	Reason string
}

func (e *MACNotAllowedError) Error() string { return fmt.Sprintf("%s %s", e.MAC, e.Reason) }

// LostError says a reservation or binding no longer matches the store: the
// reservation expired, or the address now belongs to someone else.
type LostError struct {
	Pool   string
	IP     netip.Addr
	Reason string
}

func (e *LostError) Error() string {
	return fmt.Sprintf("address %s of pool %s: %s", e.IP, e.Pool, e.Reason)
}

// ErrContention is returned when a claim kept losing compare-and-swap races.
var ErrContention = errors.New("too many concurrent changes to the same addresses; try again")

// ErrInvalidRequest wraps malformed requests (a programming error of the caller).
var ErrInvalidRequest = errors.New("invalid allocation request")

// SetFullError says every member of a shared identity's capped set is carried
// by a pod or held for one being created.
type SetFullError struct {
	Identity     string
	Members, Max int
	Claiming     int // of Members, those being claimed right now for other pods
}

func (e *SetFullError) Error() string {
	claiming := ""
	if e.Claiming > 0 {
		claiming = fmt.Sprintf(", %d of them being claimed for pods admitted at this moment", e.Claiming)
	}
	capped := "replicas + maxSurge"
	if strings.HasPrefix(e.Identity, "replicaset/") {
		capped = "replicas"
	}
	return fmt.Sprintf("all %d addresses of %s are in use (its set is capped at %d: %s%s) and no pod has released one yet; the pod can be created again once an old pod is gone",
		e.Members, e.Identity, e.Max, capped, claiming)
}
