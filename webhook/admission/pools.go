package admission

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
)

// pool chooses the pod's IPPool: the SriovNetwork's pool, else the pod's
// annotation (set on the pod or its template), else the namespace's
// annotation, else the default pool that admits the namespace. Of several
// such default pools it takes the one where the identity holds an address,
// so that a default pool added later moves no sticky identity, else the
// first by name; either way with a warning.
func (h *Handler) pool(ctx context.Context, pod *corev1.Pod, ns *corev1.Namespace, sriov *v1alpha1.SriovNetwork, identity string) (_ *v1alpha1.IPPool, _ *ipam.Pool, warning string, _ error) {
	name, key := pod.Annotations[annotations.Pool], annotations.Pool
	var err error
	if name != "" {
		if name, err = annotations.ParseName(key, name); err != nil {
			return nil, nil, "", err
		}
	}
	if sriov != nil && sriov.Spec.Pool != "" {
		if name != "" && name != sriov.Spec.Pool {
			return nil, nil, "", &annotations.Error{Key: key, Value: name, Accepted: fmt.Sprintf("no value or %q: SriovNetwork %s draws its addresses from pool %s", sriov.Spec.Pool, sriov.Name, sriov.Spec.Pool)}
		}
		if name == "" {
			key = "SriovNetwork " + sriov.Name + " spec.pool"
		}
		name = sriov.Spec.Pool
	}
	if name == "" && ns.Annotations[annotations.Pool] != "" {
		key = "namespace " + ns.Name + " annotation " + annotations.Pool
		if name, err = annotations.ParseName(key, ns.Annotations[annotations.Pool]); err != nil {
			return nil, nil, "", err
		}
	}
	// The cache first; a pool it has not seen yet (created a moment ago, as
	// with a pool and its pods in one kubectl apply) is looked for again in
	// the API server before the pod is denied.
	var held []ipam.Entry // the identity's addresses, for a pod that names no pool
	if name == "" {
		held = h.Alloc.Lookup(identity)
	}
	var names, broken []string
	for _, r := range []client.Reader{h.Reader, h.APIReader} {
		if r == nil {
			continue
		}
		list := &v1alpha1.IPPoolList{}
		if err := r.List(ctx, list); err != nil {
			return nil, nil, "", fmt.Errorf("list IPPools: %w", err)
		}
		sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
		names, broken = names[:0], broken[:0]
		var defaults []*v1alpha1.IPPool
		parsed, refused := map[string]*ipam.Pool{}, map[string]error{}
		for i := range list.Items {
			p := &list.Items[i]
			if name == "" {
				if !p.Spec.Default {
					continue
				}
				// A default pool that cannot hand out addresses (its
				// spec refused) is passed over, but for an identity that
				// holds an address in it: one such pool, sorted first,
				// would otherwise deny every new identity that a valid
				// default pool admits.
				ok, err := admits(p, ns)
				if err != nil {
					broken = append(broken, fmt.Sprintf("IPPool %s has spec.default: true, but its spec.namespaceSelector is not a label selector (%s)", p.Name, err))
					continue
				}
				if !ok {
					continue
				}
				pool, err := ipam.NewPool(p.Name, p.Spec)
				if err != nil {
					broken = append(broken, fmt.Sprintf("default pool passed over: %v", err))
					refused[p.Name] = err
					continue
				}
				defaults, parsed[p.Name] = append(defaults, p), pool
				continue
			}
			if p.Name == name {
				if ok, err := admits(p, ns); err == nil && !ok {
					return nil, nil, "", &annotations.Error{Key: key, Value: name, Accepted: fmt.Sprintf("an IPPool whose spec.namespaceSelector matches namespace %s's labels", ns.Name) + have(admitting(list.Items, ns))}
				}
				ipp, pool, err := parse(p, list.Items)
				return ipp, pool, "", err
			}
			names = append(names, p.Name)
		}
		if name == "" {
			final := r == h.APIReader || h.APIReader == nil
			again, err := heldInDefault(identity, held, ns, list.Items, parsed, refused, final)
			if err != nil {
				return nil, nil, "", err
			}
			if again {
				continue
			}
		}
		if len(defaults) > 0 {
			p, warning := defaultPool(defaults, ns, identity, held)
			if warning != "" {
				broken = append(broken, warning)
			}
			pool := parsed[p.Name]
			complete(pool, p, list.Items)
			return p, pool, strings.Join(broken, "; "), nil
		}
	}
	if name == "" {
		why := ""
		if len(broken) > 0 {
			why = "; " + strings.Join(broken, "; ")
		}
		return nil, nil, "", deny("no IPPool for pod %s/%s: set the annotation %s on the pod, its template or namespace %s, or mark an IPPool that admits the namespace with spec.default: true%s",
			pod.Namespace, podName(pod), annotations.Pool, ns.Name, why)
	}
	return nil, nil, "", h.heldInGonePool(ctx, identity, &annotations.Error{Key: key, Value: name, Accepted: "the name of an IPPool" + have(names)})
}

// heldInDefault denies a pod that names no pool when its identity holds its
// address in a default pool that cannot serve it any more: one whose spec is
// refused (refused), that no longer admits the namespace, whose
// namespaceSelector does not parse, or that is gone. Such an identity moved
// to another default pool at its next pod, its address cooling for anyone;
// now it keeps its address for when the pool is mended, and naming a pool
// with the annotation moves it. An identity that holds its address in one
// of the usable default pools (defaults) is defaultPool's; one in a pool
// that is not a default pool got it by naming that pool, and without the
// name goes to the default pool, as a rollback to a template without the
// annotation does. A pool missing from a reader other than the final one,
// which may lag, is looked for again (again).
func heldInDefault(identity string, entries []ipam.Entry, ns *corev1.Namespace, all []v1alpha1.IPPool, defaults map[string]*ipam.Pool, refused map[string]error, final bool) (again bool, _ error) {
	for _, e := range entries {
		if defaults[e.Pool] != nil {
			return false, nil
		}
	}
	move := fmt.Sprintf("or name another pool with the annotation %s to move the identity there", annotations.Pool)
	for _, e := range entries {
		if err := refused[e.Pool]; err != nil {
			return false, err // it keeps its address, once the pool is mended
		}
		holds := fmt.Sprintf("IPPool %s, where %s holds %s,", e.Pool, identity, e.IP)
		i := slices.IndexFunc(all, func(p v1alpha1.IPPool) bool { return p.Name == e.Pool })
		if i < 0 {
			if !final {
				return true, nil
			}
			return false, deny("%s does not exist: create it again to give the address back, %s", holds, move)
		}
		p := &all[i]
		if !p.Spec.Default {
			continue
		}
		ok, err := admits(p, ns)
		if err != nil {
			return false, deny("%s has a spec.namespaceSelector that is not a label selector (%v): mend it to give the address back, %s", holds, err, move)
		}
		if !ok {
			return false, deny("%s no longer admits namespace %s (spec.namespaceSelector): the address stays held for when it does, %s", holds, ns.Name, move)
		}
	}
	return false, nil
}

// defaultPool chooses among the default pools (sorted by name) that admit
// ns: the one where the identity holds an address (of entries, its
// addresses), else the first not being deleted (one being deleted refuses
// new identities), else the first.
func defaultPool(defaults []*v1alpha1.IPPool, ns *corev1.Namespace, identity string, entries []ipam.Entry) (*v1alpha1.IPPool, string) {
	if len(defaults) == 1 {
		return defaults[0], ""
	}
	names := make([]string, len(defaults))
	for i, p := range defaults {
		names[i] = p.Name
	}
	chosen, why := defaults[0], "the first by name"
	if i := slices.IndexFunc(defaults, func(p *v1alpha1.IPPool) bool { return p.DeletionTimestamp == nil }); i > 0 {
		chosen, why = defaults[i], "the first by name not being deleted"
	}
	held := map[string]bool{}
	for _, e := range entries {
		held[e.Pool] = true
	}
	for _, p := range defaults {
		if held[p.Name] {
			chosen, why = p, "where "+identity+" holds its address"
			break
		}
	}
	return chosen, fmt.Sprintf("IPPools %s all have spec.default: true and admit namespace %s: the pod gets %s, %s; keep one default pool per namespace, or name the pool with the annotation %s",
		strings.Join(names, ", "), ns.Name, chosen.Name, why, annotations.Pool)
}

// parse takes the pool p of all the IPPools.
func parse(p *v1alpha1.IPPool, all []v1alpha1.IPPool) (*v1alpha1.IPPool, *ipam.Pool, error) {
	// pool passes only pools that admit the namespace, or whose selector
	// does not parse, which NewPool refuses.
	pool, err := ipam.NewPool(p.Name, p.Spec)
	if err != nil {
		return nil, nil, err
	}
	complete(pool, p, all)
	return p, pool, nil
}

// complete sets what pool, parsed from p's spec, learns from the rest of p
// and from all the IPPools.
func complete(pool *ipam.Pool, p *v1alpha1.IPPool, all []v1alpha1.IPPool) {
	pool.Sharing, _ = ipam.Sharing(pool, all)
	pool.Deleting = p.DeletionTimestamp != nil
}

// admitting names the pools that admit the namespace.
func admitting(pools []v1alpha1.IPPool, ns *corev1.Namespace) []string {
	var names []string
	for i := range pools {
		if ok, _ := admits(&pools[i], ns); ok {
			names = append(names, pools[i].Name)
		}
	}
	return names
}

func admits(p *v1alpha1.IPPool, ns *corev1.Namespace) (bool, error) {
	if p.Spec.NamespaceSelector == nil {
		return true, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(p.Spec.NamespaceSelector)
	if err != nil {
		return false, err
	}
	return sel.Matches(labels.Set(ns.Labels)), nil
}

func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName + "*"
}
