package etcd

// SharedTxns is the number of transactions sent in a request with others.
func SharedTxns(s *Store) int64 { return s.batch.shared.Load() }

// RefusedBatches is the number of batches etcd refused as a whole.
func RefusedBatches(s *Store) int64 { return s.batch.refused.Load() }

// Idle reports whether no transaction request is in flight or queued.
func Idle(s *Store) bool {
	s.batch.mu.Lock()
	defer s.batch.mu.Unlock()
	return s.batch.sending == 0 && len(s.batch.queue) == 0
}
