package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/annotations"
	"github.com/stickynet/stickynet/nodeagent/datapath"
	"github.com/stickynet/stickynet/nodeagent/ovs"
)

// restore rebuilds the agent's view after a (re)start from its records and
// the OVS labels. Attachments of live pods are kept as they are (their limits
// are re-checked and put back where ovs-vswitchd lost them); attachments whose
// pod is gone, or whose veth went with the pod's netns, are removed.
func (a *agent) restore(ctx context.Context) error {
	log := klog.FromContext(ctx)
	records, err := a.store.List()
	if err != nil {
		// A record that does not decode is reported; the OVS labels still
		// cover its attachment.
		log.Error(err, "Some attachment records are unreadable")
	}
	ifcs, err := a.ovs.Interfaces(ctx)
	if err != nil {
		return err
	}
	byName := map[string]ovs.Interface{}
	a.mu.Lock()
	for _, ifc := range ifcs {
		byName[ifc.Name] = ifc
		if ifc.OFPort > 0 {
			a.usedPorts[ifc.OFPort] = true
		}
	}
	a.mu.Unlock()
	known := map[string]*datapath.Attachment{}
	for _, r := range records {
		known[r.Key()] = r
	}
	adopted := map[string]bool{} // found in OVS only: the limits in force are not known
	for _, ifc := range ifcs {
		at := fromOVS(ifc)
		if at.ContainerID == "" || known[at.Key()] != nil {
			continue
		}
		log.Info("OVS port without a record", "port", ifc.Name, "pod", at.Pod(), "key", at.Key())
		known[at.Key()] = a.recordFromPod(at)
		adopted[at.Key()] = true
	}
	// Until their records are written below, a missing record proves
	// nothing to the plugin.
	if len(adopted) > 0 {
		if err := a.store.SetComplete(false); err != nil {
			log.Error(err, "The plugin may take a DEL of a pod found only in OVS's labels as done while the agent is down")
		}
	}
	snap, err := a.dp.Snapshot(ctx)
	if err != nil {
		return err
	}
	a.dp.LearnMetered(snap)
	var kept, removed int
	var errs []error
	recorded := true // every attachment kept has its record
	for _, at := range known {
		ifc, inOVS := byName[at.HostVeth]
		pod, alive := a.livePod(at)
		sandbox := !a.dp.SandboxGone(at)
		if !alive || !sandbox || at.MAC == "" {
			log.Info("Removing attachment of a pod that is gone", "pod", at.Pod(), "podUID", at.PodUID, "key", at.Key(),
				"podKnown", alive, "sandbox", sandbox)
			if err := a.dp.Teardown(ctx, at); err != nil {
				errs = append(errs, err)
				// Still tracked, with its record, its VF or port number in use:
				// its DEL (or GC, or the next restart) tries again, no other pod
				// is given its VF or port, and a pod carrying its address waits.
				a.track(at)
				continue
			}
			if err := a.dropRecord(at); err != nil {
				errs = append(errs, err)
				continue
			}
			if at.VF == nil && !portOfAnother(byName, at) {
				a.mu.Lock()
				delete(a.usedPorts, at.OFPort)
				a.mu.Unlock()
			}
			removed++
			continue
		}
		if at.VF == nil && inOVS && ifc.OFPort > 0 {
			at.OFPort = ifc.OFPort
		}
		a.mu.Lock()
		a.markUsed(at)
		a.mu.Unlock()
		if at.VF == nil {
			if err := a.dp.EnsurePort(ctx, at, inOVS); err != nil {
				errs = append(errs, err)
			}
		}
		want, set := at.Bandwidth, true
		asg, err := podAssignment(pod)
		switch {
		case err == nil && adopted[at.Key()]:
			// The pod's limits, as its ADD installed them: a change the
			// agent would refuse must not lift the limits in force, which
			// are unknown here (their zero value means none).
			want = asg.Bandwidth
		case err == nil:
			want, set = a.bandwidthFor(ctx, pod, at, asg.Bandwidth)
		case adopted[at.Key()] || at.LimitsUnknown:
			// Its bandwidth keys unreadable, and no record of the limits
			// in force: they are left as installed.
			log.Info("Limits of a pod rebuilt from OVS left as installed: its bandwidth annotations cannot be read", "pod", at.Pod(), "err", err.Error())
			set, at.LimitsUnknown = false, true
		}
		if set {
			if err := a.dp.SetBandwidth(ctx, at, want, snap); err != nil {
				errs = append(errs, err)
			}
		}
		if err := a.store.Put(at); err != nil {
			errs = append(errs, err)
			recorded = false
		}
		// The pod source runs already: its events read a.atts under a.mu.
		a.mu.Lock()
		a.atts[at.Key()] = at
		a.mu.Unlock()
		// A bandwidth change that arrived after the pod was read above found
		// no attachment yet; the worker checks the pod once more.
		a.queue.Add(at.Pod())
		kept++
	}
	log.Info("Restored attachments", "kept", kept, "removed", removed)
	// The plugin trusts a missing record only in a complete folder.
	errs = append(errs, a.store.SetComplete(recorded))
	if err := errors.Join(errs...); err != nil {
		// Not fatal: the pods that are fine keep being served, and DEL or GC
		// retry what could not be removed.
		log.Error(err, "Restore was incomplete")
		backgroundErrors.WithLabelValues("restore").Inc()
	}
	return nil
}

// portOfAnother reports whether an OVS interface other than at's own has
// at's OpenFlow port number (a stale record's number, which a kept port
// took): that number stays taken.
func portOfAnother(byName map[string]ovs.Interface, at *datapath.Attachment) bool {
	for name, ifc := range byName {
		if name != at.HostVeth && ifc.OFPort == at.OFPort {
			return true
		}
	}
	return false
}

// markUsed marks the attachment's VF or port number as taken; a.mu is held.
func (a *agent) markUsed(at *datapath.Attachment) {
	if at.VF != nil {
		a.usedVFs[vfKey(at.VF.PF, at.VF.Index)] = true
	} else {
		a.usedPorts[at.OFPort] = true
	}
}

// unmarkUsed gives the attachment's VF or port number back; a.mu is held.
func (a *agent) unmarkUsed(at *datapath.Attachment) {
	if at.VF != nil {
		delete(a.usedVFs, vfKey(at.VF.PF, at.VF.Index))
	} else {
		delete(a.usedPorts, at.OFPort)
	}
}

// dropRecord removes the record of at, which nothing is left of. One that
// cannot be removed keeps at tracked, with its VF or port number, or a
// restart would tear down from the record what the next pod given them set
// up; its DEL, the GC or the next restart tries again.
func (a *agent) dropRecord(at *datapath.Attachment) error {
	if err := a.store.Delete(at); err != nil {
		a.track(at)
		return err
	}
	return nil
}

// track keeps an attachment that could not be torn down: DEL finds it and
// tries again, and its VF or port number stays taken meanwhile.
func (a *agent) track(at *datapath.Attachment) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.markUsed(at)
	a.atts[at.Key()] = at
}

// recordFromPod completes an attachment rebuilt from OVS labels with the
// pod's assignment.
func (a *agent) recordFromPod(at *datapath.Attachment) *datapath.Attachment {
	pod, ok := a.livePod(at)
	if !ok {
		return at
	}
	// Not the bandwidth keys: one edited into a form the agent refuses left
	// the running pod's network as it is, and an attachment without a MAC
	// is taken for one whose pod is gone, and removed.
	asg, err := annotations.ParseAddressing(pod.Annotations)
	if err != nil {
		return at
	}
	at.MAC, at.IPs, at.Gateways, at.VLAN, at.MTU = asg.MAC.String(), asg.IPs, asg.Gateways, asg.VLAN, a.opts.MTU
	at.EgressMode = a.dp.Config().EgressMode
	// Unknown limits in force: SetBandwidth with a snapshot reads them.
	return at
}

// livePod returns the attachment's pod if it still exists with the same UID.
func (a *agent) livePod(at *datapath.Attachment) (*corev1.Pod, bool) {
	if at.PodName == "" {
		return nil, false
	}
	pod, ok := a.pods.Get(at.PodNamespace, at.PodName)
	if !ok || !podHasUID(pod, at.PodUID) {
		return nil, false
	}
	return pod, true
}

// onPodChange wakes ADDs waiting for a pod and queues a bandwidth check for
// pods with attachments.
func (a *agent) onPodChange(pod *corev1.Pod) {
	a.mu.Lock()
	close(a.podChanged)
	a.podChanged = make(chan struct{})
	has := false
	for _, at := range a.atts {
		if podHasUID(pod, at.PodUID) {
			has = true
			break
		}
	}
	a.mu.Unlock()
	if has {
		a.queue.Add(pod.Namespace + "/" + pod.Name)
	}
}

// bandwidthWorker applies pods' bandwidth annotations to their attachments.
func (a *agent) bandwidthWorker(ctx context.Context) {
	log := klog.FromContext(ctx)
	for {
		key, shutdown := a.queue.Get()
		if shutdown {
			return
		}
		err := a.applyBandwidth(ctx, key)
		if err != nil && ctx.Err() == nil {
			log.Error(err, "Applying bandwidth limits failed; will retry", "pod", key)
			backgroundErrors.WithLabelValues("bandwidth").Inc()
			a.queue.AddRateLimited(key)
		} else {
			a.queue.Forget(key)
		}
		a.queue.Done(key)
	}
}

func (a *agent) applyBandwidth(ctx context.Context, podKey string) error {
	var ats []*datapath.Attachment
	a.mu.Lock()
	for _, at := range a.atts {
		if at.Pod() == podKey {
			ats = append(ats, at)
		}
	}
	a.mu.Unlock()
	var errs []error
	for _, at := range ats {
		pod, ok := a.livePod(at)
		if !ok {
			continue
		}
		asg, err := annotations.ParseAssignment(pod.Annotations)
		if ae := (*annotations.Error)(nil); errors.As(err, &ae) && slices.Contains(annotations.BandwidthKeys, ae.Key) {
			a.refuseBandwidth(ctx, pod, at, err) // edited onto the running pod: no retry
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pod %s: %w", podKey, err))
			continue
		}
		if _, err := annotations.ParseBandwidth(pod.Annotations); err != nil {
			// A kubernetes.io rate beside the stickynet one the webhook
			// wrote, edited onto the running pod: the stickynet key stays
			// in force.
			a.refuseBandwidth(ctx, pod, at, err)
		}
		unlock, err := a.lockKey(ctx, at.Key())
		if err != nil {
			return errors.Join(append(errs, err)...) // the agent is stopping
		}
		if a.get(at.Key()) == at {
			if want, ok := a.bandwidthFor(ctx, pod, at, asg.Bandwidth); ok && (want != at.Bandwidth || at.LimitsUnknown) {
				before := at.Bandwidth
				err := a.dp.SetBandwidth(ctx, at, want, nil)
				if perr := a.store.Put(at); perr != nil {
					err = errors.Join(err, perr)
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("bandwidth of %s: %w", at.Key(), err))
				} else {
					klog.FromContext(ctx).Info("Bandwidth limits changed", "pod", podKey, "key", at.Key(), "from", before, "to", at.Bandwidth)
				}
			}
		}
		unlock()
	}
	return errors.Join(errs...)
}

// bandwidthFor returns the limits to install on at for a pod whose
// annotations ask for want: want, unless it is a change that
// annotations.CheckBandwidth refuses (a burst below one frame, or into the
// pod a rate or burst a tbf cannot honour). The webhook checks the limits
// it writes; these annotations were edited on the pod after it. A refused
// change keeps the limits in place and is logged with the key, the value
// and what is accepted, and counted (stickynet_nodeagent_bandwidth_refused_total),
// each time the pod is looked at (its updates, the resync) until its
// annotations change; no retry loop. Limits already in place are kept
// whatever they are, as annotations written earlier may be. ok is false
// when there is nothing to install: a refused change on an attachment whose
// limits in force are unknown (Attachment.LimitsUnknown: its at.Bandwidth
// means unknown, not none), which keeps what is installed.
func (a *agent) bandwidthFor(ctx context.Context, pod *corev1.Pod, at *datapath.Attachment, want annotations.Bandwidth) (_ annotations.Bandwidth, ok bool) {
	if want == at.Bandwidth {
		return want, true
	}
	if err := annotations.CheckBandwidth(pod.Annotations, want); err != nil {
		a.refuseBandwidth(ctx, pod, at, err)
		return at.Bandwidth, !at.LimitsUnknown
	}
	if at.VF != nil && want.Ingress.Rate > 0 && want.Ingress != at.Bandwidth.Ingress {
		// The webhook refuses a VF pod's own ingress limit at admission;
		// this one was edited onto the running pod (or came from a policy).
		klog.FromContext(ctx).Info("Ingress limit not enforced: traffic into a VF comes from the wire; only the egress limit (max_tx_rate) applies",
			"pod", klog.KObj(pod), "key", at.Key(), "ingress", want.Ingress.Rate)
	}
	return want, true
}

// refuseBandwidth logs, counts and records on the pod (a Warning
// BandwidthNotApplied event, which kubectl describe shows; the recorder
// folds repeats into one series) a bandwidth change the agent does not
// make: at keeps its limits.
func (a *agent) refuseBandwidth(ctx context.Context, pod *corev1.Pod, at *datapath.Attachment, err error) {
	klog.FromContext(ctx).Error(err, "Bandwidth change refused: the pod keeps its limits", "pod", klog.KObj(pod), "key", at.Key(), "limits", at.Bandwidth)
	bandwidthRefused.Inc()
	if a.events != nil {
		a.events.Eventf(pod, nil, corev1.EventTypeWarning, "BandwidthNotApplied", "ApplyBandwidth",
			"%v; the pod keeps the limits in force on node %s", err, a.opts.NodeName)
	}
}

// resyncLoop re-checks every attachment's limits against what is installed,
// and queues every pod so missed annotation changes are applied: every
// ResyncPeriod, and within ovsCheckPeriod of ovs-vswitchd losing its flows
// (a restart, which drops the meters and the pods' tbf qdiscs, or the bridge
// deleted), seen by the marker flow's absence. A resync that fails is tried
// again ovsCheckPeriod later, then at twice the wait each time, at most
// ResyncPeriod apart: the marker is set before the resync, so the check no
// longer sees that OVS's state is still not all back.
func (a *agent) resyncLoop(ctx context.Context) {
	if a.opts.ResyncPeriod <= 0 {
		return
	}
	log := klog.FromContext(ctx)
	full := time.NewTicker(a.opts.ResyncPeriod)
	defer full.Stop()
	check := time.NewTicker(ovsCheckPeriod)
	defer check.Stop()
	var (
		retry     <-chan time.Time // while a failed resync waits to be tried again
		retryWait time.Duration
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-full.C:
		case <-retry:
			log.Info("Trying the failed resync again")
		case <-check.C:
			// Not answering is for STATUS to report; the next check sees
			// whether ovs-vswitchd came back without its flows.
			if marked, err := a.ovs.Marked(ctx); err != nil || marked {
				continue
			}
			log.Info("Open vSwitch lost its flows (ovs-vswitchd restarted, or the bridge was deleted); putting the pods' ports and limits back")
			ovsResets.Inc()
		}
		// Marked before the resync: a reset during it is seen at the next
		// check. The bridge may have to be made again first.
		err := a.ensureBridge(ctx)
		if err == nil {
			err = a.ovs.Mark(ctx)
		}
		if err == nil {
			err = a.resync(ctx)
		}
		retry = nil
		if err != nil {
			retryWait = min(max(2*retryWait, ovsCheckPeriod), a.opts.ResyncPeriod)
			retry = time.After(retryWait)
			log.Error(err, "Resync failed", "retryIn", retryWait)
			backgroundErrors.WithLabelValues("resync").Inc()
		} else {
			retryWait = 0
		}
	}
}

// ovsCheckPeriod is how often the agent looks for its marker flow (one
// ovs-ofctl run).
const ovsCheckPeriod = 2 * time.Second

// every calls f each period (the first time a period from now) until ctx
// ends, logging its errors with msg.
func every(ctx context.Context, period time.Duration, msg string, f func(context.Context) error) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := f(ctx); err != nil {
			klog.FromContext(ctx).Error(err, msg)
		}
	}
}

// resync removes the attachments whose sandbox is gone (sweep) and puts
// back what OVS lost of the others (the bridge is there: ensureBridge).
func (a *agent) resync(ctx context.Context) error {
	sweepErr := a.sweep(ctx)
	snap, err := a.dp.Snapshot(ctx)
	if err != nil {
		return errors.Join(sweepErr, err)
	}
	a.mu.Lock()
	ats := make([]*datapath.Attachment, 0, len(a.atts))
	for _, at := range a.atts {
		ats = append(ats, at)
	}
	a.mu.Unlock()
	var errs []error
	// Ports missing from OVS (the bridge was deleted, or OVS's database
	// reset) while their pods' veths are there: add them again, with their
	// port numbers, before the limits below need them.
	readded := 0
	for _, at := range ats {
		if _, inOVS := snap.Interfaces[at.HostVeth]; inOVS || at.VF != nil || !a.dp.HostVethExists(at.HostVeth) {
			continue
		}
		if _, alive := a.livePod(at); !alive {
			continue // tracked only until its DEL or GC removes it (a restore that could not)
		}
		unlock, err := a.lockKey(ctx, at.Key())
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if a.get(at.Key()) == at {
			klog.FromContext(ctx).Info("Adding the missing OVS port of a pod again", "pod", at.Pod(), "port", at.HostVeth, "ofport", at.OFPort)
			errs = append(errs, a.dp.EnsurePort(ctx, at, false))
			readded++
		}
		unlock()
	}
	if readded > 0 {
		if snap, err = a.dp.Snapshot(ctx); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	a.dp.LearnMetered(snap)
	for _, at := range ats {
		unlock, err := a.lockKey(ctx, at.Key())
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if a.get(at.Key()) == at && !at.LimitsUnknown {
			errs = append(errs, a.dp.SetBandwidth(ctx, at, at.Bandwidth, snap))
		}
		unlock()
		a.queue.Add(at.Pod())
	}
	return errors.Join(append(errs, sweepErr)...)
}

// sweep removes the attachments whose pod sandbox is gone while the agent
// kept them: the DEL that should have removed them failed (an undo or a
// teardown that could not finish), and containerd does not send it again
// for a sandbox whose ADD failed, nor a GC. Without it such a VF stayed
// taken, with the pod's settings on its PF, until the agent restarted.
func (a *agent) sweep(ctx context.Context) error {
	a.mu.Lock()
	var kept []*datapath.Attachment
	for k, at := range a.atts {
		if a.starting[k] == nil {
			kept = append(kept, at)
		}
	}
	a.mu.Unlock()
	var errs []error
	for _, at := range kept {
		if !a.dp.SandboxGone(at) {
			continue
		}
		unlock, err := a.lockKey(ctx, at.Key())
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		if a.get(at.Key()) == at && a.dp.SandboxGone(at) {
			klog.FromContext(ctx).Info("Removing attachment whose pod sandbox is gone (its DEL failed or never came)", "pod", at.Pod(), "key", at.Key())
			errs = append(errs, a.remove(ctx, at))
		}
		unlock()
	}
	return errors.Join(errs...)
}

// ensureBridge makes the OVS bridge and its uplink again if the bridge is
// gone (deleted, or OVS's database reset) while the agent runs; the pods'
// ports follow in resync. Without it every ADD failed until the agent was
// restarted.
func (a *agent) ensureBridge(ctx context.Context) error {
	ok, err := a.ovs.BridgeExists(ctx)
	if err != nil || ok {
		return err
	}
	klog.FromContext(ctx).Info("OVS bridge missing; making it again", "bridge", a.opts.Bridge, "datapathType", a.dpType)
	_, err = setUpBridge(ctx, a.ovs, a.dpType, a.opts.Uplink, a.opts.MTU)
	return err
}
