package agent

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// warmLoop keeps up to Options.MeterReserve free port numbers with meter
// and flow installed, so that ADD of a pod with an egress limit changes a
// meter's rate instead of adding a flow (see datapath.Datapath). It refills
// in batches, when half the reserve is used, so that ovs-vswitchd applies
// one flow-table change per batch. It wakes on a.warm.
func (a *agent) warmLoop(ctx context.Context) {
	if !a.dp.MeterMode() || a.opts.MeterReserve < 0 {
		return
	}
	log := klog.FromContext(ctx)
	for {
		if batch := a.nextToWarm(); len(batch) > 0 {
			err := a.dp.WarmMeters(ctx, batch)
			for _, n := range batch {
				a.freePort(n)
			}
			if err != nil && ctx.Err() == nil {
				log.Error(err, "Preparing meters for the next pods failed", "ports", batch)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-a.warm:
		case <-time.After(time.Minute):
		}
	}
}

// nextToWarm reserves the lowest free unmetered port numbers that bring the
// free metered ones back to the reserve, once they are at half of it or less.
func (a *agent) nextToWarm() []int {
	reserve := a.opts.MeterReserve
	a.mu.Lock()
	defer a.mu.Unlock()
	warm := 0
	var candidates []int
	for p := firstPodPort; p <= lastPodPort && warm < reserve && len(candidates) < reserve; p++ {
		if a.usedPorts[p] {
			continue
		}
		if a.dp.Metered(p) {
			warm++
		} else {
			candidates = append(candidates, p)
		}
	}
	need := reserve - warm
	if warm > reserve/2 || need <= 0 {
		return nil
	}
	if need < len(candidates) {
		candidates = candidates[:need]
	}
	for _, p := range candidates {
		a.usedPorts[p] = true
	}
	return candidates
}

// wakeWarm asks warmLoop to look again.
func (a *agent) wakeWarm() {
	select {
	case a.warm <- struct{}{}:
	default:
	}
}
