package app

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/stickynet/stickynet/internal/ipam"
	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
)

// storeProbe reads from the state store every period, on every replica,
// and remembers since when the reads fail. A replica that cannot reach etcd
// is taken out of the Service (check) and, if it leads, gives the lead up
// (stepDown).
type storeProbe struct {
	// read is one read of the store. The webhook's is the address cache's
	// Reflector.Verify, which also finds an etcd restored without
	// --bump-revision and makes the cache list again.
	read func(context.Context) error
	// diagnose, if set, says why the store does not answer when a read
	// fails: the etcd client's error then says only that the deadline
	// passed (etcd.Store.Diagnose).
	diagnose func(context.Context) error
	period   time.Duration
	timeout  time.Duration
	// notReadyAfter is how long reads must fail before check fails: etcd
	// electing a leader takes a second or two, and every replica would
	// leave the Service at once.
	notReadyAfter time.Duration

	mu           sync.Mutex
	failingSince time.Time // zero while the reads succeed
	lastErr      error
}

// diagnoser is a store that can say why it does not answer.
type diagnoser interface{ Diagnose(context.Context) error }

var _ diagnoser = (*etcd.Store)(nil)

// newStoreProbe returns the webhook's probe: every 5 s, a read of raw that
// checks that its revision is not behind alloc's address cache (restored
// without --bump-revision), for at most 3 s; not ready after 10 s of
// failures.
func newStoreProbe(alloc *ipam.Allocator, raw store.Store) *storeProbe {
	p := &storeProbe{
		read:   func(ctx context.Context) error { return alloc.Reflector().Verify(ctx, raw) },
		period: 5 * time.Second, timeout: 3 * time.Second, notReadyAfter: 10 * time.Second,
	}
	if d, ok := raw.(diagnoser); ok {
		p.diagnose = d.Diagnose
	}
	return p
}

// Start probes until ctx ends.
func (p *storeProbe) Start(ctx context.Context) error {
	t := time.NewTicker(p.period)
	defer t.Stop()
	for {
		p.probe(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection: every replica probes.
func (p *storeProbe) NeedLeaderElection() bool { return false }

func (p *storeProbe) probe(ctx context.Context) {
	began := time.Now() // a failure dates from the read, not from its diagnosis
	rctx, cancel := context.WithTimeout(ctx, p.timeout)
	err := p.read(rctx)
	cancel()
	if err != nil && p.diagnose != nil {
		dctx, cancel := context.WithTimeout(ctx, p.timeout)
		if why := p.diagnose(dctx); why != nil {
			err = fmt.Errorf("%w (%w)", err, why)
		}
		cancel()
	}
	if ctx.Err() != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil:
		if !p.failingSince.IsZero() {
			klog.FromContext(ctx).Info("etcd answers again", "after", time.Since(p.failingSince).Round(time.Second))
		}
		p.failingSince, p.lastErr = time.Time{}, nil
	case p.failingSince.IsZero():
		p.failingSince, p.lastErr = began, err
		klog.FromContext(ctx).Error(err, "etcd does not answer")
	default:
		p.lastErr = err
	}
}

// down returns how long the reads have failed (0 while they succeed) and
// the last error.
func (p *storeProbe) down() (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failingSince.IsZero() {
		return 0, nil
	}
	return time.Since(p.failingSince), p.lastErr
}

// check is a readiness check: it fails once reads have failed for
// notReadyAfter. Such a replica could only answer each admission after
// its store timeout, with an error.
func (p *storeProbe) check(*http.Request) error {
	if d, err := p.down(); d >= p.notReadyAfter {
		return fmt.Errorf("etcd has not answered for %s: %w", d.Round(time.Second), err)
	}
	return nil
}

// stepDown runs in the leader's term: it returns an error, which ends the
// term (the release controller stops, the Lease is given up, and this
// replica campaigns again after a back-off once its reads succeed, serving
// admissions meanwhile), at once when reads fail as the term begins (the
// replica's etcd failed while it was campaigning), or once reads that
// succeeded while it led have failed for max. Only the leader confirms the
// reservations every replica makes; one it cannot confirm expires with its
// lease, and its address looks free while its pod carries it. Another
// replica that reaches etcd should lead. When etcd is down for every
// replica, none leads until it is back (leadership.storeUp): they do not
// take the lead in turn.
type stepDown struct {
	probe *storeProbe
	max   time.Duration
}

func (s stepDown) Start(ctx context.Context) error {
	if d, err := s.probe.down(); d > 0 {
		return fmt.Errorf("etcd does not answer this replica (%w): it gives the lead back, so that a replica that reaches etcd confirms the reservations before their lease ends", err)
	}
	t := time.NewTicker(s.probe.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		d, err := s.probe.down()
		if d >= s.max {
			return fmt.Errorf("etcd has not answered this replica for %s (%w): it gives up the lead so that a replica that reaches etcd confirms the reservations before their lease ends", d.Round(time.Second), err)
		}
	}
}
