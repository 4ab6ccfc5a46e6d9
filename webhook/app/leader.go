package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/stickynet/stickynet/internal/promreg"
)

// LeaseName is the Lease in --leader-election-namespace whose holder runs
// the release controller.
const LeaseName = "stickynet-release-controller"

// The leader election's timing, controller-runtime's defaults: a leader
// that cannot renew its Lease for renewDeadline stops leading, and another
// replica, trying every retryPeriod, takes the Lease once it has seen no
// renewal for leaseDuration (or at once when the leader gave it up).
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// leadership runs what only the leader runs (the release controller and
// the stepDown watch over it) for as long as this replica holds the Lease,
// and campaigns again when a term ends, while the replica goes on serving
// admissions. A term ends when the Lease is lost (not renewed for
// renewDeadline), when something it runs fails (stepDown: etcd does not
// answer this replica), or when the webhook stops; what it ran has stopped
// before the Lease is given up or campaigned for again. The manager's own
// leader election is not used: on losing its Lease it ends the process at
// once, cutting the admissions in flight.
type leadership struct {
	// lock is the Lease; nil runs one term for as long as the webhook runs,
	// with no election (a single replica).
	lock resourcelock.Interface
	// term returns what one term runs, afresh for each.
	term func() []manager.Runnable
	// leading is 1 while a term runs here.
	leading prometheus.Gauge

	leaseDuration, renewDeadline, retryPeriod time.Duration
	// backoff is how long a replica whose term failed waits before it
	// campaigns again, so that another replica takes the Lease.
	backoff time.Duration
	// ready, when set, is closed once the replica's store has answered (its
	// address cache is built); it campaigns only then. A replica that never
	// reached etcd (cut off from it, or etcd with authentication down since
	// it started) took the Lease and kept it, and its release controller,
	// waiting for the cache, confirmed no reservation.
	ready <-chan struct{}
	// leases reads the Lease for leaderCheck, with a client of its own: the
	// lock caches the Lease it reads and renews from that copy, so a read of
	// the probe's through it raced the elector and could hand a renewal the
	// resourceVersion of another holder's record. Set with lock.
	leases coordinationv1client.LeaseInterface
	// storeUp, when set, says whether the replica's store answers now; it
	// campaigns only while it does. A replica that had reached etcd and then
	// lost it campaigned on, took the Lease when the leader's ended, and its
	// release controller confirmed nothing while it held it: the
	// reservations of live pods expired and their addresses went to others.
	storeUp func() bool
}

// newLeadership returns the leadership of the release controller for a
// webhook with options o, on cfg's API server.
func newLeadership(o Options, cfg *rest.Config, rec events.EventRecorder, reg prometheus.Registerer, term func() []manager.Runnable) (*leadership, error) {
	l := &leadership{
		term: term, leaseDuration: leaseDuration, renewDeadline: renewDeadline, retryPeriod: retryPeriod, backoff: leaseDuration,
		leading: promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stickynet_webhook_release_leader",
			Help: "1 while this replica runs the release controller (it holds the Lease " + LeaseName + ", or runs without leader election).",
		})),
	}
	if !o.LeaderElection {
		return l, nil
	}
	ns := o.LeaderElectionNamespace
	if ns == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return nil, fmt.Errorf("--leader-election-namespace not set and not running in a pod (%w): set it to the namespace of the Lease %s", err, LeaseName)
		}
		ns = strings.TrimSpace(string(b))
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("leader election identity: %w", err)
	}
	// The client's timeout is half the renew deadline, so that one hung
	// request does not cost the Lease (client-go's advice).
	l.lock, err = resourcelock.NewFromKubeconfig(resourcelock.LeasesResourceLock, ns, LeaseName,
		resourcelock.ResourceLockConfig{Identity: host + "_" + string(uuid.NewUUID()), EventRecorder: leaseEvents{rec}},
		cfg, renewDeadline)
	if err != nil {
		return nil, fmt.Errorf("leader election Lease %s/%s: %w", ns, LeaseName, err)
	}
	probeCfg := rest.CopyConfig(cfg)
	probeCfg.Timeout = time.Second
	cc, err := coordinationv1client.NewForConfig(probeCfg)
	if err != nil {
		return nil, fmt.Errorf("client for the Lease %s/%s: %w", ns, LeaseName, err)
	}
	l.leases = cc.Leases(ns)
	return l, nil
}

// leaderCheck is /readyz's check that some replica runs the release
// controller, on every replica: it fails once the Lease has not changed
// (no replica renewed it) for window (half --reservation-ttl, at least
// 30 s), as this replica has seen it (not the holder's clock), after this
// replica has run that long; or when this replica may not read the Lease.
// Only the release controller confirms reservations; without it those of
// new pods expire under them, their addresses free for others. A Lease that
// no replica can take (RBAC on Leases missing, a mistyped
// --leader-election-namespace) left every replica Ready while that
// happened. Failing closed, the webhook refuses pod creations in the
// opted-in namespaces until a replica leads. Other errors (an API server
// slow to answer) pass: each replica's own renewals or reads fail then too,
// and no pod is created without one.
func (l *leadership) leaderCheck(window time.Duration, started time.Time) func(*http.Request) error {
	var mu sync.Mutex
	seen, changed := "", started // the Lease's resourceVersion last read, and when it changed
	return func(req *http.Request) error {
		if l.leases == nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(req.Context(), 500*time.Millisecond)
		defer cancel()
		lease, err := l.leases.Get(ctx, LeaseName, metav1.GetOptions{})
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if err == nil && lease.ResourceVersion != seen {
			seen, changed = lease.ResourceVersion, now
		}
		if now.Sub(changed) < window {
			return nil
		}
		name := l.lock.Describe() // namespace/name
		why := "the release controller confirms no reservation, and they expire under their pods (--reservation-ttl), their addresses free for others"
		switch {
		case apierrors.IsNotFound(err):
			return fmt.Errorf("no replica has taken the Lease %s in the %s this one has run: %s; see the replicas' leader election errors (RBAC for Leases, --leader-election-namespace)", name, now.Sub(started).Round(time.Second), why)
		case apierrors.IsForbidden(err):
			return fmt.Errorf("cannot read the Lease %s (%w), so cannot take it: %s; the webhook's account needs get, create and update on Leases there", name, err, why)
		case err != nil:
			return nil
		}
		return fmt.Errorf("no replica has renewed the Lease %s for %s as this replica sees it (holder %q): %s; see the replicas' leader election errors", name, now.Sub(changed).Round(time.Second), ptr.Deref(lease.Spec.HolderIdentity, ""), why)
	}
}

// NeedLeaderElection: leadership is the election; it runs on every replica.
func (*leadership) NeedLeaderElection() bool { return false }

// Start campaigns and leads, term after term, until ctx ends.
func (l *leadership) Start(ctx context.Context) error {
	log := klog.FromContext(ctx).WithName("leader")
	ctx = klog.NewContext(ctx, log)
	if l.lock == nil {
		return l.run(ctx)
	}
	if l.ready != nil {
		select {
		case <-l.ready:
		case <-ctx.Done():
			return nil
		}
	}
	for {
		if !l.waitStore(ctx) {
			return nil
		}
		err := l.campaign(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errElection) {
			return err
		}
		if err == nil {
			log.Info("Lost the lead of the release controller; campaigning again", "lease", LeaseName)
			continue
		}
		log.Error(err, "Gave up the lead of the release controller; campaigning again later, while serving admissions", "lease", LeaseName, "after", l.backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(l.backoff):
		}
	}
}

// waitStore waits until the store answers (storeUp), and reports whether it
// does (false: ctx ended first).
func (l *leadership) waitStore(ctx context.Context) bool {
	if l.storeUp == nil || l.storeUp() {
		return ctx.Err() == nil
	}
	klog.FromContext(ctx).Info("Not campaigning for the release controller while etcd does not answer this replica", "lease", LeaseName)
	t := time.NewTicker(l.retryPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			if l.storeUp() {
				return true
			}
		}
	}
}

// errElection is a leader election that cannot run at all.
var errElection = errors.New("leader election")

// run runs one term until ctx ends or the term fails.
func (l *leadership) run(ctx context.Context) error {
	l.leading.Set(1)
	defer l.leading.Set(0)
	return runAll(ctx, l.term())
}

// campaign waits for the Lease and runs one term while it holds it. It
// returns once nothing of the term runs and the Lease is given up, with the
// error that ended the term (nil: the Lease was lost, ctx ended, or the
// Lease never came).
func (l *leadership) campaign(ctx context.Context) error {
	log := klog.FromContext(ctx)
	// elect outlives ctx: a leader ends it only once its term has stopped.
	elect, giveUp := context.WithCancel(context.WithoutCancel(ctx))
	defer giveUp()
	var (
		mu      sync.Mutex
		over    bool // no term starts any more
		leading bool
		terms   sync.WaitGroup
		result  error
	)
	defer context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		over = true
		if !leading { // still campaigning: stop
			giveUp()
		}
	})()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: l.lock, Name: LeaseName,
		LeaseDuration: l.leaseDuration, RenewDeadline: l.renewDeadline, RetryPeriod: l.retryPeriod,
		// Not client-go's release, which on a failed renewal gives the
		// Lease up before the term is told to stop: release, below, once
		// it has.
		ReleaseOnCancel: false,
		Callbacks: leaderelection.LeaderCallbacks{
			// held ends when the Lease is lost or given up.
			OnStartedLeading: func(held context.Context) {
				mu.Lock()
				if over {
					mu.Unlock()
					return
				}
				leading = true
				terms.Add(1)
				mu.Unlock()
				defer terms.Done()
				log.Info("Leading the release controller", "lease", LeaseName)
				run, stop := context.WithCancel(held)
				defer context.AfterFunc(ctx, stop)()
				result = l.run(run)
				stop()
				giveUp()
			},
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return fmt.Errorf("%w: %w", errElection, err)
	}
	le.Run(elect) // returns once renewing failed or elect ended
	mu.Lock()
	over = true
	led := leading
	mu.Unlock()
	terms.Wait() // a Lease lost under a running term: it is stopping
	if led {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.renewDeadline)
		defer cancel()
		if err := l.release(rctx); err != nil {
			log.Error(err, "Could not give up the Lease; another replica takes it when it expires", "lease", LeaseName)
		}
	}
	return result
}

// release gives up the Lease if this replica still holds it, as client-go
// does (no holder, a duration of 1 s), so that another replica takes it at
// its next retry rather than once it expires.
func (l *leadership) release(ctx context.Context) error {
	for {
		rec, _, err := l.lock.Get(ctx)
		if err != nil {
			return err
		}
		if rec.HolderIdentity != l.lock.Identity() {
			return nil
		}
		now := metav1.NewTime(time.Now())
		err = l.lock.Update(ctx, resourcelock.LeaderElectionRecord{
			LeaderTransitions: rec.LeaderTransitions, LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now,
		})
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

// runAll runs rs until ctx ends or one of them fails, and returns once all
// have returned, with the first error.
func runAll(ctx context.Context, rs []manager.Runnable) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(rs))
	for _, r := range rs {
		go func() { errs <- r.Start(ctx) }()
	}
	var first error
	for range rs {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	if first == nil && ctx.Err() == nil {
		return errors.New("the release controller stopped by itself")
	}
	return first
}

// leaseEvents records the leader election's events on the Lease
// ("… became leader") through the webhook's event recorder.
type leaseEvents struct{ rec events.EventRecorder }

func (e leaseEvents) Eventf(obj runtime.Object, eventType, reason, message string, args ...any) {
	e.rec.Eventf(obj, nil, eventType, reason, "LeaderElection", message, args...)
}
