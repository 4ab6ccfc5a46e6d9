package app

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stickynet/stickynet/internal/store"
	"github.com/stickynet/stickynet/internal/store/etcd"
)

// A replica whose etcd does not answer at start (with authentication the
// client logs in as it connects) starts anyway and connects when etcd
// answers; its calls wait for that as long as their context lets them.
// Before, the binary exited, into CrashLoopBackOff. A connection refused
// for good (a wrong password, a missing file) still stops it.
func TestStoreConnectsWhenEtcdAnswers(t *testing.T) {
	defer func(d time.Duration) { dialRetry = d }(dialRetry)
	dialRetry = 50 * time.Millisecond

	// What the etcd client returns when it logs in to an etcd that does not
	// answer: taken for silence, not for a refusal.
	_, err := etcd.New(etcd.Options{Endpoints: []string{"http://127.0.0.1:1"}, Username: "u", Password: "p", DialTimeout: time.Second})
	if err == nil || !unanswered(err) {
		t.Fatalf("etcd.New with authentication, etcd down: %v; want an error taken for etcd's silence", err)
	}
	// It says why (the client's own error is the bare deadline), and so does
	// a dialing store's Diagnose, for /readyz, until it connects. Before,
	// both said only that the deadline passed, or that it was not
	// connected yet (from a review).
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("etcd.New with authentication, etcd down: %v; want the cause, connection refused", err)
	}
	silent, err := openDialing(t.Context(), func() (store.Store, error) {
		return etcd.New(etcd.Options{Endpoints: []string{"http://127.0.0.1:1"}, Username: "u", Password: "p", DialTimeout: time.Second})
	})
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer dcancel()
	if err := silent.(*dialing).Diagnose(dctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Diagnose before connecting: %v; want the cause, connection refused", err)
	}
	if err := silent.Close(); err != nil {
		t.Error(err)
	}
	// etcd's own answers that it cannot serve yet, as the client makes
	// them, count as silence too; a refusal does not.
	for _, e := range []error{rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged} {
		if !unanswered(fmt.Errorf("connect: %w", e)) {
			t.Errorf("%v: taken for a refusal; want it taken for etcd's silence", e)
		}
	}
	if unanswered(rpctypes.ErrAuthFailed) {
		t.Errorf("%v: taken for etcd's silence; want a refusal", rpctypes.ErrAuthFailed)
	}

	// etcd does not answer until answers is closed.
	var attempts atomic.Int32
	answers := make(chan struct{})
	mem := store.NewMemory()
	s, err := openDialing(t.Context(), func() (store.Store, error) {
		attempts.Add(1)
		select {
		case <-answers:
			return mem, nil
		default:
			return nil, status.Error(codes.Unavailable, "connection refused")
		}
	})
	if err != nil {
		t.Fatalf("open with etcd silent: %v; want a store that connects later", err)
	}
	short, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Get(short, "/k"); err == nil || !strings.Contains(err.Error(), "not connected to etcd yet") {
		t.Errorf("Get before the connection: %v; want an error saying it is not connected yet", err)
	}
	for deadline := time.Now().Add(10 * time.Second); attempts.Load() < 3; time.Sleep(dialRetry / 5) {
		if time.Now().After(deadline) { // tried again while etcd was silent
			t.Fatalf("%d attempts in 10 s while etcd was silent; want it tried every %s", attempts.Load(), dialRetry)
		}
	}
	close(answers)
	long, cancel2 := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel2()
	if _, _, err := s.List(long, "/"); err != nil {
		t.Fatalf("List once etcd answers: %v", err)
	}
	connected := attempts.Load()
	time.Sleep(5 * dialRetry)
	if n := attempts.Load(); n != connected {
		t.Errorf("%d attempts when connected, then %d; want none once connected", connected, n)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}

	refused := errors.New("etcdserver: authentication failed, invalid user ID or password")
	if _, err := openDialing(t.Context(), func() (store.Store, error) { return nil, refused }); !errors.Is(err, refused) {
		t.Errorf("open refused for good: %v; want that error", err)
	}

	// Refused for good once etcd answers, after a first attempt it did not
	// answer: calls fail with the refusal, and no attempt follows. Before,
	// it was retried for good, logged as etcd not answering, and calls said
	// only that it was not connected yet.
	attempts.Store(0)
	s, err = openDialing(t.Context(), func() (store.Store, error) {
		if attempts.Add(1) == 1 {
			return nil, status.Error(codes.Unavailable, "connection refused")
		}
		return nil, rpctypes.ErrAuthFailed
	})
	if err != nil {
		t.Fatal(err)
	}
	gone, why := s.(*dialing).Refused()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("not refused 5 s after etcd refused the connection")
	}
	if err := why(); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("refusal %v; want etcd's authentication error", err)
	}
	if _, err := s.Get(t.Context(), "/k"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("Get once refused: %v; want etcd's authentication error", err)
	}
	tried := attempts.Load()
	time.Sleep(5 * dialRetry)
	if attempts.Load() != tried || tried != 2 {
		t.Errorf("%d attempts, then %d; want 2, none after the refusal", tried, attempts.Load())
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}

	// Closed while still connecting: it stops trying.
	attempts.Store(0)
	s, err = openDialing(t.Context(), func() (store.Store, error) {
		attempts.Add(1)
		return nil, context.DeadlineExceeded
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
	n := attempts.Load()
	time.Sleep(5 * dialRetry)
	if attempts.Load() != n {
		t.Error("still connecting after Close")
	}
}
