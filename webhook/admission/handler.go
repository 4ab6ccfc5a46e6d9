// Package admission is stickynet's mutating admission handler for Pod CREATE:
// it resolves the pod's sticky identity, chooses its IPPool, claims its IP and
// MAC through the IPAM core, resolves its bandwidth, adds the SR-IOV extended
// resource, and writes the output annotations of the contract. Bad input is
// denied with a message that names the key, the value and the accepted form.
package admission

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/promreg"
	"github.com/stickynet/stickynet/internal/workload"
	"github.com/stickynet/stickynet/webhook/policy"
)

// allocator is what the handler needs from the IPAM core.
type allocator interface {
	Allocate(ctx context.Context, req ipam.Request) (ipam.Allocation, error)
	Lookup(identity string) []ipam.Entry
	Unbind(ctx context.Context, pool string, ip netip.Addr, pod string) error
	Release(ctx context.Context, pool string, ip netip.Addr, identity string, force bool) (bool, error)
	Refresh(ctx context.Context, identity string) error
	HoldsOutside(identity string, p *ipam.Pool) bool
}

var _ allocator = (*ipam.Allocator)(nil)

// Handler mutates pods at admission.
type Handler struct {
	// Reader reads Namespaces, IPPools, BandwidthPolicies, SriovNetworks and
	// ReplicaSets (a cache in production).
	Reader client.Reader
	// APIReader reads what the cache may not have seen yet (optional).
	APIReader client.Reader
	// Alloc claims addresses.
	Alloc allocator
	// Decoder decodes the admitted pod.
	Decoder admission.Decoder
	// SchedulerName, when set, is given to pods that need the stickynet
	// scheduler extender (their pool has a nodeSelector, or they ask for a VF)
	// and name the default scheduler.
	SchedulerName string
	// NetworkResource, when set, gives each pod that gets an address a
	// request for one annotations.NetworkResource, which the node agents
	// advertise: such pods are then placed only on nodes whose agent serves.
	NetworkResource bool
	// StoreTimeout bounds the time spent on the state store per request, so a
	// denial reaches the API server within the webhook's timeout. Default 7 s.
	StoreTimeout time.Duration
	// Grace is the release controller's: a member bound to a pod more
	// recently is not freed for a pod of a full set, even when its pod cannot
	// be read (it may still be in its admission chain). Default
	// workload.DefaultGrace.
	Grace time.Duration
	// NewToken returns a reservation token (default: 8 random base32 characters).
	NewToken func() string
	// Metrics, if set, records admissions.
	Metrics *Metrics
}

var _ admission.Handler = (*Handler)(nil)

// Reads lists the kinds the handler reads through Reader, so that a cache
// can watch them before the first admission.
func Reads() []client.Object {
	return []client.Object{
		&corev1.Namespace{}, &corev1.Pod{}, &appsv1.ReplicaSet{}, &appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{},
		&v1alpha1.IPPool{}, &v1alpha1.BandwidthPolicy{}, &v1alpha1.SriovNetwork{},
	}
}

// denial is an error whose message is shown to the user as is.
type denial struct{ msg string }

func (d *denial) Error() string { return d.msg }

func deny(format string, args ...any) error { return &denial{msg: fmt.Sprintf(format, args...)} }

// Handle implements admission.Handler.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	start := time.Now()
	resp, result := h.handle(ctx, req)
	if h.Metrics != nil {
		h.Metrics.observe(result, time.Since(start))
	}
	return resp
}

func (h *Handler) handle(ctx context.Context, req admission.Request) (admission.Response, string) {
	log := klog.FromContext(ctx).WithValues("namespace", req.Namespace, "name", req.Name, "uid", req.UID)
	if req.Operation != admissionv1.Create || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed("not a pod creation"), resultSkipped
	}
	pod := &corev1.Pod{}
	if err := h.Decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err)), resultErrored
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	if pod.Spec.HostNetwork {
		// It gets no address; output annotations and the managed label
		// copied from another pod's manifest go, or the release controller
		// would take it for that pod.
		out := pod.DeepCopy()
		for _, k := range annotations.OutputKeys {
			delete(out.Annotations, k)
		}
		delete(out.Labels, annotations.ManagedLabel)
		return admission.Patched("host-network pod: stickynet does not apply", buildPatch(pod, out)...), resultSkipped
	}
	ns, err := h.namespace(ctx, pod.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("read namespace %s: %w", pod.Namespace, err)), resultErrored
	}
	if ns.Labels[annotations.EnabledLabel] != "true" {
		return admission.Allowed("namespace not opted in (" + annotations.EnabledLabel + ")"), resultSkipped
	}
	timeout := h.StoreTimeout
	if timeout <= 0 {
		timeout = 7 * time.Second
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dryRun := req.DryRun != nil && *req.DryRun
	out, warnings, err := h.mutate(sctx, pod, ns, dryRun)
	if err != nil {
		reason, denied := denialReason(err)
		switch {
		case denied:
			log.V(2).Info("Denied pod", "reason", err.Error())
			h.Metrics.denied(reason)
			return admission.Denied(err.Error()), resultDenied
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			// Canceled: the API server gave up on this call (its own timeout).
			// The same deadline covers the handler's reads of the API
			// server (an owner or pool its cache has not seen yet), whose
			// errors are *url.Error.
			what, ue := "its state store (etcd)", (*url.Error)(nil)
			if errors.As(err, &ue) {
				what = "the API server"
			}
			log.Error(err, "No answer in time", "from", what)
			return admission.Errored(http.StatusServiceUnavailable, fmt.Errorf("stickynet could not reach %s within %s; nothing was half-written (a claim etcd took before the deadline is given back once etcd answers if it was a Deployment's or ReplicaSet's, or a bare pod's named by generateName, and otherwise stays with the pod's identity: a pod created again under the same name, or a DaemonSet's next pod for the node, gets the same address); the pod can be created again once it answers: %w", what, timeout, err)), resultErrored
		default:
			log.Error(err, "Admission failed")
			return admission.Errored(http.StatusInternalServerError, fmt.Errorf("stickynet: %w; nothing was half-written", err)), resultErrored
		}
	}
	resp := admission.Patched("", buildPatch(pod, out)...)
	resp.Warnings = warnings
	return resp, resultAllowed
}

// mutate returns the pod with its assignment, and warnings for the client
// (kubectl prints them).
func (h *Handler) mutate(ctx context.Context, pod *corev1.Pod, ns *corev1.Namespace, dryRun bool) (_ *corev1.Pod, warnings []string, _ error) {
	pod = pod.DeepCopy()
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	ann := pod.Annotations
	prevToken, prevIdentity := ann[annotations.Reservation], ann[annotations.Identity]
	filledBy := ann[annotations.BandwidthPolicy]
	for _, k := range annotations.OutputKeys {
		delete(ann, k)
	}

	var sriov *v1alpha1.SriovNetwork
	if name, ok := ann[annotations.SriovNetwork]; ok {
		name, err := annotations.ParseName(annotations.SriovNetwork, name)
		if err != nil {
			return nil, nil, err
		}
		// Written back trimmed: the extender and the node agent read it.
		ann[annotations.SriovNetwork] = name
		if sriov, err = h.sriovNetwork(ctx, name); err != nil {
			return nil, nil, err
		}
		if n, where := vfRequests(pod, name); n > 1 {
			return nil, nil, deny("pod %s/%s asks for %d VFs of SriovNetwork %s (%s); a pod gets one: ask for %s%s: 1 in one container, or leave it to stickynet, which adds it to the first",
				pod.Namespace, podName(pod), n, name, strings.Join(where, ", "), annotations.SriovResourcePrefix, name)
		}
	}
	if n, where := requests(pod, annotations.NetworkResource); n > 1 {
		return nil, nil, deny("pod %s/%s asks for %d %s (%s); a pod takes one of its node's: ask for 1 in one container, or leave it to stickynet, which adds it to the first",
			pod.Namespace, podName(pod), n, annotations.NetworkResource, strings.Join(where, ", "))
	}
	token := ""
	if pod.Name == "" {
		token = h.token()
		if h.reinvoked(ctx, pod, prevToken, prevIdentity) {
			token = prevToken
		}
	}
	id, err := h.identity(ctx, pod, token)
	if err != nil {
		return nil, nil, err
	}
	ipp, pool, warning, err := h.pool(ctx, pod, ns, sriov, id.String())
	if err != nil {
		return nil, nil, err
	}
	if warning != "" {
		warnings = append(warnings, warning)
	}
	req := ipam.Request{Pool: pool, Identity: id.String(), Shared: id.Shared(), DryRun: dryRun}
	if pod.Name != "" {
		req.Pod = pod.Namespace + "/" + pod.Name
	} else {
		req.Token = token
		req.Ephemeral = id.Kind == annotations.KindPod // named after the token
	}
	if !req.Shared && h.APIReader != nil && h.Alloc.HoldsOutside(req.Identity, pool) {
		// The identity has an address (held or cooling) this replica's copy
		// of the pool does not allow, so the allocator would move it or give
		// it another: read the pool from the API server first. A copy behind
		// an edit would otherwise move an identity that another replica has
		// just moved into the new spec back out of it.
		if ipp, pool, err = h.freshPool(ctx, ipp.Name); err != nil {
			return nil, nil, err
		}
		req.Pool = pool
	}
	if err := h.onNamedNode(ctx, pod, ipp, sriov); err != nil {
		return nil, nil, err
	}
	if err := addressRequests(ann, id, &req); err != nil {
		return nil, nil, err
	}
	if v, ok := ann[annotations.IPRetention]; ok {
		if _, err := annotations.ParseRetention(v); err != nil {
			return nil, nil, err
		}
	}

	bw, err := h.bandwidth(ctx, pod, filledBy)
	if err != nil {
		return nil, nil, err
	}
	if sriov != nil && bw.Bandwidth.Ingress.Rate > 0 {
		// Traffic into a VF comes from the wire, past the node.
		if bw.Policy == "" {
			key := annotations.IngressBandwidth
			if _, ok := ann[key]; !ok {
				key = annotations.KubernetesIngressBandwidth
			}
			return nil, nil, deny("annotation %s: invalid value %q on a pod with %s=%s: traffic into its VF comes from the wire, not through the node, which cannot limit it; "+
				"an SR-IOV pod takes %s only (the VF's max_tx_rate)", key, ann[key], annotations.SriovNetwork, sriov.Name, annotations.EgressBandwidth)
		}
		warnings = append(warnings, fmt.Sprintf("BandwidthPolicy %s limits traffic into the pod, which its VF of SriovNetwork %s receives from the wire: "+
			"only the egress limit is enforced (the VF's max_tx_rate)", bw.Policy, sriov.Name))
	}
	if eg := bw.Bandwidth.Egress; sriov != nil && eg.Rate%1_000_000 != 0 {
		from := "annotation " + annotations.EgressBandwidth
		if bw.Policy != "" {
			from = "BandwidthPolicy " + bw.Policy
		} else if _, ok := ann[annotations.EgressBandwidth]; !ok {
			from = "annotation " + annotations.KubernetesEgressBandwidth
		}
		warnings = append(warnings, fmt.Sprintf("%s: an egress limit of %d bit/s on a VF of SriovNetwork %s is enforced as %d Mbit/s: a VF's max_tx_rate is whole Mbit/s, rounded up",
			from, eg.Rate, sriov.Name, eg.VFRateMbps()))
	}

	if w := hostPortWarning(pod); w != "" {
		warnings = append(warnings, w)
	}

	if id.Shared() {
		if req.MaxMembers, err = h.setCap(ctx, pod, id); err != nil {
			return nil, nil, err
		}
	} else if err := h.carriedByAnother(ctx, req); err != nil {
		return nil, nil, err
	}
	al, err := h.Alloc.Allocate(ctx, req)
	var full *ipam.SetFullError
	setCap, canGrow := req.MaxMembers, true
	for errors.As(err, &full) && !dryRun {
		// Every member is taken: free those whose pods are gone (the release
		// controller may not have seen it yet), grow past pods stuck
		// terminating, or wait briefly for one.
		freed := h.freeGoneMembers(ctx, req.Identity) || h.releaseUnusable(ctx, req)
		if !freed && canGrow && h.growPastStuck(ctx, &req, setCap) {
			var ex *ipam.ExhaustedError
			if al, err = h.Alloc.Allocate(ctx, req); !errors.As(err, &ex) {
				continue
			}
			// No free address to grow onto (the pool, or the set's ips
			// list, is full): wait for a member as without stuck pods.
			canGrow, req.MaxMembers = false, setCap
		}
		if !freed {
			select {
			case <-ctx.Done():
				return nil, nil, full
			case <-time.After(250 * time.Millisecond):
			}
		}
		if ctx.Err() != nil {
			return nil, nil, full
		}
		// A scale-up the cache has seen meanwhile (a ReplicaSet scaled
		// directly races its own pods' admissions) raises the cap.
		if c, cerr := h.setCap(ctx, pod, id); cerr == nil && c > setCap {
			req.MaxMembers += c - setCap
			setCap = c
		}
		al, err = h.Alloc.Allocate(ctx, req)
	}
	if err != nil {
		return nil, nil, explain(err, ann, req)
	}
	a := annotations.Assignment{
		Identity: id.String(), Pool: pool.Name, IPs: []netip.Prefix{al.Prefix}, MAC: al.MAC,
		VLAN: pool.VLAN, Bandwidth: bw.Bandwidth, BandwidthPolicy: bw.Policy,
	}
	if pool.Gateway.IsValid() {
		a.Gateways = []netip.Addr{pool.Gateway}
	}
	for _, k := range []string{annotations.IngressBandwidth, annotations.EgressBandwidth, annotations.IngressBurst, annotations.EgressBurst} {
		delete(ann, k) // rewritten from the resolved limits below
	}
	for k, v := range a.Annotations() {
		ann[k] = v
	}
	if al.Reserved && al.Token != "" {
		ann[annotations.Reservation] = al.Token
	}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[annotations.ManagedLabel] = "true"
	if sriov != nil {
		addRequest(pod, corev1.ResourceName(annotations.SriovResourcePrefix+sriov.Name))
	}
	if h.NetworkResource {
		addRequest(pod, annotations.NetworkResource)
	}
	if h.SchedulerName != "" && (pod.Spec.SchedulerName == "" || pod.Spec.SchedulerName == corev1.DefaultSchedulerName) &&
		(sriov != nil || selectsNodes(ipp.Spec.NodeSelector)) {
		pod.Spec.SchedulerName = h.SchedulerName
	}
	return pod, warnings, nil
}

// selectsNodes reports whether a pool's nodeSelector leaves some nodes out:
// an empty one, like none, selects every node. One that is not a selector
// counts as selecting, so that the extender refuses the nodes and says why.
// The same answer as the extender's LabelSelectorAsSelector(...).Empty()
// (extender/state), without parsing the selector on every admission.
func selectsNodes(sel *metav1.LabelSelector) bool {
	return sel != nil && len(sel.MatchLabels)+len(sel.MatchExpressions) > 0
}

// reinvoked reports whether a pod without a name carries the reservation
// of an earlier round of its own admission (the webhook is re-invoked when a
// later webhook changed the pod), so that the round keeps that reservation.
// The annotations may also have been copied from another pod, e.g. into a
// template; a token is therefore only taken back while its reservation is
// pending for the same identity, which a pod that was admitted and created
// under it no longer is once the release controller has bound it. Otherwise
// the pod gets a fresh token, and an earlier round's reservation expires.
func (h *Handler) reinvoked(ctx context.Context, pod *corev1.Pod, token, identity string) bool {
	if token == "" || identity == "" {
		return false
	}
	if id, err := h.identity(ctx, pod, token); err != nil || id.String() != identity {
		return false
	}
	pending := func() bool {
		for _, e := range h.Alloc.Lookup(identity) {
			if e.Token == token && (e.Reserved || e.Held) && e.Pod == "" {
				return true
			}
		}
		return false
	}
	// The earlier round may have been served by another replica a moment ago,
	// whose write this replica's watch has not delivered yet: read etcd.
	return pending() || h.Alloc.Refresh(ctx, identity) == nil && pending()
}

// setCap returns the most addresses a shared identity's set may hold: the
// Deployment's replicas + maxSurge, or the bare ReplicaSet's replicas.
func (h *Handler) setCap(ctx context.Context, pod *corev1.Pod, id annotations.ID) (int, error) {
	key := client.ObjectKey{Namespace: id.Namespace, Name: id.Name}
	switch id.Kind {
	case annotations.KindDeployment:
		d := &appsv1.Deployment{}
		if err := h.get(ctx, key, d); err != nil {
			return 0, client.IgnoreNotFound(err) // being deleted: no cap to keep
		}
		return int(workload.DeploymentCap(d)), nil
	case annotations.KindReplicaSet:
		rs := &appsv1.ReplicaSet{}
		if err := h.get(ctx, key, rs); err != nil {
			return 0, client.IgnoreNotFound(err)
		}
		return int(workload.Replicas(rs.Spec.Replicas)), nil
	}
	return 0, nil
}

// get reads from the cache, or from the API server when the cache has not seen the object yet.
func (h *Handler) get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := h.Reader.Get(ctx, key, obj, opts...)
	if apierrors.IsNotFound(err) && h.APIReader != nil {
		err = h.APIReader.Get(ctx, key, obj, opts...)
	}
	return err
}

// namespace reads the pod's namespace from the cache, or from the API server
// when the cache has not seen it or has it not opted in: the API server
// calls the webhook only for opted-in namespaces (its namespaceSelector),
// and a namespace labelled a moment ago must not have its pods passed
// through without an address, which no later admission would give them.
func (h *Handler) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	ns := &corev1.Namespace{}
	key := client.ObjectKey{Name: name}
	if err := h.get(ctx, key, ns); err != nil {
		return nil, err
	}
	if ns.Labels[annotations.EnabledLabel] != "true" && h.APIReader != nil {
		if err := h.APIReader.Get(ctx, key, ns); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// carriedByAnother denies a pod of a single identity whose address another
// live pod still carries: a DaemonSet rolling update with maxSurge runs the
// new pod next to the old one on the same node. A pod that is terminating or
// has terminated gives its address up; the identity's next pod takes it over.
//
// A pod of the same name that exists already keeps its address too: a second
// create of that name asking for another address, MAC or pool (which the API
// server refuses as a duplicate once admission is over) must not move the
// running pod's address and cool it down under it.
func (h *Handler) carriedByAnother(ctx context.Context, req ipam.Request) error {
	for _, e := range h.Alloc.Lookup(req.Identity) {
		if e.Pod == "" {
			continue
		}
		if e.Pod == req.Pod {
			if !moves(e, req) {
				continue
			}
			reader := h.APIReader // not the cache: a pod just deleted must not block its successor
			if reader == nil {
				reader = h.Reader
			}
			ns, name, _ := strings.Cut(req.Pod, "/")
			err := reader.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &corev1.Pod{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read pod %s, which carries %s of %s: %w", req.Pod, e.IP, req.Identity, err)
			}
			return deny("pod %s exists already and carries %s of pool %s (MAC %s): a second pod of that name, which the API server refuses anyway, does not move its address; create the pod once %s is gone",
				req.Pod, e.IP, e.Pool, e.MAC, req.Pod)
		}
		p, gone, err := h.boundPod(ctx, e.Pod)
		if err == nil && !gone && p.DeletionTimestamp == nil && h.APIReader != nil {
			// Before a denial, ask the API server: a cache behind it (a
			// watch that reconnected after a long gap) still shows a pod
			// deleted meanwhile.
			p, gone, err = h.livePod(ctx, e.Pod)
		}
		if err != nil {
			return fmt.Errorf("read pod %s, which carries %s of %s: %w", e.Pod, e.IP, req.Identity, err)
		}
		if gone || p.DeletionTimestamp != nil {
			continue
		}
		hint := ""
		if strings.HasPrefix(req.Identity, string(annotations.KindDaemonSet)+"/") {
			hint = " (a DaemonSet that keeps sticky addresses needs spec.updateStrategy.rollingUpdate.maxSurge: 0)"
		}
		return deny("%s of %s is carried by pod %s, which is still running: an identity's address is given to one pod at a time%s; the pod can be created once %s is gone",
			e.IP, req.Identity, e.Pod, hint, e.Pod)
	}
	return nil
}

// heldInGonePool adds to the denial of a pod that names an unknown pool what
// the pod's identity holds in an IPPool that no longer exists: a StatefulSet
// stuck because its pool was deleted says why, and how its addresses come
// back. (For a pod that names no pool, heldInDefault says it.)
func (h *Handler) heldInGonePool(ctx context.Context, id string, err error) error {
	for _, e := range h.Alloc.Lookup(id) {
		if gerr := h.get(ctx, client.ObjectKey{Name: e.Pool}, &v1alpha1.IPPool{}); apierrors.IsNotFound(gerr) {
			return fmt.Errorf("%w (%s holds %s of IPPool %s, which no longer exists: an IPPool of that name created again gives it back)", err, id, e.IP, e.Pool)
		}
	}
	return err
}

// freshPool reads the IPPool from the API server.
func (h *Handler) freshPool(ctx context.Context, name string) (*v1alpha1.IPPool, *ipam.Pool, error) {
	list := &v1alpha1.IPPoolList{}
	if err := h.APIReader.List(ctx, list); err != nil {
		return nil, nil, fmt.Errorf("read IPPool %s: %w", name, err)
	}
	for i := range list.Items {
		if list.Items[i].Name == name {
			return parse(&list.Items[i], list.Items)
		}
	}
	return nil, nil, deny("IPPool %s, the pod's pool, has just been deleted: create it again, or name another pool in %s (on the pod, its template or its namespace), or make one the default", name, annotations.Pool)
}

// moves reports whether the request asks a single identity's pod for another
// pool, address or MAC than its entry e has, or may no longer be given e's
// address (Request.Allows: the allocator then moves the identity off it).
func moves(e ipam.Entry, req ipam.Request) bool {
	return e.Pool != req.Pool.Name || !req.Allows(e.IP) ||
		req.IP.IsValid() && req.IP != e.IP || req.MAC != nil && req.MAC.String() != e.MAC.String()
}

// releaseUnusable releases one free member of a full shared set that the pod
// could never take: it lies in another pool or outside the listed addresses
// (the template moved to another pool or ips list), or its pool no longer
// allows it (the IPPool's spec was edited). Otherwise a set at its cap
// would refuse every pod of the rollout. It cools down, so a rollback within
// the pool's reuse delay gets it back.
func (h *Handler) releaseUnusable(ctx context.Context, req ipam.Request) bool {
	for _, e := range h.Alloc.Lookup(req.Identity) {
		if e.Pod != "" || e.Held || e.Reserved {
			continue
		}
		if e.Pool == req.Pool.Name && req.Allows(e.IP) {
			continue
		}
		if released, err := h.Alloc.Release(ctx, e.Pool, e.IP, req.Identity, false); err == nil {
			if released { // else another freed it first: room all the same
				klog.FromContext(ctx).Info("Released a member the set's pods can no longer use", "identity", req.Identity, "pool", e.Pool, "ip", e.IP)
			}
			return true
		}
	}
	return false
}

// growPastStuck raises the cap of a full shared set (capped at setCap) by
// the number of its members whose pods are stuck terminating, and reports
// whether it raised it. A pod evicted from a node that is out of reach
// stays Terminating, its address held, until the node returns or its Node
// object is deleted; the ReplicaSet replaces it at once, and without this
// the replacements beyond the surge would be refused for as long. Only pods
// past their deletion time by the grace count: a rollout's old pods, still
// within their termination grace period, hand their members over as
// before. The release controller frees the surplus once those pods are gone.
func (h *Handler) growPastStuck(ctx context.Context, req *ipam.Request, setCap int) bool {
	grace := cmp.Or(h.Grace, workload.DefaultGrace)
	stuck := 0
	for _, e := range h.Alloc.Lookup(req.Identity) {
		if e.Pod == "" {
			continue
		}
		if p, _, err := h.boundPod(ctx, e.Pod); err == nil && p != nil && p.DeletionTimestamp != nil && time.Since(p.DeletionTimestamp.Time) > grace {
			stuck++
		}
	}
	if setCap+stuck <= req.MaxMembers {
		return false
	}
	req.MaxMembers = setCap + stuck
	klog.FromContext(ctx).V(2).Info("Set grows past its cap: pods stuck terminating hold members", "identity", req.Identity, "stuck", stuck, "cap", req.MaxMembers)
	return true
}

// freeGoneMembers unbinds the identity's members whose pods no longer exist
// (or have terminated), bound longer than the grace ago, and reports whether
// it freed any.
func (h *Handler) freeGoneMembers(ctx context.Context, identity string) bool {
	grace := cmp.Or(h.Grace, workload.DefaultGrace)
	freed := false
	for _, e := range h.Alloc.Lookup(identity) {
		if e.Pod == "" || e.Held || e.Reserved || time.Since(e.Since) < grace {
			continue
		}
		if _, gone, err := h.boundPod(ctx, e.Pod); err == nil && gone && h.Alloc.Unbind(ctx, e.Pool, e.IP, e.Pod) == nil {
			freed = true
		}
	}
	return freed
}

// boundPod reads the pod ("ns/name") an address is bound to; gone is true
// when it does not exist or has terminated.
func (h *Handler) boundPod(ctx context.Context, key string) (*corev1.Pod, bool, error) {
	return readPod(ctx, h.get, key)
}

// livePod is boundPod read from the API server.
func (h *Handler) livePod(ctx context.Context, key string) (*corev1.Pod, bool, error) {
	return readPod(ctx, h.APIReader.Get, key)
}

func readPod(ctx context.Context, get func(context.Context, client.ObjectKey, client.Object, ...client.GetOption) error, key string) (*corev1.Pod, bool, error) {
	ns, name, _ := strings.Cut(key, "/")
	p := &corev1.Pod{}
	err := get(ctx, client.ObjectKey{Namespace: ns, Name: name}, p)
	if apierrors.IsNotFound(err) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return p, workload.Terminated(p), nil
}

// addressRequests applies the ip, ips and mac annotations to the request.
func addressRequests(ann map[string]string, id annotations.ID, req *ipam.Request) error {
	if v, ok := ann[annotations.IP]; ok {
		if id.Kind != annotations.KindPod {
			return &annotations.Error{Key: annotations.IP, Value: v, Accepted: "no value on a " + string(id.Kind) + " pod: use " + annotations.IPs + " on its template"}
		}
		ip, err := annotations.ParseIP(annotations.IP, v)
		if err != nil {
			return err
		}
		req.IP = ip
	}
	if v, ok := ann[annotations.IPs]; ok {
		list, err := annotations.ParseIPList(annotations.IPs, v)
		if err != nil {
			return err
		}
		switch id.Kind {
		case annotations.KindStatefulSet:
			ord, _ := id.Ordinal()
			if ord >= len(list) {
				return &annotations.Error{
					Key: annotations.IPs, Value: v,
					Accepted: fmt.Sprintf("an address for every ordinal: ordinal %d of %s has none (the list has %d); add addresses or scale down", ord, id.Workload(), len(list)),
				}
			}
			req.IP = list[ord]
		case annotations.KindPod:
			return &annotations.Error{Key: annotations.IPs, Value: v, Accepted: "no value on a bare pod: use " + annotations.IP}
		default:
			req.Candidates = list
		}
	}
	if v, ok := ann[annotations.MAC]; ok {
		if id.Kind != annotations.KindPod {
			return &annotations.Error{Key: annotations.MAC, Value: v, Accepted: "no value on a " + string(id.Kind) + " pod: a MAC can only be requested by a bare pod"}
		}
		mac, err := annotations.ParseMAC(annotations.MAC, v)
		if err != nil {
			return err
		}
		req.MAC = mac
	}
	return nil
}

// explain turns an IPAM error about an explicit request into a denial naming the annotation.
func explain(err error, ann map[string]string, req ipam.Request) error {
	var ce *ipam.ConflictError
	var ne *ipam.NotAllocatableError
	var me *ipam.MACNotAllowedError
	var ee *ipam.ExhaustedError
	key := annotations.IP
	if _, ok := ann[annotations.IPs]; ok {
		key = annotations.IPs
	}
	switch {
	case errors.As(err, &ce) && strings.HasPrefix(ce.What, "MAC"):
		return &annotations.Error{Key: annotations.MAC, Value: ann[annotations.MAC], Accepted: "a MAC no other identity holds", Err: err}
	case errors.As(err, &ce):
		return &annotations.Error{Key: key, Value: ann[key], Accepted: fmt.Sprintf("an address of pool %s that is free or already held by %s", req.Pool.Name, req.Identity), Err: err}
	case errors.As(err, &me):
		under := ""
		if len(req.Pool.MACPrefix) > 0 {
			under = ", or one under the pool's spec.macPrefix " + net.HardwareAddr(req.Pool.MACPrefix).String()
		}
		return &annotations.Error{Key: annotations.MAC, Value: ann[annotations.MAC], Accepted: "a locally administered unicast MAC such as 02:42:ac:11:00:02" + under + " (or set spec.allowUniversalMAC on pool " + req.Pool.Name + ")", Err: err}
	case errors.As(err, &ne):
		return &annotations.Error{Key: key, Value: ann[key], Accepted: fmt.Sprintf("an allocatable address of pool %s (%s)", req.Pool.Name, req.Pool.Prefix), Err: err}
	case errors.As(err, &ee) && ee.Of != "" && len(req.Candidates) > 0:
		// The workload's list ran out, not the pool: name the list.
		return &annotations.Error{Key: annotations.IPs, Value: ann[annotations.IPs], Accepted: "an address for each pod the workload runs at once (its replicas, and during a rollout its maxSurge more)", Err: err}
	}
	return err
}

func (h *Handler) token() string {
	if h.NewToken != nil {
		return h.NewToken()
	}
	var b [5]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

func (h *Handler) sriovNetwork(ctx context.Context, name string) (*v1alpha1.SriovNetwork, error) {
	n := &v1alpha1.SriovNetwork{}
	if err := h.get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		if client.IgnoreNotFound(err) != nil {
			return nil, fmt.Errorf("read SriovNetwork %s: %w", name, err)
		}
		list := &v1alpha1.SriovNetworkList{}
		_ = h.Reader.List(ctx, list)
		names := make([]string, 0, len(list.Items))
		for _, it := range list.Items {
			names = append(names, it.Name)
		}
		return nil, &annotations.Error{Key: annotations.SriovNetwork, Value: name, Accepted: "the name of a SriovNetwork" + have(names)}
	}
	return n, nil
}

func have(names []string) string {
	if len(names) == 0 {
		return " (there are none)"
	}
	return " (have: " + strings.Join(names, ", ") + ")"
}

// vfRequests counts the VFs of the network that the pod's containers (and
// sidecars, whose requests add up with them) ask for, and names where.
func vfRequests(pod *corev1.Pod, network string) (n int64, where []string) {
	return requests(pod, corev1.ResourceName(annotations.SriovResourcePrefix+network))
}

// requests counts what the pod's containers and sidecars ask of res, and
// names where.
func requests(pod *corev1.Pod, res corev1.ResourceName) (n int64, where []string) {
	count := func(kind string, c *corev1.Container) {
		q, ok := c.Resources.Limits[res]
		if !ok {
			q, ok = c.Resources.Requests[res]
		}
		if ok && !q.IsZero() {
			n += q.Value()
			where = append(where, fmt.Sprintf("%s %s: %s", kind, c.Name, q.String()))
		}
	}
	for i := range pod.Spec.InitContainers {
		if c := &pod.Spec.InitContainers[i]; c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			count("sidecar", c)
		}
	}
	for i := range pod.Spec.Containers {
		count("container", &pod.Spec.Containers[i])
	}
	return n, where
}

// addRequest asks for one of res in the first container, unless a container
// asks for it already: the manifest's own, or this webhook's on an earlier
// invocation, before another webhook put a container first (the pod would
// have asked for two VFs, and needed two free on its node).
func addRequest(pod *corev1.Pod, res corev1.ResourceName) {
	if n, _ := requests(pod, res); len(pod.Spec.Containers) == 0 || n > 0 {
		return
	}
	c := &pod.Spec.Containers[0]
	if c.Resources.Requests == nil {
		c.Resources.Requests = corev1.ResourceList{}
	}
	if c.Resources.Limits == nil {
		c.Resources.Limits = corev1.ResourceList{}
	}
	c.Resources.Requests[res] = resource.MustParse("1")
	c.Resources.Limits[res] = resource.MustParse("1")
}

// bandwidth resolves the pod's limits: its own keys win, else the policies.
// filledBy is the policy the pod's stickynet.io/bandwidth-policy named (on a
// re-invocation, or a pod copied from a running one): its keys count as that
// policy's only while they are what it gives; edited, they are the pod's own.
func (h *Handler) bandwidth(ctx context.Context, pod *corev1.Pod, filledBy string) (policy.Result, error) {
	has := annotations.HasBandwidth(pod.Annotations)
	if has && filledBy == "" {
		return policy.Resolve(pod, true, nil)
	}
	list := &v1alpha1.BandwidthPolicyList{}
	if err := h.Reader.List(ctx, list, client.InNamespace(pod.Namespace)); err != nil {
		return policy.Result{}, fmt.Errorf("list BandwidthPolicies of %s: %w", pod.Namespace, err)
	}
	if has && !policy.Gave(pod, filledBy, list.Items) {
		return policy.Resolve(pod, true, nil)
	}
	return policy.Resolve(pod, false, list.Items)
}

// Metrics counts admissions.
type Metrics struct {
	total    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	denials  *prometheus.CounterVec
}

const (
	resultAllowed = "allowed"
	resultDenied  = "denied"
	resultErrored = "errored"
	resultSkipped = "skipped"
)

// NewMetrics registers the admission metrics.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stickynet_webhook_admissions_total",
			Help: "Pod admissions by result (allowed, denied, errored, skipped).",
		}, []string{"result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "stickynet_webhook_admission_duration_seconds",
			Help:    "Time to handle a pod admission, by result.",
			Buckets: []float64{.0005, .001, .002, .003, .004, .005, .0075, .01, .0125, .015, .02, .03, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
	}
	m.denials = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stickynet_webhook_denials_total",
		Help: "Pods denied, by reason: exhausted (no address or MAC left in the pool or the listed addresses), set_full (a Deployment's or ReplicaSet's set at its cap), conflict (an address or MAC another identity holds), pool (the IPPool's spec cannot be used), request (the pod's own annotations or pool choice).",
	}, []string{"reason"})
	m.total = promreg.Register(reg, m.total)
	m.duration = promreg.Register(reg, m.duration)
	m.denials = promreg.Register(reg, m.denials)
	return m
}

// denialReason says whether err denies the pod (bad input, or what the
// pool cannot give) rather than failing the admission, and why, as
// stickynet_webhook_denials_total counts it.
func denialReason(err error) (string, bool) {
	var (
		ee *ipam.ExhaustedError
		mx *ipam.MACExhaustedError
		sf *ipam.SetFullError
		ce *ipam.ConflictError
		pe *ipam.PoolError
		pd *ipam.PoolDeletingError
		d  *denial
		ae *annotations.Error
		ne *ipam.NotAllocatableError
		me *ipam.MACNotAllowedError
	)
	switch {
	case errors.As(err, &ee), errors.As(err, &mx):
		return "exhausted", true
	case errors.As(err, &sf):
		return "set_full", true
	case errors.As(err, &ce):
		return "conflict", true
	case errors.As(err, &pe), errors.As(err, &pd):
		return "pool", true
	case errors.As(err, &d), errors.As(err, &ae), errors.As(err, &ne), errors.As(err, &me):
		return "request", true
	}
	return "", false
}

// denied counts a denial by its reason (denialReason).
func (m *Metrics) denied(reason string) {
	if m != nil {
		m.denials.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) observe(result string, d time.Duration) {
	m.total.WithLabelValues(result).Inc()
	m.duration.WithLabelValues(result).Observe(d.Seconds())
}

// hostPortWarning words the warning for a pod that asks for host ports:
// its network is stickynet's alone (the node agent's conflist chains no
// portmap plugin), so nothing maps them; the scheduler still reserves them.
func hostPortWarning(pod *corev1.Pod) string {
	var ports []string
	add := func(field string, cs []corev1.Container) {
		for i, c := range cs {
			for j, p := range c.Ports {
				if p.HostPort != 0 {
					ports = append(ports, fmt.Sprintf("spec.%s[%d].ports[%d].hostPort=%d", field, i, j, p.HostPort))
				}
			}
		}
	}
	add("initContainers", pod.Spec.InitContainers)
	add("containers", pod.Spec.Containers)
	if len(ports) == 0 {
		return ""
	}
	return fmt.Sprintf("%s: host ports are not mapped for pods stickynet attaches (its network has no portmap plugin); reach the pod at its sticky address (%s) or through a Service",
		strings.Join(ports, ", "), annotations.AssignedIP)
}
