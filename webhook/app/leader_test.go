package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/internal/testenv"
)

// terms records the terms two replicas' leaderships run.
type terms struct {
	leases coordinationv1client.LeaseInterface
	mu     sync.Mutex
	log    []term
	fail   map[string]chan error // a replica's running term returns what is sent
}

type term struct {
	who        string
	start, end time.Time // end zero: running
	// heldAtEnd: the Lease still named this replica when the term had
	// stopped.
	heldAtEnd bool
}

// runner returns the term of replica who, whose identity in the Lease is
// id: it runs until its context ends or an error is sent to fail it, and
// takes a while to stop, as a release pass finishing would.
func (ts *terms) runner(who string, id func() string) func() []manager.Runnable {
	return func() []manager.Runnable {
		return []manager.Runnable{manager.RunnableFunc(func(ctx context.Context) error {
			ts.mu.Lock()
			i := len(ts.log)
			ts.log = append(ts.log, term{who: who, start: time.Now()})
			fail := ts.fail[who]
			ts.mu.Unlock()
			var err error
			select {
			case <-ctx.Done():
			case err = <-fail:
			}
			time.Sleep(time.Second)
			l, gerr := ts.leases.Get(context.Background(), LeaseName, metav1.GetOptions{})
			ts.mu.Lock()
			ts.log[i].end = time.Now()
			ts.log[i].heldAtEnd = gerr == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == id()
			ts.mu.Unlock()
			return err
		})}
	}
}

// running returns the replicas whose term runs, and how many terms began.
func (ts *terms) running() ([]string, int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var out []string
	for _, t := range ts.log {
		if t.end.IsZero() {
			out = append(out, t.who)
		}
	}
	return out, len(ts.log)
}

// get returns term i.
func (ts *terms) get(i int) term {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.log[i]
}

// overlaps names two terms that ran at the same time.
func (ts *terms) overlaps() string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for i, a := range ts.log {
		for _, b := range ts.log[i+1:] {
			aEnd, bEnd := a.end, b.end
			if aEnd.IsZero() {
				aEnd = time.Now()
			}
			if bEnd.IsZero() {
				bEnd = time.Now()
			}
			if a.start.Before(bEnd) && b.start.Before(aEnd) {
				return fmt.Sprintf("%s's term %s–%s and %s's %s–%s", a.who, a.start.Format(time.StampMilli), a.end.Format(time.StampMilli), b.who, b.start.Format(time.StampMilli), b.end.Format(time.StampMilli))
			}
		}
	}
	return ""
}

// refusingLock is a Lease whose renewals by its holder fail while refuse is
// set, as when the API server times them out, while reads and a release
// still go through.
type refusingLock struct {
	resourcelock.Interface
	refuse atomic.Bool
}

func (l *refusingLock) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	if l.refuse.Load() && r.HolderIdentity == l.Identity() {
		return errors.New("renewal refused by the test")
	}
	return l.Interface.Update(ctx, r)
}

// TestLeadershipOutlivesItsTerms, on a real API server: two replicas'
// leaderships never run terms at the same time, and a term has stopped
// before its replica gives the Lease up. A replica whose renewals fail
// stops its term, then gives the Lease up to the other; one whose Lease
// is taken by another holder stops its term, and a replica leads again once
// that Lease expires; one whose term fails gives the Lease up to the other
// at once and campaigns again only after its back-off; on stopping, the
// leader stops its term, then gives the Lease up. Through all of it
// leadership.Start keeps running (the manager's leader election ended the
// process on a lost Lease).
func TestLeadershipOutlivesItsTerms(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 1}) // (a cluster needs a node)
	leases := c.Client().CoordinationV1().Leases(metav1.NamespaceDefault)
	ts := &terms{leases: leases, fail: map[string]chan error{"a": make(chan error, 1), "b": make(chan error, 1)}}
	const backoff = 10 * time.Second
	done, locks := map[string]chan error{}, map[string]*refusingLock{}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, who := range []string{"a", "b"} {
		l, err := newLeadership(Options{LeaderElection: true, LeaderElectionNamespace: metav1.NamespaceDefault}, c.RESTConfig(), events.NewFakeRecorder(100), prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		lock := &refusingLock{Interface: l.lock}
		l.lock, locks[who] = lock, lock
		l.term = ts.runner(who, lock.Identity)
		// A renew deadline with room on a loaded 2-core machine; the
		// others shorter than the webhook's to keep the test short.
		l.leaseDuration, l.renewDeadline, l.retryPeriod, l.backoff = 8*time.Second, 6*time.Second, time.Second, backoff
		ch := make(chan error, 1)
		done[who] = ch
		go func() { ch <- l.Start(lctx) }()
	}
	other := map[string]string{"a": "b", "b": "a"}
	stillRunning := func() {
		t.Helper()
		for who, ch := range done {
			select {
			case err := <-ch:
				t.Fatalf("replica %s's leadership returned %v while the webhook runs", who, err)
			default:
			}
		}
		if o := ts.overlaps(); o != "" {
			t.Fatalf("two terms at once: %s", o)
		}
	}
	// leads waits until who alone runs a term (anyone: ""), the n-th.
	leads := func(who string, n int, within time.Duration, what string) string {
		t.Helper()
		var got string
		testenv.Eventually(ctx, t, within, what, func() (bool, string) {
			run, m := ts.running()
			if len(run) == 1 {
				got = run[0]
			}
			return len(run) == 1 && (who == "" || got == who) && m == n, fmt.Sprintf("%d terms so far, running: %v", m, run)
		})
		stillRunning()
		return got
	}
	heldAtEnd := func(i int, what string) {
		t.Helper()
		if tm := ts.get(i); !tm.heldAtEnd {
			t.Fatalf("%s: replica %s had given the Lease up before its term stopped (ended %s)", what, tm.who, tm.end.Format(time.StampMilli))
		}
	}
	first := leads("", 1, 30*time.Second, "one replica leading")

	// Its renewals fail while the API server answers: its term stops, then
	// it gives the Lease up, and the other leads.
	locks[first].refuse.Store(true)
	leads(other[first], 2, 20*time.Second, "the other replica leading once the first's renewals failed")
	locks[first].refuse.Store(false)
	heldAtEnd(0, "renewals failing")

	// The Lease taken by someone else: the leader stops leading at its renew
	// deadline, and a replica leads again once that Lease expires.
	testenv.TakeLease(ctx, t, leases, LeaseName, "intruder", 12*time.Second)
	testenv.Eventually(ctx, t, 15*time.Second, "no term running while the intruder holds the Lease", func() (bool, string) {
		run, _ := ts.running()
		return len(run) == 0, fmt.Sprintf("running: %v", run)
	})
	stillRunning()
	if l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{}); err != nil || *l.Spec.HolderIdentity != "intruder" {
		t.Fatalf("Lease %v (%v); want it still the intruder's: the test's timing is off", l.Spec.HolderIdentity, err)
	}
	second := leads("", 3, 30*time.Second, "a replica leading again once the intruder's Lease expired")

	// Its term fails: the other replica leads within a few retry periods,
	// not a Lease duration. When the other's term fails in turn, before the
	// first's back-off ends, no one leads until it has.
	// The mechanism is timed, not the whole hand-over (the other replica's
	// next try, jittered, and a loaded machine would take the margin): the
	// Lease is given up within 6 s, well before it would expire, and the
	// other replica then leads.
	ts.fail[second] <- errors.New("etcd does not answer")
	failedAt := time.Now()
	testenv.Eventually(ctx, t, 6*time.Second, "the failed replica giving the Lease up within 6 s", func() (bool, string) {
		l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		h := ptr.Deref(l.Spec.HolderIdentity, "")
		return h != locks[second].Identity(), "holder " + h
	})
	leads(other[second], 4, 8*time.Second, "the other replica leading once the Lease was given up")
	heldAtEnd(2, "a term failing")
	ts.fail[other[second]] <- errors.New("etcd does not answer")
	leads(second, 5, 2*backoff, "the replica that failed first leading again after its back-off")
	heldAtEnd(3, "a term failing")
	if began := ts.get(4).start.Sub(failedAt); began < backoff {
		t.Fatalf("replica %s led again %s after its term failed; want its back-off of %s first", second, began, backoff)
	}

	// Stopping: the term ends, then the Lease is given up.
	stop()
	for who, ch := range done {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("replica %s's leadership returned %v on stopping", who, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("replica %s's leadership still running 20 s after the stop", who)
		}
	}
	if run, _ := ts.running(); len(run) > 0 {
		t.Errorf("terms still running after Start returned: %v", run)
	}
	heldAtEnd(4, "stopping")
	if l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if h := l.Spec.HolderIdentity; h != nil && *h != "" {
		t.Errorf("the Lease is still held by %s after the leader stopped; want it given up", *h)
	}
}

// A replica campaigns for the Lease only once its store has answered. One
// that never reached etcd took the Lease and kept it, and its release
// controller, waiting for the address cache, confirmed no reservation.
func TestNoCampaignBeforeStoreAnswers(t *testing.T) {
	campaignGated(t, "before the store answered", func(l *leadership) func() {
		ready := make(chan struct{})
		l.ready = ready
		return func() { close(ready) }
	})
}

// TestNoCampaignWhileStoreDown: a replica whose store does not answer (it
// had reached etcd, then lost it) does not campaign, and campaigns once it
// answers again. Before, it took the Lease when the leader's ended and kept
// it, confirming no reservation.
func TestNoCampaignWhileStoreDown(t *testing.T) {
	campaignGated(t, "while the store did not answer", func(l *leadership) func() {
		ready := make(chan struct{})
		close(ready) // the store answered once
		var up atomic.Bool
		l.ready, l.storeUp = ready, up.Load
		return func() { up.Store(true) }
	})
}

// campaignGated runs a leadership, on a real API server, whose campaign
// gate closes (set up by gate, which returns what opens it): no Lease is
// taken while it is closed (what says when), and the Lease is taken once
// it opens.
func campaignGated(t *testing.T, what string, gate func(l *leadership) (open func())) {
	t.Helper()
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 1})
	leases := c.Client().CoordinationV1().Leases(metav1.NamespaceDefault)
	l, err := newLeadership(Options{LeaderElection: true, LeaderElectionNamespace: metav1.NamespaceDefault}, c.RESTConfig(), events.NewFakeRecorder(100), prometheus.NewRegistry(),
		func() []manager.Runnable {
			return []manager.Runnable{runnable(func(ctx context.Context) error { <-ctx.Done(); return nil })} // a term until the end
		})
	if err != nil {
		t.Fatal(err)
	}
	l.leaseDuration, l.renewDeadline, l.retryPeriod = 8*time.Second, 6*time.Second, time.Second
	open := gate(l)
	lctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Start(lctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("leadership: %v", err)
		}
	}()
	time.Sleep(4 * l.retryPeriod) // a campaign takes a free Lease at its first try
	if got, err := leases.Get(ctx, LeaseName, metav1.GetOptions{}); err == nil {
		t.Fatalf("Lease held by %q %s; want no campaign", ptr.Deref(got.Spec.HolderIdentity, ""), what)
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	open()
	testenv.Eventually(ctx, t, 30*time.Second, "the Lease taken once the gate opened", func() (bool, string) {
		got, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		h := ptr.Deref(got.Spec.HolderIdentity, "")
		return h == l.lock.Identity(), "holder " + h
	})
}

// TestLeaderCheck, on a real API server: /readyz's release-leader check
// fails, on every replica, once the Lease has not changed for its window as
// the replica sees it (after the replica has run that long), or when the
// replica may not read the Lease, and says why; it passes at start, while
// the Lease is renewed (whatever time the holder's clock writes in it), and
// without leader election. Before, a Lease no replica could take (RBAC for
// Leases missing, a mistyped --leader-election-namespace) left every
// replica Ready while no reservation was confirmed.
func TestLeaderCheck(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 1})
	leases := c.Client().CoordinationV1().Leases(metav1.NamespaceDefault)
	newL := func(cfg *rest.Config, election bool) *leadership {
		l, err := newLeadership(Options{LeaderElection: election, LeaderElectionNamespace: metav1.NamespaceDefault}, cfg, events.NewFakeRecorder(100), prometheus.NewRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	const window = time.Second
	long := time.Now().Add(-time.Hour)
	expect := func(check func(*http.Request) error, want string) {
		t.Helper()
		err := check(httptest.NewRequestWithContext(ctx, http.MethodGet, "/readyz", nil))
		switch {
		case want == "" && err != nil:
			t.Errorf("check: %v; want it to pass", err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("check: %v; want an error saying %q", err, want)
		}
	}
	l := newL(c.RESTConfig(), true)
	expect(l.leaderCheck(window, time.Now()), "") // its first span
	check := l.leaderCheck(window, long)
	expect(check, "no replica has taken the Lease default/"+LeaseName+" in the 1h0m0s this one has run")
	expect(newL(c.RESTConfig(), false).leaderCheck(window, long), "") // no election: this replica runs it

	// A holder whose clock is 10 minutes behind renews: it passes.
	holder, secs := "replica-x", int32(15)
	renew := func(l *coordinationv1.Lease) *coordinationv1.Lease {
		t.Helper()
		behind := metav1.NewMicroTime(time.Now().Add(-10 * time.Minute))
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &holder, &secs, &behind
		var err error
		if l.ResourceVersion == "" {
			l, err = leases.Create(ctx, l, metav1.CreateOptions{})
		} else {
			l, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	lease := renew(&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName}})
	expect(check, "")
	time.Sleep(window / 2)
	lease = renew(lease)
	expect(check, "")
	// No renewal for the window: it fails, naming the holder.
	time.Sleep(window + 200*time.Millisecond)
	expect(check, `no replica has renewed the Lease default/`+LeaseName+` for 1s as this replica sees it (holder "replica-x")`)
	renew(lease)
	expect(check, "")

	nobody := c.RESTConfig()
	nobody.Impersonate = rest.ImpersonationConfig{UserName: "nobody"} // no RBAC at all
	expect(newL(nobody, true).leaderCheck(window, time.Now()), "")
	expect(newL(nobody, true).leaderCheck(window, long), "cannot read the Lease default/"+LeaseName)
}
