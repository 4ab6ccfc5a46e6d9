package agent

import (
	"testing"
	"time"
)

// SetFallbackRescan sets how often FallbackAuto looks again, for agents
// started after it, until the test's cleanups run (register it before the
// agent's, so that it is restored after the agent stopped). The function it
// returns waits until n more rescans than when it was called ended, failing
// the test after 10 s.
func SetFallbackRescan(t *testing.T, d time.Duration) (waitRescans func(n int64)) {
	old := fallbackRescan
	fallbackRescan = d
	t.Cleanup(func() { fallbackRescan = old })
	return func(n int64) {
		t.Helper()
		want := fallbackRescans.Load() + n
		for deadline := time.Now().Add(10 * time.Second); fallbackRescans.Load() < want; time.Sleep(d / 4) {
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d fallback rescans in 10 s", n)
			}
		}
	}
}

// LockStripe is the stripe of keyLocks that an attachment key takes, for
// tests that need two keys on one stripe.
func LockStripe(key string) int { return lockStripe(key) }
