package agent

// LockStripe is the stripe of keyLocks that an attachment key takes, for
// tests that need two keys on one stripe.
func LockStripe(key string) int { return lockStripe(key) }
