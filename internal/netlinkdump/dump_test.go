package netlinkdump

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetry(t *testing.T) {
	calls := 0
	got, err := Retry(func() (int, error) {
		calls++
		if calls < 3 {
			return 0, netlink.ErrDumpInterrupted
		}
		return 42, nil
	})
	if err != nil || got != 42 || calls != 3 {
		t.Fatalf("Retry = %d, %v after %d calls; want 42, nil after 3", got, err, calls)
	}

	calls = 0
	_, err = Retry(func() (int, error) { calls++; return 0, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != Attempts {
		t.Fatalf("always interrupted: err %v after %d calls; want ErrDumpInterrupted after %d", err, calls, Attempts)
	}

	other := errors.New("permission denied")
	calls = 0
	if _, err = Retry(func() (int, error) { calls++; return 0, other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("other error: %v after %d calls; want it returned at once", err, calls)
	}
}
