package app

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/stickynet/stickynet/e2e/cluster"
	"github.com/stickynet/stickynet/internal/testenv"
)

// terms records the terms two replicas' leaderships run.
type terms struct {
	mu   sync.Mutex
	log  []term
	fail map[string]chan error // a replica's running term returns what is sent
}

type term struct {
	who        string
	start, end time.Time // end zero: running
}

// runner returns the term of replica who: it runs until its context ends
// or an error is sent to fail it.
func (ts *terms) runner(who string) func() []manager.Runnable {
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
			time.Sleep(300 * time.Millisecond) // a release pass finishing
			ts.mu.Lock()
			ts.log[i].end = time.Now()
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

// TestLeadershipOutlivesItsTerms, on a real API server: two replicas'
// leaderships never run terms at the same time; a replica whose Lease is
// taken stops its term and campaigns again, its Start still running (the
// manager's leader election ended the process); a replica whose term fails
// gives the Lease up at once to the other and waits its back-off; and on
// stopping, the leader stops its term before it gives the Lease up.
func TestLeadershipOutlivesItsTerms(t *testing.T) {
	testenv.Root(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := cluster.StartForTest(ctx, t, cluster.Config{Nodes: -1, SimNodes: 1}) // (a cluster needs a node)
	leases := c.Client().CoordinationV1().Leases(metav1.NamespaceDefault)
	ts := &terms{fail: map[string]chan error{"a": make(chan error, 1), "b": make(chan error, 1)}}
	done := map[string]chan error{}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, who := range []string{"a", "b"} {
		l, err := newLeadership(Options{LeaderElection: true, LeaderElectionNamespace: metav1.NamespaceDefault}, c.RESTConfig(), events.NewFakeRecorder(100), ts.runner(who))
		if err != nil {
			t.Fatal(err)
		}
		l.leaseDuration, l.renewDeadline, l.retryPeriod, l.backoff = 4*time.Second, 3*time.Second, 500*time.Millisecond, 8*time.Second
		ch := make(chan error, 1)
		done[who] = ch
		go func() { ch <- l.Start(lctx) }()
	}
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
	leader := func(what string) string {
		t.Helper()
		var who string
		testenv.Eventually(ctx, t, 30*time.Second, what, func() (bool, string) {
			run, n := ts.running()
			if len(run) == 1 {
				who = run[0]
			}
			return len(run) == 1, fmt.Sprintf("%d terms so far, running: %v", n, run)
		})
		stillRunning()
		return who
	}
	first := leader("one replica leading")

	// The Lease taken by someone else: the leader stops leading at its renew
	// deadline, and a replica leads again once that Lease expires.
	l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.NewMicroTime(time.Now())
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.AcquireTime, l.Spec.RenewTime = ptr("intruder"), ptr(int32(8)), &now, &now
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(ctx, t, 15*time.Second, "no term running while the intruder holds the Lease", func() (bool, string) {
		run, _ := ts.running()
		return len(run) == 0, fmt.Sprintf("running: %v", run)
	})
	stillRunning()
	if l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{}); err != nil || *l.Spec.HolderIdentity != "intruder" {
		t.Fatalf("Lease %v (%v); want it still the intruder's: the test's timing is off", l.Spec.HolderIdentity, err)
	}
	second := leader("a replica leading again once the intruder's Lease expired")

	// The leader's term fails: the other replica leads within a few retry
	// periods, not a Lease duration, and the failed one waits its back-off.
	_, before := ts.running()
	ts.fail[second] <- errors.New("etcd does not answer")
	other := map[string]string{"a": "b", "b": "a"}[second]
	failedAt := time.Now()
	testenv.Eventually(ctx, t, 3*time.Second, "the other replica leading within 3 s of the failure", func() (bool, string) {
		run, _ := ts.running()
		return slices.Equal(run, []string{other}), fmt.Sprintf("running: %v", run)
	})
	stillRunning()
	// The failed replica, campaigning again after its back-off, takes the
	// Lease once the other's term fails in turn.
	time.Sleep(time.Until(failedAt.Add(8 * time.Second)))
	ts.fail[other] <- errors.New("etcd does not answer")
	testenv.Eventually(ctx, t, 3*time.Second, "the replica that failed first leading again after its back-off", func() (bool, string) {
		run, n := ts.running()
		return slices.Equal(run, []string{second}) && n == before+2, fmt.Sprintf("running %v, %d terms since the first failure", run, n-before)
	})
	stillRunning()

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
	if l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if h := l.Spec.HolderIdentity; h != nil && *h != "" {
		t.Errorf("the Lease is still held by %s after the leader stopped; want it given up", *h)
	}
	t.Logf("first leader %s, after the intruder %s", first, second)
}
