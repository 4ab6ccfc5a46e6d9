package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/api/v1alpha1"
	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/api"
	"github.com/stickynet/stickynet/nodeagent/datapath"
	"github.com/stickynet/stickynet/nodeagent/ovs"
)

// Handle answers one forwarded CNI request; it is the agent's boundary, so
// failures are logged here once and returned as CNI errors.
func (a *agent) Handle(ctx context.Context, req api.Request) api.Response {
	log := klog.FromContext(ctx).WithValues("command", req.Command, "containerID", req.ContainerID, "ifname", req.IfName)
	if p, err := parseCNIArgs(req.Args); err == nil && p.Name != "" {
		log = log.WithValues("pod", p.String())
	}
	ctx = klog.NewContext(ctx, log)
	start := time.Now()
	// The network configuration is read once, here. Every command answers
	// within the plugin's timeout (answerWithin); one whose configuration
	// does not parse gets none: ADD, DEL, CHECK and GC refuse it (STATUS
	// reads none; the runtime always sends one that parses).
	conf, confErr := a.conf(req)
	if confErr == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, answerWithin(conf))
		defer cancel()
	}
	var resp api.Response
	var err error
	switch req.Command {
	case api.CommandAdd, api.CommandDel, api.CommandCheck, api.CommandGC:
		if confErr != nil {
			err = confErr
			break
		}
		switch req.Command {
		case api.CommandAdd:
			resp.Result, resp.Fallback, err = a.add(ctx, conf, req)
		case api.CommandDel:
			resp.Fallback, err = a.del(ctx, req)
		case api.CommandCheck:
			err = a.check(ctx, req)
		case api.CommandGC:
			err = a.gc(ctx, conf)
		}
	case api.CommandStatus:
		err = a.cniStatus(ctx)
	default:
		err = types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("unknown CNI command %q", req.Command), "")
	}
	if err != nil {
		te := cniError(err)
		resp = api.Response{Error: te}
		log.Error(te, "CNI request failed", "code", te.Code, "details", te.Details, "duration", time.Since(start))
		return resp
	}
	if resp.Fallback != nil {
		log.V(2).Info("CNI request goes to the fallback network", "reason", resp.Fallback.Reason, "duration", time.Since(start))
		return resp
	}
	log.V(2).Info("CNI request done", "duration", time.Since(start))
	return resp
}

// cniError is the CNI error a request's failure is answered with: the code
// of the CNI error it carries (else try-again-later when OVS did not answer
// or could not be reached, else internal) and its whole message, wrapping
// included (a failed undo's).
func cniError(err error) *types.Error {
	var te *types.Error
	switch {
	case !errors.As(err, &te):
		code := types.ErrInternal
		if errors.Is(err, ovs.ErrNoAnswer) || errors.Is(err, ovs.ErrUnreachable) {
			code = types.ErrTryAgainLater
		}
		return types.NewError(code, err.Error(), "")
	case te.Error() != err.Error():
		return types.NewError(te.Code, err.Error(), te.Details)
	}
	return te
}

func (a *agent) conf(req api.Request) (*api.NetConf, error) {
	c, err := api.ParseNetConf(req.Config)
	if err != nil {
		return nil, err
	}
	if c.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network configuration has no \"name\"", "")
	}
	return c, nil
}

func needAttachmentArgs(req api.Request) error {
	for _, v := range []struct{ name, value string }{{"CNI_CONTAINERID", req.ContainerID}, {"CNI_IFNAME", req.IfName}} {
		if v.value == "" {
			return types.NewError(types.ErrInvalidEnvironmentVariables, v.name+" is empty", "")
		}
	}
	return nil
}

// add attaches a pod stickynet serves, or tells the plugin to attach it
// through the conflist's fallback network (see notAdmitted).
func (a *agent) add(ctx context.Context, conf *api.NetConf, req api.Request) ([]byte, *api.Fallback, error) {
	if err := needAttachmentArgs(req); err != nil {
		return nil, nil, err
	}
	if req.Netns == "" {
		return nil, nil, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is empty", "")
	}
	ref, err := parseCNIArgs(req.Args)
	if err != nil {
		return nil, nil, err
	}
	// One budget for the waits of ADD: for the pod to reach the cache, then
	// for its address to be free on this node (and its SriovNetwork known).
	budget := a.podWait(conf)
	wait, cancelWait := context.WithTimeout(ctx, budget)
	defer cancelWait()
	pod, err := a.waitPod(wait, ref, budget)
	if err != nil {
		return nil, nil, err
	}
	asg, perr := annotations.ParseAssignment(pod.Annotations)
	if errors.Is(perr, annotations.ErrNotAssigned) {
		fb, err := notAdmitted(conf, pod)
		return nil, fb, err
	}
	if perr == nil {
		if err := copiedAssignment(pod, asg); err != nil {
			return nil, nil, err
		}
	}
	res, err := a.attach(ctx, wait, conf, req, pod)
	return res, nil, err
}

// answerWithin is how long a command may take in the agent (Handle): the
// plugin's request timeout less a tenth. A step that runs out of it, such as
// an OVS command that ovs-vswitchd or ovsdb-server does not answer, fails
// with the agent's own error, which says what did not answer, before the
// plugin gives up with a bare timeout. (An ovsdb-server that took the
// connection and answered nothing held each DEL past the plugin's timeout,
// ovs-vsctl's own being as long: the runtime retried it for as long and the
// pod stayed Terminating, although its veth went at the first try; CHECK,
// GC and STATUS likewise.)
func answerWithin(conf *api.NetConf) time.Duration {
	t, _ := conf.RequestTimeout() // a.conf refuses a bad one
	return t - t/10
}

// waitedFor says how long a wait that ctx ended lasted (its budget, if
// given, when that ran out), and whether the request was cancelled instead.
func waitedFor(ctx context.Context, start time.Time, budget time.Duration) string {
	if budget > 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("after %s", budget)
	}
	why := fmt.Sprintf("after %s", time.Since(start).Round(100*time.Millisecond))
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		why = "when the request was cancelled " + why
	}
	return why
}

// podWait is the budget of an ADD's waits: --pod-wait, but at most half the
// plugin's request timeout (the conflist's "timeout"), so that a wait that
// runs out ends in the agent's own error, which says what it waited for,
// before the plugin gives up on the agent.
func (a *agent) podWait(conf *api.NetConf) time.Duration {
	t, err := conf.RequestTimeout()
	if err != nil {
		return a.opts.PodWait // a.conf refuses such a configuration
	}
	return min(a.opts.PodWait, t/2)
}

// copiedAssignment refuses an assignment whose identity is of another
// namespace than the pod's: copied from another pod's manifest into a
// namespace the webhook does not serve (which would have replaced it), it
// would put that pod's address and MAC on the wire twice.
func copiedAssignment(pod *corev1.Pod, asg annotations.Assignment) error {
	other := annotations.OtherNamespace(asg.Identity, pod.Namespace)
	if other == "" {
		return nil
	}
	return types.NewError(api.ErrPodNotAdmitted, fmt.Sprintf("pod %s/%s carries the assignment of %s (%s), an identity of namespace %s: "+
		"it was copied from another pod, not given by the stickynet webhook; create the pod without the stickynet.io/ output annotations, "+
		"in a namespace labelled %s=true", pod.Namespace, pod.Name, asg.Identity, pod.Annotations[annotations.AssignedIP], other, annotations.EnabledLabel), "")
}

// notAdmitted answers ADD for a pod without a stickynet assignment: it goes
// to the conflist's fallback network, unless it asks for stickynet through
// a stickynet.io/ annotation (then it must not get another network
// silently) or there is no fallback network.
func notAdmitted(conf *api.NetConf, pod *corev1.Pod) (*api.Fallback, error) {
	reason := fmt.Sprintf("pod %s/%s: %v", pod.Namespace, pod.Name, annotations.ErrNotAssigned)
	if key := stickynetAnnotation(pod.Annotations); key != "" {
		return nil, types.NewError(api.ErrPodNotAdmitted,
			fmt.Sprintf("%s; it carries %s=%q, so it asks for stickynet and does not go to the fallback network", reason, key, pod.Annotations[key]), "")
	}
	if len(conf.Fallback) == 0 || string(conf.Fallback) == "null" {
		return nil, types.NewError(api.ErrPodNotAdmitted, reason, "")
	}
	return &api.Fallback{Reason: reason}, nil
}

// annotationPrefix starts every key of stickynet's annotation contract.
const annotationPrefix = "stickynet.io/"

// stickynetAnnotation returns the first (sorted) stickynet.io/ annotation
// key, or "".
func stickynetAnnotation(ann map[string]string) string {
	var keys []string
	for k := range ann {
		if strings.HasPrefix(k, annotationPrefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	slices.Sort(keys)
	return keys[0]
}

// attach sets up the attachment of a pod with a stickynet assignment; wait
// bounds how long it waits for another pod on the node to give up the
// address (waitCarriers).
func (a *agent) attach(ctx, wait context.Context, conf *api.NetConf, req api.Request, pod *corev1.Pod) ([]byte, error) {
	asg, err := podAssignment(pod)
	if err != nil {
		return nil, err
	}
	at := &datapath.Attachment{
		Network:      conf.Name,
		ContainerID:  req.ContainerID,
		IfName:       req.IfName,
		Netns:        req.Netns,
		PodNamespace: pod.Namespace,
		PodName:      pod.Name,
		PodUID:       kubeletUID(pod),
		HostVeth:     datapath.HostVethName(req.ContainerID, req.IfName),
		MAC:          asg.MAC.String(),
		IPs:          asg.IPs,
		Gateways:     asg.Gateways,
		VLAN:         asg.VLAN,
		MTU:          a.opts.MTU,
		Bandwidth:    asg.Bandwidth,
	}
	// Before the attachment's lock: the carrier's DEL may need the same
	// stripe of keyLocks.
	if err := a.waitCarriers(wait, at); err != nil {
		return nil, err
	}
	defer a.doneStarting(at)
	// Before the attachment's lock too, which other requests share: the
	// SriovNetwork may take a moment to reach the agent's cache.
	var sriovNet *v1alpha1.SriovNetwork
	if name := pod.Annotations[annotations.SriovNetwork]; name != "" {
		if sriovNet, err = a.waitSriovNetwork(wait, name); err != nil {
			return nil, err
		}
	}
	unlock, err := a.lockKey(ctx, at.Key())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if old := a.get(at.Key()); old != nil {
		// ADD again without DEL: start over rather than trust what is there.
		if err := a.remove(ctx, old); err != nil {
			return nil, err
		}
	}
	if sriovNet != nil {
		if err := a.addVF(ctx, at, sriovNet, asg); err != nil {
			return nil, err
		}
		err = a.store.Put(at)
		if err = timedOut(ctx, err, "the VF"); err != nil {
			// addVF recorded the VF before it changed anything: the undo
			// removes that record with the VF's setup.
			return nil, a.undoAdd(ctx, conf, at, err)
		}
		a.attached(at)
		return buildResult(conf.CNIVersion, at, nil)
	}
	if err := a.allocPort(at); err != nil {
		return nil, err
	}
	// The record goes down first: should the agent die halfway, the restarted
	// agent (or a DEL) finds what to clean up, and, should the veth be there
	// already, how to limit its egress (Setup sets the same).
	at.EgressMode = a.dp.EgressMode()
	if err := a.store.Put(at); err != nil {
		a.freePort(at.OFPort)
		return nil, err
	}
	hostMAC, err := a.dp.Setup(ctx, at)
	if err = timedOut(ctx, err, "the attachment"); err != nil {
		return nil, a.undoAdd(ctx, conf, at, err)
	}
	if err := a.store.Put(at); err != nil {
		a.track(at) // set up, but the ADD fails: its DEL removes it
		return nil, err
	}
	a.attached(at)
	if at.Bandwidth.Egress.Rate > 0 {
		a.wakeWarm()
	}
	return buildResult(conf.CNIVersion, at, hostMAC)
}

// attached counts at as the pod's attachment, set up by an ADD, and checks
// the pod's limits once more: a change made while the ADD ran (which read
// the pod at its start, then may have waited for a carrier or for OVS)
// found no attachment to queue, and would otherwise wait for the resync.
func (a *agent) attached(at *datapath.Attachment) {
	a.mu.Lock()
	a.atts[at.Key()] = at
	a.mu.Unlock()
	a.queue.Add(at.Pod())
}

// timedOut returns err, or, when the step that set up what (an attachment
// or a VF) succeeded after the plugin gave up waiting, an error: the
// plugin reports failure, so the ADD must be undone.
func timedOut(ctx context.Context, err error, what string) error {
	if err == nil && ctx.Err() != nil {
		return types.NewError(types.ErrTryAgainLater, "request timed out while "+what+" was being set up", "")
	}
	return err
}

// undoAdd tears down what a failed ADD set up, removes its record and
// returns err with what the undo could not do. The VF or port number goes
// back only once nothing is left; otherwise the attachment stays tracked,
// with its record and its VF or port number, and its DEL tries again (and
// the resync, for an OVS port whose veth is gone).
//
// The undo has what is left of the ADD's time (ctx) and a fiftieth of the
// plugin's timeout more, so that the ADD answers before the plugin gives up
// even when an OVS command hangs (ovsdb-server taking connections and
// answering nothing): with no deadline, each teardown waited the OVS
// command's own timeout, as long as the plugin's, and the runtime's DEL
// waited for the undo's lock.
func (a *agent) undoAdd(ctx context.Context, conf *api.NetConf, at *datapath.Attachment, err error) error {
	t, _ := conf.RequestTimeout() // a.conf refuses a bad one
	left := t / 50
	if dl, ok := ctx.Deadline(); ok {
		left += max(time.Until(dl), 0)
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), left)
	defer cancel()
	if terr := a.dp.Teardown(uctx, at); terr != nil {
		a.track(at)
		return fmt.Errorf("%w; its undo failed, and what is left stays until the pod's DEL: %w", err, terr)
	}
	if derr := a.dropRecord(at); derr != nil {
		return fmt.Errorf("%w; its record stays until the pod's DEL: %w", err, derr)
	}
	a.mu.Lock()
	a.unmarkUsed(at)
	a.mu.Unlock()
	return err
}

// carrierPoll is how often waitCarriers looks again without a removal: a
// carrier's host veth goes with its netns, with no word to the agent.
const carrierPoll = 250 * time.Millisecond

// waitCarriers returns once no attachment of another sandbox on this node
// (another pod's, or an earlier sandbox of at's pod), set up or being set
// up, carries at's MAC or one of its IPs on at's VLAN, and
// then counts at as being set up (until doneStarting) so that an ADD that
// overlaps this one waits for it in turn. An address is on one pod at a
// time, else OVS's MAC learning and the neighbours' caches send its traffic
// to either. A DaemonSet pod deleted with --force is the case: the API
// forgets it at once, and the DaemonSet controller creates the node's new
// pod, which the webhook gives the node's address, while kubelet still
// stops the old one. The new pod's ADD waits here for the old pod's DEL.
// When wait ends first, the error names the carrier and asks to try again
// (kubelet retries the sandbox).
func (a *agent) waitCarriers(wait context.Context, at *datapath.Attachment) error {
	var waited *datapath.Attachment
	start := time.Now()
	gone := map[*datapath.Attachment]bool{} // carry nothing any more (carries)
	// Another sandbox's, with an address of at's: another pod's, or an
	// earlier sandbox of the same pod that still carries it (its DEL
	// failed or has not come). The interfaces of one sandbox share its
	// assignment.
	other := func(o *datapath.Attachment) bool {
		return o.ContainerID != at.ContainerID && sharesAddress(o, at)
	}
	for {
		a.mu.Lock()
		detached := a.detached
		var carrier *datapath.Attachment
		starting := false // carrier is an ADD still being set up
		for _, o := range a.starting {
			if other(o) {
				carrier, starting = o, true
			}
		}
		var others []*datapath.Attachment
		for _, o := range a.atts {
			if !gone[o] && other(o) {
				others = append(others, o)
			}
		}
		if carrier == nil && len(others) == 0 {
			a.starting[at.Key()] = at
			a.mu.Unlock()
			if waited != nil {
				addressWaits.WithLabelValues("handed_over").Inc()
				klog.FromContext(wait).Info("Address given up by the other pod", "pod", at.Pod(), "carrier", waited.Pod(), "waited", time.Since(start))
			}
			return nil
		}
		a.mu.Unlock()
		for _, o := range others {
			if carrier != nil {
				break
			}
			if a.carries(o) {
				carrier = o
			} else {
				gone[o] = true
			}
		}
		if carrier == nil {
			continue // only attachments that carry nothing: look again, under the lock
		}
		if waited == nil {
			addressWaiting.Inc()
			defer addressWaiting.Dec() // once: waited is set below
			klog.FromContext(wait).Info("Waiting for another pod on the node to give up the address", "pod", at.Pod(),
				"address", sharedAddress(carrier, at), "carrier", carrier.Pod(), "carrierContainerID", carrier.ContainerID)
		}
		waited = carrier
		select {
		case <-detached:
		case <-time.After(carrierPoll):
		case <-wait.Done():
			addressWaits.WithLabelValues("timed_out").Inc()
			state := "not in the API any more"
			if pod, ok := a.livePod(carrier); ok {
				state = "running"
				if pod.DeletionTimestamp != nil {
					state = "terminating"
				}
			}
			if starting {
				state += ", its attachment being set up"
			}
			why := waitedFor(wait, start, 0)
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("pod %s: %s is still carried on this node by pod %s (%s; container %s) %s; an address is on one pod at a time: try again once that pod's network is torn down",
					at.Pod(), sharedAddress(carrier, at), carrier.Pod(), state, carrier.ContainerID, why),
				"a pod deleted with --force is gone from the API while kubelet still stops it, and its DaemonSet or StatefulSet replaces it at once; kubelet retries the sandbox")
		}
	}
}

// doneStarting ends what waitCarriers began for at: the ADD set it up (it
// is in a.atts now) or gave up. ADDs waiting for it look again.
func (a *agent) doneStarting(at *datapath.Attachment) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.starting[at.Key()] == at {
		delete(a.starting, at.Key())
		close(a.detached)
		a.detached = make(chan struct{})
	}
}

// carries reports whether an attachment may still put its addresses on the
// wire. A VF does until its DEL resets it through the PF (its MAC and VLAN
// are set there, whatever became of the netns), and no longer once it is out
// of the pod (VFOutOfPod: a DEL that could not restore all of it succeeds so,
// and the attachment waits for the sweep, which the pod's next one on the
// node need not). A veth pair does not once the pod's netns is gone or its
// host end went with it: its record then waits for a DEL that may never
// come. When unsure, it does.
func (a *agent) carries(at *datapath.Attachment) bool {
	if at.VF != nil {
		return !a.dp.VFOutOfPod(at)
	}
	if at.Netns != "" && a.dp.NetnsGone(at.Netns) {
		return false
	}
	return a.dp.HostVethExists(at.HostVeth)
}

// sharesAddress reports whether two attachments on one VLAN have the same
// MAC or an IP in common.
func sharesAddress(x, y *datapath.Attachment) bool {
	return sharedAddress(x, y) != ""
}

// sharedAddress names the first address x and y have in common on their
// VLAN ("MAC 02:..." or "IP 10.0.0.5"), or "".
func sharedAddress(x, y *datapath.Attachment) string {
	if x.VLAN != y.VLAN {
		return ""
	}
	if x.MAC != "" && strings.EqualFold(x.MAC, y.MAC) {
		return "MAC " + x.MAC
	}
	for _, p := range x.IPs {
		for _, q := range y.IPs {
			if p.Addr() == q.Addr() {
				return "IP " + p.Addr().String()
			}
		}
	}
	return ""
}

// podAssignment reads the webhook's output annotations of pod as CNI errors.
func podAssignment(pod *corev1.Pod) (annotations.Assignment, error) {
	asg, err := annotations.ParseAssignment(pod.Annotations)
	if errors.Is(err, annotations.ErrNotAssigned) {
		return asg, types.NewError(api.ErrPodNotAdmitted, fmt.Sprintf("pod %s/%s: %v", pod.Namespace, pod.Name, err), "")
	}
	if err != nil {
		return asg, types.NewError(api.ErrBadAnnotation, fmt.Sprintf("pod %s/%s: %v", pod.Namespace, pod.Name, err), "")
	}
	return asg, nil
}

// waitPod returns the pod once the agent's cache has it (with the UID the
// runtime named): the runtime may ask before the watch delivers the pod.
func (a *agent) waitPod(ctx context.Context, ref podRef, budget time.Duration) (*corev1.Pod, error) {
	start := time.Now()
	for {
		a.mu.Lock()
		changed := a.podChanged
		a.mu.Unlock()
		pod, ok := a.pods.Get(ref.Namespace, ref.Name)
		if ok && (ref.UID == "" || podHasUID(pod, ref.UID)) {
			return pod, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			what := "is not in the node agent's cache"
			if ok {
				what = fmt.Sprintf("has UID %s in the node agent's cache, not %s,", pod.UID, ref.UID)
			}
			return nil, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("pod %s %s %s; try again later", ref, what, waitedFor(ctx, start, budget)),
				"the agent sees pods bound to its node through the API server: is it connected, and is --node-name this node?")
		}
	}
}

func (a *agent) get(key string) *datapath.Attachment {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.atts[key]
}

// remove tears an attachment down and forgets it.
func (a *agent) remove(ctx context.Context, at *datapath.Attachment) error {
	if err := a.dp.Teardown(ctx, at); err != nil {
		return err
	}
	if err := a.store.Delete(at); err != nil {
		return err
	}
	// Logged before an ADD waiting for this address is woken, so the log
	// shows the removal before the next pod's set-up.
	klog.FromContext(ctx).V(2).Info("Attachment removed", "pod", at.Pod(), "key", at.Key(), "hostVeth", at.HostVeth)
	a.mu.Lock()
	if a.atts[at.Key()] == at {
		delete(a.atts, at.Key())
		close(a.detached)
		a.detached = make(chan struct{})
	}
	if !a.usedByAnother(at) {
		a.unmarkUsed(at)
	}
	a.mu.Unlock()
	return nil
}

// usedByAnother reports whether another attachment, kept or being set up,
// has at's VF or OpenFlow port number: then it is not at's to give back.
// a.mu is held.
func (a *agent) usedByAnother(at *datapath.Attachment) bool {
	for _, m := range []map[string]*datapath.Attachment{a.atts, a.starting} {
		for _, o := range m {
			switch {
			case o == at:
			case at.VF != nil && o.VF != nil && vfKey(o.VF.PF, o.VF.Index) == vfKey(at.VF.PF, at.VF.Index):
				return true
			case at.VF == nil && o.VF == nil && at.OFPort > 0 && o.OFPort == at.OFPort:
				return true
			}
		}
	}
	return false
}

// noAttachment answers a DEL of an attachment the agent has none of: the
// plugin then detaches it from the fallback network too, for one that
// network made before stickynet's conflist was there (the node's pods of
// before the install, or of while the agent was not yet ready): the runtime
// tears a sandbox down through the conflist it has now, stickynet's.
var noAttachment = &api.Fallback{Reason: "no stickynet attachment of this container and interface on the node"}

func (a *agent) del(ctx context.Context, req api.Request) (*api.Fallback, error) {
	if err := needAttachmentArgs(req); err != nil {
		return nil, err
	}
	key := req.ContainerID + "/" + req.IfName
	unlock, err := a.lockKey(ctx, key)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if at := a.get(key); at != nil {
		err := a.remove(ctx, at)
		switch {
		case err != nil && at.VF == nil && !a.dp.HostVethExists(at.HostVeth):
			// Only OVS's port row is left (ovsdb-server does not answer):
			// nothing on the node carries the pod's addresses. The DEL
			// succeeds, so that the runtime can finish stopping the pod (a
			// StatefulSet's next pod waits for that), and the attachment
			// stays tracked: resync's sweep removes the row and the record
			// once OVS answers. Before, the pod stayed Terminating as long.
			klog.FromContext(ctx).Info("Pod's veth removed; its OVS port is removed once OVS answers", "pod", at.Pod(), "key", key, "err", err)
			return nil, nil
		case err != nil && a.dp.VFOutOfPod(at):
			// The VF's netdev is back in the node and the PF no longer
			// gives it the pod's MAC; what failed is putting the rest of
			// its former state back (a VLAN or rate the PF refused, for
			// now). Likewise the DEL succeeds and the attachment stays
			// tracked, the VF given to no other pod: resync's sweep
			// restores it once the sandbox is gone (with --resync-period
			// 0, the agent's next start does). Before, every DEL failed
			// while the PF refused, and the pod stayed Terminating. While
			// the PF still gives the VF the pod's MAC, the DEL fails: the
			// pod's identity must not start elsewhere meanwhile.
			klog.FromContext(ctx).Info("Pod's VF out of the pod; the rest of its former state is put back later", "pod", at.Pod(), "key", key, "pf", at.VF.PF, "vf", at.VF.Index, "err", err)
			return nil, nil
		}
		return nil, err
	}
	// Not in the records (lost cache folder): OVS's labels may still know it.
	ifcs, err := a.ovs.Interfaces(ctx)
	if err != nil {
		// OVS does not answer. Without a record and without the host end of
		// a veth, nothing of this attachment is on the node (a pod of the
		// fallback network, or a sandbox whose ADD failed): the DEL succeeds,
		// so that the runtime can finish stopping the pod. A port row left
		// in OVS goes at the agent's next restart (restore drops ports whose
		// veth is gone).
		if !a.dp.HostVethExists(datapath.HostVethName(req.ContainerID, req.IfName)) {
			return noAttachment, nil
		}
		return nil, err
	}
	for _, ifc := range ifcs {
		if ifc.ExternalIDs[datapath.IDContainerID] == req.ContainerID && ifc.ExternalIDs[datapath.IDIfName] == req.IfName {
			return nil, a.remove(ctx, fromOVS(ifc))
		}
	}
	return noAttachment, nil
}

// fromOVS rebuilds what teardown needs from an OVS interface's labels.
func fromOVS(ifc ovs.Interface) *datapath.Attachment {
	id := ifc.ExternalIDs
	return &datapath.Attachment{
		Network:      id[datapath.IDNetwork],
		ContainerID:  id[datapath.IDContainerID],
		IfName:       id[datapath.IDIfName],
		Netns:        id[datapath.IDNetns],
		PodNamespace: id[datapath.IDPodNamespace],
		PodName:      id[datapath.IDPodName],
		PodUID:       id[datapath.IDPodUID],
		HostVeth:     ifc.Name,
		OFPort:       ifc.OFPort,
	}
}

func (a *agent) check(ctx context.Context, req api.Request) error {
	if err := needAttachmentArgs(req); err != nil {
		return err
	}
	key := req.ContainerID + "/" + req.IfName
	unlock, err := a.lockKey(ctx, key)
	if err != nil {
		return err
	}
	defer unlock()
	at := a.get(key)
	if at == nil {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("no stickynet attachment for container %s interface %s on this node", req.ContainerID, req.IfName), "")
	}
	return a.dp.Check(ctx, at)
}

// gc removes the attachments of the network that are not in the runtime's
// list of valid ones.
func (a *agent) gc(ctx context.Context, conf *api.NetConf) error {
	valid := map[string]bool{}
	for _, v := range conf.ValidAttachments {
		valid[v.ContainerID+"/"+v.IfName] = true
	}
	a.mu.Lock()
	var tracked []*datapath.Attachment
	for k, at := range a.atts {
		if at.Network == conf.Name && !valid[k] {
			tracked = append(tracked, at)
		}
	}
	a.mu.Unlock()
	// OVS not answering leaves the ports for the next GC, those it has and
	// the records do not and those of tracked veth attachments, but not
	// the VFs: their teardown needs no OVS.
	ifcs, listErr := a.ovs.Interfaces(ctx)
	var untracked []*datapath.Attachment // ports OVS has and the records do not
	for _, ifc := range ifcs {
		at := fromOVS(ifc)
		if at.ContainerID == "" || at.Network != conf.Name || valid[at.Key()] || a.get(at.Key()) != nil {
			continue
		}
		untracked = append(untracked, at)
	}
	// Each is removed under its key's lock only if it is still what was
	// seen: a DEL may have removed it meanwhile, and its VF or port number
	// may now be another pod's, which a second teardown would undo.
	errs := []error{listErr}
	gone := func(at *datapath.Attachment, still bool) {
		if still {
			klog.FromContext(ctx).Info("Removing attachment the runtime no longer knows", "pod", at.Pod(), "key", at.Key())
			errs = append(errs, a.remove(ctx, at))
		}
	}
	// Past the request's deadline the rest waits for the next GC (or the
	// resync's sweep), said once rather than as one OVS failure each; so
	// does one whose lock another operation held until then (a limit being
	// set while OVS hangs: it takes the rest of the time, and those after
	// it wait for the next GC too).
	left, leftBusy := 0, 0
	lock := func(at *datapath.Attachment) (unlock func(), ok bool) {
		if ctx.Err() == nil {
			unlock, err := a.lockKey(ctx, at.Key())
			if err == nil {
				return unlock, true
			}
			leftBusy++
		}
		left++
		return nil, false
	}
	for _, at := range tracked {
		if listErr != nil && at.VF == nil {
			continue // its port needs OVS: the next GC
		}
		unlock, ok := lock(at)
		if !ok {
			continue
		}
		gone(at, a.get(at.Key()) == at)
		unlock()
	}
	for _, at := range untracked {
		unlock, ok := lock(at)
		if !ok {
			continue
		}
		still, err := a.inOVS(ctx, at)
		errs = append(errs, err)
		gone(at, err == nil && still && a.get(at.Key()) == nil)
		unlock()
	}
	if left > 0 {
		msg := fmt.Sprintf("GC ran out of time: %d of the attachments the runtime no longer knows are left for the next GC", left)
		if leftBusy > 0 {
			msg += fmt.Sprintf(" (%d held by another operation until then)", leftBusy)
		}
		errs = append(errs, types.NewError(types.ErrTryAgainLater, msg, ""))
	}
	return errors.Join(errs...)
}

// inOVS reports whether OVS still has the port of an attachment rebuilt from
// its labels.
func (a *agent) inOVS(ctx context.Context, at *datapath.Attachment) (bool, error) {
	ifcs, err := a.ovs.Interfaces(ctx)
	if err != nil {
		return false, err
	}
	for _, ifc := range ifcs {
		if ifc.Name == at.HostVeth && fromOVS(ifc).Key() == at.Key() {
			return true, nil
		}
	}
	return false, nil
}

func (a *agent) status(ctx context.Context) error {
	a.mu.Lock()
	ready := a.ready
	a.mu.Unlock()
	if !ready {
		// Try again, as when the agent cannot be reached: the plugin
		// passes STATUS within api.StatusGrace of the last that passed.
		return types.NewError(types.ErrTryAgainLater, "stickynet node agent is starting", "")
	}
	if ok, err := a.ovs.BridgeExists(ctx); err != nil || !ok {
		msg := fmt.Sprintf("OVS bridge %s is missing", a.opts.Bridge)
		if err != nil {
			msg = err.Error()
		}
		return types.NewError(types.ErrPluginNotAvailable, msg, "")
	}
	// ovs-vswitchd sets up every port (and, on the userspace datapath,
	// forwards every packet): without it ADD cannot succeed.
	if err := a.ovs.Ping(ctx); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	return nil
}

// cniStatus is CNI STATUS: status, recorded for a STATUS while the agent is
// away (api.StatusPassed): a pass sets the record's time, and a failure for
// Open vSwitch (not "starting") removes it.
func (a *agent) cniStatus(ctx context.Context) error {
	err := a.status(ctx)
	p := filepath.Join(filepath.Dir(a.opts.Socket), api.StatusPassed)
	var rerr error
	switch {
	case err == nil:
		now := time.Now()
		if rerr = os.Chtimes(p, now, now); errors.Is(rerr, os.ErrNotExist) {
			rerr = os.WriteFile(p, nil, 0o644)
		}
	case cniError(err).Code == types.ErrPluginNotAvailable:
		if rerr = os.Remove(p); errors.Is(rerr, os.ErrNotExist) {
			rerr = nil
		}
	}
	if rerr != nil {
		klog.FromContext(ctx).Error(rerr, "Cannot record the STATUS for one while the agent is away", "file", p)
	}
	return err
}

// kubeletUID is the UID kubelet and the runtime know pod by: its own, but
// for a static pod kubelet's, which its mirror pod in the API server names
// in the kubernetes.io/config.mirror annotation (the mirror pod's own UID
// changes when it is deleted and made again; the static pod runs on).
func kubeletUID(pod *corev1.Pod) string {
	if uid := pod.Annotations[corev1.MirrorPodAnnotationKey]; uid != "" {
		return uid
	}
	return string(pod.UID)
}

// podHasUID reports whether pod is the one kubelet knows by uid.
func podHasUID(pod *corev1.Pod, uid string) bool {
	return string(pod.UID) == uid || kubeletUID(pod) == uid
}
