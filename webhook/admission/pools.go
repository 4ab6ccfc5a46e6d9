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
		if len(refused) > 0 {
			for _, e := range h.Alloc.Lookup(identity) {
				if err := refused[e.Pool]; err != nil {
					return nil, nil, "", err // it keeps its address, once the pool is mended
				}
			}
		}
		if len(defaults) > 0 {
			p, warning := h.defaultPool(defaults, ns, identity)
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
	return nil, nil, "", &annotations.Error{Key: key, Value: name, Accepted: "the name of an IPPool" + have(names)}
}

// defaultPool chooses among the default pools (sorted by name) that admit
// ns: the one where the identity holds an address, else the first not being
// deleted (one being deleted refuses new identities), else the first.
func (h *Handler) defaultPool(defaults []*v1alpha1.IPPool, ns *corev1.Namespace, identity string) (*v1alpha1.IPPool, string) {
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
	for _, e := range h.Alloc.Lookup(identity) {
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
