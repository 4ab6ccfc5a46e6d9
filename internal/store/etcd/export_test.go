package etcd

import "time"

// Idle reports whether, within 2 s, no transaction request holds a slot
// (is in flight, slowRequest old at most) or is queued: the sender answers its callers just before it gives its request
// slot back, so the slot may still be taken when every call has returned.
func Idle(s *Store) bool {
	for end := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.batch.mu.Lock()
		idle := s.batch.sending == 0 && len(s.batch.queue) == 0
		s.batch.mu.Unlock()
		if idle || time.Now().After(end) {
			return idle
		}
	}
}

// ReconnectMax is reconnectMax.
const ReconnectMax = reconnectMax
