package etcd

// Idle reports whether no transaction request is in flight or queued.
func Idle(s *Store) bool {
	s.batch.mu.Lock()
	defer s.batch.mu.Unlock()
	return s.batch.sending == 0 && len(s.batch.queue) == 0
}

// ReconnectMax is reconnectMax.
const ReconnectMax = reconnectMax
