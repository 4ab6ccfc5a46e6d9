package agent

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// warmLoop keeps Options.MeterReserve free port numbers with meter and flow
// installed, so that ADD of a pod with an egress limit changes a meter's rate
// instead of adding a flow (see datapath.Datapath). It wakes on a.warm.
func (a *agent) warmLoop(ctx context.Context) {
	if !a.dp.MeterMode() || a.opts.MeterReserve < 0 {
		return
	}
	log := klog.FromContext(ctx)
	for {
		for {
			n, ok := a.nextToWarm()
			if !ok {
				break
			}
			err := a.dp.WarmMeter(ctx, n)
			a.freePort(n)
			if err != nil {
				if ctx.Err() == nil {
					log.Error(err, "Preparing a meter for the next pods failed", "port", n)
				}
				break
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

// nextToWarm reserves the lowest free unmetered port number when fewer than
// the reserve of free numbers are metered.
func (a *agent) nextToWarm() (int, bool) {
	reserve := a.opts.MeterReserve
	a.mu.Lock()
	defer a.mu.Unlock()
	warm, candidate := 0, 0
	for p := firstPodPort; p <= lastPodPort && warm < reserve; p++ {
		if a.usedPorts[p] {
			continue
		}
		if a.dp.Metered(p) {
			warm++
		} else if candidate == 0 {
			candidate = p
		}
		if candidate != 0 && p > candidate+reserve*4 {
			break
		}
	}
	if warm >= reserve || candidate == 0 {
		return 0, false
	}
	a.usedPorts[candidate] = true
	return candidate, true
}

// wakeWarm asks warmLoop to look again.
func (a *agent) wakeWarm() {
	select {
	case a.warm <- struct{}{}:
	default:
	}
}
