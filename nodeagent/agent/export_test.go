package agent

import (
	"testing"
	"time"
)

// SetFallbackRescan sets how often FallbackAuto looks again, for agents
// started after it, until the test's cleanups run (register it before the
// agent's, so that it is restored after the agent stopped).
func SetFallbackRescan(t *testing.T, d time.Duration) {
	old := fallbackRescan
	fallbackRescan = d
	t.Cleanup(func() { fallbackRescan = old })
}

// LockStripe is the stripe of keyLocks that an attachment key takes, for
// tests that need two keys on one stripe.
func LockStripe(key string) int { return lockStripe(key) }
