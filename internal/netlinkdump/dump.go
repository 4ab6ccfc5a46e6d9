// Package netlinkdump repeats netlink dumps that the kernel interrupted.
//
// A dump (link, address, route or qdisc list) that runs while another process
// changes the same table comes back flagged NLM_F_DUMP_INTR, and
// github.com/vishvananda/netlink returns it with netlink.ErrDumpInterrupted:
// possibly incomplete. On a host with hundreds of veths being created and
// removed this is routine, so every list whose result matters goes through
// Retry.
package netlinkdump

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// Attempts is how many times Retry runs a dump before giving up.
const Attempts = 10

// Retry runs dump until it is not interrupted, up to Attempts times with a
// short pause in between, and returns the first complete result or the last
// error.
func Retry[T any](dump func() (T, error)) (T, error) {
	var (
		out T
		err error
	)
	for i := range Attempts {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		time.Sleep(time.Duration(i+1) * 5 * time.Millisecond)
	}
	return out, fmt.Errorf("netlink dump interrupted %d times in a row: %w", Attempts, err)
}
