//go:build tools

// Package etcd only records the etcd command that hack/build-tools.sh builds.
package etcd

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
