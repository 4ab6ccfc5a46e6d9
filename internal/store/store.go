// Package store owns stickynet's state driver interface: a small key-value API
// with compare-and-swap transactions, leases and prefix watches, shaped after
// etcd v3. It holds the in-memory driver and the Reflector that keeps a
// watch-fed cache (re-listing after compaction); the etcd v3 driver lives in
// internal/store/etcd and both pass the conformance suite in internal/store/storetest.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// LeaseID names a lease; NoLease means a key lives until deleted.
type LeaseID int64

// NoLease attaches a key to no lease.
const NoLease LeaseID = 0

// KV is a stored key with its value and revisions.
type KV struct {
	Key            string
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Lease          LeaseID
}

// Cmp is a transaction condition on a key's ModRevision; ModRevision 0 means
// the key must not exist.
type Cmp struct {
	Key         string
	ModRevision int64
}

// Absent is the condition that key does not exist.
func Absent(key string) Cmp { return Cmp{Key: key} }

// At is the condition that key exists and was last modified at rev (rev 0: absent).
func At(key string, rev int64) Cmp { return Cmp{Key: key, ModRevision: rev} }

type opKind int

const (
	opGet opKind = iota
	opPut
	opDelete
)

// Op is one operation of a transaction branch.
type Op struct {
	kind  opKind
	Key   string
	Value []byte
	Lease LeaseID
}

// Put writes key, attached to lease (NoLease: detached from any lease).
func Put(key string, value []byte, lease LeaseID) Op {
	return Op{kind: opPut, Key: key, Value: value, Lease: lease}
}

// Delete removes key (no error when absent).
func Delete(key string) Op { return Op{kind: opDelete, Key: key} }

// Get reads key; its result is in TxnResult.Gets.
func Get(key string) Op { return Op{kind: opGet, Key: key} }

// IsGet reports whether the op is a read.
func (o Op) IsGet() bool { return o.kind == opGet }

// IsPut reports whether the op is a write of a value.
func (o Op) IsPut() bool { return o.kind == opPut }

// IsDelete reports whether the op is a delete.
func (o Op) IsDelete() bool { return o.kind == opDelete }

// TxnResult is the outcome of a transaction.
type TxnResult struct {
	// Succeeded reports whether every condition held (the Then branch ran).
	Succeeded bool
	// Revision is the store revision after the transaction.
	Revision int64
	// Gets holds one entry per Get op of the branch that ran, in order; nil where the key is absent.
	Gets []*KV
}

// EventType is the kind of a watch event.
type EventType int

// Watch event types.
const (
	EventPut EventType = iota
	EventDelete
)

// Event is one change seen by a watch. For EventDelete, KV.Value is empty and
// KV.ModRevision is the revision of the delete.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse is a batch of events of one or more revisions, or a terminal
// error after which the channel is closed.
type WatchResponse struct {
	Events []Event
	Err    error
}

// Store is the state driver.
type Store interface {
	// Get returns the key, or nil when it does not exist.
	Get(ctx context.Context, key string) (*KV, error)
	// List returns every key under prefix, sorted by key, as of one revision,
	// and that revision.
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Txn runs then when every condition holds, otherwise els, atomically.
	Txn(ctx context.Context, cmps []Cmp, then, els []Op) (TxnResult, error)
	// Grant creates a lease that expires after ttl (rounded up to whole seconds)
	// unless revoked first; its keys are deleted when it ends.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// Revoke ends a lease now, deleting its keys. Revoking an unknown lease is not an error.
	Revoke(ctx context.Context, id LeaseID) error
	// Watch streams changes under prefix from revision fromRev on (inclusive).
	// When the revision has been compacted away, it sends one response with
	// a *CompactedError and closes; the caller re-lists (see Reflector).
	// The channel is closed when ctx ends.
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResponse
	// Close releases the driver's resources.
	Close() error
}

// CompactedError is the watch error for a start revision older than the
// store's compaction point.
type CompactedError struct {
	CompactRevision int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("required revision has been compacted (compact revision %d)", e.CompactRevision)
}

// ErrLeaseNotFound is returned by Txn when a Put names a lease that does not exist
// (expired or revoked).
var ErrLeaseNotFound = errors.New("lease not found")

// IsCompacted reports whether err is a CompactedError.
func IsCompacted(err error) bool {
	var ce *CompactedError
	return errors.As(err, &ce)
}
