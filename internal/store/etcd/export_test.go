package etcd

// SharedTxns is the number of transactions sent in a request with others.
func SharedTxns(s *Store) int64 { return s.batch.shared.Load() }
