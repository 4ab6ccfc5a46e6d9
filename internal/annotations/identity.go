package annotations

import (
	"fmt"
	"strconv"
	"strings"
)

// Kind is the kind of workload a sticky identity belongs to.
type Kind string

// The identity kinds (DESIGN.md, "Identity and stickiness").
const (
	KindStatefulSet Kind = "statefulset" // statefulset/<ns>/<name>/<ordinal>
	KindDeployment  Kind = "deployment"  // deployment/<ns>/<name>
	KindReplicaSet  Kind = "replicaset"  // replicaset/<ns>/<name> (no owning Deployment)
	KindDaemonSet   Kind = "daemonset"   // daemonset/<ns>/<name>/<node>
	KindPod         Kind = "pod"         // pod/<ns>/<name> (bare and Job pods)
)

// ID is a parsed sticky identity.
type ID struct {
	Kind      Kind
	Namespace string
	Name      string
	// Member is the StatefulSet ordinal or the DaemonSet node; empty for the other kinds.
	Member string
}

const acceptIdentity = "statefulset/<ns>/<name>/<ordinal>, deployment/<ns>/<name>, replicaset/<ns>/<name>, daemonset/<ns>/<name>/<node> or pod/<ns>/<name>"

// String renders the identity as written to the Identity annotation.
func (id ID) String() string {
	s := string(id.Kind) + "/" + id.Namespace + "/" + id.Name
	if id.Member != "" {
		s += "/" + id.Member
	}
	return s
}

// Shared reports whether the identity owns a set of addresses that its pods
// draw from (Deployment, ReplicaSet) rather than exactly one address.
func (id ID) Shared() bool { return id.Kind == KindDeployment || id.Kind == KindReplicaSet }

// Workload returns the identity of the workload without its member, such as
// statefulset/ns/web for statefulset/ns/web/2. Release rules work per workload.
func (id ID) Workload() string { return string(id.Kind) + "/" + id.Namespace + "/" + id.Name }

// Ordinal returns the StatefulSet ordinal.
func (id ID) Ordinal() (int, bool) {
	if id.Kind != KindStatefulSet {
		return 0, false
	}
	n, err := strconv.Atoi(id.Member)
	return n, err == nil
}

// ParseIdentity parses an identity string.
func ParseIdentity(s string) (ID, error) {
	parts := strings.Split(s, "/")
	bad := func() (ID, error) { return ID{}, invalid(Identity, s, acceptIdentity, nil) }
	if len(parts) < 3 {
		return bad()
	}
	for _, p := range parts {
		if p == "" {
			return bad()
		}
	}
	id := ID{Kind: Kind(parts[0]), Namespace: parts[1], Name: parts[2]}
	switch id.Kind {
	case KindStatefulSet:
		if len(parts) != 4 {
			return bad()
		}
		if n, err := strconv.Atoi(parts[3]); err != nil || n < 0 || strconv.Itoa(n) != parts[3] {
			return bad()
		}
		id.Member = parts[3]
	case KindDaemonSet:
		if len(parts) != 4 {
			return bad()
		}
		id.Member = parts[3]
	case KindDeployment, KindReplicaSet, KindPod:
		if len(parts) != 3 {
			return bad()
		}
	default:
		return bad()
	}
	return id, nil
}

// OtherNamespace returns the namespace of identity s when it is not ns:
// the webhook writes identities of the pod's own namespace only, so such a
// pod carries output annotations copied from another pod's manifest. An
// identity that does not parse gives "".
func OtherNamespace(s, ns string) string {
	if id, err := ParseIdentity(s); err == nil && id.Namespace != ns {
		return id.Namespace
	}
	return ""
}

// StatefulSetID returns the identity of a StatefulSet ordinal.
func StatefulSetID(ns, name string, ordinal int) ID {
	return ID{Kind: KindStatefulSet, Namespace: ns, Name: name, Member: fmt.Sprint(ordinal)}
}
